"""An OTLP/HTTP trace receiver built on OpenTelemetry's own protocol definitions
(`opentelemetry-proto`): what a collector does with the services' exports, minus the storage.

Every POST to /v1/traces is parsed strictly (unknown fields refused) into the official
`ExportTraceServiceRequest` message, after turning the hex trace and span ids into the base64 the
protobuf JSON mapping expects (OTLP's JSON encoding writes them as hex). A request that does not
parse gets 400 and is written to the output as an error line; each span of a good one is written
as one JSON line. The port is printed on the first line of stdout.

    python otlp_receiver.py --out spans.jsonl [--port 0]
"""

import argparse
import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

LOCK = threading.Lock()


def hex_ids_to_base64(request):
    for resource_spans in request.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if field in span:
                        span[field] = base64.b64encode(bytes.fromhex(span[field])).decode()


def attribute_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def spans_of(message):
    for resource_spans in message.resource_spans:
        resource = {a.key: attribute_value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "flags": span.flags,
                    "name": span.name,
                    "kind": span.kind,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {a.key: attribute_value(a.value) for a in span.attributes},
                    "status_code": span.status.code,
                    "status_message": span.status.message,
                }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            return self.reply(404, {"error": f"no such path {self.path}"})
        content_type = self.headers.get("Content-Type", "")
        try:
            if not content_type.startswith("application/json"):
                raise ValueError(f"Content-Type {content_type!r} is not application/json")
            request = json.loads(body)
            hex_ids_to_base64(request)
            message = ExportTraceServiceRequest()
            json_format.ParseDict(request, message, ignore_unknown_fields=False)
            lines = [json.dumps(span) for span in spans_of(message)]
        except Exception as error:  # noqa: BLE001 - every failure is reported to the test
            with LOCK:
                self.server.out.write(json.dumps({"error": f"{type(error).__name__}: {error}"}) + "\n")
                self.server.out.flush()
            return self.reply(400, {"error": str(error)})
        with LOCK:
            for line in lines:
                self.server.out.write(line + "\n")
            self.server.out.flush()
        # An empty ExportTraceServiceResponse: everything accepted.
        self.reply(200, {})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.out = open(args.out, "a", encoding="utf-8")
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

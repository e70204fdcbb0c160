"""hitl's wire format from `schemas/*.avsc` alone: Avro single-object encoding (`C3 01`, the
schema's CRC-64-AVRO fingerprint, the datum), with fastavro."""

import io
import json
import os
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

SCHEMAS = Path(os.environ.get("HITL_SCHEMA_DIR", Path(__file__).resolve().parents[2] / "schemas"))


def load(name):
    """The parsed schema `schemas/<name>.avsc` and its single-object header."""
    schema = fastavro.parse_schema(json.loads((SCHEMAS / f"{name}.avsc").read_text()))
    header = b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    return schema, header


def datum(name, record):
    """The Avro datum of `record` (no header)."""
    schema, _ = load(name)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def encode(name, record):
    """`record` in single-object encoding."""
    return load(name)[1] + datum(name, record)


def decode(name, payload):
    """A single-object encoded record of `schemas/<name>.avsc`."""
    schema, header = load(name)
    assert payload[:10] == header, f"{name}: header {payload[:10].hex()} is not {header.hex()}"
    return fastavro.schemaless_reader(io.BytesIO(payload[10:]), schema)


def sign(kind, key, value, key_id=None, secret_hex=None):
    """The `hitl-auth` header of a record (docs/trust.md): HMAC-SHA256 over
    "hitl-auth/v1/<kind>\n" + u32 big-endian key length + key + value, with the key id and hex
    secret from the arguments or HITL_AUTH_KEY_ID / HITL_AUTH_SECRET."""
    import hashlib
    import hmac
    import os
    import struct

    key_id = key_id or os.environ["HITL_AUTH_KEY_ID"]
    secret = bytes.fromhex(secret_hex or os.environ["HITL_AUTH_SECRET"])
    key = key.encode() if isinstance(key, str) else (key or b"")
    value = value or b""
    message = b"hitl-auth/v1/" + kind.encode() + b"\n" + struct.pack(">I", len(key)) + key + value
    signature = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return ("hitl-auth", f"hmac-sha256:{key_id}:{signature}".encode())

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

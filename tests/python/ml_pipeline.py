"""What an ML pipeline and a compliance reader do with hitl's outputs, using only schemas/*.avsc.

Reads hitl.feedback and hitl.audit with confluent-kafka, decodes them with fastavro, checks the
labeled examples, and re-checks every audit record independently of the Rust code: its content hash
(SHA-256 of the Avro datum with `content_hash` and `signature` blanked) and its Ed25519 signature
with the public key alone. Driven by the Rust integration test `python_reads_feedback_and_audit`.
"""

import hashlib
import os
import sys
import time

from confluent_kafka import Consumer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hitl_avro import datum, decode
BOOTSTRAP = os.environ["HITL_BOOTSTRAP"]
FEEDBACK = os.environ["HITL_TOPIC_FEEDBACK"]
AUDIT = os.environ["HITL_TOPIC_AUDIT"]
EXPECT_FEEDBACK = int(os.environ["HITL_EXPECT_FEEDBACK"])
PUBLIC_KEY = Ed25519PublicKey.from_public_bytes(bytes.fromhex(os.environ["HITL_PUBLIC_KEY"]))


def read_all(topic, quiet=2.0, within=60.0):
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "py-ml", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records, last, deadline = [], time.time(), time.time() + within
    while time.time() < deadline and time.time() - last < quiet:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            records.append(message)
            last = time.time()
    consumer.close()
    return records


def main():
    feedback = [decode("feedback_record", m.value()) for m in read_all(FEEDBACK)]
    assert len(feedback) == EXPECT_FEEDBACK, f"{len(feedback)} feedback records, expected {EXPECT_FEEDBACK}"
    assert len({f["decision_id"] for f in feedback}) == len(feedback), "one label per decision"
    for f in feedback:
        assert f["label_source"] in ("HUMAN", "QUORUM", "QA_SAMPLE"), f
        assert f["features"], f"features kept for retraining: {f}"
        assert isinstance(f["overridden"], bool)
        for pseudonym in f["reviewer_pseudonyms"]:
            assert pseudonym.startswith("rv-") and "ann" not in pseudonym and "cy" not in pseudonym, pseudonym
        assert f["labeled_at"] >= f["created_at"]

    audit = [m for m in read_all(AUDIT) if m.value() is not None]
    assert audit, "no audit records"
    for message in audit:
        record = decode("audit_record", message.value())
        blank = dict(record, content_hash="", signature="")
        content_hash = hashlib.sha256(datum("audit_record", blank)).hexdigest()
        assert content_hash == record["content_hash"], f"{record['decision_id']} v{record['version']}: hash differs"
        PUBLIC_KEY.verify(bytes.fromhex(record["signature"]), record["content_hash"].encode())
        decision = record["decision"]
        if decision:
            for key in decision["sensitive_fields"]:
                value = decision["context"].get(key)
                assert value is None or value.startswith("hmac-sha256:"), f"PII in clear: {key}={value}"
    print(f"python ML pipeline: {len(feedback)} labeled examples decoded; {len(audit)} audit records "
          f"decoded, hashes recomputed and Ed25519 signatures verified with the public key")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        sys.exit(1)

"""A non-Rust producer and consumer of hitl's topics, using only schemas/*.avsc.

Produces Avro (single-object encoding built by hand from fastavro) and JSON decisions with
confluent-kafka, then reads what the router wrote and decodes it with fastavro. Driven by the Rust
integration test `python_client_interop`, which passes topic names and the broker in the environment.
"""

import json
import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from hitl_avro import decode, encode, sign
BOOTSTRAP = os.environ["HITL_BOOTSTRAP"]
TOPICS = {name: os.environ[f"HITL_TOPIC_{name.upper()}"] for name in ("decisions", "outcomes", "review_requests", "lifecycle")}


def decision(decision_id, confidence, action="block"):
    return {
        "decision_id": decision_id, "workflow": "payments.fraud", "subject": "txn-" + decision_id,
        "action": action, "confidence": confidence, "risk_score": 0.2, "amount": 42.5, "priority": None,
        "producer": "python-model", "model_name": "py-gbm", "model_version": "3.1",
        "features": {"velocity": 1.25}, "context": {"card": "4111-1111"}, "sensitive_fields": ["card"],
        "created_at": int(time.time() * 1000), "sla_ms": None,
    }


def read(topic, count, within=60.0):
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "py-interop", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records, deadline = [], time.time() + within
    while len(records) < count and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            records.append(message)
    consumer.close()
    return records


def main():
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    # Every decision is signed by the publisher's key (`hitl-auth`), which may publish as "python-model".
    for key, value, headers in [
        ("py-auto", encode("decision", decision("py-auto", 0.97, "allow")), []),
        ("py-human", encode("decision", decision("py-human", 0.4)), []),
        ("py-json", json.dumps(decision("py-json", 0.99, "allow")).encode(), [("content-type", b"application/json")]),
    ]:
        producer.produce(TOPICS["decisions"], key=key, value=value, headers=headers + [sign("decision", key, value)])
    producer.flush(30)

    outcomes = {o["decision_id"]: o for o in (decode("outcome", m.value()) for m in read(TOPICS["outcomes"], 2))}
    assert set(outcomes) == {"py-auto", "py-json"}, outcomes
    for outcome in outcomes.values():
        assert outcome["status"] == "APPROVED" and outcome["decided_by"] == "AUTO", outcome
        assert outcome["final_action"] == "allow" and outcome["policy_version"] == "interop", outcome

    requests = [decode("review_request", m.value()) for m in read(TOPICS["review_requests"], 1)]
    assert len(requests) == 1, requests
    request = requests[0]
    assert request["decision"]["decision_id"] == "py-human" and request["kind"] == "REVIEW", request
    assert request["decision"]["features"] == {"velocity": 1.25} and request["pool"] == "general", request
    assert request["decision"]["model_version"] == "3.1", request

    events = [decode("lifecycle_event", m.value()) for m in read(TOPICS["lifecycle"], 3)]
    assert {e["decision_id"] for e in events} == {"py-auto", "py-human", "py-json"}, events
    assert all(e["kind"] == "ROUTED" and e["service"] == "router" for e in events), events
    print("python interop: 3 decisions produced (2 Avro, 1 JSON); outcomes, review request and lifecycle decoded with fastavro")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"interop check failed: {error}", file=sys.stderr)
        sys.exit(1)

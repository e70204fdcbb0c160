"""A reviewer app in Python, from `schemas/*.avsc` alone: publishes its reviewer's roster entry,
signed (`hitl-auth`, HMAC-SHA256
with the key in HITL_AUTH_KEY_ID / HITL_AUTH_SECRET: a gateway's or the reviewer's own), reads its
partition of hitl.assignments, and answers each assignment with a verdict sent to the
partition the assignment names (`verdict_partition`), with a producer that uses Java's partitioner
(murmur2), not librdkafka's: the verdict must land on its pool's partition whatever the client.

Driven by the Rust integration test `python_reviewer_app`; the broker, topics and how many
assignments to answer come in the environment. Prints the decisions it approved.
"""

import os
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from hitl_avro import decode, encode, sign

BOOTSTRAP = os.environ["HITL_BOOTSTRAP"]
ASSIGNMENTS = os.environ["HITL_TOPIC_ASSIGNMENTS"]
VERDICTS = os.environ["HITL_TOPIC_VERDICTS"]
REVIEWERS = os.environ["HITL_TOPIC_REVIEWERS"]
EXPECT = int(os.environ["HITL_EXPECT_ASSIGNMENTS"])
REVIEWER = "py-reviewer"
PARTITION = 1  # the hitl.assignments partition this reviewer reads


def main():
    producer = Producer({
        "bootstrap.servers": BOOTSTRAP,
        "enable.idempotence": True,
        "partitioner": "murmur2_random",  # Java's default
    })
    status = {
        "reviewer_id": REVIEWER, "roles": ["analyst"], "skills": [], "pools": [], "capacity": 5,
        "partition": PARTITION, "presence": "ONLINE", "updated_at": int(time.time() * 1000),
    }
    value = encode("reviewer_status", status)
    producer.produce(REVIEWERS, key=REVIEWER, value=value, headers=[sign("reviewer", REVIEWER, value)])
    producer.flush(30)

    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "py-reviewer", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(ASSIGNMENTS, PARTITION, 0)])
    approved, deadline = set(), time.time() + 90
    while len(approved) < EXPECT and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is None or message.error() is not None:
            continue
        event = decode("assignment_event", message.value())
        if event["reviewer_id"] != REVIEWER or event["kind"] != "ASSIGNED" or event["reason"] is not None:
            continue
        assert event["verdict_partition"] is not None, f"no verdict_partition in {event}"
        verdict = {
            "decision_id": event["decision_id"], "assignment_id": event["assignment_id"],
            "reviewer_id": REVIEWER, "verdict": "APPROVE", "amended_action": None,
            "rationale": "checked in Python", "decided_at": int(time.time() * 1000), "pool": event["pool"],
        }
        value = encode("verdict", verdict)
        producer.produce(VERDICTS, key=event["pool"], value=value, headers=[sign("verdict", event["pool"], value)],
                         partition=event["verdict_partition"])
        producer.poll(0)
        approved.add(event["decision_id"])
    producer.flush(30)
    consumer.close()
    for decision_id in sorted(approved):
        print(decision_id)
    return 0 if len(approved) >= EXPECT else 1


if __name__ == "__main__":
    sys.exit(main())

"""Summarises the spans the OTLP receiver (tests/python/otlp_receiver.py) wrote: how many per
service and trace, and the tree of one decision that went to people.

    python scripts/trace_summary.py SPANS.jsonl
"""

import collections
import json
import os
import sys


def duration(span):
    nanos = int(span["end"]) - int(span["start"])
    if nanos >= 1_000_000_000:
        return f"{nanos / 1e9:.2f} s"
    return f"{nanos / 1e6:.1f} ms"


def describe(span):
    attributes = span["attributes"]
    keys = [
        "hitl.route",
        "hitl.policy.rule",
        "hitl.pool",
        "hitl.result",
        "hitl.verdict",
        "hitl.verdicts",
        "hitl.event.kind",
        "hitl.audit.version",
    ]
    return " ".join(f"{k.split('.')[-1]}={attributes[k]}" for k in keys if k in attributes)


def main(path):
    spans = []
    refused = 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if "error" in record:
                refused += 1
            else:
                spans.append(record)
    if not spans:
        print("  no spans received")
        return 1
    by_service = collections.Counter(span["service"] for span in spans)
    traces = collections.defaultdict(list)
    for span in spans:
        traces[span["trace_id"]].append(span)
    services = ", ".join(f"{name} {count:,}" for name, count in sorted(by_service.items()))
    print(f"  {len(spans):,} spans in {len(traces):,} traces ({services}); {refused} exports refused")
    # One decision that went to people, with its whole tree.
    example = next(
        (
            trace
            for trace in traces.values()
            if any(s["name"] == "hitl.assignment review" for s in trace)
            and sum(s["name"] == "hitl.audit record" for s in trace) >= 3
        ),
        None,
    )
    if example is None:
        return 0
    children = collections.defaultdict(list)
    for span in example:
        children[span["parent_span_id"]].append(span)
    ids = {span["span_id"] for span in example}
    roots = [span for span in example if span["parent_span_id"] not in ids]
    decision = example[0]["attributes"].get("hitl.decision_id", "?")
    print(f"  the trace of {decision} (trace id {example[0]['trace_id']}):")

    def show(span, depth):
        label = f"{'  ' * depth}{span['name']} [{span['service']}]"
        print(f"    {label:<48} {duration(span):>10}  {describe(span)}")
        for child in sorted(children[span["span_id"]], key=lambda s: int(s["start"])):
            show(child, depth + 1)

    for root in sorted(roots, key=lambda s: int(s["start"])):
        show(root, 0)
    return 0


def run(path):
    """`main`, and a quiet exit 0 when stdout is closed (`... | head`): the reader has all it
    wanted, as with `ls | head`."""
    try:
        status = main(path)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at devnull: the interpreter's final flush must not fail (and complain) again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 0
    return status


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))

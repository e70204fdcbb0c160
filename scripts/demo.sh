#!/usr/bin/env bash
# Runs the whole system on this machine: Apache Kafka (scripts/kafka.sh), the services, a demo load of realistic
# decisions (with a few invalid records), and a live summary of what happened to them; the services'
# traces go over OTLP to a receiver built on OpenTelemetry's protocol definitions.
#   scripts/demo.sh [--rate N] [--duration SECS]      (defaults: 200 decisions/s for 30 s)
# Environment: HITL_DEMO_PORT (broker port, default 19092). Logs go to .hitl/demo/.
# Uses the dev broker if `scripts/kafka.sh start` runs one; else starts a fresh broker in
# .hitl/demo/kafka for this run and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=200
duration=30
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    *) echo "usage: $0 [--rate N] [--duration SECS]" >&2; exit 2 ;;
  esac
done
port=${HITL_DEMO_PORT:-19092}
logs=.hitl/demo
mkdir -p "$logs"

scripts/setup.sh
echo "building the services (release)..."
cargo build --release --workspace --bins --locked --quiet

started_broker=0
if address=$(scripts/kafka.sh address 2>/dev/null); then
  echo "using the running dev broker on $address"
else
  scripts/kafka.sh stop --dir "$logs/kafka" >/dev/null 2>&1 || true
  rm -rf "$logs/kafka"
  scripts/kafka.sh start --port "$port" --dir "$logs/kafka"
  address=127.0.0.1:$port
  started_broker=1
fi
export HITL_KAFKA__BOOTSTRAP_SERVERS=$address
pids=()
rm -f "$logs/spans.jsonl"
.hitl/venv/bin/python tests/python/otlp_receiver.py --out "$logs/spans.jsonl" >"$logs/otlp.port" 2>"$logs/otlp.log" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$logs/otlp.port" ] && break; sleep 0.1; done
otlp_port=$(sed -n 's/^listening on //p' "$logs/otlp.port")
export HITL_TELEMETRY__OTLP_ENDPOINT=http://127.0.0.1:$otlp_port
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$started_broker" = 1 ]; then scripts/kafka.sh stop --dir "$logs/kafka" >/dev/null; fi
}
trap cleanup EXIT INT TERM

target/release/hitl-admin topics create --config config/router.toml

wait_ready() { # name port pid-index
  for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "${pids[$3]}" 2>/dev/null; then echo "$1 exited; see $logs/$1.log" >&2; tail -20 "$logs/$1.log" >&2; exit 1; fi
    sleep 0.2
  done
  echo "$1 not ready after 30 s; see $logs/$1.log" >&2; exit 1
}

target/release/hitl-router --dev --config config/router.toml >"$logs/router.log" 2>&1 &
pids+=($!)
target/release/hitl-assignment --dev --config config/assignment.toml >"$logs/assignment.log" 2>&1 &
pids+=($!)
target/release/hitl-audit --dev --config config/audit.toml >"$logs/audit.log" 2>&1 &
pids+=($!)
wait_ready router 9601 1
echo "router ready: metrics on http://127.0.0.1:9601/metrics, log in $logs/router.log"
wait_ready assignment 9602 2
echo "assignment ready: metrics on http://127.0.0.1:9602/metrics, log in $logs/assignment.log"
wait_ready audit 9603 3
echo "audit ready: metrics on http://127.0.0.1:9603/metrics, log in $logs/audit.log"
echo
target/release/hitl-loadtest demo --dev --config config/router.toml --rate "$rate" --duration "$duration"
echo
echo "router metrics (http://127.0.0.1:9601/metrics):"
curl -fsS http://127.0.0.1:9601/metrics | grep -E '^hitl_router_(decisions|dead_letters|qa_samples|duplicates)_total' | sed 's/^/  /'
echo
echo "assignment metrics (http://127.0.0.1:9602/metrics):"
curl -fsS http://127.0.0.1:9602/metrics | grep -E '^hitl_assignment_(outcomes|escalations|sla_breaches|rejected_verdicts|reassignments)_total|^hitl_assignment_(queue_depth|reviewer_utilisation)' | grep -v ' 0$' | sed 's/^/  /'
echo
echo "audit metrics (http://127.0.0.1:9603/metrics):"
curl -fsS http://127.0.0.1:9603/metrics | grep -E '^hitl_audit_(records_written|feedback_records|outcomes_recorded|checkpoints|duplicate_events)_total|^hitl_audit_completeness' | sed 's/^/  /'
echo
echo "verifying the audit trail (signatures, hash chains, checkpoints, completeness) ..."
# Held items keep producing lifecycle events (escalations, SLA breaches): stop the router and the
# assignment service so the trail stops growing, then wait one checkpoint interval
# (config/audit.toml) so that every record is covered when it is verified.
kill "${pids[1]}" "${pids[2]}" 2>/dev/null || true
wait "${pids[1]}" "${pids[2]}" 2>/dev/null || true
sleep 6
if target/release/hitl-audit verify --dev --config config/audit.toml | sed 's/^/  /'; then
  echo "  audit trail verified"
else
  echo "  audit trail verification FAILED" >&2
fi
echo
echo "last dead letters:"
target/release/hitl-admin dlq tail --count 3 --config config/router.toml | head -8 | sed 's/^/  /'
echo
echo "traces (OTLP/HTTP on 127.0.0.1:$otlp_port, spans in $logs/spans.jsonl):"
.hitl/venv/bin/python scripts/trace_summary.py "$logs/spans.jsonl"

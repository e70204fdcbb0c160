#!/usr/bin/env bash
# The test command: installs what it needs, builds the services, then runs every test in the
# default `transactional` delivery mode against Apache Kafka (each integration-test binary starts
# its own broker with scripts/kafka.sh on free loopback ports and a fresh log dir; set
# HITL_BOOTSTRAP_SERVERS to use an external cluster instead), then the idempotent-delivery set
# (for brokers without transactions): routing, balancing, a full audited run and the three kill
# tests again with HITL_TEST_DELIVERY=idempotent.
# Then, without arguments, a bounded fuzzing run: scripts/fuzz.sh, HITL_FUZZ_SECONDS per target
# (default 15, no sanitizer; 0 skips it, e.g. for quick local runs; it needs a nightly toolchain).
# Arguments go to the first `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
echo "== tests, transactional delivery"
cargo test --workspace --locked "$@"
if [ $# -eq 0 ]; then
  echo "== tests, idempotent delivery (brokers without transactions)"
  HITL_TEST_DELIVERY=idempotent cargo test --locked -p hitl-tests --test router --test assignment --test audit -- \
    kill_9 routes_auto_approve_auto_reject_and_human balances_across_reviewer_partitions a_full_run
fi
if [ $# -eq 0 ] && [ "${HITL_FUZZ_SECONDS:-15}" != 0 ]; then
  # Without a sanitizer by default here (it builds in half the time; the code forbids `unsafe`, and
  # every law is still checked); long runs use AddressSanitizer (scripts/fuzz.sh's default).
  echo "== fuzzing, ${HITL_FUZZ_SECONDS:-15}s per target (HITL_FUZZ_SECONDS=0 skips)"
  CARGO_FUZZ_SANITIZER="${CARGO_FUZZ_SANITIZER:-none}" scripts/fuzz.sh --seconds "${HITL_FUZZ_SECONDS:-15}"
fi

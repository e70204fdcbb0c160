#!/usr/bin/env bash
# The test command: installs what it needs, builds the services, runs every test against a real
# broker (each integration test binary starts its own Tansu on a free loopback port; set
# HITL_BOOTSTRAP_SERVERS to use an external Kafka instead, with HITL_TEST_DELIVERY=transactional).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

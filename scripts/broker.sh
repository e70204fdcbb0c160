#!/usr/bin/env bash
# The development broker: Tansu 0.6.0 with the in-memory engine, on loopback.
#   scripts/broker.sh install          build and install tansu if missing (~10 min once)
#   scripts/broker.sh start [PORT]     start on 127.0.0.1:PORT (default 19092) unless running
#   scripts/broker.sh stop | status
# State (pid, log) lives in .hitl/broker/. The memory engine loses everything when stopped.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
state="$here/.hitl/broker"
TANSU_VERSION=0.6.0
mkdir -p "$state"

tansu_bin() {
  if [ -n "${HITL_TANSU_BIN:-}" ]; then echo "$HITL_TANSU_BIN"; return; fi
  command -v tansu 2>/dev/null || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
}

install() {
  local bin; bin=$(tansu_bin)
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  echo "installing tansu $TANSU_VERSION (first time only, ~10 minutes)..." >&2
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore >&2
}

running() {
  [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null
}

start() {
  local port=${1:-19092}
  install
  if running; then echo "broker already running (pid $(cat "$state/pid"), $(cat "$state/address"))"; return 0; fi
  local bin; bin=$(tansu_bin)
  nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$state/broker.log" 2>&1 &
  echo $! >"$state/pid"
  echo "127.0.0.1:$port" >"$state/address"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "broker up on 127.0.0.1:$port (pid $(cat "$state/pid"), log $state/broker.log)"
      return 0
    fi
    running || { echo "broker exited; see $state/broker.log" >&2; tail -20 "$state/broker.log" >&2; return 1; }
    sleep 0.1
  done
  echo "broker did not open 127.0.0.1:$port within 10 s" >&2
  return 1
}

stop() {
  if running; then kill "$(cat "$state/pid")"; echo "broker stopped"; fi
  rm -f "$state/pid"
}

case "${1:-status}" in
  install) install ;;
  start) start "${2:-19092}" ;;
  stop) stop ;;
  status) if running; then echo "running on $(cat "$state/address")"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 install|start [PORT]|stop|status" >&2; exit 2 ;;
esac

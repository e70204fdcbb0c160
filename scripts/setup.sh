#!/usr/bin/env bash
# Installs what building and testing hitl needs on a fresh Debian machine with a Rust toolchain:
# C build tools and headers for librdkafka (rdkafka-sys), Tansu 0.6.0 (the dev broker), and a
# Python venv with confluent-kafka, fastavro, cryptography and opentelemetry-proto (the interop,
# audit-reader and trace-export tests). Idempotent; quiet when done.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v promtool >/dev/null || missing+=(prometheus)   # promtool checks the alert rules
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

scripts/broker.sh install

venv="$here/.hitl/venv"
if ! "$venv/bin/python" -c "import confluent_kafka, fastavro, cryptography, opentelemetry.proto" 2>/dev/null; then
  echo "creating $venv with tests/python/requirements.txt" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

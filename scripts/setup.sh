#!/usr/bin/env bash
# Installs what building, testing and running hitl needs on a fresh Debian machine with a Rust
# toolchain: C build tools and headers for librdkafka (rdkafka-sys); Java 17 and Maven, which
# download Apache Kafka's classpath from Maven Central once (scripts/kafka.sh install); a Python
# venv with confluent-kafka, fastavro, cryptography and opentelemetry-proto (the interop,
# audit-reader and trace-export tests); promtool (the alert-rule tests). Idempotent; quiet when done.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v curl >/dev/null || missing+=(curl)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)   # the Kafka broker
command -v mvn >/dev/null || missing+=(maven)                      # fetches the broker's classpath
command -v promtool >/dev/null || missing+=(prometheus)            # promtool checks the alert rules
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}" >&2
  sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

scripts/kafka.sh install

venv="$here/.hitl/venv"
if ! "$venv/bin/python" -c "import confluent_kafka, fastavro, cryptography, opentelemetry.proto" 2>/dev/null; then
  echo "creating $venv with tests/python/requirements.txt" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
fi

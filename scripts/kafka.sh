#!/usr/bin/env bash
# The development broker: Apache Kafka (single node, broker + KRaft controller) on loopback, run
# from its Maven Central classpath with the machine's Java 17. Nothing is installed system-wide.
#
#   scripts/kafka.sh install        download the pinned classpath once into the cache (~45 MB)
#   scripts/kafka.sh start [opts]   format a fresh log dir (unless formatted) and start; waits until ready
#   scripts/kafka.sh stop [--dir D] | status [--dir D] | address [--dir D]
#   scripts/kafka.sh classpath      the classpath (installs it first)
#   scripts/kafka.sh tool CLASS ..  runs one of Kafka's command-line tools, e.g.
#                                   org.apache.kafka.tools.AclCommand (scripts/kafka-acls.sh uses it)
#
# start options (all optional):
#   --port P             PLAINTEXT listener on 127.0.0.1:P (default 19092; 0 = a free port)
#   --sasl-port S        also a SASL_PLAINTEXT listener (SCRAM-SHA-512) on 127.0.0.1:S, the
#                        StandardAuthorizer with ACLs, and SCRAM user `admin` (password from
#                        HITL_KAFKA_ADMIN_PASSWORD, default admin-secret) as super user
#   --scram-user U:P     with --sasl-port: one more SCRAM-SHA-512 user (repeatable; it gets no ACLs:
#                        scripts/kafka-acls.sh apply grants hitl's)
#   --dir D              state folder: data/, broker.log, server.properties, pid, address
#                        (default .hitl/kafka)
#   --heap SIZE          JVM heap (default 512m)
#
# Environment: HITL_KAFKA_CACHE (default ~/.cache/hitl) holds the classpath; JAVA (default java).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/scripts/kafka/pom.xml")
# The cache folder is named after the version and a digest of what the classpath is made from, so a
# change to the POM (another jar) gets a classpath of its own instead of an outdated one.
classpath_digest=$(cat "$here/scripts/kafka/pom.xml" "$here/scripts/kafka/log4j2.xml" | sha256sum | cut -c1-12)
cache="${HITL_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hitl}/kafka-$KAFKA_VERSION-$classpath_digest"
java_bin="${JAVA:-java}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

install() {
  if [ -f "$cache/.complete" ]; then return 0; fi
  command -v "$java_bin" >/dev/null || die "java not found (Java 17 or newer is needed)"
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  echo "downloading Apache Kafka $KAFKA_VERSION from Maven Central into $cache (first time only)..." >&2
  rm -rf "$cache.tmp"; mkdir -p "$cache.tmp/lib"
  mvn -B -q -f "$here/scripts/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$cache.tmp/lib" >&2
  cp "$here/scripts/kafka/log4j2.xml" "$cache.tmp/"
  touch "$cache.tmp/.complete"
  rm -rf "$cache"; mv "$cache.tmp" "$cache"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

kafka_java() {
  "$java_bin" -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$cache/log4j2.xml" \
    -cp "$cache/lib/*" "$@"
}

# Runs one of Apache Kafka's command-line tools (a main class: org.apache.kafka.tools.AclCommand,
# kafka.admin.ConfigCommand) on the cached classpath. Tools start often and work briefly: the C1
# compiler only, a small serial heap, and a class-data-sharing archive of each tool's classes,
# written by its first run into the cache (about 0.7 s a run instead of 1.9 s; without the archive,
# or with one the JVM rejects, a run is only slower).
tool() {
  install
  [ $# -gt 0 ] || die "tool: name the tool's main class"
  local archive="$cache/tool-$1.jsa" cds rc=0
  if [ -f "$archive" ]; then cds="-XX:SharedArchiveFile=$archive"; else cds="-XX:ArchiveClassesAtExit=$archive.$$"; fi
  "$java_bin" -Xms32m -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto "$cds" -Xlog:disable \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$cache/log4j2.xml" \
    -cp "$cache/lib/*" "$@" || rc=$?
  if [ -f "$archive.$$" ]; then
    if [ "$rc" = 0 ]; then mv -f "$archive.$$" "$archive"; else rm -f "$archive.$$"; fi
  fi
  return "$rc"
}

running() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

write_properties() {
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "$sasl_port" ]; then
    listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$sasl_port"
    advertised="$advertised,SASL_PLAINTEXT://127.0.0.1:$sasl_port"
    protocols="$protocols,SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  cat >"$dir/server.properties" <<PROPS
# Written by scripts/kafka.sh: a single-node Apache Kafka $KAFKA_VERSION for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Small thread pools and buffers: a 2-core machine runs the broker beside the services.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
log.cleaner.backoff.ms=1000
# Groups start at once; a test's group members may use short sessions and heartbeats.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=3000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
# Hung transactions of a killed producer are aborted within a minute of their timeout.
transaction.abort.timed.out.transaction.cleanup.interval.ms=5000
PROPS
  if [ -n "$sasl_port" ]; then
    cat >>"$dir/server.properties" <<PROPS
# The SASL listener authenticates SCRAM-SHA-512 users; ACLs are enforced by the KRaft authorizer.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
# The loopback PLAINTEXT and controller listeners (ANONYMOUS) and the admin user act as operators.
super.users=User:ANONYMOUS;User:admin
PROPS
  fi
}

start() {
  port=19092; sasl_port=""; heap=512m; users=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) port=$2; shift 2 ;;
      --scram-user) users+=("$2"); shift 2 ;;
      --sasl-port) sasl_port=$2; shift 2 ;;
      --dir) dir=$2; shift 2 ;;
      --heap) heap=$2; shift 2 ;;
      *) die "unknown start option $1" ;;
    esac
  done
  install
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  if running; then echo "broker already running on $(cat "$dir/address") (pid $(cat "$dir/pid"))"; return 0; fi
  [ "$port" = 0 ] && port=$(free_port)
  [ "$sasl_port" = 0 ] && sasl_port=$(free_port)
  controller_port=$(free_port)
  local started; started=$(date +%s%N)
  write_properties
  local scram=()
  if [ -n "$sasl_port" ]; then
    scram=(--add-scram "SCRAM-SHA-512=[name=admin,password=${HITL_KAFKA_ADMIN_PASSWORD:-admin-secret}]")
    for user in "${users[@]}"; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
    done
  fi
  if [ ! -f "$dir/data/meta.properties" ]; then
    kafka_java kafka.tools.StorageTool format --ignore-formatted -t "${HITL_KAFKA_CLUSTER_ID:-aGl0bC1kZXYtY2x1c3Rlcg}" \
      -c "$dir/server.properties" "${scram[@]}" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "formatting $dir/data failed"; }
  fi
  : >"$dir/broker.log"
  nohup "$java_bin" -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$cache/log4j2.xml" \
    -cp "$cache/lib/*" kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  echo "127.0.0.1:$port" >"$dir/address"
  if [ -n "$sasl_port" ]; then echo "127.0.0.1:$sasl_port" >"$dir/sasl_address"; else rm -f "$dir/sasl_address"; fi
  for _ in $(seq 1 1200); do
    if grep -q "Kafka Server started" "$dir/broker.log"; then
      local ms=$(( ($(date +%s%N) - started) / 1000000 ))
      echo "Apache Kafka $KAFKA_VERSION up on 127.0.0.1:$port${sasl_port:+ (SASL/SCRAM on 127.0.0.1:$sasl_port)} in ${ms} ms (pid $(cat "$dir/pid"), log $dir/broker.log)"
      return 0
    fi
    running || { tail -30 "$dir/broker.log" >&2; die "the broker exited; see $dir/broker.log"; }
    sleep 0.1
  done
  stop; die "the broker did not start within 120 s; see $dir/broker.log"
}

stop() {
  if running; then
    local pid; pid=$(cat "$dir/pid")
    kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "broker stopped"
  fi
  rm -f "$dir/pid"
}

dir="$here/.hitl/kafka"
cmd=${1:-status}; [ $# -gt 0 ] && shift
parse_dir() { while [ $# -gt 0 ]; do case "$1" in --dir) dir=$2; shift 2 ;; *) die "unknown option $1" ;; esac; done; }
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) parse_dir "$@"; stop ;;
  status) parse_dir "$@"; if running; then echo "running on $(cat "$dir/address") (pid $(cat "$dir/pid"))"; else echo "not running"; exit 1; fi ;;
  address) parse_dir "$@"; running || die "not running"; cat "$dir/address" ;;
  classpath) install; echo "$cache/lib/*" ;;
  tool) tool "$@" ;;
  *) echo "usage: $0 install | start [--port P] [--sasl-port S] [--scram-user U:P] [--dir D] [--heap SIZE] | stop | status | address [--dir D] | classpath | tool MAIN-CLASS [ARGS]" >&2; exit 2 ;;
esac

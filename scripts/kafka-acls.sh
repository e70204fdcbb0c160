#!/usr/bin/env bash
# hitl's Kafka principals on a cluster with an authorizer: their least-privilege ACLs
# (deploy/kafka/acls.txt, applied with Apache Kafka's own AclCommand) and their SCRAM credentials
# (Kafka's ConfigCommand). Both tools run from the classpath scripts/kafka.sh caches (Java 17).
#
#   scripts/kafka-acls.sh apply  --bootstrap HOST:PORT [--prefix hitl.] [--file F] [--command-config FILE]
#       adds every ACL of the file (ACLs that exist already are left as they are)
#   scripts/kafka-acls.sh remove --bootstrap HOST:PORT [--prefix hitl.] [--file F] [--command-config FILE]
#       removes exactly the file's ACLs
#   scripts/kafka-acls.sh list   --bootstrap HOST:PORT [--command-config FILE] [--principal User:NAME]
#       every ACL on the cluster (or one principal's)
#   scripts/kafka-acls.sh plan   [--prefix hitl.] [--file F]
#       prints the AclCommand arguments `apply` would run, one run a line; needs no cluster
#   scripts/kafka-acls.sh users  --bootstrap HOST:PORT [--file F] [--command-config FILE]
#                                [--password-dir DIR] [--mechanism SCRAM-SHA-512] [--user NAME]...
#       creates (or sets anew) the SCRAM credential of every User: principal in the file, or of
#       each --user. The password of NAME is the file DIR/NAME with --password-dir (a mounted
#       secret; trailing newlines are dropped), else the variable HITL_KAFKA_PASSWORD_<NAME> with
#       NAME upper-cased and every other character than A-Z 0-9 made `_`
#       (HITL_KAFKA_PASSWORD_HITL_ROUTER). There are no default passwords. A password goes to
#       ConfigCommand in a file readable by this user only, never on a command line, and must not
#       hold a comma, a newline or `[` `]` (ConfigCommand's SCRAM syntax).
#
# --bootstrap names a listener where the caller may alter ACLs and credentials: a super user's
# (`admin` on scripts/kafka.sh's SASL listener with --command-config holding its SASL settings, or
# its PLAINTEXT loopback listener, whose ANONYMOUS principal is a super user in development).
# --command-config is an AdminClient properties file, e.g.
#   security.protocol=SASL_PLAINTEXT
#   sasl.mechanism=SCRAM-SHA-512
#   sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="...";
#
# File format: see the header of deploy/kafka/acls.txt. Lines that share a principal, an
# operation and a pattern type become one AclCommand run (one JVM each, about 0.7 s), and so do
# principals given the same operation on the same resources; --jobs N (default 2) runs at a time.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "kafka-acls.sh: $*" >&2; exit 1; }
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

cmd=${1:-}; [ $# -gt 0 ] && shift
bootstrap=""; prefix="hitl."; file="$here/deploy/kafka/acls.txt"; command_config=""
principal=""; password_dir=""; mechanism="SCRAM-SHA-512"; only_users=(); jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --bootstrap|--bootstrap-server) bootstrap=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --file) file=$2; shift 2 ;;
    --command-config) command_config=$2; shift 2 ;;
    --principal) principal=$2; shift 2 ;;
    --password-dir) password_dir=$2; shift 2 ;;
    --mechanism) mechanism=$2; shift 2 ;;
    --user) only_users+=("$2"); shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

tool() { "$here/scripts/kafka.sh" tool "$@"; }
connection() {
  [ -n "$bootstrap" ] || die "$cmd: --bootstrap HOST:PORT is required"
  # The classpath once, before runs go in parallel.
  "$here/scripts/kafka.sh" install >&2
  conn=(--bootstrap-server "$bootstrap")
  if [ -n "$command_config" ]; then
    [ -r "$command_config" ] || die "cannot read --command-config $command_config"
    conn+=(--command-config "$command_config")
  fi
}

# The file's ACLs as AclCommand runs, one a line of tab-separated AclCommand arguments: per
# (principal, operation, pattern type), merged across principals with the same operation on the
# same resources. Checks every line, naming the ones it cannot use.
plan() {
  [ -r "$file" ] || die "cannot read $file"
  case "$prefix" in *[!A-Za-z0-9._-]*) die "--prefix $prefix: a topic name holds only A-Z a-z 0-9 . _ -" ;; esac
  awk -v prefix="$prefix" -v file="$file" '
    function fail(message) { printf "kafka-acls.sh: %s:%d: %s\n", file, NR, message > "/dev/stderr"; bad = 1 }
    { sub(/#.*/, "") }
    NF == 0 { next }
    NF != 5 { fail("want 5 fields (principal operation resource-type pattern-type name), got " NF); next }
    {
      principal = $1; operation = $2; type = tolower($3); pattern = tolower($4); name = $5
      gsub(/\{prefix\}/, prefix, name)
      if (principal !~ /^[A-Za-z]+:[^ ]+$/) { fail("principal " principal " is not Type:name (User:hitl-router)"); next }
      if (tolower(operation) !~ /^(read|write|create|delete|alter|describe|clusteraction|describeconfigs|alterconfigs|idempotentwrite|createtokens|describetokens|twophasecommit|all)$/) {
        fail("operation " operation " is not an AclOperation (Read, Write, Describe, IdempotentWrite, ...)"); next
      }
      if (pattern != "literal" && pattern != "prefixed") { fail("pattern-type " $4 " is not literal or prefixed"); next }
      if (name ~ /[{}]/) { fail("unknown placeholder in " $5 " (only {prefix})"); next }
      if (type == "topic") resource = "--topic\t" name
      else if (type == "group") resource = "--group\t" name
      else if (type == "transactional-id") resource = "--transactional-id\t" name
      else if (type == "cluster") {
        if (pattern != "literal" || name != "kafka-cluster") { fail("the cluster resource is literal kafka-cluster"); next }
        resource = "--cluster"
      } else { fail("resource-type " $3 " is not topic, group, transactional-id or cluster"); next }
      key = principal "\t" operation "\t" pattern
      if (!(key in runs)) { order[++count] = key; runs[key] = "" }
      runs[key] = runs[key] "\t" resource
    }
    END {
      if (bad) exit 1
      if (count == 0) { print "kafka-acls.sh: " file " holds no ACL" > "/dev/stderr"; exit 1 }
      # One run grants its operation on each of its resources to each of its principals, so the
      # principals that get the same operation on the same resources share a run.
      for (i = 1; i <= count; i++) {
        split(order[i], part, "\t")
        shared = part[2] "\t" part[3] runs[order[i]]
        if (!(shared in principals)) { merged[++runs_count] = shared; principals[shared] = "" }
        principals[shared] = principals[shared] "--allow-principal\t" part[1] "\t"
      }
      for (i = 1; i <= runs_count; i++) {
        split(merged[i], part, "\t")
        resources = substr(merged[i], length(part[1]) + length(part[2]) + 2)
        printf "%s--operation\t%s\t--resource-pattern-type\t%s%s\n", principals[merged[i]], part[1], part[2], resources
      }
    }
  ' "$file"
}

# One AclCommand run: `$1` is a planned line, the rest goes in front of it (--add, or --remove
# --force). Quiet unless it fails.
run_one() {
  local line=$1 args=() log; shift
  IFS=$'\t' read -r -a args <<<"$line"
  log=$(mktemp)
  if ! tool org.apache.kafka.tools.AclCommand "${conn[@]}" "$@" "${args[@]}" </dev/null >"$log" 2>&1; then
    echo "kafka-acls.sh: AclCommand failed for: ${args[*]}" >&2
    cat "$log" >&2; rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

# Runs AclCommand once per planned line, `jobs` at a time (each run is a JVM that mostly waits on
# one core), with `$@` in front.
each_run() {
  local runs line count=0 failed=0 pids=()
  runs=$(plan) || exit 1
  while IFS= read -r line; do
    run_one "$line" "$@" &
    pids+=($!)
    count=$((count + 1))
    if [ ${#pids[@]} -ge "$jobs" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done <<<"$runs"
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || die "some ACLs of $file were not ${1#--}ed (above)"
  echo "$count AclCommand runs for $(grep -cv '^[[:space:]]*\(#\|$\)' "$file") ACLs of $file (topic prefix $prefix) on $bootstrap"
}

# The file's User: principals.
file_users() {
  awk '{ sub(/#.*/, "") } NF >= 1 && $1 ~ /^User:/ { sub(/^User:/, "", $1); if (!seen[$1]++) print $1 }' "$file"
}

# The password of user `$1` (see `users` above), or an error.
password_of() {
  local user=$1 value
  if [ -n "$password_dir" ]; then
    [ -r "$password_dir/$user" ] || die "no password for $user: $password_dir/$user is not readable"
    value=$(cat "$password_dir/$user")
  else
    local variable
    variable="HITL_KAFKA_PASSWORD_$(printf '%s' "$user" | tr '[:lower:]' '[:upper:]' | tr -c 'A-Z0-9' '_')"
    value=${!variable:-}
    [ -n "$value" ] || die "no password for $user: set $variable or use --password-dir"
  fi
  case "$value" in
    *,*|*']'*|*'['*|*$'\n'*) die "the password of $user holds a comma, a newline, [ or ], which ConfigCommand cannot take" ;;
  esac
  printf '%s' "$value"
}

# Sets the SCRAM credential of user `$1`, its password in a file only this user may read.
set_user() {
  local user=$1 password secret log
  password=$(password_of "$user") || return 1
  secret=$(umask 077; mktemp); log=$(mktemp)
  printf '%s=password=%s\n' "$mechanism" "$password" >"$secret"
  if ! tool kafka.admin.ConfigCommand "${conn[@]}" --alter --add-config-file "$secret" \
      --entity-type users --entity-name "$user" </dev/null >"$log" 2>&1; then
    rm -f "$secret"
    echo "kafka-acls.sh: ConfigCommand could not set the $mechanism credential of $user:" >&2
    cat "$log" >&2; rm -f "$log"
    return 1
  fi
  rm -f "$secret" "$log"
  echo "$mechanism credential set for User:$user"
}

users() {
  connection
  local names=("${only_users[@]}") failed=0 pids=()
  if [ ${#names[@]} -eq 0 ]; then
    [ -r "$file" ] || die "cannot read $file"
    mapfile -t names < <(file_users)
  fi
  [ ${#names[@]} -gt 0 ] || die "no User: principal in $file"
  # Every password first: a missing one stops before anything changes.
  for user in "${names[@]}"; do password_of "$user" >/dev/null; done
  for user in "${names[@]}"; do
    set_user "$user" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$jobs" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || die "some credentials were not set (above)"
}

case "$cmd" in
  plan) plan ;;
  apply) connection; each_run --add ;;
  remove) connection; each_run --remove --force ;;
  list)
    connection
    if [ -n "$principal" ]; then
      tool org.apache.kafka.tools.AclCommand "${conn[@]}" --list --principal "$principal"
    else
      tool org.apache.kafka.tools.AclCommand "${conn[@]}" --list
    fi ;;
  users) users ;;
  ""|-h|--help|help) usage ;;
  *) die "unknown command $cmd (plan, apply, remove, list, users; see --help)" ;;
esac

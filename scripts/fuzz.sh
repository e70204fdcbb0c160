#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz targets of fuzz/ (every decoder of the topic contract, the policy
# parser, the hitl-auth header and key-file parsers; fuzz/README.md), then runs each for a bounded
# time, one process on one core, starting from fuzz/seeds/<target> and fuzz/regressions/<target>
# (inputs that once crashed), with fuzz/dicts/<target>.dict when there is one, and growing the
# git-ignored fuzz/corpus/<target>. Fails if any target crashes (a panic, a broken law, a timeout,
# running out of memory), printing the input's path.
#
#   scripts/fuzz.sh [--seconds N] [target...]     N seconds per target (default 20); all targets
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizer flags); installs cargo-fuzz into
# ~/.cargo/bin when missing. Logs: fuzz/target/logs/<target>.log. CARGO_FUZZ_SANITIZER picks the
# sanitizer (default address; none builds and runs faster, and still checks every law).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: --seconds takes a whole number" >&2; exit 2 ;; esac

if ! command -v rustup >/dev/null || ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: fuzzing needs a nightly Rust toolchain managed by rustup (cargo-fuzz builds with" >&2
  echo "sanitizer flags). Install it with: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz $cargo_fuzz_version into ~/.cargo/bin" >&2
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --quiet
fi

export CARGO_INCREMENTAL=0
sanitizer=${CARGO_FUZZ_SANITIZER:-address}
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
start=$(date +%s)
echo "== building ${#targets[@]} fuzz targets (nightly, sanitizer $sanitizer)"
cargo +nightly fuzz build --sanitizer "$sanitizer"
echo "== built in $(( $(date +%s) - start ))s; fuzzing each target for ${seconds}s"

mkdir -p fuzz/target/logs
failed=()
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  inputs=("$corpus")
  for dir in "fuzz/seeds/$target" "fuzz/regressions/$target"; do
    [ -d "$dir" ] && inputs+=("$dir")
  done
  options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)
  [ -f "fuzz/dicts/$target.dict" ] && options+=(-dict="fuzz/dicts/$target.dict")
  log=fuzz/target/logs/$target.log
  if cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "${inputs[@]}" -- "${options[@]}" >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "$target: ok, ${runs:-?} runs, ${cov:-cov: ?}, corpus $(find "$corpus" -type f | wc -l) inputs"
  else
    echo "$target: CRASH (log $log)"
    grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "$log" | head -5 | sed 's/^/  /' || true
    crash=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/^Test unit written to //' || true)
    echo "  input: ${crash:-(none written; see the log)}"
    [ -n "$crash" ] && echo "  reproduce: cargo +nightly fuzz run --sanitizer $sanitizer $target $crash"
    failed+=("$target")
  fi
done
echo "== fuzzing took $(( $(date +%s) - start ))s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in ${failed[*]}" >&2
  exit 1
fi

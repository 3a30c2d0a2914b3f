#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20), starting from the
# seeds in fuzz/seeds/<target> when there are any; a crash fails the run and
# leaves its input in fuzz/artifacts/<target>/ (turn it into a regression
# test before fixing it). Needs the nightly toolchain and cargo-fuzz:
#   cargo install cargo-fuzz --locked
#   bash fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-20}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(grpc_frames write_requests find_missing names_and_digests input_tree config)
cargo +nightly fuzz build -O
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "fuzz: $t for ${SECONDS_EACH}s"
  cargo +nightly fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$SECONDS_EACH" -print_final_stats=1 2>&1 |
    grep -E "^(stat::number_of_executed_units|Done|==[0-9]+==|SUMMARY|thread '.*' panicked|Test unit written)" || true
  if ls "artifacts/$t"/crash-* >/dev/null 2>&1; then
    echo "fuzz: $t found a crash: $(ls "artifacts/$t"/crash-*)" >&2
    exit 1
  fi
done

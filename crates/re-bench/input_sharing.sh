#!/usr/bin/env bash
# What copying inputs costs beside hard-linking them: the Execute p50 of a
# no-op action with N inputs of size S (one in flight, not cached) on a host
# worker running as `nobody` from a filesystem CAS, with `link_inputs = true`
# (hard links: nobody can neither write nor chmod the CAS's files) and
# `false` (copies, what an action running as root or as the server's user
# gets). Both servers run from the same binary in one run, in turn.
#
#   cargo build --release -p re-server -p re-bench
#   bash crates/re-bench/input_sharing.sh [ROUNDS]
#
# Env: BIN (default target/release), DATA_ROOT (default /dev/shm), SECS
#      (per run, default 5), SHAPES (default "100x10KiB 20x1MiB 4x64MiB").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-2}
BIN=${BIN:-target/release}
DATA_ROOT=${DATA_ROOT:-/dev/shm}
SECS=${SECS:-5}
SHAPES=${SHAPES:-"100x10KiB 20x1MiB 4x64MiB"}

p50() { # LINK FILES SIZE → Execute p50 in ms
  local data
  data=$(mktemp -d "$DATA_ROOT/re-input-sharing.XXXX")
  chmod 755 "$data"
  printf '[storage.cas]\nbackend = "filesystem"\nmax_size_bytes = 4294967296\n[[execution.pool.workers]]\ntype = "host"\ncount = 1\nrun_as_user = "nobody"\nlink_inputs = %s\n' \
    "$1" >"$data/c.toml"
  "$BIN/re-server" --config "$data/c.toml" --address 127.0.0.1:0 --http-address 127.0.0.1:0 --data-dir "$data" >/dev/null 2>"$data/log" &
  local pid=$!
  for _ in $(seq 100); do grep -q "Starting server on" "$data/log" && break; sleep 0.1; done
  local addr
  addr=$(grep -o "Starting server on [0-9.:]*" "$data/log" | awk '{print $4}')
  [ -n "$addr" ] || { cat "$data/log" >&2; kill "$pid"; exit 1; }
  "$BIN/re-bench" --endpoint "grpc://$addr" exec-noop --concurrency 1 --duration "$SECS" --no-progress \
    --input-files "$2" --input-size "$3" 2>&1 | awk '/^Execute / {print $4}'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}

printf '%-6s %-10s %12s %12s %8s\n' round inputs link_p50_ms copy_p50_ms copy/link
for r in $(seq "$ROUNDS"); do
  for shape in $SHAPES; do
    files=${shape%%x*}
    size=${shape#*x}
    link=$(p50 true "$files" "$size")
    copy=$(p50 false "$files" "$size")
    ratio=$(python3 -c "print(f'{$copy / $link:.2f}')")
    printf '%-6s %-10s %12s %12s %8s\n' "$r" "$shape" "$link" "$copy" "$ratio"
  done
done

#!/usr/bin/env bash
# The per-action overhead of re-server beside the machine's floors, measured
# in one run: fork+exec of /bin/true and one `docker exec` through the engine
# API (exec_floors.py), the same spawn and wait from a tokio runtime
# (spawn_floor: what any async server pays), then the Execute RPC of a no-op action (one in flight,
# not cached) on a host worker and on a warm docker worker, and a cached
# Execute (the RPC alone). Rounds alternate between the builds given, so a
# drifting machine shows up in every column alike.
#
#   cargo build --release -p re-server -p re-bench
#   bash crates/re-bench/exec_overhead.sh [ROUNDS]
#
# Env: BINS (space-separated dirs holding re-server, default target/release;
#      re-bench is taken from the first), DATA_ROOT (default /dev/shm: CAS,
#      action cache and work_dir on tmpfs), SECS (per run, default 5),
#      IMAGE (default re-server-test/busybox:latest; docker runs are skipped
#      when it is missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
BINS=${BINS:-target/release}
DATA_ROOT=${DATA_ROOT:-/dev/shm}
SECS=${SECS:-5}
IMAGE=${IMAGE:-re-server-test/busybox:latest}
BENCH="$(echo "$BINS" | awk '{print $1}')/re-bench"
SPAWN_FLOOR="$(echo "$BINS" | awk '{print $1}')/spawn_floor"
have_docker=0
docker image inspect "$IMAGE" >/dev/null 2>&1 && have_docker=1

# p50 of Execute (ms) for one server config and re-bench scenario.
p50() {
  local bin=$1 config=$2 scenario=$3
  shift 3
  local data
  data=$(mktemp -d "$DATA_ROOT/re-exec-overhead.XXXX")
  printf '%b' "$config" >"$data/c.toml"
  "$bin/re-server" --config "$data/c.toml" --address 127.0.0.1:0 --http-address 127.0.0.1:0 --data-dir "$data" 2>"$data/log" &
  local pid=$!
  for _ in $(seq 100); do grep -q "Starting server on" "$data/log" && break; sleep 0.1; done
  local addr
  addr=$(grep -o "Starting server on [0-9.:]*" "$data/log" | awk '{print $4}')
  "$BENCH" --endpoint "grpc://$addr" "$scenario" --concurrency 1 --duration "$SECS" --no-progress "$@" 2>&1 |
    awk '/^Execute / {print $4}'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}

HOST='[[execution.pool.workers]]\ntype = "host"\ncount = 2\n'
DOCKER="[[execution.pool.workers]]\ntype = \"docker\"\ncount = 1\nimage = \"$IMAGE\"\n"
printf '%-6s %-28s %10s %10s %10s %10s %10s %10s\n' round build fork_exec tokio_spawn host_noop cached docker_exec docker_noop
for r in $(seq "$ROUNDS"); do
  floors=$(python3 crates/re-bench/exec_floors.py 500 "$IMAGE")
  fork=$(echo "$floors" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fork_exec_ms"])')
  dexec=$(echo "$floors" | python3 -c 'import json,sys; print(json.load(sys.stdin)["docker_exec_ms"])')
  tspawn=$("$SPAWN_FLOOR" 500 | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokio_spawn_wait_ms"])')
  for bin in $BINS; do
    host=$(p50 "$bin" "$HOST" exec-noop)
    cached=$(p50 "$bin" "$HOST" exec-cached)
    dock=-
    if [ "$have_docker" = 1 ]; then
      dock=$(p50 "$bin" "$DOCKER" exec-noop --platform "container-image=$IMAGE")
    fi
    printf '%-6s %-28s %10s %10s %10s %10s %10s %10s\n' "$r" "$bin" "$fork" "$tspawn" "$host" "$cached" "$dexec" "$dock"
  done
done

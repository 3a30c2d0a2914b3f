#!/usr/bin/env bash
# What recording Prometheus metrics costs the hot paths: two servers from the
# same binary, `[server] metrics = true` and `false` (no metering layer at
# all), each scenario run against them in turn (ABBA order per round), in
# one run on one machine. Prints each side's median and the ratio.
#
#   cargo build --release -p re-server -p re-bench
#   bash crates/re-bench/metrics_overhead.sh
#
# Env: BIN (default target/release), ROUNDS (default 6), RUN_SECS (default 5),
#      DATA_ROOT (default /tmp), SCENARIOS (default: find-missing batch-update exec-noop).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
ROUNDS=${ROUNDS:-6}
RUN_SECS=${RUN_SECS:-5}
DATA_ROOT=${DATA_ROOT:-/tmp}
SCENARIOS=${SCENARIOS:-"find-missing batch-update exec-noop"}
OUT=$(mktemp -d /tmp/metrics-overhead.XXXX)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DATA_ROOT"/re-metrics-ab.*' EXIT

start() { # NAME METRICS: starts a server in the background
  local data
  data=$(mktemp -d "$DATA_ROOT/re-metrics-ab.XXXX")
  printf '[server]\nmetrics = %s\n[[execution.pool.workers]]\ntype = "host"\ncount = 2\n' "$2" > "$data/c.toml"
  "$BIN/re-server" --config "$data/c.toml" --address 127.0.0.1:0 --http-address 127.0.0.1:0 --data-dir "$data" \
    >/dev/null 2> "$OUT/$1.log" &
  PIDS+=($!)
}
address() { # NAME → the gRPC address it logged
  for _ in $(seq 100); do grep -q "Starting server on" "$OUT/$1.log" && break; sleep 0.1; done
  grep -o "Starting server on [0-9.:]*" "$OUT/$1.log" | awk '{print $4}'
}
start on true
start off false
ON=$(address on)
OFF=$(address off)
[ -n "$ON" ] && [ -n "$OFF" ] || { echo "a server did not start" >&2; cat "$OUT"/*.log >&2; exit 1; }
echo "metrics on: $ON, off: $OFF; $ROUNDS rounds of ${RUN_SECS}s per scenario; results in $OUT" >&2

for s in $SCENARIOS; do
  for r in $(seq "$ROUNDS"); do
    order="on off"
    [ $((r % 2)) -eq 0 ] && order="off on"
    for side in $order; do
      addr=$ON
      [ "$side" = off ] && addr=$OFF
      "$BIN/re-bench" --endpoint "grpc://$addr" "$s" --duration "$RUN_SECS" --json --no-progress > "$OUT/$s.$side.$r.json"
    done
  done
done

python3 - "$OUT" "$SCENARIOS" "$ROUNDS" <<'EOF'
import json, os, statistics, sys
out, scenarios, rounds = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
print(f"{'scenario':<14} {'rate':<14} {'metrics on':>12} {'metrics off':>12} {'on/off':>8}")
for s in scenarios:
    rates = {}
    for side in ("on", "off"):
        for r in range(1, rounds + 1):
            m = json.load(open(os.path.join(out, f"{s}.{side}.{r}.json")))["median"]["rates"]
            for k, v in m.items():
                rates.setdefault(k, {}).setdefault(side, []).append(v)
    for k, sides in rates.items():
        on, off = statistics.median(sides["on"]), statistics.median(sides["off"])
        print(f"{s:<14} {k:<14} {on:>12.1f} {off:>12.1f} {on / off:>8.3f}")
EOF

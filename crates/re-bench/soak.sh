#!/usr/bin/env bash
# Soak: Bazel-like traffic (cache hits, FindMissingBlobs, uploads of small and
# large inputs, Execute of cache misses) through a CAS small enough to evict,
# for MINUTES, with re-bench recovering from eviction as Bazel does
# (`bazel-like --recover`). Every 10 s the server's resident memory, open
# files and threads are sampled. Fails on any error re-bench did not expect,
# and (runs of 5 minutes or more) when memory or open files still grow from
# the middle third of the run to the last by 10% or more.
#
#   cargo build --release -p re-server -p re-bench
#   bash crates/re-bench/soak.sh MINUTES [OUT_DIR]
#
# Env: BIN (dir with re-server and re-bench, default target/release),
#      CAS_BYTES (default 536870912 = 512 MiB), DATA_ROOT (default /dev/shm),
#      CONCURRENCY (default 8), SAMPLE_SECS (default 10), BENCH_ARGS.
set -euo pipefail
cd "$(dirname "$0")/../.."
MINUTES=${1:?usage: soak.sh MINUTES [OUT_DIR]}
OUT=${2:-$(mktemp -d /tmp/re-soak.XXXX)}
BIN=${BIN:-target/release}
CAS_BYTES=${CAS_BYTES:-536870912}
DATA_ROOT=${DATA_ROOT:-/dev/shm}
CONCURRENCY=${CONCURRENCY:-8}
SAMPLE_SECS=${SAMPLE_SECS:-10}
mkdir -p "$OUT"

DATA=$(mktemp -d "$DATA_ROOT/re-soak-data.XXXX")
cat >"$DATA/soak.toml" <<EOF
[storage.cas]
backend = "filesystem"
max_size_bytes = $CAS_BYTES
[[execution.pool.workers]]
type = "host"
count = 2
EOF
"$BIN/re-server" --config "$DATA/soak.toml" --address 127.0.0.1:0 --http-address 127.0.0.1:0 --data-dir "$DATA" 2>"$OUT/server.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do grep -q "Starting server on" "$OUT/server.log" && break; sleep 0.1; done
ADDR=$(grep -o "Starting server on [0-9.:]*" "$OUT/server.log" | awk '{print $4}')
[ -n "$ADDR" ] || { echo "server did not start" >&2; cat "$OUT/server.log" >&2; exit 1; }

sample() {
  local rss hwm threads fds
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$PID/status")
  threads=$(awk '/^Threads/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  echo "$1,$rss,$hwm,$fds,$threads"
}
echo "seconds,rss_kib,hwm_kib,open_files,threads" >"$OUT/samples.csv"
sample 0 >>"$OUT/samples.csv"

SECS=$((MINUTES * 60))
# shellcheck disable=SC2086
"$BIN/re-bench" --endpoint "grpc://$ADDR" bazel-like --duration "$SECS" --concurrency "$CONCURRENCY" \
  --recover --json --no-progress ${BENCH_ARGS:-} >"$OUT/bazel-like.json" 2>"$OUT/re-bench.log" &
BENCH=$!
START=$(date +%s)
while kill -0 "$BENCH" 2>/dev/null; do
  sleep "$SAMPLE_SECS"
  kill -0 "$PID" 2>/dev/null || { echo "the server died" >&2; exit 1; }
  sample $(($(date +%s) - START)) >>"$OUT/samples.csv"
done
BENCH_STATUS=0
wait "$BENCH" || BENCH_STATUS=$?
sample $(($(date +%s) - START)) >>"$OUT/samples.csv"

python3 - "$OUT" "$BENCH_STATUS" "$MINUTES" <<'PY'
import csv, json, os, sys
out, status, minutes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
def col(name): return [int(r[name]) for r in rows]
rss, fds = col("rss_kib"), col("open_files")
third = max(len(rows) // 3, 1)
def mean(xs): return sum(xs) / max(len(xs), 1)
mid, last = slice(third, 2 * third), slice(2 * third, None)
growth = lambda xs: (mean(xs[last]) - mean(xs[mid])) / max(mean(xs[mid]), 1)
report = {"bench_exit": status, "samples": len(rows),
          "rss_mib_first_max_last": [round(rss[0] / 1024, 1), round(max(rss) / 1024, 1), round(rss[-1] / 1024, 1)],
          "open_files_first_max_last": [fds[0], max(fds), fds[-1]],
          "rss_growth_last_vs_middle_third": round(growth(rss), 3),
          "open_files_growth_last_vs_middle_third": round(growth(fds), 3)}
try:
    run = json.load(open(os.path.join(out, "bazel-like.json")))["runs"][0]
    report["actions"] = run["ops"]
    report["counters"] = dict(run["counters"])
    report["actions_per_s"] = round(dict(run["rates"]).get("actions/s", 0), 1)
except Exception as e:
    report["bench_report"] = f"unreadable: {e}"
print(json.dumps(report, indent=1))
levelled = report["rss_growth_last_vs_middle_third"] < 0.10 and report["open_files_growth_last_vs_middle_third"] < 0.10
ok = status == 0 and (levelled or minutes < 5)
if status != 0:
    print("FAIL: re-bench met an error it does not expect (see re-bench.log)", file=sys.stderr)
elif not ok:
    print("FAIL: memory or open files still growing", file=sys.stderr)
sys.exit(0 if ok else 1)
PY

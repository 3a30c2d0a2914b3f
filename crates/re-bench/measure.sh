#!/usr/bin/env bash
# Measures re-server on this machine the way docs/benchmarks.md reports it:
# the physical floors, idle RSS, then every scenario three times (median).
#
#   cargo build --release -p re-server -p re-bench
#   bash crates/re-bench/measure.sh [OUT_DIR]
#
# Env: BIN (dir holding re-server and re-bench, default target/release),
#      SERVER_ARGS (extra re-server arguments), RUN_SECS (default 10),
#      UPLOAD_COUNT (cas-upload uploads per run, default 4: longer runs write
#        more than the kernel's dirty-page budget and measure the disk instead),
#      DATA_ROOT (where the server's data directory goes, default /tmp; use
#        /dev/shm to take the disk out), SCENARIOS (default: all),
#      DOCKER_IMAGE (for the docker-run floor), BENCH_ARGS (extra re-bench
#        arguments for every scenario, e.g. --tonic-client).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
OUT=${1:-$(mktemp -d /tmp/re-bench-results.XXXX)}
RUN_SECS=${RUN_SECS:-10}
UPLOAD_COUNT=${UPLOAD_COUNT:-4}
DATA_ROOT=${DATA_ROOT:-/tmp}
SCENARIOS=${SCENARIOS:-"cas-upload cas-download find-missing batch-update exec-noop exec-cached bazel-like"}
DOCKER_IMAGE=${DOCKER_IMAGE:-re-server-test/busybox}
mkdir -p "$OUT"
echo "results in $OUT" >&2

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "data: $DATA_ROOT ($(df -T "$DATA_ROOT" | awk 'NR==2 {print $2}'))"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  echo "memory: $(free -g | awk '/^Mem:/ {print $2}') GiB"
  echo "kernel: $(uname -r)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
} > "$OUT/machine.txt"

# Floors.
if command -v openssl >/dev/null; then
  openssl speed -evp sha256 -seconds 3 2>/dev/null | awk '/^sha256/ {sub("k","",$NF); printf "%.0f\n", $NF*1000/1e6}' \
    > "$OUT/sha256_mb_s.txt"
fi
if command -v hyperfine >/dev/null; then
  hyperfine -N --warmup 100 --runs 2000 --export-json "$OUT/fork_exec.json" /bin/true >/dev/null 2>&1 || true
  if docker image inspect "$DOCKER_IMAGE" >/dev/null 2>&1; then
    hyperfine --warmup 1 --runs 10 --export-json "$OUT/docker_run.json" \
      "docker run --rm --network none $DOCKER_IMAGE true" >/dev/null 2>&1 || true
  fi
fi

# The server, on a fresh data directory.
DATA=$(mktemp -d "$DATA_ROOT/re-bench-data.XXXX")
# Sustained write speed of the disk under it (what long uploads end up at).
dd if=/dev/zero of="$DATA/ddtest" bs=1M count=2048 conv=fdatasync 2>&1 | tail -1 > "$OUT/disk_write.txt" || true
rm -f "$DATA/ddtest"
# CPU cost of writing 256 MiB there and of sending it over loopback TCP: with
# the SHA-256 speed, the ceiling of an upload on this machine.
if [ -s "$OUT/sha256_mb_s.txt" ]; then
  python3 crates/re-bench/floors.py "$DATA" "$(cat "$OUT/sha256_mb_s.txt")" > "$OUT/upload_floors.txt" || true
fi
# shellcheck disable=SC2086
"$BIN/re-server" --address 127.0.0.1:0 --http-address 127.0.0.1:0 --data-dir "$DATA" ${SERVER_ARGS:-} 2> "$OUT/server.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do grep -q "Starting server on" "$OUT/server.log" && break; sleep 0.1; done
ADDR=$(grep -o "Starting server on [0-9.:]*" "$OUT/server.log" | awk '{print $4}')
[ -n "$ADDR" ] || { echo "server did not start" >&2; cat "$OUT/server.log" >&2; exit 1; }
sleep 1
grep -E "VmRSS|VmHWM" /proc/$PID/status > "$OUT/rss_idle.txt"

for s in $SCENARIOS; do
  echo "== $s" >&2
  bound=(--duration "$RUN_SECS")
  [ "$s" = cas-upload ] && bound=(--count "$UPLOAD_COUNT")
  "$BIN/re-bench" --endpoint "grpc://$ADDR" "$s" "${bound[@]}" --repeat 3 --json --no-progress ${BENCH_ARGS:-} > "$OUT/$s.json"
  # Downloads again with 256 KiB HTTP/2 frames (the default above is 16 KiB, as Bazel's).
  if [ "$s" = cas-download ]; then
    "$BIN/re-bench" --endpoint "grpc://$ADDR" "$s" "${bound[@]}" --repeat 3 --max-frame-kib 256 --json --no-progress ${BENCH_ARGS:-} \
      > "$OUT/cas-download-256k-frames.json"
  fi
done
grep -E "VmRSS|VmHWM" /proc/$PID/status > "$OUT/rss_after.txt"

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
print(open(os.path.join(out, "machine.txt")).read())
for f in ["sha256_mb_s.txt", "upload_floors.txt", "disk_write.txt", "rss_idle.txt", "rss_after.txt"]:
    p = os.path.join(out, f)
    if os.path.exists(p):
        print(f"{f}: {' '.join(open(p).read().split())}")
for f, label in [("fork_exec.json", "fork+exec /bin/true"), ("docker_run.json", "docker run")]:
    p = os.path.join(out, f)
    if os.path.exists(p):
        r = json.load(open(p))["results"][0]
        print(f"{label}: mean {r['mean']*1e3:.3f} ms, median {r['median']*1e3:.3f} ms")
for name in sorted(os.listdir(out)):
    if not name.endswith(".json") or name in ("fork_exec.json", "docker_run.json"):
        continue
    r = json.load(open(os.path.join(out, name)))
    m = r["median"]
    rates = ", ".join(f"{k} {v:.1f}" for k, v in m["rates"].items())
    print(f"\n{name[:-5]}: {rates}  (median of {len(r['runs'])} runs)")
    for l in m["latency"]:
        print(f"  {l['name']:<24} p50 {l['p50_ms']:.3f} ms  p99 {l['p99_ms']:.3f} ms  p999 {l['p999_ms']:.3f} ms")
EOF

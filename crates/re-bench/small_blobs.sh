#!/usr/bin/env bash
# BatchUpdateBlobs of 4 KiB blobs (re-bench batch-update: 8 clients, 100
# blobs a call) against three servers of one binary, started together and
# run in ABBA order so drift hits all alike: the filesystem CAS with packing
# (the default), the memory CAS (the comparison), and, with FILES=1, the
# filesystem CAS with a file per blob (small_blob_max_bytes = 0). The floor
# measured in the same run: how many bytes a second the disk takes in
# (dd appending 2 GiB in 4 MiB blocks, then fdatasync), as 4 KiB blobs/s:
# a store that keeps every blob cannot absorb more for long.
#
# usage: [BIN=target/release] [DATA=/work/tmp-bench] [DUR=8] [ROUNDS=3] [FILES=1] \
#        bash crates/re-bench/small_blobs.sh
set -euo pipefail
BIN=${BIN:-target/release}
DATA=${DATA:-$(pwd)/target/small-blobs-bench}
DUR=${DUR:-8}
ROUNDS=${ROUNDS:-3}
FILES=${FILES:-0}
mkdir -p "$DATA"
work=$(mktemp -d -p "$DATA")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME CAS_KEYS: a server on a free port; prints the port.
start() {
  local dir="$work/$1"
  mkdir -p "$dir"
  printf '[storage.cas]\nmax_size_bytes = 107374182400\n%b\n' "$2" >"$dir/config.toml"
  "$BIN/re-server" --config "$dir/config.toml" --address 127.0.0.1:0 --data-dir "$dir" --http-address "" \
    >"$dir/log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    port=$(grep -o 'Starting server on 127.0.0.1:[0-9]*' "$dir/log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && echo "$port" && return
    sleep 0.1
  done
  echo "server $1 did not start" >&2
  exit 1
}

rate() {
  "$BIN/re-bench" --endpoint "grpc://127.0.0.1:$1" batch-update --duration "$DUR" --repeat 1 --json 2>/dev/null |
    python3 -c 'import sys, json; print(int(json.load(sys.stdin)["median"]["rates"]["blobs/s"]))'
}

declare -A port sum
port[packed]=$(start packed 'backend = "filesystem"')
port[memory]=$(start memory 'backend = "memory"')
names=(packed memory)
if [ "$FILES" = 1 ]; then
  port[files]=$(start files 'backend = "filesystem"\nsmall_blob_max_bytes = 0')
  names+=(files)
fi
for n in "${names[@]}"; do sum[$n]=0; done

for r in $(seq "$ROUNDS"); do
  order=("${names[@]}")
  [ $((r % 2)) = 0 ] && order=($(printf '%s\n' "${names[@]}" | tac))
  line="round $r:"
  for n in "${order[@]}"; do
    v=$(rate "${port[$n]}")
    sum[$n]=$((sum[$n] + v))
    line="$line $n $v"
  done
  echo "$line"
done

dd_out=$(dd if=/dev/zero of="$work/floor" bs=4M count=512 conv=fdatasync 2>&1 | tail -1)
bytes_s=$(echo "$dd_out" | python3 -c 'import sys,re
m=re.search(r"(\d+) bytes .* copied, ([\d.]+) s", sys.stdin.read()); print(int(int(m.group(1))/float(m.group(2))))')
echo
for n in "${names[@]}"; do
  echo "$n: mean $((sum[$n] / ROUNDS)) blobs/s"
done
python3 -c "print('packed / memory: %.3f' % (${sum[packed]} / ${sum[memory]}))"
echo "floor, the disk's sustained append rate (dd, 2 GiB, fdatasync): $((bytes_s >> 20)) MiB/s = $((bytes_s / 4096)) blobs of 4 KiB/s"
du -sh "$work"/packed/cas/* 2>/dev/null || true

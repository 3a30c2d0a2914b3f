#!/bin/sh
# Checks the 40 MiB deterministic output byte for byte (size and sha256).
set -eu
big=$1
size=$(wc -c < "$big" | tr -d ' ')
[ "$size" = 41943040 ] || { echo "FAIL: big.txt size $size" >&2; exit 1; }
sum=$(sha256sum < "$big" | cut -d ' ' -f 1)
[ "$sum" = 417ea340341f113af076d959328e972caa33c2fb5aa81ee6e50811ef8b64242d ] \
    || { echo "FAIL: big.txt sha256 $sum" >&2; exit 1; }
echo "big_test: size and sha256 OK"

#!/bin/sh
# Checks genrule outputs (passed as runfiles-relative paths). POSIX sh + busybox utilities only.
set -eu

a=$1 d=$2 e=$3 f=$4 greet=$5 hello=$6 big_sum=$7 empty=$8 four=$9

fail() { echo "FAIL: $*" >&2; exit 1; }
lines() { wc -l < "$1" | tr -d ' '; }

[ "$(lines "$a")" = 1000 ] || fail "a.txt should have 1000 lines"
[ "$(head -n 1 "$a")" = 1 ] || fail "a.txt first line"
[ "$(lines "$d")" = 2000 ] || fail "d.txt should have 2000 lines"
[ "$(head -n 1 "$d")" = b ] || fail "d.txt first line: $(head -n 1 "$d")"  # c.txt maps 1 -> b
[ "$(tail -n 1 "$d")" = jjj ] || fail "d.txt last line: $(tail -n 1 "$d")"
[ "$(cat "$e")" = "$(sha256sum < "$d" | cut -d ' ' -f 1)" ] || fail "e.sha256 != sha256(d.txt)"
[ -f "$empty" ] && [ ! -s "$empty" ] || fail "parts/empty.txt should exist and be empty"
[ "$(cat "$four")" = "$(printf '4\n8\n12\n16')" ] || fail "parts/sub/deep/four.txt"
grep -q '^empty.txt 0$' "$f" || fail "f.txt lacks 'empty.txt 0'"
grep -q '^e.sha256 65$' "$f" || fail "f.txt lacks 'e.sha256 65'"
[ "$(lines "$f")" = 6 ] || fail "f.txt should have 6 lines"
[ -x "$greet" ] || fail "greet.sh is not executable"
[ "$("$greet" x)" = "greet x" ] || fail "greet.sh output"
# "-": the caller has no cc_binary output (a run where every action is in a busybox container).
[ "$hello" = - ] || [ "$(cat "$hello")" = "hello, re-server, from cc_binary" ] || fail "hello.out: $(cat "$hello")"
[ "$(cat "$big_sum")" = 417ea340341f113af076d959328e972caa33c2fb5aa81ee6e50811ef8b64242d ] \
    || fail "big.sha256: $(cat "$big_sum")"
echo "outputs_test: all checks passed"

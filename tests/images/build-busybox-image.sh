#!/usr/bin/env bash
# Build, fully offline, the docker image re-server-test/busybox:latest used by
# the container-worker tests. The root filesystem is assembled from the host's
# static busybox (Debian package busybox-static, /bin/busybox) and imported
# with `docker import`; no registry is contacted.
#
# Contents:
#   /bin/busybox                 static busybox
#   <applet paths>               symlinks -> /bin/busybox for every applet
#                                (from `busybox --list-full`, so bin/, sbin/,
#                                usr/bin/, usr/sbin/ as busybox intends)
#   /bin/sh                      symlink -> /bin/busybox (ash)
#   /bin/bash                    real static bash (Debian package bash-static,
#                                /bin/bash-static) when present, else a tiny
#                                `exec /bin/sh "$@"` script. Why not a busybox
#                                symlink: Debian's busybox has no `bash` applet
#                                ("bash: applet not found"). Why real bash:
#                                genrules (`/bin/bash -c`) run fine under ash,
#                                but Bazel's test wrapper test-setup.sh needs
#                                bash (`export -f`, `[[ ]]`, `&>`), so sh_test
#                                only runs in the container with real bash.
#   /usr/bin/env                 symlink -> /bin/busybox
#   /tmp (1777), /root, /home/builder (uid 1000)
#   /etc/passwd, /etc/group      root, nobody, builder (1000)
#
# Usage: tests/images/build-busybox-image.sh [--force] [--no-verify]
#   --force      rebuild even if the image already exists
#   --no-verify  skip the docker-run checks
# Env:  IMAGE (default re-server-test/busybox:latest), BUSYBOX (default /bin/busybox),
#       BASH_STATIC (default /bin/bash-static; set to "" for the ash wrapper)
set -euo pipefail

IMAGE="${IMAGE:-re-server-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
BASH_STATIC="${BASH_STATIC-/bin/bash-static}"
FORCE=0
VERIFY=1
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --no-verify) VERIFY=0 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

command -v docker >/dev/null || { echo "docker CLI not found" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "docker daemon not reachable (run .ci/setup-env.sh)" >&2; exit 1; }

verify() {
  echo "verify: docker run --rm $IMAGE /bin/bash -c 'echo hi; id'"
  local out
  out=$(docker run --rm "$IMAGE" /bin/bash -c 'echo hi; id')
  echo "$out"
  [[ "$out" == *hi* && "$out" == *"uid=0(root)"* ]] || { echo "verify failed: bash/id" >&2; return 1; }

  out=$(docker run --rm --user 1000:1000 "$IMAGE" /bin/sh -c 'id; touch /tmp/x && echo tmp-ok')
  echo "$out"
  [[ "$out" == *"uid=1000(builder)"* && "$out" == *tmp-ok* ]] || { echo "verify failed: builder user or /tmp" >&2; return 1; }

  out=$(docker run --rm "$IMAGE" /bin/bash -c 'f() { echo fn-ok; }; export -f f; [[ -n x ]] && bash -c f' 2>&1 || true)
  echo "bash features (export -f, [[ ]]): $out"

  echo "verify: docker run --rm --network none $IMAGE ip addr"
  out=$(docker run --rm --network none "$IMAGE" ip addr)
  echo "$out"
  # Interfaces are lines like "1: lo: <...>"; only lo may be present.
  local ifaces
  ifaces=$(printf '%s\n' "$out" | sed -n 's/^[0-9][0-9]*: \([^:@]*\).*/\1/p' | tr '\n' ' ')
  [[ "$ifaces" == "lo " ]] || { echo "verify failed: expected only lo, got: $ifaces" >&2; return 1; }
  echo "verify: OK"
}

if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "image $IMAGE already exists (use --force to rebuild)"
  if [[ $VERIFY -eq 1 ]]; then verify; fi
  exit 0
fi

[[ -x "$BUSYBOX" ]] || { echo "$BUSYBOX not found: apt-get install busybox-static" >&2; exit 1; }
if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
  # `file` may be missing; fall back to ldd's answer.
  if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "$BUSYBOX is dynamically linked; need busybox-static" >&2; exit 1
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,root,home/builder,tmp,var/tmp}
cp "$BUSYBOX" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"

# One symlink per applet, at the path busybox itself recommends.
"$BUSYBOX" --list-full | while read -r p; do
  [[ -n "$p" && "$p" != "bin/busybox" ]] || continue
  mkdir -p "$root/$(dirname "$p")"
  ln -sfn /bin/busybox "$root/$p"
done
ln -sfn /bin/busybox "$root/bin/sh"
ln -sfn /bin/busybox "$root/usr/bin/env"
rm -f "$root/bin/bash"
if [[ -n "$BASH_STATIC" && -x "$BASH_STATIC" ]]; then
  cp "$BASH_STATIC" "$root/bin/bash"
  bash_kind="bash-static ($("$BASH_STATIC" --version | head -1))"
else
  printf '#!/bin/sh\n# busybox has no bash applet; ash runs genrule commands but not test-setup.sh.\nexec /bin/sh "$@"\n' >"$root/bin/bash"
  bash_kind="ash wrapper script (no bash-static: sh_test will not run in this image)"
  echo "WARNING: $BASH_STATIC not found (apt-get install bash-static); /bin/bash is an ash wrapper" >&2
fi
chmod 0755 "$root/bin/bash"

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
builder:x:1000:1000:builder:/home/builder:/bin/sh
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
builder:x:1000:
EOF
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"

n_applets=$(find "$root" -type l | wc -l)

# Deterministic tar: sorted names, fixed mtime, numeric owners taken from the
# tree (we run as root: everything root-owned except builder's home).
chown -R 0:0 "$root"
chown 1000:1000 "$root/home/builder"
tar --sort=name --mtime=@0 --numeric-owner -C "$root" -cf "$work/rootfs.tar" .

docker image rm -f "$IMAGE" >/dev/null 2>&1 || true
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'WORKDIR /' \
  --change 'CMD ["/bin/sh"]' \
  --message "re-server test busybox image ($("$BUSYBOX" | head -1))" \
  "$work/rootfs.tar" "$IMAGE" >/dev/null
echo "built $IMAGE: $(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$IMAGE"), $n_applets symlinks, /bin/bash = $bash_kind"

if [[ $VERIFY -eq 1 ]]; then verify; fi

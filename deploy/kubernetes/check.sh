#!/usr/bin/env bash
# Checks the Kubernetes manifests in this folder without a cluster:
#
#   1. kubernetes-validate --strict (PyPI; the OpenAPI schemas of each
#      Kubernetes version ship inside the package, so it runs offline) on
#      every *.yaml here but kustomization.yaml, against the oldest and the
#      newest Kubernetes the manifests are meant for. --strict rejects
#      unknown fields, so a misspelt key fails. The tool itself only warns
#      (and exits 0) on a kind or apiVersion it has no schema for, so any
#      WARN line fails here too, as does a file with no resource in it.
#   2. every file kustomization.yaml lists exists;
#   3. the TOML and YAML files embedded in the ConfigMaps parse.
#
# With CI=true a missing tool fails; by hand it prints SKIPPED and exits 0.
# .ci/setup-env.sh installs the tool. Env: K8S_VERSIONS (space-separated).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# 1.27: the built-in gRPC probe is GA from there on (see
# server-statefulset.yaml); 1.37: the newest this kubernetes-validate knows.
K8S_VERSIONS="${K8S_VERSIONS:-1.27.0 1.37.0}"

log() { echo "[k8s-check] $*"; }
fail() { echo "[k8s-check] FAIL: $*" >&2; exit 1; }

kv=()
if command -v kubernetes-validate >/dev/null 2>&1; then
  kv=(kubernetes-validate)
elif python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  kv=(python3 -m kubernetes_validate)
fi
if [[ ${#kv[@]} -eq 0 ]]; then
  if [[ "${CI:-}" == true ]]; then
    fail "kubernetes-validate is not installed (CI=true); .ci/setup-env.sh installs it (pip install kubernetes-validate)"
  fi
  echo "################################################################"
  echo "# SKIPPED: deploy/kubernetes/check.sh -- kubernetes-validate is"
  echo "# not installed: the manifests were NOT validated."
  echo "# pip install kubernetes-validate   (or run .ci/setup-env.sh)"
  echo "################################################################"
  exit 0
fi

# ---- 1. schemas -------------------------------------------------------------
manifests=()
for f in *.yaml; do
  [[ -e "$f" ]] || continue
  [[ "$f" == kustomization.yaml ]] && continue
  manifests+=("$f")
done
[[ ${#manifests[@]} -gt 0 ]] || fail "no manifests in $here"

args=(--strict)
for v in $K8S_VERSIONS; do args+=(-k "$v"); done
log "kubernetes-validate $("${kv[@]}" --version 2>&1 | head -1): ${kv[*]} ${args[*]} ${manifests[*]}"
rc=0
out="$("${kv[@]}" "${args[@]}" "${manifests[@]}" 2>&1)" || rc=$?
echo "$out"
[[ $rc -eq 0 ]] || fail "kubernetes-validate exited $rc"
if grep -Eq '^(WARN|ERROR|FATAL)' <<<"$out"; then
  fail "kubernetes-validate reported the WARN/ERROR/FATAL lines above"
fi
for f in "${manifests[@]}"; do
  for v in $K8S_VERSIONS; do
    mm="$(cut -d. -f1,2 <<<"$v")"
    re="^INFO ${f//./\\.} passed for resource .* against version ${mm//./\\.}\$"
    grep -Eq "$re" <<<"$out" || fail "$f: no resource passed against Kubernetes $mm"
  done
done
resources=$(grep -c '^INFO .* passed for resource ' <<<"$out")

# ---- 2. kustomization.yaml --------------------------------------------------
if [[ -f kustomization.yaml ]]; then
  while read -r listed; do
    [[ -f "$listed" ]] || fail "kustomization.yaml lists $listed, which does not exist"
  done < <(sed -n 's/^  - \([A-Za-z0-9._-]*\.yaml\)$/\1/p' kustomization.yaml)
fi

# ---- 3. embedded config files --------------------------------------------------
# PyYAML comes with kubernetes-validate; tomllib with Python 3.11+.
py=python3
if "$py" -c 'import yaml, tomllib' >/dev/null 2>&1; then
  "$py" - "${manifests[@]}" <<'EOF'
import sys, tomllib, yaml

bad = 0
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        if doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            where = f"{path}: ConfigMap {doc['metadata']['name']} key {key}"
            try:
                if key.endswith(".toml"):
                    tomllib.loads(text)
                elif key.endswith((".yaml", ".yml")):
                    yaml.safe_load(text)
                else:
                    continue
            except Exception as e:
                print(f"[k8s-check] FAIL: {where} does not parse: {e}", file=sys.stderr)
                bad = 1
                continue
            print(f"[k8s-check] {where}: parses")
sys.exit(bad)
EOF
elif [[ "${CI:-}" == true ]]; then
  fail "$py lacks yaml or tomllib: cannot check the ConfigMaps' embedded files"
else
  log "SKIPPED: embedded TOML/YAML (no yaml+tomllib in $py)"
fi

log "OK: ${#manifests[@]} files, $resources resource checks passed (kubernetes $K8S_VERSIONS, --strict)"

#!/usr/bin/env bash
# The cluster tier on the local cluster (CI's, and any Linux machine's without Docker):
# starts it with up.sh, runs the flows of e2e/flows.sh (real `helm install` of the chart,
# the README's cluster quick start, every flow in e2e/tests, `helm uninstall` leaving only
# the kept CRDs), then stops it with down.sh. The same flows run on kind via e2e/kind.sh.
#
# Environment (all optional):
#   KEEP_CLUSTER=1      leave the cluster running afterwards (stop it with down.sh)
#   E2E_TEST_FILTER     only run e2e tests whose name contains this
#   PORTCULLIS_E2E_KEEP=1  keep a failed test's namespace (implies KEEP_CLUSTER=1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
RELEASE=portcullis
RELEASE_NS=portcullis-system
DEMO_NS=default
ARTIFACTS="${ROOT}/e2e/artifacts"
if [[ "${PORTCULLIS_E2E_KEEP:-0}" == 1 ]]; then KEEP_CLUSTER=1; fi

k() { kubectl "$@"; }
h() { helm "$@"; }
# The test process reaches pod IPs: a Service is reached through one of its ready
# endpoints, on the port the Service's port targets.
reach_service() {
  local ns=$1 name=$2 port=$3 port_name ip target
  port_name="$(k -n "$ns" get service "$name" -o jsonpath="{.spec.ports[?(@.port==${port})].name}")"
  ip="$(k -n "$ns" get endpointslices -l "kubernetes.io/service-name=${name}" \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | head -n 1)"
  target="$(k -n "$ns" get endpointslices -l "kubernetes.io/service-name=${name}" \
    -o jsonpath="{.items[0].ports[?(@.name==\"${port_name}\")].port}")"
  [[ -n "$ip" && -n "$target" ]] || return 1
  echo "${ip}:${target}"
}
# shellcheck source=e2e/flows.sh
source "$ROOT/e2e/flows.sh"

finish() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    collect_artifacts
    log "FAILED (exit $rc); artifacts in ${ARTIFACTS}"
  fi
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    log "keeping the local cluster (KEEP_CLUSTER=1): export KUBECONFIG=${KUBECONFIG:-}; stop it with e2e/cluster/down.sh"
  else
    bash "$ROOT/e2e/cluster/down.sh" >&2 || true
  fi
  exit "$rc"
}

rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"
# A cluster left running by an earlier KEEP_CLUSTER=1 run is replaced.
bash "$ROOT/e2e/cluster/down.sh" >/dev/null 2>&1 || true
trap finish EXIT
line="$(bash "$ROOT/e2e/cluster/up.sh" | tail -n 1)"
[[ "$line" == KUBECONFIG=* ]] || die "up.sh did not print KUBECONFIG=... last"
export KUBECONFIG="${line#KUBECONFIG=}"
export PATH="$ROOT/e2e/cluster/bin:$PATH"
k version
k get nodes -o wide

# The image is the local binaries of the node agent's image table (up.sh).
install_chart portcullis local IfNotPresent
quickstart
export PORTCULLIS_E2E_POD_NETWORK=direct
export PORTCULLIS_E2E_POD_LOGS="$ARTIFACTS/cluster/pods"
run_suite "${E2E_TEST_FILTER:-}"
uninstall_and_check
log "e2e passed on the local cluster"

#!/usr/bin/env bash
# Portcullis end to end on kind: create a cluster, build and load the image, install the
# chart, run the README's cluster quick start as a smoke test, run the Rust e2e suite,
# uninstall and check nothing is left behind. On failure, controller and dataplane logs
# and the objects' YAML go to e2e/artifacts/. The cluster is deleted at the end unless
# KEEP_CLUSTER=1.
#
# Needs: docker, kind (v0.32.0 in CI), kubectl, helm (4.x, or 3.12+), cargo, curl.
#
# Environment (all optional):
#   KIND_CLUSTER_NAME   cluster name (default portcullis-e2e)
#   KIND_NODE_IMAGE     node image, overriding the one pinned in e2e/kind-config.yaml
#   KEEP_CLUSTER=1      keep the cluster afterwards (reuse it on the next run)
#   PORTCULLIS_IMAGE    image to build and load, with a tag other than `latest`
#                       (default portcullis:e2e; the members the controller creates
#                       use the default pull policy, which is Always for `latest`)
#   SKIP_BUILD=1        do not docker build (the image must already exist locally)
#   QUICKSTART_PORT     local port of the quick start's port-forward (default 8080)
#   E2E_TEST_FILTER     only run e2e tests whose name contains this
#   HELM_EXTRA_ARGS     extra `helm upgrade --install` arguments, e.g.
#                       "--set secrets.watchClusterWide=true"
#   PORTCULLIS_E2E_KEEP=1  keep a failed test's namespace (implies KEEP_CLUSTER=1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CLUSTER="${KIND_CLUSTER_NAME:-portcullis-e2e}"
CONTEXT="kind-${CLUSTER}"
IMAGE="${PORTCULLIS_IMAGE:-portcullis:e2e}"
IMAGE_REPO="${IMAGE%:*}"
IMAGE_TAG="${IMAGE##*:}"
QUICKSTART_PORT="${QUICKSTART_PORT:-8080}"
RELEASE=portcullis
RELEASE_NS=portcullis-system
DEMO_NS=default
# The demo backend's image, read from its manifest so the two never drift apart.
BACKEND_IMAGE="$(sed -n 's/^ *image: *//p' e2e/manifests/demo-backend.yaml | head -n 1)"
ARTIFACTS="${ROOT}/e2e/artifacts"
if [[ "${PORTCULLIS_E2E_KEEP:-0}" == 1 ]]; then KEEP_CLUSTER=1; fi

k() { kubectl --context "$CONTEXT" "$@"; }
h() { helm --kube-context "$CONTEXT" "$@"; }
# kubectl port-forward to the Service, as a person following the quick start does.
reach_service() {
  k -n "$1" port-forward "service/$2" "${QUICKSTART_PORT}:$3" >/dev/null 2>&1 &
  FORWARD_PID=$!
  sleep 2
  echo "127.0.0.1:${QUICKSTART_PORT}"
}
# shellcheck source=e2e/flows.sh
source "$ROOT/e2e/flows.sh"

for tool in docker kind kubectl helm cargo curl; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
if [[ "$IMAGE" != *:* || "$IMAGE_TAG" == */* || "$IMAGE_TAG" == latest ]]; then
  die "PORTCULLIS_IMAGE must be repository:tag with a tag other than latest (got ${IMAGE})"
fi
# Extra `helm upgrade --install` arguments, split on whitespace (no quoting).
read -r -a HELM_EXTRA <<<"${HELM_EXTRA_ARGS:-}"

finish() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    collect_artifacts
    log "FAILED (exit $rc); artifacts in ${ARTIFACTS}"
  fi
  if [[ -n "${FORWARD_PID:-}" ]]; then kill "$FORWARD_PID" 2>/dev/null || true; fi
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    log "keeping cluster ${CLUSTER} (KEEP_CLUSTER=1): kind delete cluster --name ${CLUSTER}"
  else
    log "deleting cluster ${CLUSTER}"
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$rc"
}
trap finish EXIT

rm -rf "$ARTIFACTS"

# --- 1. Cluster -----------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster ${CLUSTER}"
else
  log "creating kind cluster ${CLUSTER}"
  kind create cluster --name "$CLUSTER" --config e2e/kind-config.yaml --wait 180s \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
k cluster-info

# --- 2. Image -------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building ${IMAGE}"
  # No provenance attestation: it turns the local image into a multi-manifest index,
  # which `kind load` has trouble importing (kubernetes-sigs/kind#3795).
  BUILDX_NO_DEFAULT_ATTESTATIONS=1 docker build -t "$IMAGE" .
fi
log "loading images into kind"
kind load docker-image "$IMAGE" --name "$CLUSTER"
# Preloading the (multi-platform) backend image is only a speed-up: with Docker's
# containerd image store `kind load` can fail on it (kubernetes-sigs/kind#3795), and then
# the nodes pull it themselves.
if docker pull --quiet "$BACKEND_IMAGE" >/dev/null \
  && kind load docker-image "$BACKEND_IMAGE" --name "$CLUSTER"; then
  :
else
  log "could not preload ${BACKEND_IMAGE}; the nodes will pull it"
fi

# --- 3. Chart, quick start, suite, uninstall (e2e/flows.sh) ------------------------------
install_chart "$IMAGE_REPO" "$IMAGE_TAG" Never ${HELM_EXTRA[@]+"${HELM_EXTRA[@]}"}
quickstart
export PORTCULLIS_E2E_CONTEXT="$CONTEXT"
run_suite "${E2E_TEST_FILTER:-}"
uninstall_and_check
log "e2e passed"

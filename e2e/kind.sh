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

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'kind.sh: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$CONTEXT" "$@"; }

for tool in docker kind kubectl helm cargo curl; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
if [[ "$IMAGE" != *:* || "$IMAGE_TAG" == */* || "$IMAGE_TAG" == latest ]]; then
  die "PORTCULLIS_IMAGE must be repository:tag with a tag other than latest (got ${IMAGE})"
fi
# Extra `helm upgrade --install` arguments, split on whitespace (no quoting).
read -r -a HELM_EXTRA <<<"${HELM_EXTRA_ARGS:-}"

# Waits until `kubectl get KIND/NAME` finds the object (the controller creates it).
wait_exists() {
  local what=$1 tries=$2
  for _ in $(seq 1 "$tries"); do
    if k -n "$DEMO_NS" get "$what" >/dev/null 2>&1; then return 0; fi
    sleep 2
  done
  die "${what} was not created in namespace ${DEMO_NS}"
}

collect_artifacts() {
  log "collecting artifacts into ${ARTIFACTS}"
  mkdir -p "$ARTIFACTS"
  k get nodes -o wide >"$ARTIFACTS/nodes.txt" 2>&1 || true
  k get all,configmaps,secrets,leases,events -A -o wide >"$ARTIFACTS/all.txt" 2>&1 || true
  k get gatewayarrays,serverfarms -A -o yaml >"$ARTIFACTS/portcullis-objects.yaml" 2>&1 || true
  k get crd gatewayarrays.portcullis.io serverfarms.portcullis.io -o yaml >"$ARTIFACTS/crds.yaml" 2>&1 || true
  k get deployments,services,configmaps,poddisruptionbudgets,serviceaccounts,roles,rolebindings -A \
    -l app.kubernetes.io/name=portcullis-dataplane -o yaml >"$ARTIFACTS/dataplane-objects.yaml" 2>&1 || true
  k -n "$RELEASE_NS" logs -l app.kubernetes.io/component=controller --all-containers --prefix \
    --timestamps --tail=-1 >"$ARTIFACTS/controller.log" 2>&1 || true
  k -n "$RELEASE_NS" logs -l app.kubernetes.io/component=controller --all-containers --prefix \
    --timestamps --previous >"$ARTIFACTS/controller.previous.log" 2>&1 || true
  k logs -A -l app.kubernetes.io/name=portcullis-dataplane --all-containers --prefix \
    --timestamps --tail=-1 --max-log-requests=50 >"$ARTIFACTS/dataplane.log" 2>&1 || true
  k -n "$RELEASE_NS" describe pods >"$ARTIFACTS/controller-pods.txt" 2>&1 || true
  helm --kube-context "$CONTEXT" -n "$RELEASE_NS" status "$RELEASE" >"$ARTIFACTS/helm-status.txt" 2>&1 || true
}

finish() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    collect_artifacts
    log "FAILED (exit $rc); artifacts in ${ARTIFACTS}"
  fi
  if [[ -n "${PF_PID:-}" ]]; then kill "$PF_PID" 2>/dev/null || true; fi
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

# --- 3. Chart -------------------------------------------------------------------------
log "installing the chart"
helm --kube-context "$CONTEXT" upgrade --install "$RELEASE" charts/portcullis \
  --namespace "$RELEASE_NS" --create-namespace \
  --set image.repository="$IMAGE_REPO" --set image.tag="$IMAGE_TAG" \
  --set image.pullPolicy=Never \
  ${HELM_EXTRA[@]+"${HELM_EXTRA[@]}"} \
  --wait --timeout 5m
k wait --for condition=established --timeout=60s \
  crd/gatewayarrays.portcullis.io crd/serverfarms.portcullis.io
k -n "$RELEASE_NS" rollout status "deployment/${RELEASE}" --timeout=180s

# --- 4. The README's cluster quick start, as a smoke test ------------------------------
# The same commands as README "Cluster quick start", plus the waits a script needs.
log "quick start: the demo backend, examples/ and the web farm"
k -n "$DEMO_NS" apply -f e2e/manifests/demo-backend.yaml
k -n "$DEMO_NS" rollout status deployment/demo-backend --timeout=180s
k -n "$DEMO_NS" apply -f examples/ -f e2e/manifests/quickstart-farm.yaml
k -n "$DEMO_NS" wait --for=condition=Ready --timeout=180s serverfarm/web
# The GatewayArray `demo` owns a Deployment and a Service named `demo`.
wait_exists deployment/demo 90
k -n "$DEMO_NS" rollout status deployment/demo --timeout=180s
wait_exists service/demo 90
log "quick start: curl through service/demo"
k -n "$DEMO_NS" port-forward service/demo "${QUICKSTART_PORT}:8080" >/dev/null &
PF_PID=$!
ok=0
for _ in $(seq 1 60); do
  if body="$(curl -fsS --max-time 5 -H 'Host: web.example.com' "http://127.0.0.1:${QUICKSTART_PORT}/hostname")" \
    && [[ "$body" == demo-backend-* ]]; then
    ok=1
    echo "served by ${body}"
    break
  fi
  sleep 2
done
kill "$PF_PID" 2>/dev/null || true
PF_PID=""
[[ $ok == 1 ]] || die "curl through the array never reached the demo backend"
# The local-mode farms of examples/ point at loopback: the controller must refuse them.
for farm in shop admin; do
  status="$(k -n "$DEMO_NS" get serverfarm "$farm" -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}')"
  [[ "$status" == False ]] || die "examples/ farm ${farm} should be Accepted=False in a cluster (got '${status}')"
done
k -n "$DEMO_NS" delete -f examples/ -f e2e/manifests/quickstart-farm.yaml -f e2e/manifests/demo-backend.yaml --wait

# --- 5. The Rust e2e suite --------------------------------------------------------------
log "running the e2e suite"
export PORTCULLIS_E2E=1
export PORTCULLIS_E2E_CONTEXT="$CONTEXT"
export PORTCULLIS_E2E_RELEASE="$RELEASE"
export PORTCULLIS_E2E_RELEASE_NAMESPACE="$RELEASE_NS"
export PORTCULLIS_E2E_ARTIFACTS="$ARTIFACTS"
cargo test --locked -p portcullis-e2e -- --ignored --test-threads=1 ${E2E_TEST_FILTER:+"$E2E_TEST_FILTER"}

# --- 6. Uninstall leaves nothing behind -------------------------------------------------
log "uninstalling the chart"
k delete namespace -l portcullis.io/e2e=true --wait --timeout=180s || true
# Foreground: the controller's ReplicaSet and pods are gone before helm returns.
helm --kube-context "$CONTEXT" -n "$RELEASE_NS" uninstall "$RELEASE" \
  --cascade foreground --wait --timeout 3m

# What is still there: printed, one object per line (empty when nothing is).
leftovers() {
  local kind labelled=""
  # Everything the release labelled, in every namespace and cluster-wide.
  for kind in $(k api-resources --verbs=list -o name 2>/dev/null \
    | grep -v -E '^(events|events\.events\.k8s\.io|componentstatuses)$'); do
    labelled+="$(k get "$kind" -A -l "app.kubernetes.io/instance=${RELEASE}" -o name 2>/dev/null \
      || echo "cannot-list/${kind}")"$'\n'
  done
  # The CRDs stay on purpose (crds.keep: deleting them deletes every user object).
  grep -v -E '^customresourcedefinition\.apiextensions\.k8s\.io/(gatewayarrays|serverfarms)\.portcullis\.io$' \
    <<<"$labelled" || true
  # Nothing the controller created for arrays survives either.
  k get deployments,services,configmaps,secrets,poddisruptionbudgets,serviceaccounts,roles,rolebindings -A \
    -l app.kubernetes.io/name=portcullis-dataplane -o name 2>/dev/null || true
  # In the release namespace, only what Kubernetes puts in every namespace and the
  # controller's leader-election Lease (written by the controller, not the chart) may stay.
  k -n "$RELEASE_NS" get all,configmaps,secrets,serviceaccounts,roles,rolebindings -o name 2>/dev/null \
    | grep -v -E '^(configmap/kube-root-ca\.crt|serviceaccount/default)$' || true
}
# Garbage collection (EndpointSlices of deleted Services, objects owned by deleted
# arrays) is asynchronous: allow it a minute before calling anything a leftover.
left=""
for _ in $(seq 1 30); do
  left="$(leftovers | grep -v '^[[:space:]]*$' || true)"
  [[ -z "$left" ]] && break
  sleep 2
done
for crd in gatewayarrays.portcullis.io serverfarms.portcullis.io; do
  policy="$(k get crd "$crd" -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')"
  [[ "$policy" == keep ]] || die "CRD ${crd} should have been kept (resource-policy keep), got '${policy}'"
done
if [[ -n "$left" ]]; then
  printf '%s\n' "$left" >&2
  die "helm uninstall left the objects above behind"
fi
k delete crd gatewayarrays.portcullis.io serverfarms.portcullis.io
k delete namespace "$RELEASE_NS" --wait --timeout=120s
log "e2e passed"

# The end-to-end flows every cluster runs, sourced by e2e/kind.sh (kind, on a laptop with
# Docker) and e2e/cluster/e2e.sh (the local cluster, in CI): install the chart, run the
# README's cluster quick start as a smoke test, run the Rust e2e suite, uninstall and
# check nothing is left behind.
#
# The sourcing script defines:
#   k ARGS...          kubectl against the cluster
#   h ARGS...          helm against the cluster
#   reach_service NS NAME PORT
#                      prints HOST:PORT that reaches the Service NAME's port PORT from
#                      this process (kind: a port-forward it starts, recording its PID in
#                      FORWARD_PID; the local cluster: a ready endpoint's pod IP)
# and the variables ROOT, RELEASE, RELEASE_NS, DEMO_NS and ARTIFACTS.
# shellcheck shell=bash

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

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
  k get pods -A -o yaml >"$ARTIFACTS/pods.yaml" 2>&1 || true
  k -n "$RELEASE_NS" logs -l app.kubernetes.io/component=controller --all-containers --prefix \
    --timestamps --tail=-1 >"$ARTIFACTS/controller.log" 2>&1 || true
  k -n "$RELEASE_NS" logs -l app.kubernetes.io/component=controller --all-containers --prefix \
    --timestamps --previous >"$ARTIFACTS/controller.previous.log" 2>&1 || true
  k logs -A -l app.kubernetes.io/name=portcullis-dataplane --all-containers --prefix \
    --timestamps --tail=-1 --max-log-requests=50 >"$ARTIFACTS/dataplane.log" 2>&1 || true
  k -n "$RELEASE_NS" describe pods >"$ARTIFACTS/controller-pods.txt" 2>&1 || true
  h -n "$RELEASE_NS" status "$RELEASE" >"$ARTIFACTS/helm-status.txt" 2>&1 || true
}

# install_chart REPOSITORY TAG PULL_POLICY [EXTRA HELM ARGS...]
install_chart() {
  local repo=$1 tag=$2 policy=$3
  shift 3
  log "installing the chart"
  h upgrade --install "$RELEASE" charts/portcullis \
    --namespace "$RELEASE_NS" --create-namespace \
    --set image.repository="$repo" --set image.tag="$tag" \
    --set image.pullPolicy="$policy" \
    "$@" \
    --wait --timeout 5m
  k wait --for condition=established --timeout=60s \
    crd/gatewayarrays.portcullis.io crd/serverfarms.portcullis.io
  k -n "$RELEASE_NS" rollout status "deployment/${RELEASE}" --timeout=180s
}

# The README's cluster quick start: the same commands, plus the waits a script needs.
quickstart() {
  log "quick start: the demo backend, examples/ and the web farm"
  k -n "$DEMO_NS" apply -f e2e/manifests/demo-backend.yaml
  k -n "$DEMO_NS" rollout status deployment/demo-backend --timeout=180s
  k -n "$DEMO_NS" apply -f examples/ -f e2e/manifests/quickstart-farm.yaml
  k -n "$DEMO_NS" wait --for=condition=Ready --timeout=180s serverfarm/web
  # The GatewayArray `demo` owns a Deployment and a Service named `demo`.
  wait_exists deployment/demo 90
  k -n "$DEMO_NS" rollout status deployment/demo --timeout=180s
  wait_exists service/demo 90
  local ok=0 addr="" body=""
  for _ in $(seq 1 60); do
    if [[ -z "$addr" ]]; then
      addr="$(reach_service "$DEMO_NS" demo 8080 2>/dev/null)" || addr=""
    fi
    if [[ -n "$addr" ]] \
      && body="$(curl -fsS --max-time 5 -H 'Host: web.example.com' "http://${addr}/hostname")" \
      && [[ "$body" == demo-backend-* ]]; then
      ok=1
      log "quick start: served by ${body} through ${addr}"
      break
    fi
    sleep 2
  done
  if [[ -n "${FORWARD_PID:-}" ]]; then kill "$FORWARD_PID" 2>/dev/null || true; FORWARD_PID=""; fi
  [[ $ok == 1 ]] || die "curl through the array never reached the demo backend"
  # The local-mode farms of examples/ point at loopback: the controller must refuse them.
  local farm status
  for farm in shop admin; do
    status="$(k -n "$DEMO_NS" get serverfarm "$farm" -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}')"
    [[ "$status" == False ]] || die "examples/ farm ${farm} should be Accepted=False in a cluster (got '${status}')"
  done
  k -n "$DEMO_NS" delete -f examples/ -f e2e/manifests/quickstart-farm.yaml -f e2e/manifests/demo-backend.yaml --wait
}

# run_suite [CARGO TEST FILTER]: every flow in e2e/tests, against this cluster.
run_suite() {
  log "running the e2e suite"
  export PORTCULLIS_E2E=1
  export PORTCULLIS_E2E_RELEASE="$RELEASE"
  export PORTCULLIS_E2E_RELEASE_NAMESPACE="$RELEASE_NS"
  export PORTCULLIS_E2E_ARTIFACTS="$ARTIFACTS"
  # --workspace, not -p portcullis-e2e: the same features as scripts/test.sh's build, so
  # nothing is compiled again. Only the e2e crate has ignored tests.
  cargo test --workspace --locked -- --ignored --test-threads=1 ${1:+"$1"}
}

# What is still there after an uninstall: printed, one object per line (empty when
# nothing is).
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

# helm uninstall leaves only the kept CRDs.
uninstall_and_check() {
  log "uninstalling the chart"
  k delete namespace -l portcullis.io/e2e=true --wait --timeout=180s || true
  # Foreground: the controller's ReplicaSet and pods are gone before helm returns.
  h -n "$RELEASE_NS" uninstall "$RELEASE" --cascade foreground --wait --timeout 3m
  # Garbage collection (EndpointSlices of deleted Services, objects owned by deleted
  # arrays) is asynchronous: allow it a minute before calling anything a leftover.
  local left="" crd policy
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
}

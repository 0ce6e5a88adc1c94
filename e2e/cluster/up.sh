#!/usr/bin/env bash
# Starts the local cluster: the real upstream etcd, kube-apiserver and
# kube-controller-manager (v1.37.2, built from Go modules by this directory's go.mod),
# and portcullis-node-agent playing the kubelet for one Node whose pods are local
# processes, each in its own network namespace on the bridge pcbr0 (10.244.0.0/24).
#
# Needs: root, Go 1.26, cargo, iproute2, util-linux (unshare, nsenter, setpriv), openssl,
# curl. Builds what is missing (the Go binary is cached by the hash of its sources, so a
# warm start takes seconds), waits until the API server is ready and the Node is Ready,
# and prints `KUBECONFIG=<path>` as its last line. `e2e/cluster/down.sh` undoes it.
# Logs of every component and pod go to e2e/artifacts/cluster/.
#
# Environment (all optional):
#   PORTCULLIS_CLUSTER_STATE  state directory (default /var/lib/portcullis-cluster)
#   PORTCULLIS_CLUSTER_CACHE  where built Go binaries are kept (default ~/.cache/portcullis-cluster)
#   PORTCULLIS_CLUSTER_CIDR   pod CIDR (default 10.244.0.0/24; the bridge takes .1)
#   SKIP_CARGO_BUILD=1        use the Rust binaries already in the target directory
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
STATE="${PORTCULLIS_CLUSTER_STATE:-/var/lib/portcullis-cluster}"
CACHE="${PORTCULLIS_CLUSTER_CACHE:-${HOME}/.cache/portcullis-cluster}"
CIDR="${PORTCULLIS_CLUSTER_CIDR:-10.244.0.0/24}"
BRIDGE=pcbr0
NODE=portcullis-node-0
K8S_VERSION=v1.37.2
ARTIFACTS="$ROOT/e2e/artifacts/cluster"
BIN="$HERE/bin"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'up.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, veths, bind mounts)"
for tool in go cargo ip unshare nsenter setpriv openssl curl; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
if [[ -s "$STATE/pids" ]]; then
  die "a cluster seems to be running (${STATE}/pids); run e2e/cluster/down.sh first"
fi

GW="$(python3 -c "import ipaddress,sys; n=ipaddress.ip_network(sys.argv[1]); print(n[1])" "$CIDR")"
PREFIX="${CIDR#*/}"

# --- 1. The Go multi-call binary, cached by the hash of what it is built from ------------
key="$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE/cmd/k8s/main.go" "$HERE/build-k8s.sh" \
  <(go version) | sha256sum | cut -c1-16)"
K8S="$CACHE/k8s-$key"
if [[ ! -x "$K8S" ]]; then
  log "building kube-apiserver, kube-controller-manager, etcd, kubectl, helm and agnhost ${K8S_VERSION} (cold: tens of minutes)"
  start=$SECONDS
  bash "$HERE/build-k8s.sh" "$K8S"
  log "built ${K8S} in $((SECONDS - start)) s"
fi
mkdir -p "$BIN"
for applet in kube-apiserver kube-controller-manager etcd kubectl helm agnhost; do
  ln -sfn "$K8S" "$BIN/$applet"
done

# --- 2. Our binaries --------------------------------------------------------------------
if [[ "${SKIP_CARGO_BUILD:-0}" != 1 ]]; then
  # The same build as `cargo test --workspace` (scripts/test.sh): same features, so
  # nothing is compiled twice; integration tests make it build the three binaries.
  log "building portcullis-controller, portcullis-dataplane and portcullis-node-agent"
  (cd "$ROOT" && cargo test --workspace --locked --no-run)
fi
for b in portcullis-controller portcullis-dataplane portcullis-node-agent; do
  [[ -x "$TARGET_DIR/debug/$b" ]] || die "$TARGET_DIR/debug/$b is missing"
done

# --- 3. State, PKI and kubeconfigs ---------------------------------------------------------
rm -rf "$STATE" "$ARTIFACTS"
mkdir -p "$STATE/pki" "$ARTIFACTS/pods"
chmod 0755 "$STATE"
PKI="$STATE/pki"
(
  cd "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=portcullis-local-ca" \
    -keyout ca.key -out ca.crt 2>/dev/null
  cert() { # name subject [extfile]
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      ${3:+-extfile "$3"} -out "$1.crt" 2>/dev/null
  }
  printf 'subjectAltName=IP:%s,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\n' "$GW" >apiserver.ext
  cert apiserver "/CN=kube-apiserver" apiserver.ext
  printf 'extendedKeyUsage=clientAuth\n' >client.ext
  cert admin "/O=system:masters/CN=portcullis-local-admin" client.ext
  cert controller-manager "/CN=system:kube-controller-manager" client.ext
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 0600 ./*.key
)
SERVER="https://${GW}:6443"
kubeconfig() { # file user
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: portcullis-local
  cluster:
    server: ${SERVER}
    certificate-authority: ${PKI}/ca.crt
users:
- name: $2
  user:
    client-certificate: ${PKI}/$2.crt
    client-key: ${PKI}/$2.key
contexts:
- name: portcullis-local
  context: {cluster: portcullis-local, user: $2}
current-context: portcullis-local
EOF
}
kubeconfig "$STATE/admin.kubeconfig" admin
kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
export KUBECONFIG="$STATE/admin.kubeconfig"

# --- 4. The bridge (the API server listens on its address) ---------------------------------
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
fi
ip addr replace "${GW}/${PREFIX}" dev "$BRIDGE"
ip link set "$BRIDGE" up

start() { # name args...: started in its own session, its PID recorded
  local name=$1
  shift
  setsid "$@" >"$ARTIFACTS/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$STATE/pids"
}

# --- 5. etcd, kube-apiserver, kube-controller-manager ---------------------------------------
log "starting etcd"
start etcd "$BIN/etcd" --name local --data-dir "$STATE/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster local=http://127.0.0.1:23800 --log-level warn

log "starting kube-apiserver ${K8S_VERSION} on ${SERVER}"
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers http://127.0.0.1:23790 \
  --bind-address "$GW" --advertise-address "$GW" --secure-port 6443 \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --allow-privileged=true --profiling=false \
  --cert-dir "$STATE/apiserver-certs"

ready=0
for _ in $(seq 1 120); do
  if curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "${SERVER}/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 1
done
[[ $ready == 1 ]] || { tail -n 40 "$ARTIFACTS/kube-apiserver.log" >&2; die "kube-apiserver did not become ready"; }
log "kube-apiserver is ready"

log "starting kube-controller-manager"
start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$STATE/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10257 \
  --controllers garbage-collector-controller,deployment-controller,replicaset-controller,endpointslice-controller,endpointslice-mirroring-controller,endpoints-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,disruption-controller,clusterrole-aggregation-controller,resourcequota-controller,pod-garbage-collector-controller,service-cidr-controller,ttl-after-finished-controller,job-controller \
  --root-ca-file "$PKI/ca.crt" \
  --service-account-private-key-file "$PKI/sa.key" \
  --use-service-account-credentials=true \
  --leader-elect=false

# --- 6. The node agent ------------------------------------------------------------------------
cat >"$STATE/images.json" <<EOF
[
  {"name": "portcullis", "entrypoint": ["/usr/local/bin/portcullis-controller"], "user": 65532,
   "path": ["/usr/local/bin"],
   "files": {"/usr/local/bin/portcullis-controller": "${TARGET_DIR}/debug/portcullis-controller",
             "/usr/local/bin/portcullis-dataplane": "${TARGET_DIR}/debug/portcullis-dataplane"}},
  {"name": "agnhost", "entrypoint": ["/agnhost"], "files": {"/agnhost": "${K8S}"}}
]
EOF
log "starting portcullis-node-agent (node ${NODE})"
start node-agent "$TARGET_DIR/debug/portcullis-node-agent" \
  --kubeconfig "$STATE/admin.kubeconfig" --node-name "$NODE" --pod-cidr "$CIDR" --bridge "$BRIDGE" \
  --images "$STATE/images.json" --state-dir "$STATE/node" --log-dir "$ARTIFACTS/pods" \
  --api-host "$GW" --api-port 6443

ok=0
for _ in $(seq 1 60); do
  if "$BIN/kubectl" wait --for=condition=Ready "node/${NODE}" --timeout=2s >/dev/null 2>&1; then
    ok=1
    break
  fi
  sleep 1
done
[[ $ok == 1 ]] || { tail -n 40 "$ARTIFACTS/node-agent.log" >&2; die "node ${NODE} did not become Ready"; }
# The controllers that every namespace relies on must be up before anything is applied.
for _ in $(seq 1 60); do
  if "$BIN/kubectl" -n default get serviceaccount default >/dev/null 2>&1 \
    && "$BIN/kubectl" -n default get configmap kube-root-ca.crt >/dev/null 2>&1; then
    break
  fi
  sleep 1
done
"$BIN/kubectl" -n default get serviceaccount default >/dev/null \
  || die "kube-controller-manager did not create the default ServiceAccount"
log "cluster ready: node ${NODE} (pods on ${CIDR}), tools in ${BIN}, logs in ${ARTIFACTS}"
echo "KUBECONFIG=$STATE/admin.kubeconfig"

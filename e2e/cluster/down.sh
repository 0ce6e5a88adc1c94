#!/usr/bin/env bash
# Stops everything e2e/cluster/up.sh started and removes what it made: the pods'
# processes and network namespaces, the bridge, and the state directory (etcd's data,
# the PKI, the pods' volumes). Logs stay in e2e/artifacts/cluster/. Safe to run twice.
set -uo pipefail
STATE="${PORTCULLIS_CLUSTER_STATE:-/var/lib/portcullis-cluster}"
BRIDGE=pcbr0

# The node agent first, so that it starts no pod while the rest goes down.
if [[ -f "$STATE/pids" ]]; then
  for name in node-agent kube-controller-manager kube-apiserver etcd; do
    pid="$(awk -v n="$name" '$1 == n { print $2 }' "$STATE/pids")"
    [[ -n "$pid" ]] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
fi
# Every pod namespace: its processes, then the namespace (its veth goes with it).
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pcpod-'); do
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
  ip netns del "$ns" 2>/dev/null
done
for veth in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^pcv'); do
  ip link del "$veth" 2>/dev/null
done
ip link del "$BRIDGE" 2>/dev/null
# Bind mounts live in the pods' private mount namespaces, so nothing is mounted here.
rm -rf "$STATE"
echo "local cluster stopped"

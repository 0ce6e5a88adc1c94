#!/usr/bin/env bash
# Builds the multi-call binary (cmd/k8s) to the path given as $1. Static (CGO off),
# stripped, and stamped with the Kubernetes version so /version and kubectl tell the truth.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
out=$1
version=v1.37.2
mkdir -p "$(dirname "$out")"
CGO_ENABLED=0 go build -trimpath -o "$out.tmp" -ldflags "-s -w \
  -X k8s.io/component-base/version.gitVersion=${version} \
  -X k8s.io/component-base/version.gitMajor=1 \
  -X k8s.io/component-base/version.gitMinor=37 \
  -X k8s.io/component-base/version.gitTreeState=clean \
  -X k8s.io/client-go/pkg/version.gitVersion=${version} \
  -X k8s.io/client-go/pkg/version.gitMajor=1 \
  -X k8s.io/client-go/pkg/version.gitMinor=37 \
  -X helm.sh/helm/v4/internal/version.version=v4.3.1" ./cmd/k8s
mv "$out.tmp" "$out"

#!/usr/bin/env bash
# Installs the tools bench/run.sh needs on Debian/Ubuntu: the two reference proxies
# (nginx, HAProxy), the load generators (wrk, h2load from nghttp2-client), taskset
# (util-linux), openssl and python3. Run as root or with sudo.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y nginx haproxy wrk nghttp2-client util-linux openssl python3

# The Debian packages start nginx and HAProxy as system services on ports 80 and
# 5000/8404; the bench starts its own instances, so stop the services if they run.
for svc in nginx haproxy; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" || true
    elif command -v service >/dev/null 2>&1; then
        $SUDO service "$svc" stop >/dev/null 2>&1 || true
    fi
done

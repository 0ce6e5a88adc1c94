#!/usr/bin/env bash
# Side-by-side benchmark of Portcullis, nginx and HAProxy. Installs nothing: it checks
# the tools, names what is missing (bench/install-deps.sh installs them), makes a
# self-signed certificate under bench/out/, and hands over to bench/bench.py.
# Knobs are environment variables; see bench/README.md.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"

# The command line as run, for the report (knobs first, so it can be pasted back).
knobs=""
for var in $(compgen -e | grep -E '^(BENCH_[A-Z0-9_]+|PORTCULLIS_BIN)$' | sort); do
    case "$var" in BENCH_OUT|BENCH_COMMAND|BENCH_NOFILE) continue ;; esac
    knobs+="$var=${!var} "
done
export BENCH_COMMAND="${knobs}bench/run.sh"

export BENCH_OUT="${BENCH_OUT:-$BENCH_DIR/out}"
export BENCH_PROXIES="${BENCH_PROXIES:-nginx,haproxy,portcullis}"

missing=()
need() { # need TOOL PACKAGE
    command -v "$1" >/dev/null 2>&1 || missing+=("$1 (Debian package: $2)")
}
need nginx nginx
need haproxy haproxy
need wrk wrk
need h2load nghttp2-client
need taskset util-linux
need python3 python3
need openssl openssl
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench: missing tools:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    echo "bench: run bench/install-deps.sh (apt-get) or install them yourself." >&2
    exit 1
fi

if [ "$(nproc)" -lt 2 ]; then
    echo "bench: needs at least 2 CPUs (proxy on one, origin and load on another)" >&2
    exit 1
fi

# Portcullis: a given binary, or a release build of the dataplane.
if [[ ",$BENCH_PROXIES," == *",portcullis,"* ]]; then
    if [ -z "${PORTCULLIS_BIN:-}" ]; then
        target="${CARGO_TARGET_DIR:-$REPO_DIR/target}"
        echo "bench: building portcullis-dataplane (release) into $target" >&2
        (cd "$REPO_DIR" && cargo build --release -p portcullis-dataplane) >&2
        PORTCULLIS_BIN="$target/release/portcullis-dataplane"
    fi
    if [ ! -x "$PORTCULLIS_BIN" ]; then
        echo "bench: no Portcullis binary at $PORTCULLIS_BIN" >&2
        exit 1
    fi
    export PORTCULLIS_BIN
fi

# The idle-connection test needs one descriptor per connection in the client and up to
# two in the proxy (HAProxy refuses to start unless it may have 2 x maxconn), so raise
# the soft limit to the hard one (children inherit it). Where the hard limit cannot be
# raised (containers), the default of 10,000 connections shrinks to what fits, for all
# three proxies alike, and the table says how many were used.
idle="${BENCH_IDLE_CONNS:-10000}"
want=$((idle * 2 + 256))
hard="$(ulimit -Hn)"
if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$want" ]; then
    ulimit -Hn "$want" 2>/dev/null || true
    hard="$(ulimit -Hn)"
fi
if [ "$hard" != "unlimited" ] && [ "$hard" -lt "$want" ]; then
    fits=$(( (hard - 256) / 2 / 100 * 100 ))
    if [ -n "${BENCH_IDLE_CONNS:-}" ] || [ "$fits" -lt 1000 ]; then
        echo "bench: open-file hard limit is $hard; $idle idle connections need $want." \
            "Raise it (ulimit -Hn as root) or lower BENCH_IDLE_CONNS (at most $fits)." >&2
        exit 1
    fi
    echo "bench: open-file hard limit is $hard: using $fits idle connections instead" \
        "of $idle (set BENCH_IDLE_CONNS to choose)" >&2
    idle="$fits"
    want="$hard"
fi
ulimit -n "$want"
export BENCH_IDLE_CONNS="$idle"
export BENCH_NOFILE="$want"

# A fresh self-signed ECDSA P-256 certificate for localhost, in PEM (PKCS#8 key), plus
# the combined cert+key file HAProxy wants.
mkdir -p "$BENCH_OUT/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1" \
    -keyout "$BENCH_OUT/tls/tls.key" -out "$BENCH_OUT/tls/tls.crt" 2>/dev/null
chmod 600 "$BENCH_OUT/tls/tls.key"
cat "$BENCH_OUT/tls/tls.crt" "$BENCH_OUT/tls/tls.key" > "$BENCH_OUT/tls/combined.pem"
chmod 600 "$BENCH_OUT/tls/combined.pem"

exec python3 "$BENCH_DIR/bench.py"

#!/usr/bin/env bash
# The project's one test command (README "Running the tests"; .ci/run runs exactly this).
# Formatting, lints, the Helm chart tests, then every Rust test that needs no cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== chart tests (Helm 4 engine, offline schema validation)"
python3 -m pytest -q tests/chart

echo "== cargo test (unit, in-process, multi-process, mocked API server; cluster tests stay ignored)"
cargo test --workspace --locked

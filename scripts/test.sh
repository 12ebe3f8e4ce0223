#!/usr/bin/env bash
# Run every test, with the real peers: the CloudWatch emulator (in-process), LocalStack for the
# emulator's conformance suite, moto for SQS, the real kubectl and helm. Installs what it needs on
# first use.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- NAME    # pass a test-name filter through to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

# Dependency policy (deny.toml): banned crates, licenses, sources. Advisories are left out on
# purpose: their database comes from GitHub, which CI cannot reach (see deny.toml).
if ! command -v cargo-deny >/dev/null 2>&1; then
  cargo install --locked cargo-deny
fi
cargo deny --locked check --hide-inclusion-graph bans licenses sources

bash scripts/fetch-tools.sh
# MOTO_SERVER=<path>: the SQS tests start their own moto_server from it.
eval "$(bash scripts/moto.sh)"
export MOTO_SERVER
bash scripts/localstack.sh start
trap 'bash scripts/localstack.sh stop' EXIT

export LOCALSTACK_ENDPOINT="http://127.0.0.1:${LOCALSTACK_PORT:-4566}"
# --all-features turns on the peer suites (kubectl, moto's SQS, LocalStack conformance).
cargo test --workspace --all-features --locked "$@"

# The chart, manifests, examples and dashboard: helm lint/template, Kubernetes schemas, drift,
# and the built adapter started with the chart's flags (uses target/debug from the tests above).
if [[ $# -eq 0 ]]; then
  bash scripts/check-manifests.sh
fi

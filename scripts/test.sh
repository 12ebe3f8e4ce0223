#!/usr/bin/env bash
# Run every test, with the real peers: the CloudWatch emulator (in-process), LocalStack for the
# emulator's conformance suite, and the real kubectl. Installs what it needs on first use.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- NAME    # pass a test-name filter through to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-tools.sh
bash scripts/localstack.sh start
trap 'bash scripts/localstack.sh stop' EXIT

export LOCALSTACK_ENDPOINT=http://127.0.0.1:4566
# --all-features turns on the peer suites (kubectl, LocalStack conformance).
cargo test --workspace --all-features --locked "$@"

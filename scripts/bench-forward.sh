#!/usr/bin/env bash
# Benchmark forwarding to a delegate (issue 11): two release adapters (the delegate and the front)
# with delegated auth against a fake Kubernetes API, requests sent as kube-apiserver's aggregator
# sends them. Reports what forwarding adds at p99 over a direct call, and whether 1,000 req/s of
# forwarded traffic moves the p99 of our own metric, in rounds (medians reported). About 3 minutes.
#
#   scripts/bench-forward.sh [--overhead-rate 200 --own-rate 200 --forwarded-rate 1000 --phase 10 --rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cloudwatch-metrics-adapter -p cwma-bench
exec target/release/forward --adapter target/release/cloudwatch-metrics-adapter "$@"

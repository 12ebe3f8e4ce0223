#!/usr/bin/env bash
# Benchmark the adapter: the release binary against the in-process CloudWatch emulator, with
# simulated HPAs, then latency and peak throughput over HTTPS keep-alive for three request
# paths side by side (anonymous; the aggregator's front-proxy certificate and X-Remote-*
# headers with AlwaysAllow; the same with SubjectAccessReviews against a fake API server),
# then memory. About 5 minutes.
#
#   scripts/bench.sh [--hpas 2000 --series 1000 --rate 2000 --rounds 3 --phase 5 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cloudwatch-metrics-adapter -p cwma-bench
exec target/release/cwma-bench --adapter target/release/cloudwatch-metrics-adapter "$@"

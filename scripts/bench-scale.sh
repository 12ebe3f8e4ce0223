#!/usr/bin/env bash
# Benchmark the adapter at scale (issue 16): the release adapter with 1,000 tenants and 1k, 10k
# and 100k active series read by 10,000 simulated HPAs, against the in-process CloudWatch
# emulator, requests sent as kube-apiserver's aggregator sends them. Reports GetMetricData calls
# per refresh, served value age, latency at 2,000 req/s while the table refreshes, RSS per series,
# CPU per refresh cycle and the first-fill time; writes target/bench-scale/latest.{json,md}.
# About 12 minutes on 2 cores.
#
#   scripts/bench-scale.sh [--sizes 1000,10000 --refresh-interval 30 --calls-per-second 10 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cloudwatch-metrics-adapter -p cwma-bench
label="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
exec target/release/scale --adapter target/release/cloudwatch-metrics-adapter --label "commit $label" "$@"

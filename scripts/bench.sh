#!/usr/bin/env bash
# Benchmark the cached query layer: the release adapter against the in-process CloudWatch
# emulator, with simulated HPAs and an HTTPS keep-alive load generator. About 2 minutes.
#
#   scripts/bench.sh [--hpas 2000 --series 1000 --rate 2000 --many-series 10000 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cloudwatch-metrics-adapter -p cwma-bench
exec target/release/cwma-bench --adapter target/release/cloudwatch-metrics-adapter "$@"

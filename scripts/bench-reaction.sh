#!/usr/bin/env bash
# Benchmark reaction time and cost per queue: the release adapter reading a real SQS (moto) natively
# and through CloudWatch's AWS/SQS metrics (the emulator, fed as AWS publishes them: one-minute
# buckets, a minute late). About 5 minutes.
#
#   scripts/bench-reaction.sh [--queues 4 --publish-delay 60 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/moto.sh)"
cargo build --release --locked -p cloudwatch-metrics-adapter -p cwma-bench
exec target/release/reaction --adapter target/release/cloudwatch-metrics-adapter --moto-server "$MOTO_SERVER" "$@"

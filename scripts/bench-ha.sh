#!/usr/bin/env bash
# Benchmark high availability (issue 17): 1, 2 and 3 release replicas with leader election on a
# Lease of the fake Kubernetes API (HTTPS, a token per replica) against the emulator, read as
# kube-apiserver's aggregator reads them, each read to a random replica. The leader gets SIGTERM,
# later SIGKILL, then is cut off from the Lease API. Reports AWS calls against one replica's, the
# new leader's first refresh, failed reads, value ages, follower lag and the partition, each with
# its goal, and writes target/bench-ha/ha-<time>/result.md (with the replicas' logs). About
# 12 minutes with the defaults (production timing: lease 15 s, renew deadline 10 s, retry 2 s).
#
#   scripts/bench-ha.sh [--replicas 1,2,3 --series 1000 --refresh-interval 15 --partition 40 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p cloudwatch-metrics-adapter -p cwma-bench
exec target/release/ha --adapter target/release/cloudwatch-metrics-adapter "$@"

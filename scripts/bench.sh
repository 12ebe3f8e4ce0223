#!/usr/bin/env bash
# Benchmark the adapter: the release binary against the in-process CloudWatch emulator, with
# simulated HPAs, then latency and peak throughput over HTTPS keep-alive for three request
# paths side by side (anonymous; the aggregator's front-proxy certificate and X-Remote-*
# headers with AlwaysAllow; the same with SubjectAccessReviews against a fake API server),
# then memory. About 5 minutes.
#
#   scripts/bench.sh [--hpas 2000 --series 1000 --rate 2000 --rounds 3 --phase 5 --protocol h2 ...]
#
# A/B of two builds: the working tree (candidate) against REV (baseline), the request paths
# only, both binaries side by side in interleaved rounds, with candidate/baseline ratios per
# round (absolute figures on a shared machine drift by a quarter within minutes). REV is built
# in a temporary worktree with its own target directory (target/bench-baseline/target, kept, so
# the next comparison builds incrementally); its binary is kept per commit. --instructions N
# also counts instructions per request under callgrind (needs valgrind), N requests per build,
# path and --instructions-concurrency value: work, not seconds.
#
#   scripts/bench.sh --baseline 22df1ce [--rounds 5 --protocol http1 --instructions 2000 ...]
set -euo pipefail
cd "$(dirname "$0")/.."

baseline=""
args=()
while (($#)); do
    case "$1" in
        --baseline)
            baseline="${2:?--baseline needs a revision}"
            shift 2
            ;;
        --baseline=*)
            baseline="${1#--baseline=}"
            shift
            ;;
        *)
            args+=("$1")
            shift
            ;;
    esac
done

cargo build --release --locked -p cloudwatch-metrics-adapter -p cwma-bench
if [[ -z "$baseline" ]]; then
    exec target/release/cwma-bench --adapter target/release/cloudwatch-metrics-adapter "${args[@]}"
fi

commit=$(git rev-parse --verify --quiet "$baseline^{commit}") || {
    echo "--baseline: $baseline is not a commit here" >&2
    exit 2
}
short=$(git rev-parse --short "$commit")
out="$PWD/target/bench-baseline"
binary="$out/cloudwatch-metrics-adapter-$short"
if [[ ! -x "$binary" ]]; then
    mkdir -p "$out"
    tree=$(mktemp -d)
    trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$tree"' EXIT
    git worktree add --detach "$tree" "$commit" >/dev/null
    (cd "$tree" && CARGO_TARGET_DIR="$out/target" cargo build --release --locked -p cloudwatch-metrics-adapter)
    cp "$out/target/release/cloudwatch-metrics-adapter" "$binary"
    git worktree remove --force "$tree"
    rm -rf "$tree"
    trap - EXIT
fi
candidate="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- . || candidate="$candidate+changes"
exec target/release/cwma-bench --adapter target/release/cloudwatch-metrics-adapter \
    --baseline-adapter "$binary" --baseline-name "$short" --candidate-name "$candidate" "${args[@]}"

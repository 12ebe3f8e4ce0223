#!/usr/bin/env bash
# The demo: the adapter against the local CloudWatch emulator, seeded with an SQS-style
# queue-depth series, read back with a real `kubectl get --raw`.
#
#   scripts/demo.sh           # run, print, stop
#   DEMO_KEEP=1 scripts/demo.sh   # leave both running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."

EMULATOR_ADDR=${EMULATOR_ADDR:-127.0.0.1:4599}
SECURE_PORT=${SECURE_PORT:-6443}
ADMIN_PORT=${ADMIN_PORT:-8080}
STATE=.demo
mkdir -p "$STATE"

echo "==> building (the first build of the AWS SDK takes a few minutes)"
cargo build --locked --quiet -p cloudwatch-metrics-adapter -p cloudwatch-emulator
bash scripts/fetch-tools.sh

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "==> starting the CloudWatch emulator on $EMULATOR_ADDR"
target/debug/cloudwatch-emulator --listen "$EMULATOR_ADDR" >"$STATE/emulator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://$EMULATOR_ADDR/_emulator/stats" >/dev/null && break; sleep 0.1; done

echo "==> seeding AWS/SQS ApproximateNumberOfMessagesVisible QueueName=orders (last 15 minutes)"
python3 - "$EMULATOR_ADDR" <<'PY'
import json, sys, time, urllib.request
now = int(time.time()) // 60 * 60
points = [{"timestamp": now - 60 * (15 - i), "value": 100 + 75 * i} for i in range(15)]
body = json.dumps({"namespace": "AWS/SQS", "metricName": "ApproximateNumberOfMessagesVisible",
                   "dimensions": {"QueueName": "orders"}, "unit": "Count", "points": points}).encode()
request = urllib.request.Request(f"http://{sys.argv[1]}/_emulator/data", data=body,
                                 headers={"content-type": "application/json"})
urllib.request.urlopen(request).read()
PY

# No cluster here, so nobody to ask who may read what: allow everyone (a real deployment
# delegates to the cluster with TokenReview and SubjectAccessReview).
echo "==> starting the adapter on https://127.0.0.1:$SECURE_PORT (admin http://127.0.0.1:$ADMIN_PORT)"
AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
AWS_ENDPOINT_URL_CLOUDWATCH="http://$EMULATOR_ADDR" \
  target/debug/cloudwatch-metrics-adapter serve --config examples/metrics.yaml --watch-external-metrics=false \
    --bind-address 127.0.0.1 --secure-port "$SECURE_PORT" \
    --admin-bind-address 127.0.0.1 --admin-port "$ADMIN_PORT" \
    --authorization-mode=AlwaysAllow --anonymous-auth=true --authentication-skip-lookup \
    >"$STATE/adapter.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null && break; sleep 0.1; done

# The adapter generated a self-signed certificate; in a cluster the APIService's caBundle pins it.
# Without a cluster the token is not checked (there is no TokenReview to ask).
kubectl() {
  HOME="$PWD/$STATE" tools/kubectl/kubectl --server="https://127.0.0.1:$SECURE_PORT" \
    --insecure-skip-tls-verify --token=demo "$@" </dev/null
}
run() {
  echo; echo "\$ kubectl $*"
  local out
  if out=$(kubectl "$@" 2>&1); then printf '%s\n' "$out" | python3 -m json.tool; else printf '%s\n' "$out"; fi
}

run get --raw /apis/external.metrics.k8s.io/v1beta1
run get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-messages-visible?labelSelector=QueueName%3Dorders"
echo; echo "# A queue with no datapoints is an error the user can act on, never a made-up 0:"
run get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-messages-visible?labelSelector=QueueName%3Didle"

if [[ "${DEMO_KEEP:-}" == 1 ]]; then
  echo; echo "==> running; logs in $STATE/. Ctrl-C stops both."
  wait
fi

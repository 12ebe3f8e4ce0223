#!/usr/bin/env bash
# Install, start and stop a host-local LocalStack (no Docker) for the CloudWatch conformance suite.
#
#   scripts/localstack.sh start    # installs into .venv-localstack on first use, starts, waits for health
#   scripts/localstack.sh stop     # SIGTERM via the pid file, waits for exit
#   scripts/localstack.sh status
#
# Both commands are idempotent. See ../shared/TESTING.md for why these exact versions and settings.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-localstack"
STATE="$ROOT/.localstack"
PID_FILE="$STATE/localstack.pid"
LOG_FILE="$STATE/localstack.log"
# LOCALSTACK_PORT lets several checkouts run their tests side by side.
LISTEN="127.0.0.1:${LOCALSTACK_PORT:-4566}"
ENDPOINT="http://$LISTEN"
# 4.13.1 is the newest release that runs on Python 3.11; older ones mis-parse the SDK's CBOR timestamps.
# Without cbor2 and service_identity LocalStack finds no component plugins. pyOpenSSL 26 removed
# X509.add_extensions, which LocalStack 4.13.1 calls at start-up ("'X509' object has no attribute
# 'add_extensions'"); 25.3.0 still has it, and service_identity 26 would drag cryptography past what
# pyOpenSSL 25.3.0 accepts, hence both pins.
PACKAGES=('localstack-core[runtime]==4.13.1' 'cbor2<6' 'service_identity==24.2.0' 'pyOpenSSL==25.3.0')
START_TIMEOUT_SECS=60
STOP_TIMEOUT_SECS=30

log() { printf 'localstack.sh: %s\n' "$*" >&2; }

running_pid() {
    # Prints the pid and succeeds only if the pid file names a live process.
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

cloudwatch_healthy() {
    local body
    body="$(curl -sf --max-time 2 "$ENDPOINT/_localstack/health" 2>/dev/null)" || return 1
    # The health document lists each service as "available" or "running" once it can take requests.
    grep -Eq '"cloudwatch": *"(available|running)"' <<<"$body"
}

install() {
    # The marker records the pins the venv was built with, so changing them here reinstalls.
    local marker="$VENV/.packages" wanted
    wanted="$(printf '%s\n' "${PACKAGES[@]}")"
    if [[ -x "$VENV/bin/python" && -f "$marker" && "$(cat "$marker")" == "$wanted" ]]; then
        return 0
    fi
    log "installing LocalStack into $VENV (about 40 s)"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    printf '%s\n' "$wanted" >"$marker"
}

start() {
    mkdir -p "$STATE"
    if pid="$(running_pid)"; then
        log "already running (pid $pid)"
    else
        if cloudwatch_healthy; then
            log "something else already answers on $LISTEN; refusing to start a second LocalStack"
            exit 1
        fi
        install
        log "starting on $LISTEN, log in $LOG_FILE"
        # setsid gives LocalStack its own process group so that `stop` can signal it and its helpers
        # without touching anything else.
        GATEWAY_LISTEN="$LISTEN" SERVICES=cloudwatch,sqs DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
            DNS_ADDRESS=0 SQS_ENDPOINT_STRATEGY=path LOCALSTACK_HOST="$LISTEN" FILESYSTEM_ROOT="$STATE" \
            setsid "$VENV/bin/python" -m localstack.runtime.main >"$LOG_FILE" 2>&1 </dev/null &
        echo $! >"$PID_FILE"
    fi
    local waited=0
    until cloudwatch_healthy; do
        if ! running_pid >/dev/null; then
            log "LocalStack exited during start-up; last log lines:"
            tail -n 30 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((waited >= START_TIMEOUT_SECS * 2)); then
            log "cloudwatch not healthy after ${START_TIMEOUT_SECS}s; last log lines:"
            tail -n 30 "$LOG_FILE" >&2 || true
            exit 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    echo "LOCALSTACK_ENDPOINT=$ENDPOINT"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        log "not running"
        rm -f "$PID_FILE"
        return 0
    fi
    log "stopping pid $pid"
    # Signal the process group created by setsid (the pid is its leader).
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= STOP_TIMEOUT_SECS * 10)); then
            log "still alive after ${STOP_TIMEOUT_SECS}s, sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    log "stopped"
}

status() {
    if pid="$(running_pid)"; then
        echo "running (pid $pid)"
        cloudwatch_healthy && echo "LOCALSTACK_ENDPOINT=$ENDPOINT"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac

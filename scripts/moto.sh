#!/usr/bin/env bash
# Install moto's server (a real SQS implementation the current aws-sdk-sqs talks to) into
# .venv-moto for the SQS tests and the reaction benchmark. Idempotent; prints the binary's path.
#
#   scripts/moto.sh    # installs on first use (~20 s), then prints MOTO_SERVER=<path>
#
# Tests start their own moto_server on 127.0.0.1 with a free port, and stop it when they end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-moto"
PACKAGES=('moto[server]==5.2.5')

marker="$VENV/.packages"
wanted="$(printf '%s\n' "${PACKAGES[@]}")"
if [[ ! -x "$VENV/bin/moto_server" || ! -f "$marker" || "$(cat "$marker")" != "$wanted" ]]; then
    printf 'moto.sh: installing %s into %s\n' "${PACKAGES[*]}" "$VENV" >&2
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    printf '%s\n' "$wanted" >"$marker"
fi
echo "MOTO_SERVER=$VENV/bin/moto_server"

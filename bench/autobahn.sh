#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzing client (../shared/autobahn) against our echo server.
# usage: bench/autobahn.sh [OUTDIR]   env: AB_CASES / AB_EXCLUDE as in ../shared/autobahn
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-var/autobahn}
PORT=${AB_ECHO_PORT:-9001}
AUTOBAHN=../shared/autobahn
[ -x "$AUTOBAHN/run.sh" ] || { echo "no $AUTOBAHN: the suite is not available here" >&2; exit 2; }
"$AUTOBAHN/setup.sh" >/dev/null
.venv/bin/python -m rfc6455.echo --host 127.0.0.1 --port "$PORT" --log-level WARNING &
ECHO_PID=$!
trap 'kill "$ECHO_PID" 2>/dev/null; wait "$ECHO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
"$AUTOBAHN/run.sh" "ws://127.0.0.1:$PORT" "$OUTDIR"

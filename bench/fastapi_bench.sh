#!/usr/bin/env bash
# The FastAPI + uvicorn reference intake (bench/fastapi_intake.py) under the
# same wrk load as crates/gateway/bench/gateway.sh, for the ratio in
# docs/BENCHMARKS.md. Needs: pip install fastapi uvicorn; apt-get install wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CONNS=${CONNS:-32}
# Kept under target/bench-tmp like the gateway's tree (`just bench-clean`).
mkdir -p target/bench-tmp
WORK=$(mktemp -d -p "$PWD/target/bench-tmp" fastapi.XXXXXX)
trap 'kill $PID 2>/dev/null || true' EXIT
QUEUE_DIR=$WORK/q WEBHOOK_TOKEN=bench-token python3 -m uvicorn bench.fastapi_intake:app \
  --port 8091 --log-level warning --no-access-log &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:8091/docs && break; sleep 0.1; done
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"goal": "benchmark job: fix the typo in the README"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
LUA
echo "== FastAPI POST /webhook durable ($CONNS connections, $DURATION)"
wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" http://127.0.0.1:8091/webhook | grep -E 'Requests/sec|99%|50%|Non-2xx'
echo "== RSS: $(awk '/VmRSS/ {print $2 " KiB"}' /proc/$PID/status)"
echo "== job files: $(ls "$WORK/q" | wc -l)"

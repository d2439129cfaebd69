#!/usr/bin/env bash
# Benchmarks orch-gateway with wrk (apt-get install wrk): durable
# `POST /webhook` and `GET /health`, 32 connections, plus the gateway's
# resident memory idle and under load. Runs the release binary in a fresh
# temporary directory; prints one summary block per scenario.
#
# usage: crates/gateway/bench/gateway.sh [duration, default 10s]
set -euo pipefail
cd "$(dirname "$0")/../../.."
DURATION=${1:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}

command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
cargo build --release -p gateway >&2
BIN=$PWD/target/release/orch-gateway
# The tree is kept (under target/bench-tmp, removed by `just bench-clean`):
# deleting ~100,000 files right before the next measurement would make it
# pay for the filesystem's clean-up (see docs/BENCHMARKS.md).
mkdir -p target/bench-tmp
WORK=$(mktemp -d -p "$PWD/target/bench-tmp" gateway.XXXXXX)
LOG=$WORK/gateway.log
cleanup() { [[ -n "${GW_PID:-}" ]] && kill "$GW_PID" 2>/dev/null || true; }
trap cleanup EXIT

(cd "$WORK" && WEBHOOK_TOKEN=bench-token WEBHOOK_RATE_LIMIT_MAX_REQUESTS=1000000000 LOG_LEVEL=info \
  exec "$BIN" --bind 127.0.0.1:0 2>"$LOG") &
GW_PID=$!
for _ in $(seq 100); do grep -q 'listening on http://' "$LOG" && break; sleep 0.05; done
ADDR=$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -1 | sed 's|.*http://||')
[[ -n "$ADDR" ]] || { echo "error: gateway did not start" >&2; cat "$LOG" >&2; exit 1; }
# Audit lines (one per intake) are on, as in production; they go to a file.
rss() { awk '/VmRSS/ {print $2 " KiB"}' "/proc/$GW_PID/status"; }

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"goal": "benchmark job: fix the typo in the README"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
LUA

echo "== idle RSS: $(rss)"
echo "== GET /health ($CONNS connections, $DURATION)"
wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://$ADDR/health" | grep -E 'Requests/sec|99%|50%|Non-2xx'
echo "== POST /webhook durable ($CONNS connections, $DURATION)"
wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" "http://$ADDR/webhook" | grep -E 'Requests/sec|99%|50%|Non-2xx' &
WRK=$!
sleep 2; echo "== RSS under load: $(rss)"
wait $WRK
echo "== job files: $(ls "$WORK/var/queue/pending" | wc -l)"

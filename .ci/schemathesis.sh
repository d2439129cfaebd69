#!/usr/bin/env bash
# The OpenAPI document against the real server: starts orch-gateway on an
# ephemeral loopback port in a scratch directory and runs schemathesis (from
# PyPI, in a venv under target/) against crates/gateway/openapi.json with
# every check it has. Any failure fails CI.
#
# SCHEMATHESIS_EXAMPLES (default 50) and SCHEMATHESIS_SEED (default fixed,
# so a CI run is reproducible; `random` for a fresh one) tune the run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq python3-venv python3-pip) >/dev/null 2>&1
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4.3,<5'
fi
"$venv/bin/schemathesis" --version

cargo build --locked -q -p gateway --bin orch-gateway
work=$(mktemp -d)
gw_pid=
cleanup() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
(
  cd "$work"
  exec env -i PATH="$PATH" WEBHOOK_TOKEN="$token" WEBHOOK_RATE_LIMIT_MAX_REQUESTS=1000000 \
    GITHUB_WEBHOOK_SECRET=schemathesis-secret LOG_LEVEL=info \
    "$root/target/debug/orch-gateway" --bind 127.0.0.1:0
) >"$work/gateway.log" 2>&1 &
gw_pid=$!
url=
for _ in $(seq 100); do
  url=$(grep -o 'listening on http://[0-9.:]*' "$work/gateway.log" | head -1 | sed 's/listening on //' || true)
  [ -n "$url" ] && break
  sleep 0.2
done
if [ -z "$url" ]; then
  echo "orch-gateway did not start:"; cat "$work/gateway.log"; exit 1
fi

seed=${SCHEMATHESIS_SEED:-271828}
seed_args=(--seed "$seed")
[ "$seed" = random ] && seed_args=()
timeout 900 "$venv/bin/schemathesis" run crates/gateway/openapi.json \
  --url "$url" -H "Authorization: Bearer $token" \
  --checks all --max-examples "${SCHEMATHESIS_EXAMPLES:-50}" --workers 2 \
  --request-timeout 30 "${seed_args[@]}"

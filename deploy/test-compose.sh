#!/usr/bin/env bash
# The compose stack, tested the way it fails in production:
#
#  1. builds the images (deploy/docker/build-images.sh) and brings up
#     deploy/docker-compose.yml under a project name of its own, on an
#     ephemeral loopback port; waits until every container is healthy;
#  2. posts a webhook and waits for the job to be done;
#  3. posts a slow job, waits until a runner holds it in its second step,
#     `docker kill`s that runner's container, and checks that the other
#     runner finishes it: resumed at the unfinished step (the first step's
#     result untouched), one queue file, each step run to success once;
#  4. restarts the killed container, checks it is healthy and alive in
#     /health, and that it runs a job alone (the other runner stopped);
#  5. posts webhooks in a loop while the gateway container restarts, and
#     checks that every acknowledged (202) job exists and gets done;
#  6. puts the host's nginx with deploy/nginx/orch.conf in front (TLS with a
#     throw-away certificate) and checks health, intake, X-Forwarded-For
#     handling, the body limit, the /metrics restriction and the redirect;
#  7. checks that bubblewrap works in a runner container with
#     docker-compose.sandbox.yml, and tears everything down, volume included.
#
# Every wait has a deadline; the whole run is bounded by COMPOSE_TEST_TIMEOUT
# seconds (default 900, image build included). On failure the logs of every
# container are printed. Without a Docker engine it prints a SKIPPED line
# and exits 0 (fails under ORCH_TEST_STRICT=1, as on CI). COMPOSE_TEST_SKIP_BUILD=1 reuses the images already built.
set -euo pipefail
cd "$(dirname "$0")"
. docker/common.sh

T0=$SECONDS
LIMIT=${COMPOSE_TEST_TIMEOUT:-900}
say() { echo "== compose test [$((SECONDS - T0))s]: $*" >&2; }
fail() {
  echo "compose test: FAILED: $*" >&2
  exit 1
}

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  # ORCH_TEST_STRICT=1 (CI) makes every skipped test a failure.
  [ "${ORCH_TEST_STRICT:-}" != 1 ] || fail "no Docker engine answers (docker info failed) and ORCH_TEST_STRICT=1"
  echo "compose test: SKIPPED: no Docker engine answers (docker info failed)"
  exit 0
fi
find_compose
for tool in curl jq openssl python3; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done

# Time left before the overall deadline; fails once it has passed.
left() {
  local l=$((LIMIT - (SECONDS - T0)))
  [ "$l" -gt 0 ] || fail "over the ${LIMIT}s budget"
  echo "$l"
}
# wait_until WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_until() {
  local what=$1 limit=$2 t=$SECONDS
  shift 2
  until "$@"; do
    [ $((SECONDS - t)) -lt "$limit" ] || fail "timed out after ${limit}s waiting for $what"
    left >/dev/null
    sleep 0.5
  done
}

tmp=$(mktemp -d)
chmod 755 "$tmp"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
project="orchtest$$"
# A fixed port (not an ephemeral one): it must survive the gateway's restart.
export COMPOSE_PROJECT_NAME=$project ORCH_ENV_FILE="$tmp/orch.env" ORCH_HTTP_PORT
ORCH_HTTP_PORT=$(free_port)
nginx_pid=""
poster_pid=""
cleanup() {
  local rc=$?
  [ -z "$poster_pid" ] || kill "$poster_pid" 2>/dev/null || true
  [ -z "$nginx_pid" ] || kill "$nginx_pid" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    echo "---- compose ps" >&2
    "${COMPOSE[@]}" ps >&2 || true
    echo "---- logs of every container" >&2
    "${COMPOSE[@]}" logs --no-color --timestamps >&2 || true
    [ ! -s "$tmp/nginx-error.log" ] || { echo "---- nginx error log" >&2; cat "$tmp/nginx-error.log" >&2; }
  fi
  "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Images and stack.
if [ "${COMPOSE_TEST_SKIP_BUILD:-0}" != 1 ]; then
  say "building images"
  t=$SECONDS
  timeout "$(left)" docker/build-images.sh || fail "image build failed"
  build_secs=$((SECONDS - t))
else
  build_secs=0
fi
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
cat >"$ORCH_ENV_FILE" <<EOF
WEBHOOK_TOKEN=$token
LOG_LEVEL=info
RUNNER_LEASE_SEC=6
SIMULATION_STEP_MS=100
WEBHOOK_RATE_LIMIT_MAX_REQUESTS=100000
TRUSTED_PROXIES=172.16.0.0/12,192.168.0.0/16,10.0.0.0/8
EOF
say "starting project $project"
t=$SECONDS
"${COMPOSE[@]}" up -d >/dev/null 2>&1 || { "${COMPOSE[@]}" up -d; fail "compose up failed"; }
healthy_secs=$(wait_healthy 120) || fail "the stack did not become healthy"
say "stack healthy ${healthy_secs}s after \`up\` ($((SECONDS - t))s including container creation)"
gw=$("${COMPOSE[@]}" port gateway 8080)
base="http://$gw"
auth=(-H "Authorization: Bearer $token")

# api METHOD PATH [curl args...]: prints the body; the status goes to $tmp/code.
api() {
  local m=$1 p=$2
  shift 2
  curl -sS -m 10 -X "$m" "${auth[@]}" -o "$tmp/body" -w '%{http_code}' "$@" "$base$p" >"$tmp/code" 2>"$tmp/curl.err" || echo 000 >"$tmp/code"
  cat "$tmp/body" 2>/dev/null || true
}
post_job() {
  local body
  body=$(api POST /webhook -H 'Content-Type: application/json' --data-binary "$1")
  [ "$(cat "$tmp/code")" = 202 ] || fail "POST /webhook: $(cat "$tmp/code") $body $(cat "$tmp/curl.err")"
  jq -er .job_id <<<"$body"
}
job() { api GET "/jobs/$1"; }
job_state_is() { [ "$(job "$1" | jq -r .state)" = "$2" ]; }
container_of() { "${COMPOSE[@]}" ps -q "$1"; }
in_runner() { docker exec "$(container_of "$1")" "${@:2}"; }

# 2. A webhook becomes a done job.
say "webhook -> done"
id=$(post_job "$(cat ../examples/webhook_payloads/simple.json)")
wait_until "job $id to be done" 60 job_state_is "$id" done
[ "$(job "$id" | jq -r .status)" = success ] || fail "job $id: $(job "$id")"

# 3. Kill the container of the runner that holds a slow job.
say "slow job; kill the runner holding it"
slow='{"goal": "survive a container kill", "steps": [
  {"step_id": "s1", "agent": "opencode", "role": "planner", "prompt": "quick"},
  {"step_id": "s2", "agent": "codex", "role": "implementer", "prompt": "slow [sim:sleep=20000]"},
  {"step_id": "s3", "agent": "claude", "role": "reviewer", "prompt": "quick"}]}'
id=$(post_job "$slow")
s2_running() { [ "$(job "$id" | jq -r '.job_state.steps.s2.status')" = running ]; }
wait_until "step s2 of $id to run" 60 s2_running
# The running file's name ends in @<runner id>: the claim's owner.
holder_of() {
  holder=$(in_runner runner-1 sh -c "ls var/queue/running" | sed -n "s/.*$id.*@\(.*\)\.json\$/\1/p" | head -1)
  [ -n "$holder" ]
}
wait_until "a runner to hold $id" 30 holder_of
case "$holder" in runner-1) other=runner-2 ;; runner-2) other=runner-1 ;; *) fail "unexpected holder $holder" ;; esac
s1_before=$(in_runner "$holder" cat "artifacts/$id/steps/s1/result.json" | sha256sum)
victim=$(container_of "$holder")
docker kill "$victim" >/dev/null
# Killed in s2, or the test proves nothing.
[ "$(job "$id" | jq -r '.state + " " + .job_state.steps.s2.status')" = "running running" ] ||
  fail "$id was not in step s2 when $holder was killed: $(job "$id")"
say "killed $holder ($victim) in step s2; $other must finish $id"
wait_until "$id to be done by $other" 120 job_state_is "$id" done
view=$(job "$id")
[ "$(jq -r .status <<<"$view")" = success ] || fail "$id after the kill: $view"
[ "$(jq -r .attempt <<<"$view")" = 2 ] || fail "$id: expected a second claim: $view"
for s in s1 s2 s3; do
  [ "$(jq -r --arg s "$s" '.result.steps[] | select(.step_id == $s) | .status' <<<"$view")" = success ] ||
    fail "$id step $s: $view"
done
# s1 and s3 ran once; s2 ran to success once (its killed run left no result).
for s in s1 s3; do
  [ "$(jq -r --arg s "$s" '.result.steps[] | select(.step_id == $s) | .attempts' <<<"$view")" = 1 ] ||
    fail "$id step $s ran more than once: $view"
done
[ "$(in_runner "$other" cat "artifacts/$id/steps/s1/result.json" | sha256sum)" = "$s1_before" ] ||
  fail "$id: s1's result changed: the finished step was run again"
files=$(in_runner "$other" sh -c "ls var/queue/pending var/queue/running var/queue/done var/queue/failed var/queue/awaiting_approval | grep -c -- '$id'")
[ "$files" = 1 ] || fail "$id has $files queue files"
# The name's ~ATTEMPT.REAPS: claimed twice, reaped once (and only $other
# was alive to claim it the second time).
done_name=$(in_runner "$other" sh -c "ls var/queue/done | grep -- '$id'")
case "$done_name" in *"~2.1.json") ;; *) fail "$id finished as $done_name, expected attempt 2 after one reap" ;; esac
say "$other resumed and finished $id ($done_name)"

# 4. The killed runner comes back and works.
say "restarting $holder"
docker start "$victim" >/dev/null
rejoined() {
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$victim")" = healthy ] &&
    curl -sS -m 5 "$base/health" | jq -e --arg r "$holder" '.runners.list[] | select(.id == $r and .alive)' >/dev/null
}
wait_until "$holder to be healthy again" 90 rejoined
"${COMPOSE[@]}" stop "$other" >/dev/null 2>&1
id=$(post_job '{"goal": "only the restarted runner is left"}')
wait_until "$holder alone to finish $id" 60 job_state_is "$id" done
"${COMPOSE[@]}" start "$other" >/dev/null 2>&1

# 5. Webhooks while the gateway restarts: every 202 is a job.
say "posting while the gateway restarts"
: >"$tmp/posts"
(
  i=0
  while [ ! -e "$tmp/stop" ]; do
    i=$((i + 1))
    code=$(curl -sS -m 5 -o "$tmp/post-$i" -w '%{http_code}' "${auth[@]}" -H 'Content-Type: application/json' \
      --data-binary "{\"goal\": \"posted during a restart #$i\"}" "$base/webhook" 2>/dev/null) || code=000
    echo "$i $code" >>"$tmp/posts"
    sleep 0.1
  done
) &
poster_pid=$!
acks() { grep -c ' 202$' "$tmp/posts" || true; }
acks_at_least() { [ "$(acks)" -ge "$1" ]; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container_of "$1")")" = healthy ]; }
wait_until "acknowledged posts before the restart" 30 acks_at_least 5
"${COMPOSE[@]}" restart -t 20 gateway >/dev/null 2>&1
before=$(acks)
wait_until "the gateway to be healthy again" 60 healthy gateway
wait_until "acknowledged posts after the restart" 30 acks_at_least $((before + 5))
touch "$tmp/stop"
wait "$poster_pid" || true
poster_pid=""
total=$(wc -l <"$tmp/posts")
acked=$(acks)
ids=()
while read -r n code; do
  [ "$code" = 202 ] || continue
  ids+=("$(jq -er .job_id "$tmp/post-$n")") || fail "post $n: 202 without a job id"
done <"$tmp/posts"
[ "${#ids[@]}" = "$acked" ] || fail "job ids do not match the acknowledgements"
for j in "${ids[@]}"; do
  job "$j" >/dev/null
  [ "$(cat "$tmp/code")" = 200 ] || fail "acknowledged job $j does not exist ($(cat "$tmp/code"))"
done
all_done() {
  local j
  for j in "${ids[@]}"; do job_state_is "$j" done || return 1; done
}
wait_until "every acknowledged job to be done" 180 all_done
say "$total posts, $acked acknowledged, $((total - acked)) refused or cut off during the restart; all $acked exist and are done"

# 6. nginx in front.
if command -v nginx >/dev/null; then
  say "nginx with deploy/nginx/orch.conf in front"
  https_port=$(free_port)
  http_port=$(free_port)
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=orch.example.com \
    -addext subjectAltName=DNS:orch.example.com \
    -keyout "$tmp/privkey.pem" -out "$tmp/fullchain.pem" >/dev/null 2>&1
  sed -e "s#/etc/ssl/orch/#$tmp/#g" \
    -e "s#server 127.0.0.1:8080;#server $gw;#" \
    -e "s#listen 443 ssl#listen 127.0.0.1:$https_port ssl#" \
    -e "s#listen 80;#listen 127.0.0.1:$http_port;#" \
    -e '/listen \[::\]/d' \
    nginx/orch.conf >"$tmp/orch.conf"
  mkdir -p "$tmp/nginx-temp"
  user_line=""
  [ "$(id -u)" != 0 ] || user_line="user root;"
  cat >"$tmp/nginx.conf" <<EOF
$user_line
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events {}
http {
    access_log $tmp/nginx-access.log;
    client_body_temp_path $tmp/nginx-temp/body;
    proxy_temp_path $tmp/nginx-temp/proxy;
    include $tmp/orch.conf;
}
EOF
  nginx -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" &
  nginx_pid=$!
  tls=(--cacert "$tmp/fullchain.pem" --resolve "orch.example.com:$https_port:127.0.0.1")
  url="https://orch.example.com:$https_port"
  proxied_health() { curl -sS -m 5 "${tls[@]}" "$url/health" 2>/dev/null | jq -e '.status == "ok"' >/dev/null; }
  wait_until "nginx to proxy /health" 30 proxied_health
  # Intake through TLS; the client's own X-Forwarded-For is replaced.
  body=$(curl -sS -m 10 "${tls[@]}" "${auth[@]}" -H 'Content-Type: application/json' \
    -H 'X-Forwarded-For: 203.0.113.9' --data-binary '{"goal": "through the proxy"}' \
    -w '\n%{http_code}' "$url/webhook")
  [ "$(tail -1 <<<"$body")" = 202 ] || fail "POST through nginx: $body"
  id=$(head -1 <<<"$body" | jq -er .job_id)
  remote=$(job "$id" | jq -r .source.meta.remote)
  [ "$remote" = 127.0.0.1 ] || fail "job $id through nginx has client $remote, expected 127.0.0.1"
  # Bodies over MAX_WEBHOOK_BODY_BYTES stop at nginx; the GitHub route takes more.
  head -c 300000 /dev/zero | tr '\0' a >"$tmp/big"
  code=$(curl -sS -m 10 "${tls[@]}" "${auth[@]}" -H 'Content-Type: application/json' \
    --data-binary @"$tmp/big" -o /dev/null -w '%{http_code}' "$url/webhook")
  [ "$code" = 413 ] || fail "a 300 kB webhook through nginx got $code, expected 413"
  code=$(curl -sS -m 10 "${tls[@]}" -H 'Content-Type: application/json' \
    --data-binary @"$tmp/big" -o /dev/null -w '%{http_code}' "$url/webhook/github")
  [ "$code" != 413 ] || fail "the GitHub route refused 300 kB at nginx"
  code=$(curl -sS -m 5 "${tls[@]}" -o /dev/null -w '%{http_code}' "$url/metrics")
  [ "$code" = 403 ] || fail "/metrics through nginx got $code, expected 403"
  code=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/health")
  [ "$code" = 301 ] || fail "plain http got $code, expected a 301 redirect"
  kill "$nginx_pid"
  wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=""
  say "nginx: TLS, intake, X-Forwarded-For, 413, /metrics 403, redirect ok"
else
  [ "${ORCH_TEST_STRICT:-}" != 1 ] || fail "nginx is not installed and ORCH_TEST_STRICT=1"
  say "SKIPPED the nginx part: nginx is not installed"
fi

# The sandbox overlay lets bubblewrap build its namespaces in a runner
# container (the default profile does not).
sandbox_probe=(--rm --no-deps --entrypoint bwrap runner-1 --unshare-all --ro-bind / / --proc /proc --dev /dev true)
"${COMPOSE[@]}" -f docker-compose.yml -f docker-compose.sandbox.yml run "${sandbox_probe[@]}" >"$tmp/bwrap.log" 2>&1 ||
  fail "bubblewrap fails in a runner container with docker-compose.sandbox.yml: $(cat "$tmp/bwrap.log")"
say "bubblewrap runs in a runner container with the sandbox overlay"

# 7. Down, volume included.
"${COMPOSE[@]}" down --volumes --timeout 20 >/dev/null 2>&1
if docker volume inspect "${project}_data" >/dev/null 2>&1; then
  fail "volume ${project}_data is still there"
fi
echo "compose test: passed in $((SECONDS - T0))s (images ${build_secs}s, stack healthy ${healthy_secs}s after up)"

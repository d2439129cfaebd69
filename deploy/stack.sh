#!/usr/bin/env bash
# The compose stack without `just`:
#   deploy/stack.sh image    build the images (deploy/docker/build-images.sh)
#   deploy/stack.sh up       start gateway, two runners and the scheduler; wait for health
#   deploy/stack.sh down     stop and remove the containers (the data volume stays)
#   deploy/stack.sh purge    the same, and delete the data volume
#   deploy/stack.sh test     the compose test (deploy/test-compose.sh)
# Settings: deploy/orch.env, created from orch.env.example with a fresh token
# on the first `up`.
set -euo pipefail
self=$(basename "$0")
cd "$(dirname "$0")"
. docker/common.sh
# The stack is "orch" wherever this checkout lives.
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-orch}
cmd=${1:-}
case "$cmd" in
  image) exec docker/build-images.sh ;;
  test) exec ./test-compose.sh ;;
  up | down | purge) ;;
  *) sed -n '2,9p' "$self" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
find_compose
if [ "$cmd" = up ]; then
  if [ -z "${ORCH_ENV_FILE:-}" ] && [ ! -e orch.env ]; then
    token=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    sed "s/^WEBHOOK_TOKEN=change-me$/WEBHOOK_TOKEN=$token/" orch.env.example >orch.env.tmp
    chmod 600 orch.env.tmp
    mv orch.env.tmp orch.env
    echo "created deploy/orch.env (WEBHOOK_TOKEN is in it)" >&2
  fi
  "${COMPOSE[@]}" up -d
  secs=$(wait_healthy 120)
  echo "stack healthy in ${secs}s; gateway on http://$("${COMPOSE[@]}" port gateway 8080)" >&2
elif [ "$cmd" = down ]; then
  "${COMPOSE[@]}" down
else
  "${COMPOSE[@]}" down --volumes
fi

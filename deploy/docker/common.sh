# Shared by deploy/stack.sh and deploy/test-compose.sh (sourced, not run).

# The compose command: `docker compose` (v2) when the plugin exists, else
# `docker-compose` (v1.29 works). Sets the array COMPOSE.
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    echo "error: neither \`docker compose\` nor \`docker-compose\` is installed" >&2
    return 1
  fi
}

# wait_healthy SECONDS ARGS...: waits until every container of the project
# (compose ARGS) is running and, when it has a health check, healthy.
# Prints the seconds it took; fails naming the laggards after SECONDS.
wait_healthy() {
  local limit=$1 t0=$SECONDS ids id st pending
  shift
  while :; do
    ids=$("${COMPOSE[@]}" "$@" ps -q)
    pending=""
    for id in $ids; do
      st=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
      case "$st" in
        *" running healthy" | *" running none") ;;
        *) pending="$pending ${st%% *}($(echo "$st" | cut -d' ' -f2-))" ;;
      esac
    done
    if [ -n "$ids" ] && [ -z "$pending" ]; then
      echo $((SECONDS - t0))
      return 0
    fi
    if [ $((SECONDS - t0)) -ge "$limit" ]; then
      echo "error: not healthy after ${limit}s:$pending" >&2
      return 1
    fi
    sleep 1
  done
}

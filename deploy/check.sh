#!/usr/bin/env bash
# Checks the systemd units without installing them: `systemd-analyze verify`
# must print nothing (binaries replaced by stand-ins), and the offline
# security exposure of each unit must stay at or below its threshold: 3.0
# for the gateway and the scheduler, RUNNER_MAX for the runner (which keeps
# what bubblewrap needs, see the unit). The runner unit must not carry the
# settings that break bubblewrap's /proc.
# Without systemd-analyze it skips, except under ORCH_TEST_STRICT=1 (CI),
# where a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")"
RUNNER_MAX=3.0
if ! command -v systemd-analyze >/dev/null; then
  if [ "${ORCH_TEST_STRICT:-}" = 1 ]; then
    echo "systemd-analyze not installed and ORCH_TEST_STRICT=1: failing" >&2
    exit 1
  fi
  echo "systemd-analyze not installed; skipping" >&2
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in systemd/*.service; do
  name=$(basename "$u")
  [ "$name" = "orch-runner@.service" ] && name="orch-runner@1.service"
  sed "s|/usr/local/bin/orch-[a-z]*|/bin/true|" "$u" >"$tmp/$name"
  out=$(cd "$tmp" && systemd-analyze verify "./$name" 2>&1) || { echo "$name: $out" >&2; exit 1; }
  [ -z "$out" ] || { echo "$name: $out" >&2; exit 1; }
done
for pair in orch-gateway.service=3.0 orch-scheduler.service=3.0 orch-runner@1.service=$RUNNER_MAX; do
  name=${pair%=*} max=${pair#*=}
  level=$(cd "$tmp" && systemd-analyze security --offline=true "./$name" 2>/dev/null | grep -o 'exposure level for [^:]*: [0-9.]*' | awk '{print $NF}')
  echo "$name: exposure $level (at most $max)"
  awk -v l="$level" -v m="$max" 'BEGIN { exit !(l != "" && l <= m) }' || { echo "$name: exposure above $max" >&2; exit 1; }
done
if grep -Eq '^(ProtectKernelTunables|ProtectKernelLogs)=yes|^ProcSubset=pid' systemd/orch-runner@.service; then
  echo "orch-runner@.service: ProtectKernelTunables, ProtectKernelLogs and ProcSubset=pid make bubblewrap fail to mount /proc" >&2
  exit 1
fi
echo "systemd units verify cleanly"

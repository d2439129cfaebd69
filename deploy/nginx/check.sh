#!/usr/bin/env bash
# Checks deploy/nginx/orch.conf with `nginx -t`: included in a minimal main
# configuration, with the placeholder certificate paths pointed at a
# throw-away self-signed certificate (nginx -t opens them).
set -euo pipefail
cd "$(dirname "$0")"
command -v nginx >/dev/null || { echo "nginx not installed (apt-get install nginx-light); cannot check orch.conf" >&2; exit 1; }
command -v openssl >/dev/null || { echo "openssl not installed; cannot check orch.conf" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=orch.example.com \
  -keyout "$tmp/privkey.pem" -out "$tmp/fullchain.pem" >/dev/null 2>&1
sed "s#/etc/ssl/orch/#$tmp/#g" orch.conf >"$tmp/orch.conf"
grep -q "$tmp/fullchain.pem" "$tmp/orch.conf" || { echo "orch.conf: certificate placeholder /etc/ssl/orch/fullchain.pem not found" >&2; exit 1; }
cat >"$tmp/nginx.conf" <<CONF
pid $tmp/nginx.pid;
error_log stderr;
events {}
http {
    include $tmp/orch.conf;
}
CONF
nginx -t -q -p "$tmp" -c "$tmp/nginx.conf" -e stderr
echo "deploy/nginx/orch.conf: nginx -t ok ($(nginx -v 2>&1 | sed 's/.*: //'))"

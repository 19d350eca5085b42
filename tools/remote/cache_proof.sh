#!/usr/bin/env bash
# Proves the remote cache end to end with a cache server a user could deploy: Debian's
# nginx serving WebDAV (Bazel's HTTP cache protocol is GET and PUT of /ac/<sha256> and
# /cas/<sha256>) on a free loopback port.
#
#   tools/remote/cache_proof.sh [TARGET...]        (default: //...)
#
# In this workspace it runs `bazel clean --expunge` (so nothing is cached locally), then
# `bazel test TARGET... --config=remote-cache` against that server, which executes every
# action and uploads its result; then `bazel clean --expunge` again, which deletes every
# local output, the local action cache and the external repositories; then the same test
# command, which must be served from the remote cache. It prints both runs' times and
# Bazel's process counts, and exits non-zero unless the second run had remote cache hits.
# Everything built here before is gone afterwards (the next build rebuilds it), and nginx
# and its cache directory are removed when the script exits.
#
# Extra Bazel flags for both runs: PROOF_BAZEL_FLAGS, e.g.
#   PROOF_BAZEL_FLAGS="--jobs=2" tools/remote/cache_proof.sh //itests/...
# nginx must be installed (Debian's `nginx`). It is not in tools/system-packages.txt: the
# tests do not need it, and installing the package starts a system web server on some machines.
set -euo pipefail

workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bazel="$workspace/tools/bazel"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(//...)
fi
read -r -a extra_flags <<<"${PROOF_BAZEL_FLAGS:-}"

say() { printf 'cache_proof: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 1
}

# --- nginx -------------------------------------------------------------------------

nginx_bin=$(PATH="$PATH:/usr/sbin:/sbin" command -v nginx) ||
  die "nginx is not installed: apt-get install nginx"
"$nginx_bin" -V 2>&1 | grep -q -- '--with-http_dav_module' ||
  die "$nginx_bin is built without ngx_http_dav_module; Debian's nginx has it"

work=$(mktemp -d "${TMPDIR:-/tmp}/ssot-cache-proof.XXXXXX")
nginx_pid=""

# nginx runs in the foreground as this script's child, so stopping it is a signal and a wait.
stop_nginx() {
  [ -n "$nginx_pid" ] || return 0
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  nginx_pid=""
}

cleanup() {
  local status=$?
  stop_nginx
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/nginx/temp" "$work/cache"

# A TCP port that was free on loopback a moment ago (nginx cannot report a port 0 bind).
free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

write_nginx_conf() {
  local port=$1 user_line=""
  # A master started as root switches its workers to `user`; keep them on this account
  # (their files live in our temp dir). Without root the directive does not apply.
  if [ "$(id -u)" -eq 0 ]; then
    user_line="user $(id -un) $(id -gn);"
  fi
  cat >"$work/nginx/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 512; }
http {
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx/temp/body;
    proxy_temp_path $work/nginx/temp/proxy;
    fastcgi_temp_path $work/nginx/temp/fastcgi;
    uwsgi_temp_path $work/nginx/temp/uwsgi;
    scgi_temp_path $work/nginx/temp/scgi;
    server {
        # Loopback only, so no authentication; a shared deployment adds TLS and auth.
        listen 127.0.0.1:$port;
        root $work/cache;
        # Test outputs and wheels' files can be large: no upload limit.
        client_max_body_size 0;
        location / {
            # PUT stores an entry (nginx writes it to a temp file and renames it in,
            # so readers never see half an entry); GET and HEAD read it.
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw;
            limit_except GET HEAD PUT DELETE { deny all; }
        }
    }
}
EOF
}

# Stores, reads back and deletes one entry (outside /ac and /cas, so it is not counted).
self_check() {
  python3 - "$1" <<'EOF'
import sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/self-check/entry"
urllib.request.urlopen(urllib.request.Request(base, data=b"ok", method="PUT"), timeout=5)
assert urllib.request.urlopen(base, timeout=5).read() == b"ok"
urllib.request.urlopen(urllib.request.Request(base, method="DELETE"), timeout=5)
EOF
}

# Starts nginx on port $1; fails (with nginx stopped) unless it serves within 5 s.
start_nginx() {
  write_nginx_conf "$1"
  # -e: nginx opens its compiled-in error log before it reads the config.
  "$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" \
    2>>"$work/nginx/start.log" &
  nginx_pid=$!
  for _ in $(seq 50); do
    self_check "$1" 2>/dev/null && return 0
    kill -0 "$nginx_pid" 2>/dev/null || break # it exited: the port was taken meanwhile
    sleep 0.1
  done
  stop_nginx
  return 1
}

port=""
for _ in 1 2 3 4 5; do
  candidate=$(free_port)
  if start_nginx "$candidate"; then
    port=$candidate
    break
  fi
done
[ -n "$port" ] || die "nginx did not start: $(cat "$work/nginx/start.log" "$work/nginx/error.log" 2>/dev/null)"
cache_url="http://127.0.0.1:$port"
say "nginx WebDAV cache at $cache_url (pid $nginx_pid, files in $work/cache)"

# --- the two runs --------------------------------------------------------------------

test_command=(
  test
  --config=remote-cache
  --remote_cache="$cache_url"
  "${extra_flags[@]}"
  --
  "${targets[@]}"
)

run_tests() {
  local log=$1 start
  start=$(date +%s)
  say "running: tools/bazel ${test_command[*]}"
  if ! "$bazel" "${test_command[@]}" 2>&1 | tee "$log" >&2; then
    die "bazel test failed (output above); no proof"
  fi
  elapsed=$(($(date +%s) - start))
}

# The counts Bazel prints, e.g. "INFO: 31 processes: 20 remote cache hit, 11 internal."
process_line() { grep -E '^INFO: [0-9]+ processes?:' "$1" | tail -n 1 | sed 's/^INFO: //'; }
remote_hits() {
  process_line "$1" | grep -oE '[0-9]+ remote cache hit' | grep -oE '^[0-9]+' || echo 0
}
# nginx's access log lines from line $1 on that match the regular expression $2.
count_requests() { tail -n "+$1" "$work/nginx/access.log" | grep -cE "$2" || true; }
test_results() { grep -cE '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|FLAKY|TIMEOUT|NO STATUS)' "$1" || true; }
cached_results() { grep -cE '^//[^ ]+ +\(cached\) PASSED' "$1" || true; }

expunge() {
  say "clean --expunge: every local output, the action cache and the external repositories go"
  "$bazel" clean --expunge 2>&1 | tail -n 1 >&2
}

cd "$workspace"
expunge
run_tests "$work/first.log"
first_time=$elapsed
first_puts=$(count_requests 1 '"PUT /(ac|cas)/[^ ]* HTTP/1\.1" 201 ')

expunge
second_from=$(($(wc -l <"$work/nginx/access.log") + 1))

run_tests "$work/second.log"
second_time=$elapsed
second_hits=$(remote_hits "$work/second.log")
ac_reads=$(count_requests "$second_from" '"GET /ac/')
ac_found=$(count_requests "$second_from" '"GET /ac/[^ ]* HTTP/1\.1" 200 ')
cas_found=$(count_requests "$second_from" '"GET /cas/[^ ]* HTTP/1\.1" 200 ')

cat <<EOF

==== remote cache proof: ${targets[*]}
cache server:   nginx $("$nginx_bin" -v 2>&1 | sed 's|.*/||') WebDAV at $cache_url, $(du -sh "$work/cache" | cut -f1) stored
first run:      ${first_time}s, cold: $(process_line "$work/first.log")
                ${first_puts} entries uploaded (HTTP PUT 201)
                test results: $(test_results "$work/first.log"), of which (cached): $(cached_results "$work/first.log")
clean --expunge
second run:     ${second_time}s: $(process_line "$work/second.log")
                remote cache hits: ${second_hits}
                action cache lookups: ${ac_reads}, found: ${ac_found}; outputs downloaded: ${cas_found}
                test results: $(test_results "$work/second.log"), of which (cached): $(cached_results "$work/second.log")
EOF

[ "$second_hits" -gt 0 ] || die "FAILED: the second run had no remote cache hits"
say "OK: after clean --expunge the second run took ${second_hits} results from the remote cache"

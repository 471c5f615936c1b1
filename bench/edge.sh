#!/usr/bin/env bash
# Edge hardening (issue 26): Sluicegate beside haproxy and nginx under client abuse, in one run on loopback,
# in front of the same backends. For each row of the issue's table and each proxy (a fresh proxy process per
# row), the abuse runs while a legit client sends a GET every LEGIT_INTERVAL s on a new connection; the script
# records the proxy's RSS (summed over its processes: Sluicegate's one, haproxy's one, nginx's master and
# workers) before, at the peak (sampled every second) and AFTER_WAIT s after the abuse ended, the peak of
# established connections from the proxy to the backends, the legit success rate, and whether an endpoint was
# taken out of service: right after the abuse, PROBES GETs go through the proxy to each cluster and the
# backends' own logs show whether both of its endpoints still get traffic (for Sluicegate also the delta of
# sluicegate_health_transitions{event="ejected"|"down"} in /metrics). The rows:
#   1   h2c: H2_CONNS connections, each with a 2^31-1 window and H2_STREAMS streams of GET /big (1 MB), never
#       reading, held HOLD s
#   2a  HTTP/1.1 GET /big with a 4 KB receive buffer, never reading: SLOW_CONNS_A connections, held HOLD s
#   2b  the same with SLOW_CONNS_B connections
#   5   IDLE_CONNS connections (spread over IDLE_PROCS client processes) that each send one GET /small, read the
#       answer, then idle HOLD s
#   6   BADCHUNK_COUNT POSTs /post with a malformed chunked body ("zz" as the chunk size): the statuses, and
#       whether an endpoint got ejected
#   3   one legitimate upload, POST /upload of UPLOAD_MB MB paced at UPLOAD_RATE MB/s (default 300 MB at 50 MB/s:
#       6 s, longer than the 5 s upstream timeouts below, as the issue's 1 GB at 50 MB/s was longer than the 15 s
#       response_timeout): its status and when it came
#   4   the backend sends a head (Content-Length: 1000) and 10 bytes, then stalls: seconds until the client's
#       response ends, over HTTP/1.1 and over h2c (at most STALL_CAP s)
#   9   h2c: one GET, then a PING every PING_EVERY s: seconds until the proxy closes the connection (at most
#       IDLE + 20 s); rows 4 and 9 run at the same time, against one proxy
# and prints (and writes) a table: one line per row, a column per proxy, and Sluicegate's pass/fail against the
# issue's targets (the same rules are applied to the peers, marked in their cells):
#   every row: legit requests 100% successful, no endpoint taken out (no probe finds an endpoint without traffic;
#       Sluicegate: no ejected/down transition);
#   1, 2a, 2b: RSS growth at the peak at or below nginx's peak growth, and 10 s after at or below nginx's
#       after-growth + RSS_SLACK_MB (16 MB: an allocator keeps some pages);
#   6: every answer a 4xx;  3: 200;  4: both responses end within UPSTREAM_TIMEOUT + 5 s;  9: closed within
#       IDLE + 10 s.
#
#   bench/edge.sh             the run (~14 min at the defaults); prints the table and writes
#                             bench/results/<UTC date>-edge/: table.md, and per proxy and row (<proxy>/<row>/)
#                             the clients' JSON results, the proxy's config and logs, /status and /metrics
#                             (Sluicegate), haproxy's `show stat`
#   QUICK=1 bench/edge.sh     a quick check of the mechanics (~6 min): fewer clients (h2 5 x 100 streams,
#                             slow readers 200 / 1000, idle 4,000), HOLD=4, RAMP_MAX=20, AFTER_WAIT=3, IDLE=10, PING_EVERY=3,
#                             STALL_CAP=15
#   PROXIES=sluicegate ROWS="4-9" bench/edge.sh     one proxy, one row (the RSS rows then have no nginx
#                             figure to compare with: their verdict is "n/a")
#
# Settings (environment, defaults in brackets): BIN (the proxy [target/release/sluicegate]; not built here:
# `cargo build --release -p sluicegate`), PROXIES ["sluicegate haproxy nginx"], ROWS ["1 2a 2b 5 6 3 4-9"],
# HOLD (s each flood is held once open [10]), RAMP_MAX (s a flood's clients take to open their connections;
# those not open by then are given up and counted as errors "ramp_max" [60; QUICK: 20]), AFTER_WAIT (s between the end of the abuse and the "after" RSS
# [10]), H2_CONNS [20], H2_STREAMS [200], SLOW_CONNS_A [1000], SLOW_CONNS_B [5000], IDLE_CONNS [20000],
# IDLE_PROCS [4], BADCHUNK_COUNT [20: ten per endpoint of the cluster], UPLOAD_MB [300], UPLOAD_RATE [50],
# STALL_CAP [75], PING_EVERY [20], IDLE (the proxies' client idle timeout, s [60]), UPSTREAM_TIMEOUT (s [5]),
# LEGIT_INTERVAL (s between legit requests [0.05]), PROBES (GETs per cluster after each abuse [20]),
# RSS_SLACK_MB [16], SG_LABEL (how the table names the Sluicegate build [the commit, +dirty when host/, config/,
# upstream/ or plugin-runtime/ have uncommitted changes]: set it when BIN is a copy of an older build), KEEP_WORK (1: keep the scratch directory), MAX_SECONDS (hard bound on the run [1800]).
#
# The proxies and how their settings map (2 workers each; access logs on, to a file):
#   Sluicegate: workers = 2; listener header_read_timeout = 10s, idle_timeout = IDLE, the rest at their
#     defaults (send_timeout 60s, body_read_timeout 60s, h2_max_concurrent_streams 100, [limits] at their
#     defaults: max_connections half of what the 512 reserved descriptors leave of RLIMIT_NOFILE, ~9,700 here);
#     clusters: connect_timeout 1s, response_timeout = read_timeout = write_timeout = UPSTREAM_TIMEOUT,
#     retry attempts 3, [clusters.outlier] consecutive_5xx = consecutive_gateway_errors = 5, active http
#     checks (interval 2s, fall 3, rise 2).
#   haproxy: nbthread 2, maxconn 9500 (what 20,000 descriptors allow: two per proxied connection plus
#     haproxy's own); timeout http-request 10s, client IDLE (also its h2 idle and send timeout), http-keep-alive
#     IDLE, connect 1s, server UPSTREAM_TIMEOUT (an inactivity timeout: response head and body alike); retries 3
#     + option redispatch; per server `check inter 2s fall 3 rise 2 observe layer7 error-limit 5 on-error
#     mark-down` (its passive check: 5xx answers); h2c with prior knowledge on the same port (preface detected).
#     No request body limit (as Sluicegate's default). Access log to stdout (a file).
#   nginx: worker_processes 2, worker_rlimit_nofile 20000, worker_connections 10000 (per worker, clients and
#     upstreams together); client_header_timeout 10s, keepalive_timeout IDLE (also HTTP/2's idle timeout in
#     1.22), send_timeout 60s, client_body_timeout 60s; proxy_connect_timeout 1s, proxy_read_timeout =
#     proxy_send_timeout = UPSTREAM_TIMEOUT; proxy_next_upstream error timeout, tries 3; per server
#     max_fails=5 fail_timeout=30s (its passive check; nginx has no active one); client_max_body_size 0 (no
#     limit, unlike its 1 MB default, to match the others) and proxy_request_buffering off (uploads stream, as in
#     the others); proxy_buffering at its default (on: a slow client's response goes to a temp file). nginx
#     1.22 cannot serve h2c and HTTP/1.1 on one port: its h2c rows use a second listener with `http2`.
# Backends: one nginx (2 workers) listening on two ports (the two endpoints of cluster "web": /small 23 B,
# /big 1 MB, /post), and bench/edge/backend.py on two ports (cluster "helper": /stall, /upload, /probe).
#
# Descriptors: RLIMIT_NOFILE is raised to its hard limit (here 20,000) in this script (ulimit -n) and so in
# every client and proxy it starts; row 5's connections are spread over IDLE_PROCS client processes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    : "${HOLD:=4}" "${RAMP_MAX:=20}" "${AFTER_WAIT:=3}" "${H2_CONNS:=5}" "${H2_STREAMS:=100}" "${SLOW_CONNS_A:=200}" "${SLOW_CONNS_B:=1000}"
    : "${IDLE_CONNS:=4000}" "${IDLE_PROCS:=2}" "${UPLOAD_MB:=300}" "${STALL_CAP:=15}" "${PING_EVERY:=3}" "${IDLE:=10}"
fi
BIN=${BIN:-target/release/sluicegate}
PROXIES=${PROXIES:-"sluicegate haproxy nginx"}
ROWS=${ROWS:-"1 2a 2b 5 6 3 4-9"}
HOLD=${HOLD:-10}
RAMP_MAX=${RAMP_MAX:-60}
AFTER_WAIT=${AFTER_WAIT:-10}
H2_CONNS=${H2_CONNS:-20}
H2_STREAMS=${H2_STREAMS:-200}
SLOW_CONNS_A=${SLOW_CONNS_A:-1000}
SLOW_CONNS_B=${SLOW_CONNS_B:-5000}
IDLE_CONNS=${IDLE_CONNS:-20000}
IDLE_PROCS=${IDLE_PROCS:-4}
BADCHUNK_COUNT=${BADCHUNK_COUNT:-20}
UPLOAD_MB=${UPLOAD_MB:-300}
UPLOAD_RATE=${UPLOAD_RATE:-50}
STALL_CAP=${STALL_CAP:-75}
PING_EVERY=${PING_EVERY:-20}
IDLE=${IDLE:-60}
UPSTREAM_TIMEOUT=${UPSTREAM_TIMEOUT:-5}
LEGIT_INTERVAL=${LEGIT_INTERVAL:-0.05}
PROBES=${PROBES:-20}
RSS_SLACK_MB=${RSS_SLACK_MB:-16}
MAX_SECONDS=${MAX_SECONDS:-1800}
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
CLIENTS=$ROOT/bench/edge/clients.py

log() { printf '[edge %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- settings, checked before anything starts
[[ $BIN == /* ]] || { [[ -e $BIN ]] && BIN=$PWD/$BIN || BIN=$ROOT/$BIN; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
for v in HOLD RAMP_MAX AFTER_WAIT H2_CONNS H2_STREAMS SLOW_CONNS_A SLOW_CONNS_B IDLE_CONNS IDLE_PROCS BADCHUNK_COUNT STALL_CAP \
    IDLE UPSTREAM_TIMEOUT PROBES RSS_SLACK_MB MAX_SECONDS; do
    is_uint "${!v}" || die "$v must be a whole number, not '${!v}'"
done
for v in UPLOAD_MB UPLOAD_RATE PING_EVERY LEGIT_INTERVAL; do is_num "${!v}" || die "$v must be a number, not '${!v}'"; done
((IDLE_PROCS > 0 && IDLE > 0 && UPSTREAM_TIMEOUT > 0)) || die "IDLE_PROCS, IDLE and UPSTREAM_TIMEOUT must be at least 1"
for p in $PROXIES; do [[ $p == sluicegate || $p == haproxy || $p == nginx ]] || die "PROXIES: '$p' is not sluicegate, haproxy or nginx"; done
for r in $ROWS; do [[ $r =~ ^(1|2a|2b|5|6|3|4-9)$ ]] || die "ROWS: '$r' is not one of 1 2a 2b 5 6 3 4-9"; done
[[ " $PROXIES " != *" sluicegate "* || -x $BIN ]] || die "no proxy binary at $BIN: build it (cargo build --release -p sluicegate) or set BIN"
command -v python3 >/dev/null || die "python3 is needed for the clients (bench/edge/*.py)"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
((NOFILE >= 4096)) || log "warning: RLIMIT_NOFILE is only $NOFILE: the floods will be cut short by it"

# ---------------------------------------------------------------- processes: every one is killed on exit
start_work edge

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v jq >/dev/null || need_pkgs+=(jq)
install_pkgs "${need_pkgs[@]}"

# ---------------------------------------------------------------- the bound on the whole run
bound_run "$MAX_SECONDS"

RESULTS=${RESULTS:-$ROOT/bench/results/$STAMP-edge}
mkdir -p "$RESULTS"
SG_VERSION=${SG_LABEL:-}
[[ -n $SG_VERSION ]] || SG_VERSION="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- host config upstream plugin-runtime Cargo.toml Cargo.lock && echo "" || echo "+dirty")"
SG_BUILT=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo "?")

client() { python3 "$CLIENTS" "$@"; }

# ---------------------------------------------------------------- the backends
free_port; B1=$PORT
free_port; B2=$PORT
free_port; H1=$PORT
free_port; H2=$PORT
mkdir -p "$WORK/backend/www" "$WORK/backend/tmp"
printf 'hello from the backend\n' >"$WORK/backend/www/small" # 23 bytes
head -c $((1 << 20)) /dev/zero | tr '\0' 'b' >"$WORK/backend/www/big"
chmod -R a+rX "$WORK/backend"
BACKEND_LOG=$WORK/backend/access.log
HELPER_LOG=$WORK/helper.log
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $((NOFILE - 100)); }
http {
    log_format edge '\$server_port \$request_method \$request_uri \$status';
    access_log $BACKEND_LOG edge;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/backend/tmp; proxy_temp_path $WORK/backend/tmp; fastcgi_temp_path $WORK/backend/tmp;
    uwsgi_temp_path $WORK/backend/tmp; scgi_temp_path $WORK/backend/tmp;
    default_type text/plain;
    server {
        listen 127.0.0.1:$B1 backlog=4096;
        listen 127.0.0.1:$B2 backlog=4096;
        root $WORK/backend/www;
        location = /post { return 200 "ok\n"; }
    }
}
EOF
nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -g 'daemon off;' >"$WORK/backend/out.log" 2>&1 &
PIDS+=($!)
port_listening "$B2" "$!" 10 || die "the backend nginx is not listening on $B2: $(tail -5 "$WORK/backend/error.log" 2>/dev/null)"
python3 "$ROOT/bench/edge/backend.py" --ports "$H1" "$H2" --log "$HELPER_LOG" 2>"$WORK/helper.stderr" &
PIDS+=($!)
port_listening "$H2" "$!" 10 || die "bench/edge/backend.py is not listening on $H2: $(tail -5 "$WORK/helper.stderr")"
[[ $(curl -fsS --max-time 5 "http://127.0.0.1:$B1/small") == "hello from the backend" ]] || die "the backend does not serve /small"
[[ $(curl -fsS --max-time 5 "http://127.0.0.1:$H1/probe") == "ok" ]] || die "the helper backend does not serve /probe"
log "backends: nginx on $B1 and $B2 (cluster web), bench/edge/backend.py on $H1 and $H2 (cluster helper)"

# ---------------------------------------------------------------- the proxies' configs
# Each start_<proxy> dir sets PROXY_PID, PORT_H1 (HTTP/1.1) and PORT_H2C (h2c with prior knowledge).
ADMIN_PORT=
start_sluicegate() {
    local dir=$1 i
    free_port; PORT_H1=$PORT; PORT_H2C=$PORT
    free_port; ADMIN_PORT=$PORT
    cat >"$dir/sluicegate.toml" <<EOF
workers = 2

[[listeners]]
address = "127.0.0.1:$PORT_H1"
header_read_timeout = "10s"
idle_timeout = "${IDLE}s"

[admin]
address = "127.0.0.1:$ADMIN_PORT"

[access_log]
path = "access.log"

[shutdown]
drain_timeout = "1s"

[[routes]]
path_prefix = "/stall"
cluster = "helper"

[[routes]]
path_prefix = "/upload"
cluster = "helper"

[[routes]]
path_prefix = "/probe"
cluster = "helper"

[[routes]]
path_prefix = "/"
cluster = "web"
EOF
    local c
    for c in web helper; do
        local e1=$B1 e2=$B2 check=/small
        [[ $c == web ]] || { e1=$H1; e2=$H2; check=/probe; }
        cat >>"$dir/sluicegate.toml" <<EOF

[[clusters]]
name = "$c"
connect_timeout = "1s"
response_timeout = "${UPSTREAM_TIMEOUT}s"
read_timeout = "${UPSTREAM_TIMEOUT}s"
write_timeout = "${UPSTREAM_TIMEOUT}s"
retry = { attempts = 3 }

[clusters.health_check]
kind = "http"
path = "$check"
interval = "2s"
fall = 3
rise = 2

[clusters.outlier]
consecutive_5xx = 5
consecutive_gateway_errors = 5

[[clusters.endpoints]]
address = "127.0.0.1:$e1"

[[clusters.endpoints]]
address = "127.0.0.1:$e2"
EOF
    done
    # A binary older than the cluster read/write timeouts refuses them: they are left out, and the table says so.
    local key checked
    for key in read_timeout write_timeout; do
        checked=$("$BIN" check --config "$dir/sluicegate.toml" 2>&1 || true)
        if [[ $checked == *"unknown field \`$key\`"* ]]; then
            sed -i "/^$key = /d" "$dir/sluicegate.toml"
            echo "$key" >>"$RESULTS/sluicegate-keys-left-out"
        fi
    done
    env -u RUST_LOG "$BIN" run --config "$dir/sluicegate.toml" >"$dir/proxy.stdout.log" 2>"$dir/proxy.stderr.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    for i in $(seq 300); do
        kill -0 "$PROXY_PID" 2>/dev/null || return 1
        curl -fsS --max-time 1 "http://127.0.0.1:$ADMIN_PORT/status" >/dev/null 2>&1 && break
        sleep 0.1
    done
}
start_haproxy() {
    local dir=$1
    free_port; PORT_H1=$PORT; PORT_H2C=$PORT
    cat >"$dir/haproxy.cfg" <<EOF
global
    maxconn 9500
    nbthread 2
    stats socket $dir/haproxy.sock mode 600 level admin
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout http-request 10s
    timeout client ${IDLE}s
    timeout http-keep-alive ${IDLE}s
    timeout server ${UPSTREAM_TIMEOUT}s
    retries 3
    option redispatch

frontend fe
    bind 127.0.0.1:$PORT_H1
    acl helper path_beg /stall /upload /probe
    use_backend helper if helper
    default_backend web

backend web
    balance roundrobin
    option httpchk GET /small
    server b1 127.0.0.1:$B1 check inter 2s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down
    server b2 127.0.0.1:$B2 check inter 2s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down

backend helper
    balance roundrobin
    option httpchk GET /probe
    server h1 127.0.0.1:$H1 check inter 2s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down
    server h2 127.0.0.1:$H2 check inter 2s fall 3 rise 2 observe layer7 error-limit 5 on-error mark-down
EOF
    haproxy -db -f "$dir/haproxy.cfg" >"$dir/proxy.stdout.log" 2>"$dir/proxy.stderr.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
}
start_nginx() {
    local dir=$1 loc
    free_port; PORT_H1=$PORT
    free_port; PORT_H2C=$PORT
    mkdir -p "$dir/tmp"
    loc="location / { proxy_pass http://web; }
        location ^~ /stall { proxy_pass http://helper; }
        location ^~ /upload { proxy_pass http://helper; }
        location ^~ /probe { proxy_pass http://helper; }"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $((NOFILE / 2)); }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
    client_header_timeout 10s;
    keepalive_timeout ${IDLE}s;
    send_timeout 60s;
    client_body_timeout 60s;
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 1s;
    proxy_read_timeout ${UPSTREAM_TIMEOUT}s;
    proxy_send_timeout ${UPSTREAM_TIMEOUT}s;
    proxy_next_upstream error timeout;
    proxy_next_upstream_tries 3;
    proxy_request_buffering off;
    upstream web {
        server 127.0.0.1:$B1 max_fails=5 fail_timeout=30s;
        server 127.0.0.1:$B2 max_fails=5 fail_timeout=30s;
        keepalive 64;
    }
    upstream helper {
        server 127.0.0.1:$H1 max_fails=5 fail_timeout=30s;
        server 127.0.0.1:$H2 max_fails=5 fail_timeout=30s;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PORT_H1 backlog=4096;
        $loc
    }
    server {
        listen 127.0.0.1:$PORT_H2C http2 backlog=4096;
        $loc
    }
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' >"$dir/proxy.stdout.log" 2>"$dir/proxy.stderr.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
}

stop_proxy() { # pid: SIGTERM, bounded wait, then KILL (nginx: SIGQUIT would wait for its slow clients)
    local i
    kill -TERM "$1" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$1" 2>/dev/null; then
        log "warning: the proxy ($1) did not exit 10 s after SIGTERM; killing it"
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# What each proxy says about its endpoints being taken out.
sg_transitions() { # -> ejected+down transitions so far
    curl -fsS --max-time 3 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null |
        awk '/^sluicegate_health_transitions/ && /event="(ejected|down)"/ {s += $NF} END {print s + 0}'
}
ha_stat() { # dir -> haproxy's `show stat` (CSV)
    python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(3); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
out = b""
while True:
    d = s.recv(65536)
    if not d: break
    out += d
sys.stdout.write(out.decode())' "$1/haproxy.sock" 2>/dev/null || true
}
ha_downs() { # dir -> UP->DOWN transitions of the servers (chkdown), summed
    ha_stat "$1" | awk -F, 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "chkdown") c = i; next}
        $2 != "FRONTEND" && $2 != "BACKEND" && c {s += $c} END {print s + 0}'
}

# probe dir tag: PROBES GETs per cluster through the proxy; per endpoint, how many the backends' logs saw.
# Writes probe.json: {"answers": {...}, "hits": {"web:b1": n, ...}, "starved": endpoints with no hit}.
probe() {
    local dir=$1 tag=$2 web helper
    web=$(client --port "$PORT_H1" probe --path /small --tag "$tag-w" --count "$PROBES")
    helper=$(client --port "$PORT_H1" probe --path /probe --tag "$tag-h" --count "$PROBES")
    sleep 0.3 # the backends' logs
    local w1 w2 h1 h2
    w1=$(grep -c "^$B1 GET /small?probe=$tag-w-" "$BACKEND_LOG" || true)
    w2=$(grep -c "^$B2 GET /small?probe=$tag-w-" "$BACKEND_LOG" || true)
    h1=$(grep -c "^$H1 GET /probe?probe=$tag-h-" "$HELPER_LOG" || true)
    h2=$(grep -c "^$H2 GET /probe?probe=$tag-h-" "$HELPER_LOG" || true)
    jq -cn --argjson web "$web" --argjson helper "$helper" --argjson w1 "$w1" --argjson w2 "$w2" \
        --argjson h1 "$h1" --argjson h2 "$h2" \
        '{web: $web.answers, helper: $helper.answers, hits: {"web:1": $w1, "web:2": $w2, "helper:1": $h1, "helper:2": $h2},
          starved: ([$w1, $w2, $h1, $h2] | map(select(. == 0)) | length)}' >"$dir/probe.json"
}

# ---------------------------------------------------------------- the abuse of each row
# abuse row dir: runs the row's clients against the proxy (in the foreground), their results in $dir/abuse.json.
abuse() {
    local row=$1 dir=$2 bound=$((HOLD + RAMP_MAX + 60)) i pids=()
    case $row in
    1) timeout "$bound" python3 "$CLIENTS" --port "$PORT_H2C" h2flood --conns "$H2_CONNS" --streams "$H2_STREAMS" --hold "$HOLD" --ramp-max "$RAMP_MAX" \
        >"$dir/abuse.json" 2>>"$dir/clients.log" || true ;;
    2a | 2b)
        local n=$SLOW_CONNS_A
        [[ $row == 2a ]] || n=$SLOW_CONNS_B
        timeout "$bound" python3 "$CLIENTS" --port "$PORT_H1" h1slow --conns "$n" --hold "$HOLD" --ramp-max "$RAMP_MAX" \
            >"$dir/abuse.json" 2>>"$dir/clients.log" || true ;;
    5)
        local per=$(((IDLE_CONNS + IDLE_PROCS - 1) / IDLE_PROCS))
        for ((i = 0; i < IDLE_PROCS; i++)); do
            timeout "$bound" python3 "$CLIENTS" --port "$PORT_H1" idle --conns "$per" --hold "$HOLD" --ramp-max "$RAMP_MAX" --parallel 500 \
                --connect-timeout 3 >"$dir/abuse.$i.json" 2>>"$dir/clients.log" &
            pids+=($!)
        done
        PIDS+=("${pids[@]}")
        for i in "${pids[@]}"; do wait "$i" || true; forget_pid "$i"; done
        jq -cs '{opened: (map(.opened // 0) | add), wanted: (map(.wanted // 0) | add), ramp_s: (map(.ramp_s // 0) | max),
                 closed_by_server: (map(.closed_by_server // 0) | add), errors: (map(.errors // {} | to_entries) | add // [] | group_by(.key)
                 | map({key: .[0].key, value: (map(.value) | add)}) | from_entries)}' "$dir"/abuse.*.json >"$dir/abuse.json" ;;
    6) # then 2 s more of the legit loop: an ejection shows in it too
        timeout 300 python3 "$CLIENTS" --port "$PORT_H1" badchunk --count "$BADCHUNK_COUNT" >"$dir/abuse.json" 2>>"$dir/clients.log" || true
        sleep 2 ;;
    3) timeout 300 python3 "$CLIENTS" --port "$PORT_H1" upload --size-mb "$UPLOAD_MB" --rate-mb "$UPLOAD_RATE" --cap 120 \
        >"$dir/abuse.json" 2>>"$dir/clients.log" || true ;;
    4-9)
        python3 "$CLIENTS" --port "$PORT_H1" stall-h1 --cap "$STALL_CAP" >"$dir/stall-h1.json" 2>>"$dir/clients.log" &
        pids+=($!)
        python3 "$CLIENTS" --port "$PORT_H2C" stall-h2 --cap "$STALL_CAP" >"$dir/stall-h2.json" 2>>"$dir/clients.log" &
        pids+=($!)
        python3 "$CLIENTS" --port "$PORT_H2C" h2ping --every "$PING_EVERY" --cap $((IDLE + 20)) >"$dir/h2ping.json" 2>>"$dir/clients.log" &
        pids+=($!)
        PIDS+=("${pids[@]}")
        for i in "${pids[@]}"; do wait "$i" || true; forget_pid "$i"; done
        jq -cs '{stall_h1: .[0], stall_h2: .[1], h2ping: .[2]}' "$dir/stall-h1.json" "$dir/stall-h2.json" "$dir/h2ping.json" >"$dir/abuse.json" ;;
    esac
    [[ -s $dir/abuse.json ]] || echo '{"error": "no result"}' >"$dir/abuse.json"
}

# ---------------------------------------------------------------- one row against one proxy
run_cell() { # proxy row
    local proxy=$1 row=$2 dir=$RESULTS/$1/$2 base legit_pid sampler_pid after t0 tr0=0 tr1=0 ok=1
    mkdir -p "$dir"
    PROXY_PID= ADMIN_PORT=
    "start_$proxy" "$dir" || ok=0
    if ((ok)) && port_listening "$PORT_H1" "$PROXY_PID" 15 && port_listening "$PORT_H2C" "$PROXY_PID" 5 &&
        [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$PORT_H1/small" 2>/dev/null) == "hello from the backend" ]]; then
        :
    else
        log "error: $proxy did not start or serve /small for row $row: $(tail -3 "$dir/proxy.stderr.log" 2>/dev/null | tr '\n' ' ')"
        echo "{\"error\": \"$proxy did not start or serve /small (see $proxy/$row/proxy.stderr.log)\"}" >"$dir/cell.json"
        [[ -z $PROXY_PID ]] || stop_proxy "$PROXY_PID"
        return 1
    fi
    client --port "$PORT_H2C" h2check >"$dir/h2check.json" 2>>"$dir/clients.log" || true
    sleep 1
    base=$(client rss --pids "$PROXY_PID" | jq .rss_kb)
    [[ $proxy != sluicegate ]] || tr0=$(sg_transitions)
    [[ $proxy != haproxy ]] || tr0=$(ha_downs "$dir")
    log "$proxy, row $row: RSS at rest $((base / 1024)) MB; the abuse starts"
    python3 "$CLIENTS" sample --pids "$PROXY_PID" --ports "$B1" "$B2" "$H1" "$H2" >"$dir/sample.json" 2>>"$dir/clients.log" &
    sampler_pid=$!
    python3 "$CLIENTS" --port "$PORT_H1" legit --interval "$LEGIT_INTERVAL" >"$dir/legit.json" 2>>"$dir/clients.log" &
    legit_pid=$!
    PIDS+=("$sampler_pid" "$legit_pid")
    t0=$SECONDS
    abuse "$row" "$dir"
    local abuse_s=$((SECONDS - t0))
    kill -TERM "$legit_pid" 2>/dev/null || true
    wait "$legit_pid" || true
    forget_pid "$legit_pid"
    probe "$dir" "$proxy-$row"
    [[ $proxy != sluicegate ]] || tr1=$(sg_transitions)
    [[ $proxy != haproxy ]] || tr1=$(ha_downs "$dir")
    sleep "$AFTER_WAIT"
    after=$(client rss --pids "$PROXY_PID" | jq .rss_kb)
    kill -TERM "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" || true
    forget_pid "$sampler_pid"
    if [[ $proxy == sluicegate ]]; then
        curl -fsS --max-time 3 "http://127.0.0.1:$ADMIN_PORT/status" >"$dir/status.json" 2>/dev/null || true
        curl -fsS --max-time 3 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$dir/metrics.txt" 2>/dev/null || true
    fi
    [[ $proxy != haproxy ]] || ha_stat "$dir" >"$dir/show-stat.csv"
    local alive=true
    kill -0 "$PROXY_PID" 2>/dev/null || alive=false
    stop_proxy "$PROXY_PID"
    # The access logs' line counts (the logs themselves can be large: haproxy's is its stdout), and the
    # first 50 and last 100 lines of a long error log.
    local f n
    for f in "$dir/access.log" "$dir/proxy.stdout.log"; do
        [[ -e $f ]] || continue
        wc -l <"$f" >"$f.lines"
        [[ $f != "$dir/access.log" && $proxy != haproxy ]] || rm -f "$f"
    done
    rm -f "$dir/haproxy.sock"
    for f in "$dir/error.log" "$dir/proxy.stderr.log"; do
        [[ -e $f ]] || continue
        n=$(wc -l <"$f")
        ((n > 200)) || continue
        { head -50 "$f"; echo "... ($((n - 150)) lines left out; $n in all)"; tail -100 "$f"; } >"$f.tmp" && mv "$f.tmp" "$f"
    done
    jq -cn --arg proxy "$proxy" --arg row "$row" --argjson base "$base" --argjson after "${after:-0}" \
        --argjson tr "$((tr1 - tr0))" --argjson abuse_s "$abuse_s" --argjson alive "$alive" \
        --slurpfile abuse "$dir/abuse.json" --slurpfile legit "$dir/legit.json" --slurpfile sample "$dir/sample.json" \
        --slurpfile probe "$dir/probe.json" --slurpfile h2 "$dir/h2check.json" \
        '{proxy: $proxy, row: $row, rss_base_kb: $base, rss_after_kb: $after, transitions: $tr, abuse_s: $abuse_s,
          alive_at_end: $alive, abuse: $abuse[0], legit: $legit[0], sample: $sample[0], probe: $probe[0], h2check: $h2[0]}' \
        >"$dir/cell.json" || echo '{"error": "results incomplete"}' >"$dir/cell.json"
    log "$proxy, row $row: $(jq -c '{peak_mb: ((.sample.peak_rss_kb // 0) / 1024 | floor), after_mb: (.rss_after_kb / 1024 | floor),
        legit: "\(.legit.ok)/\(.legit.sent)", starved: .probe.starved, transitions, abuse}' "$dir/cell.json" 2>/dev/null)"
}

# ---------------------------------------------------------------- the run
read -ra PLIST <<<"$PROXIES"
read -ra RLIST <<<"$ROWS"
log "rows: ${RLIST[*]}; proxies: ${PLIST[*]}; results in ${RESULTS#"$ROOT"/}; bounded to ${MAX_SECONDS}s"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_START=$SECONDS
for row in "${RLIST[@]}"; do
    for proxy in "${PLIST[@]}"; do
        run_cell "$proxy" "$row" || true
    done
done
RUN_SECONDS=$((SECONDS - RUN_START))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- the table
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)," \
        "$(free -g | awk '/^Mem:/ {print $2}') GB; $(uname -r); RLIMIT_NOFILE $NOFILE; load average at start $LOAD_START, at end $LOAD_END;" \
        "the rows took ${RUN_SECONDS}s$([[ $QUICK != 1 ]] || echo " (QUICK=1)")"
    echo "Sluicegate $SG_VERSION (${BIN#"$ROOT"/}, built $SG_BUILT); $(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy", $3}');" \
        "$(nginx -v 2>&1 | sed 's/.*: //'). Settings: HOLD=$HOLD s, RAMP_MAX=$RAMP_MAX s, AFTER_WAIT=$AFTER_WAIT s, H2 $H2_CONNS x $H2_STREAMS streams," \
        "slow readers $SLOW_CONNS_A / $SLOW_CONNS_B, idle $IDLE_CONNS over $IDLE_PROCS processes, $BADCHUNK_COUNT bad chunked POSTs," \
        "upload ${UPLOAD_MB} MB at ${UPLOAD_RATE} MB/s, idle timeout ${IDLE}s, upstream timeouts ${UPSTREAM_TIMEOUT}s," \
        "PING every ${PING_EVERY}s, legit GET every ${LEGIT_INTERVAL}s"
    [[ ! -e $RESULTS/sluicegate-keys-left-out ]] ||
        echo "Caveat: this Sluicegate binary does not know [[clusters]] $(sort -u "$RESULTS/sluicegate-keys-left-out" | tr '\n' ' ')- left out of its config."
    echo
    python3 "$ROOT/bench/edge/table.py" "$RESULTS" --proxies "${PLIST[@]}" --rows "${RLIST[@]}" --idle "$IDLE" \
        --upstream-timeout "$UPSTREAM_TIMEOUT" --rss-slack-mb "$RSS_SLACK_MB" --after-wait "$AFTER_WAIT"
} >"$RESULTS/table.md"
cat "$RESULTS/table.md"
log "table in ${RESULTS#"$ROOT"/}/table.md; the rows took ${RUN_SECONDS}s"

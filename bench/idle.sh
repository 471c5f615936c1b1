#!/usr/bin/env bash
# Memory at 10,000 idle keep-alive connections (issue 27): Sluicegate beside haproxy and nginx, in one run
# on loopback, in front of the same backends. Each proxy, in turn, gets IDLE_CONNS client connections
# (bench/idle.py, one client process) that each send one GET /small, read the whole answer, then stay open,
# idle; once every one is open and answered, and SETTLE s later, the proxy's RSS is taken again. The table
# gives per proxy the RSS before (at rest, after a 1 s warm-up load) and with the connections (VmRSS summed
# over the proxy's processes: nginx's master and worker), the growth per connection in KB, its ratio to
# nginx's and haproxy's, and the RSS after the clients closed.
#
#   bench/idle.sh                      the run (~1-2 min); prints the table and writes it to
#                                      bench/results/<UTC date>-idle/table.md (with the clients' JSON
#                                      results and the proxies' configs)
#   IDLE_CONNS=2000 bench/idle.sh      fewer connections (a quick check)
#
# Settings (environment, defaults in brackets): BIN (the Sluicegate binary [target/release/sluicegate]; not
# built here: `cargo build --release -p sluicegate --bin sluicegate`), IDLE_CONNS [10000], PARALLEL
# (connections being opened and answered at once [200]), RAMP_MAX (s the client may take to open and have
# answered all of them [120]), SETTLE (s between the last answer and the RSS taken with them [3]),
# IDLE_TIMEOUT (the client idle timeout of every proxy, s [300]: longer than the run, so none is closed
# while measured), LOG (1: the access log on, to a file, in every proxy, as users run them; 0: off
# [1]), PROXIES ["sluicegate haproxy nginx"], RESULTS [bench/results/<UTC date>-idle], KEEP_WORK (1: keep the
# scratch directory), MAX_SECONDS (hard bound on the run [600]).
#
# The proxies (one worker each; the configs of bench/run.sh otherwise, with what 10,000 connections need):
#   Sluicegate: workers = 1; the Wasm router and round-robin balancer over the four backend ports,
#     max_idle_per_endpoint = 256; listener idle_timeout = IDLE_TIMEOUT; [limits] max_connections =
#     IDLE_CONNS + 1000 (its default is half of what RLIMIT_NOFILE leaves after 512 reserved descriptors:
#     9,744 at 20,000); access log (LOG=1) its default JSON lines to <dir>/access.log.
#   haproxy: nbthread 1; maxconn IDLE_CONNS + 1000 (global and defaults), `no strict-limits` when
#     RLIMIT_NOFILE is below what haproxy reserves for it (two descriptors per connection: an idle client
#     holds one); timeout client and http-keep-alive IDLE_TIMEOUT; balance roundrobin, http-reuse always;
#     access log (LOG=1) option httplog, `log stdout format raw`, stdout to <dir>/access.log.
#   nginx: worker_processes 1; worker_connections IDLE_CONNS + 1000, worker_rlimit_nofile RLIMIT_NOFILE;
#     keepalive_timeout IDLE_TIMEOUT; upstream over the four ports, keepalive 1024; access_log (LOG=1)
#     <dir>/access.log (combined, unbuffered).
# Backends: one nginx (as many workers as CPUs) on four ports, /small a fixed 23-byte body.
# Descriptors: RLIMIT_NOFILE is raised to its hard limit (ulimit -n) for this script and all it starts; it
# must leave room for IDLE_CONNS + 1000 in each process (the client's and each proxy's).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
BIN=${BIN:-target/release/sluicegate}
IDLE_CONNS=${IDLE_CONNS:-10000}
PARALLEL=${PARALLEL:-200}
RAMP_MAX=${RAMP_MAX:-120}
SETTLE=${SETTLE:-3}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-300}
LOG=${LOG:-1}
PROXIES=${PROXIES:-"sluicegate haproxy nginx"}
MAX_SECONDS=${MAX_SECONDS:-600}
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
NCPU=$(nproc)
CLIENT=$ROOT/bench/idle.py
CLIENTS=$ROOT/bench/edge/clients.py

log() { printf '[idle %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- settings, checked before anything starts
[[ $BIN == /* ]] || { [[ -e $BIN ]] && BIN=$PWD/$BIN || BIN=$ROOT/$BIN; }
for v in IDLE_CONNS PARALLEL RAMP_MAX SETTLE IDLE_TIMEOUT MAX_SECONDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
((IDLE_CONNS > 0 && PARALLEL > 0 && IDLE_TIMEOUT > 0)) || die "IDLE_CONNS, PARALLEL and IDLE_TIMEOUT must be at least 1"
[[ $LOG == 0 || $LOG == 1 ]] || die "LOG must be 0 or 1, not '$LOG'"
for p in $PROXIES; do [[ $p == sluicegate || $p == haproxy || $p == nginx ]] || die "PROXIES: '$p' is not sluicegate, haproxy or nginx"; done
[[ " $PROXIES " != *" sluicegate "* || -x $BIN ]] || die "no Sluicegate binary at $BIN: build it (cargo build --release -p sluicegate --bin sluicegate) or set BIN"
command -v python3 >/dev/null || die "python3 is needed for the client (bench/idle.py)"
# The run must end before the proxies' idle timeout closes the first connections it measures.
((IDLE_TIMEOUT > RAMP_MAX + SETTLE + 10)) || die "IDLE_TIMEOUT ($IDLE_TIMEOUT s) must outlast RAMP_MAX + SETTLE + 10 s"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
CAP=$((IDLE_CONNS + 1000))
((NOFILE >= CAP)) || die "RLIMIT_NOFILE is $NOFILE: $IDLE_CONNS idle connections need at least $CAP (raise the hard limit)"

# ---------------------------------------------------------------- processes: every one is killed on exit
start_work idle

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
install_pkgs "${need_pkgs[@]}"

bound_run "$MAX_SECONDS"

RESULTS=${RESULTS:-$ROOT/bench/results/$STAMP-idle}
mkdir -p "$RESULTS"
SG_VERSION="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- host config upstream plugin-runtime Cargo.toml Cargo.lock && echo "" || echo "+dirty")"
SG_BUILT=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo "?")

# Sets STARTED to the pid of cmd, started in the background with stdout to $1 and stderr to $2.
start() { # stdout stderr cmd...
    local out=$1 err=$2
    shift 2
    if [[ $out == "$err" ]]; then "$@" >"$out" 2>&1 & else "$@" >>"$out" 2>"$err" & fi
    STARTED=$!
    PIDS+=("$STARTED")
}
wait_port() { # port pid name
    port_listening "$1" "$2" 15 && return
    kill -0 "$2" 2>/dev/null || die "$3 exited at start (logs in $WORK; KEEP_WORK=1 keeps them)"
    die "$3 is not listening on $1 after 15 s"
}
rss_kb() { # pid -> VmRSS summed over the process and its children (bench/edge/clients.py rss)
    python3 "$CLIENTS" rss --pids "$1" | sed 's/[^0-9]//g'
}
# json_get file line key: one value of the JSON object on line `line` of file (empty when missing).
json_get() {
    python3 -c 'import json, sys
lines = open(sys.argv[1]).read().splitlines()
n = int(sys.argv[2])
v = json.loads(lines[n - 1]).get(sys.argv[3], "") if len(lines) >= n else ""
print(json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else v)' "$@"
}

# ---------------------------------------------------------------- the backends: one nginx, four ports
BACKENDS=()
for _ in 1 2 3 4; do free_port; BACKENDS+=("$PORT"); done
mkdir -p "$WORK/backend/tmp"
{
    cat <<EOF
worker_processes $NCPU;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/backend/tmp; proxy_temp_path $WORK/backend/tmp; fastcgi_temp_path $WORK/backend/tmp;
    uwsgi_temp_path $WORK/backend/tmp; scgi_temp_path $WORK/backend/tmp;
    default_type text/plain;
    server {
EOF
    for b in "${BACKENDS[@]}"; do echo "        listen 127.0.0.1:$b;"; done
    cat <<EOF
        location = /small { return 200 "hello from the backend\n"; }
    }
}
EOF
} >"$WORK/backend/nginx.conf"
start "$WORK/backend/out.log" "$WORK/backend/out.log" nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -g 'daemon off;'
BACKEND_PID=$STARTED
for b in "${BACKENDS[@]}"; do wait_port "$b" "$BACKEND_PID" backend; done

# ---------------------------------------------------------------- the proxies, one worker each
# start_<proxy> dir: writes its config into dir, starts it; sets PROXY_PID and PROXY_PORT.
start_sluicegate() {
    local dir=$1 admin b
    free_port; PROXY_PORT=$PORT
    free_port; admin=$PORT
    {
        cat <<EOF
workers = 1

[limits]
max_connections = $CAP

[[listeners]]
address = "127.0.0.1:$PROXY_PORT"
protocol = "http"
idle_timeout = "${IDLE_TIMEOUT}s"

[admin]
enabled = true
address = "127.0.0.1:$admin"
EOF
        if [[ $LOG == 1 ]]; then
            printf '\n[access_log]\npath = "%s"\n' "$dir/access.log"
        else
            printf '\n[access_log]\nenabled = false\n'
        fi
        cat <<EOF

[shutdown]
drain_timeout = "1s"

[router]
plugin = "router"

[[router.settings.rules]]
path_prefix = "/"
cluster = "web"

[[clusters]]
name = "web"
balancer = "round-robin"
max_idle_per_endpoint = 256
EOF
        for b in "${BACKENDS[@]}"; do printf '\n[[clusters.endpoints]]\naddress = "127.0.0.1:%s"\n' "$b"; done
    } >"$dir/sluicegate.toml"
    start "$dir/out.log" "$dir/out.log" env RUST_LOG=warn "$BIN" run --config "$dir/sluicegate.toml"
    PROXY_PID=$STARTED
}
start_haproxy() {
    local dir=$1 i
    free_port; PROXY_PORT=$PORT
    {
        echo "global"
        echo "    nbthread 1"
        echo "    maxconn $CAP"
        # haproxy sets RLIMIT_NOFILE to what maxconn needs (two per connection, ~2 x maxconn) and, since
        # 2.6, refuses to start when it cannot; an idle client connection holds one descriptor.
        ((NOFILE >= 2 * CAP + 100)) || echo "    no strict-limits"
        [[ $LOG == 0 ]] || echo "    log stdout format raw local0"
        cat <<EOF

defaults
    mode http
    maxconn $CAP
    timeout connect 5s
    timeout client ${IDLE_TIMEOUT}s
    timeout http-keep-alive ${IDLE_TIMEOUT}s
    timeout server 300s
EOF
        [[ $LOG == 0 ]] || printf '    log global\n    option httplog\n'
        cat <<EOF

frontend fe_http
    bind 127.0.0.1:$PROXY_PORT
    default_backend be_http

backend be_http
    balance roundrobin
    http-reuse always
EOF
        for i in "${!BACKENDS[@]}"; do echo "    server b$((i + 1)) 127.0.0.1:${BACKENDS[$i]}"; done
    } >"$dir/haproxy.cfg"
    # stdout (LOG=1: the log lines) to access.log, stderr (its alerts and warnings) to out.log.
    start "$dir/access.log" "$dir/out.log" haproxy -db -f "$dir/haproxy.cfg"
    PROXY_PID=$STARTED
}
start_nginx() {
    local dir=$1 b
    free_port; PROXY_PORT=$PORT
    mkdir -p "$dir/tmp"
    {
        cat <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $CAP; }
http {
    access_log $([[ $LOG == 1 ]] && echo "$dir/access.log" || echo off);
    keepalive_requests 1000000;
    keepalive_timeout ${IDLE_TIMEOUT}s;
    client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
    upstream be {
EOF
        for b in "${BACKENDS[@]}"; do echo "        server 127.0.0.1:$b;"; done
        cat <<EOF
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    start "$dir/out.log" "$dir/out.log" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
    PROXY_PID=$STARTED
}

# All three are started first (the same run, the same backends); each is then measured in turn, the
# others idle.
read -ra PLIST <<<"$PROXIES"
declare -A PID_OF=() PORT_OF=()
for proxy in "${PLIST[@]}"; do
    mkdir -p "$WORK/$proxy"
    "start_$proxy" "$WORK/$proxy"
    wait_port "$PROXY_PORT" "$PROXY_PID" "$proxy"
    PID_OF[$proxy]=$PROXY_PID
    PORT_OF[$proxy]=$PROXY_PORT
    [[ $(curl -fsS --max-time 5 "http://127.0.0.1:$PROXY_PORT/small" 2>/dev/null) == "hello from the backend" ]] ||
        die "$proxy does not answer /small (logs in $WORK; KEEP_WORK=1 keeps them)"
done

# ---------------------------------------------------------------- one proxy: before, with, after
# measure proxy: writes $RESULTS/<proxy>.json (the client's two lines) and $RESULTS/<proxy>.tsv
# (before_kb with_kb after_kb established log_lines).
measure() {
    local proxy=$1 pid=${PID_OF[$1]} port=${PORT_OF[$1]} dir=$WORK/$1 out=$RESULTS/$1.json cpid before with after est lines i
    wrk -t1 -c50 -d1s "http://127.0.0.1:$port/small" >/dev/null 2>&1 || true # warm: pools, plugin instances
    sleep 1
    [[ ! -e $dir/access.log ]] || : >"$dir/access.log"
    before=$(rss_kb "$pid")
    log "$proxy: RSS at rest $((before / 1024)) MB; opening $IDLE_CONNS connections"
    python3 "$CLIENT" --port "$port" --conns "$IDLE_CONNS" --parallel "$PARALLEL" --ramp-max "$RAMP_MAX" \
        --max-hold $((MAX_SECONDS + 60)) >"$out" 2>"$RESULTS/$proxy.client.log" &
    cpid=$!
    PIDS+=("$cpid")
    for ((i = 0; i < (RAMP_MAX + 30) * 10; i++)); do
        [[ -s $out ]] && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -s $out ]] || die "$proxy: the client gave no result within $((RAMP_MAX + 30)) s ($(tail -2 "$RESULTS/$proxy.client.log" | tr '\n' ' '))"
    [[ $(json_get "$out" 1 phase) == ready ]] || die "$proxy: the client failed: $(head -1 "$out")"
    sleep "$SETTLE"
    with=$(rss_kb "$pid")
    # Client-side sockets still established to the proxy, and the log's lines (one per answered GET).
    est=$(ss -Htn state established "( dport = :$port )" | wc -l)
    lines=-
    [[ $LOG == 0 || ! -e $dir/access.log ]] || lines=$(wc -l <"$dir/access.log")
    log "$proxy: $(json_get "$out" 1 answered_200)/$IDLE_CONNS answered 200, $est established; RSS $((with / 1024)) MB; log lines $lines"
    kill -TERM "$cpid" 2>/dev/null || true
    wait "$cpid" || true
    forget_pid "$cpid"
    sleep 2
    after=$(rss_kb "$pid")
    printf '%s\t%s\t%s\t%s\t%s\n' "$before" "$with" "$after" "$est" "$lines" >"$RESULTS/$proxy.tsv"
    [[ ! -e $dir/access.log ]] || : >"$dir/access.log"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for proxy in "${PLIST[@]}"; do measure "$proxy"; done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
for proxy in "${PLIST[@]}"; do
    cp "$WORK/$proxy/"*.toml "$WORK/$proxy/"*.cfg "$WORK/$proxy/"*.conf "$RESULTS/" 2>/dev/null || true
    cp "$WORK/$proxy/out.log" "$RESULTS/$proxy.out.log" 2>/dev/null || true
done

# ---------------------------------------------------------------- the table
per_conn() { # proxy -> KB of growth per connection (unrounded; the table rounds)
    local b w
    read -r b w _ <"$RESULTS/$1.tsv"
    awk -v b="$b" -v w="$w" -v n="$IDLE_CONNS" 'BEGIN {printf "%.4f", (w - b) / n}'
}
ratio() { # a b -> a / b, or - when b is missing or not positive
    awk -v a="$1" -v b="$2" 'BEGIN {if (b == "" || b + 0 <= 0) print "-"; else printf "%.2f", a / b}'
}
declare -A KB=()
for proxy in "${PLIST[@]}"; do KB[$proxy]=$(per_conn "$proxy"); done
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $NCPU CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)," \
        "$(free -g | awk '/^Mem:/ {print $2}') GB; $(uname -r); RLIMIT_NOFILE $NOFILE; load average at start $LOAD_START, at end $LOAD_END"
    echo "Sluicegate $SG_VERSION (${BIN#"$ROOT"/}, built $SG_BUILT); $(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy", $3}');" \
        "$(nginx -v 2>&1 | sed 's/.*: //'). One worker each; $IDLE_CONNS keep-alive connections per proxy (bench/idle.py: at most" \
        "$PARALLEL opening at once), each one GET /small answered, then idle; RSS with them taken ${SETTLE}s after the last answer;" \
        "client idle timeout ${IDLE_TIMEOUT}s in every proxy."
    ((NOFILE >= 2 * CAP + 100)) || [[ " $PROXIES " != *" haproxy "* ]] ||
        echo "haproxy: maxconn $CAP with RLIMIT_NOFILE $NOFILE, below the 2 x maxconn it reserves: \`no strict-limits\` (it warns at start; an idle client connection holds one descriptor)."
    if [[ $LOG == 1 ]]; then
        echo "Access log: LOG=1, on, each to a file (Sluicegate's JSON lines; haproxy option httplog to stdout, a file; nginx combined)."
    else
        echo "Access log: LOG=0, off in every proxy."
    fi
    echo
    echo "| proxy | workers | open (answered 200) | still open | RSS before MB | RSS with MB | growth MB | KB per connection | × nginx | × haproxy | RSS after close MB | log lines |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for proxy in "${PLIST[@]}"; do
        read -r b w a est lines <"$RESULTS/$proxy.tsv"
        awk -v p="$proxy" -v o="$(json_get "$RESULTS/$proxy.json" 1 opened)" -v ok="$(json_get "$RESULTS/$proxy.json" 1 answered_200)" \
            -v est="$est" -v b="$b" -v w="$w" -v a="$a" -v kb="${KB[$proxy]}" -v rn="$(ratio "${KB[$proxy]}" "${KB[nginx]:-}")" \
            -v rh="$(ratio "${KB[$proxy]}" "${KB[haproxy]:-}")" -v lines="$lines" \
            'BEGIN {printf "| %s | 1 | %s (%s) | %s | %.1f | %.1f | %.1f | %.2f | %s | %s | %.1f | %s |\n",
                p, o, ok, est, b / 1024, w / 1024, (w - b) / 1024, kb, rn, rh, a / 1024, lines}'
    done
    echo
    echo "RSS is VmRSS summed over the proxy's processes (nginx: master and worker); before: at rest after a 1 s wrk -c50"
    echo "warm-up; with: all $IDLE_CONNS connections open, answered and idle; after close: 2 s after the client closed them."
    echo "KB per connection = (with - before) / $IDLE_CONNS; × nginx, × haproxy: that against the same figure of nginx and"
    echo "haproxy in this run. Still open: the client's sockets established to the proxy when RSS was taken. Log lines:"
    echo "the access log's lines then (the answered GETs)."
    for proxy in "${PLIST[@]}"; do
        e=$(json_get "$RESULTS/$proxy.json" 1 errors)
        [[ $e == "{}" || -z $e ]] || echo "$proxy: client errors $e."
        c=$(json_get "$RESULTS/$proxy.json" 2 closed_by_server)
        [[ -z $c || $c == 0 ]] || echo "$proxy: $c connections closed by the proxy while idle."
    done
} >"$RESULTS/table.md"
cat "$RESULTS/table.md"
log "table in ${RESULTS#"$ROOT"/}/table.md"

#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: a figure that does not move with the
# machine's load, for A/B comparisons of Sluicegate builds (wrk's req/s on this shared 2-CPU machine moves
# by ±15% between runs). See bench/README.md, "Instructions per request".
#
#   bench/instructions.sh                     Sluicegate (target/release, built if missing) and haproxy
#   BASE_BIN=/path/to/old bench/instructions.sh   also an older Sluicegate binary, for an A/B
#
# Each proxy runs under valgrind --tool=callgrind behind the same nginx backend (two ports, round-robin,
# one worker thread; Sluicegate with the Wasm router and round-robin plugins). With LOG=1 (the default) every
# proxy writes its access log to a file as users run it (Sluicegate its JSON lines, haproxy option httplog),
# and a sluicegate-nolog row, the same binary with its log off, gives the log's own instructions; LOG=0 is
# the log off everywhere. After a
# warm-up the counters are zeroed, wrk -t1 -c$CONNS (default 10) runs for DURATION seconds, and the counters are dumped:
# instructions / requests. Counts include every user-space instruction of the proxy (JIT'd Wasm too),
# none of the kernel's. valgrind counts a `rep movsb` copy byte by byte, so large memcpys weigh more
# here than in time.
# Settings (environment): BIN, BASE_BIN, LOG (1|0), DURATION (s, default 6), CONNS (default 10; the benchmark's is 50),
# HAPROXY (1|0), PLUGIN_DIR (BIN's plugin directory: a router.wasm or round-robin.wasm there replaces
# the embedded one, to compare plugin builds; with BASE_BIN=$BIN the base runs the embedded ones), PORT
# (first of 6, 18300), KEEP_WORK (1: keep the callgrind dumps; their directory is logged). valgrind reads
# VALGRIND_OPTS itself: --cache-sim=yes and --branch-sim=yes add cache misses and mispredicted branches to
# the dumps, --dump-instr=yes per-instruction counts for bench/atomics.py.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/sluicegate}
BASE_BIN=${BASE_BIN:-}
PLUGIN_DIR=${PLUGIN_DIR:-}
DURATION=${DURATION:-6}
CONNS=${CONNS:-10}
HAPROXY=${HAPROXY:-1}
LOG=${LOG:-1}
[[ $LOG == 0 || $LOG == 1 ]] || { echo "LOG must be 0 or 1" >&2; exit 1; }
PORT=${PORT:-18300}
export RUST_LOG=warn
log() { echo "[instructions $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

need=()
for tool in valgrind:valgrind nginx:nginx-light wrk:wrk curl:curl; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
[[ $HAPROXY == 0 ]] || command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
    log "installing ${need[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
        { timeout 300 apt-get update -q >&2 && timeout 600 apt-get install -y -q --no-install-recommends "${need[@]}" >&2; } ||
        die "apt-get install ${need[*]} failed"
fi
if [[ ! -x $BIN ]]; then
    log "building sluicegate (release)"
    (cd "$ROOT" && timeout 1800 cargo build --release -q -p sluicegate --bin sluicegate) || die "build failed"
fi
[[ -z $BASE_BIN || -x $BASE_BIN ]] || die "no binary at BASE_BIN=$BASE_BIN"

WORK=$(mktemp -d /tmp/sluicegate-instructions.XXXXXX)
chmod 755 "$WORK"
[[ -z ${KEEP_WORK:-} ]] || log "callgrind dumps kept in $WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
B1=$PORT B2=$((PORT + 1))

mkdir -p "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1; pid $WORK/backend/nginx.pid; error_log $WORK/backend/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; listen 127.0.0.1:$B2; location / { return 200 "hello from the benchmark\n"; } } }
EOF
nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -g 'daemon off;' &
PIDS+=($!)

sluicegate_config() { # port log(1|0) name
    cat <<EOF
workers = 1
[[listeners]]
address = "127.0.0.1:$1"
[admin]
enabled = false
EOF
    if [[ $2 == 1 ]]; then printf '[access_log]\npath = "%s"\n' "$WORK/$3.access.log"; else printf '[access_log]\nenabled = false\n'; fi
    cat <<EOF
[router]
plugin = "router"
[[router.settings.rules]]
path_prefix = "/"
cluster = "web"
[[clusters]]
name = "web"
balancer = "round-robin"
max_idle_per_endpoint = 256
[[clusters.endpoints]]
address = "127.0.0.1:$B1"
[[clusters.endpoints]]
address = "127.0.0.1:$B2"
EOF
}
haproxy_config() { # port
    cat <<EOF
global
    nbthread 1
    maxconn 4000
EOF
    # LOG=1: option httplog as raw lines on its stdout, which measure() sends to a file.
    [[ $LOG == 0 ]] || printf '    log stdout format raw local0\n'
    cat <<EOF
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    http-reuse always
EOF
    [[ $LOG == 0 ]] || printf '    log global\n    option httplog\n'
    cat <<EOF
frontend fe
    bind 127.0.0.1:$1
    default_backend be
backend be
    balance roundrobin
    server b1 127.0.0.1:$B1
    server b2 127.0.0.1:$B2
EOF
}

# measure name port command...: prints "name instructions requests".
measure() {
    local name=$1 port=$2
    shift 2
    local out=$WORK/$name.callgrind pid n total dump=
    # stdout to a file of its own: haproxy's access log with LOG=1.
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name.stdout" 2>"$WORK/$name.log" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 240); do
        curl -s -o /dev/null "http://127.0.0.1:$port/small" && break
        kill -0 "$pid" 2>/dev/null || die "$name exited: $(tail -3 "$WORK/$name.log")"
        sleep 0.5
    done
    timeout 60 wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:$port/small" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    n=$(timeout 120 wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/small" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    # The dump is written by the process itself, a moment after the request.
    for _ in $(seq 60); do
        dump=$(grep -l '^desc: Trigger: dump' "$out"* 2>/dev/null) && break
        sleep 0.5
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    [[ -n $dump ]] || die "$name: no callgrind dump"
    total=$(awk '/^summary:/ {print $2; exit}' "$dump")
    [[ -n $n && $n -gt 0 && -n $total ]] || die "$name: no requests counted"
    echo "$name $total $n"
}

results=()
sluicegate_config $((PORT + 2)) "$LOG" new >"$WORK/new.toml"
[[ -z $PLUGIN_DIR ]] || printf '[plugins]\ndir = "%s"\n' "$PLUGIN_DIR" >>"$WORK/new.toml"
results+=("$(measure sluicegate $((PORT + 2)) "$BIN" run --config "$WORK/new.toml")")
if [[ $LOG == 1 ]]; then
    sluicegate_config $((PORT + 5)) 0 nolog >"$WORK/nolog.toml"
    [[ -z $PLUGIN_DIR ]] || printf '[plugins]\ndir = "%s"\n' "$PLUGIN_DIR" >>"$WORK/nolog.toml"
    results+=("$(measure sluicegate-nolog $((PORT + 5)) "$BIN" run --config "$WORK/nolog.toml")")
fi
if [[ -n $BASE_BIN ]]; then
    sluicegate_config $((PORT + 3)) "$LOG" base >"$WORK/base.toml"
    results+=("$(measure sluicegate-base $((PORT + 3)) "$BASE_BIN" run --config "$WORK/base.toml")")
fi
if [[ $HAPROXY == 1 ]]; then
    haproxy_config $((PORT + 4)) >"$WORK/haproxy.cfg"
    results+=("$(measure haproxy $((PORT + 4)) haproxy -f "$WORK/haproxy.cfg")")
fi

first=${results[0]}
ref=$(awk '{printf "%.0f", $2 / $3}' <<<"$first")
printf '%-16s %14s %10s %12s %14s\n' target instructions requests instr/req "× sluicegate"
for r in "${results[@]}"; do
    awk -v ref="$ref" '{printf "%-16s %14d %10d %12.0f %14.2f\n", $1, $2, $3, $2 / $3, ($2 / $3) / ref}' <<<"$r"
done

#!/usr/bin/env bash
# Sluicegate vs haproxy vs nginx vs Pingora on loopback, same backends, same wrk loads, same run. See bench/README.md.
#
#   bench/run.sh            the benchmark: prints a table and writes bench/results/<date>/{raw.tsv,table.md}
#   bench/run.sh profile    perf profile of Sluicegate (one worker thread) under wrk -c50 (README "Profile")
#   bench/run.sh pgo        a profile-guided release build, trained on this harness's loads (README "PGO");
#                           prints the binary's path, for SLUICEGATE_BIN (with PGO_VARIANT=native: the
#                           native-choice build, for SLUICEGATE_NATIVE_BIN)
#
# Settings (environment): DURATION (s, default 10), RUNS (3), CONNS ("50 200 1000"), BODIES ("small"; also "1k"
# and "64k"), PINNED (auto|0|1: the pinned placement when 2+ CPUs), PIN_CONNS ("50"), L4 (auto|0|1), L4_CONNS
# ("50"), PICK_BENCH (1|0: the plugin-boundary micro-benchmark), NATIVE (1|0: the sluicegate-native rows), NOLOG (1|0: with LOG=1, the sluicegate-nolog rows),
# PINGORA (auto|0|1: the pingora rows; auto skips them when the peer cannot be built), SLUICEGATE_BIN /
# SLUICEGATE_NATIVE_BIN / PINGORA_BIN (skip a build), BUILD (1|0), PROFILE_SECONDS (profile mode, 10),
# PGO_SECONDS (pgo mode: seconds per training load, 4), PGO_VARIANT (pgo mode: wasm|native, wasm),
# PLUGIN_DIR (the Wasm build's plugin directory: a router.wasm or round-robin.wasm there replaces the
# embedded build, to measure new plugin builds without rebuilding the proxy), MAX_SECONDS (hard bound on
# the whole run; default from the plan), LOG (1|0: the access log on, to a file, in sluicegate, haproxy and
# nginx, as users run them; 0: off everywhere, the tuned comparison).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-"50 200 1000"}
BODIES=${BODIES:-small}
PINNED=${PINNED:-auto}
PIN_CONNS=${PIN_CONNS:-50}
L4=${L4:-auto}
L4_CONNS=${L4_CONNS:-50}
PICK_BENCH=${PICK_BENCH:-1}
NATIVE=${NATIVE:-1}
NOLOG=${NOLOG:-1}
PINGORA=${PINGORA:-auto}
BUILD=${BUILD:-1}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
PLUGIN_DIR=${PLUGIN_DIR:-}
LOG=${LOG:-1}
MODE=${1:-bench}
NCPU=$(nproc)
TICK=$(getconf CLK_TCK)
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ $LOG == 0 || $LOG == 1 ]] || die "LOG must be 0 or 1, not '$LOG'"

# Descriptors: wrk at 1,000 connections needs more than the usual 1,024, and so do the proxies (two per
# proxied connection); the soft limit is raised to the hard one for this script and all it starts.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
max_conns=0
for c in $CONNS $PIN_CONNS $L4_CONNS; do if ((c > max_conns)); then max_conns=$c; fi; done
((NOFILE > 2 * max_conns + 200)) || log "warning: RLIMIT_NOFILE is $NOFILE, too low for ${max_conns} connections through a proxy"

# ---------------------------------------------------------------- processes: every one is killed on exit
start_work bench

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
command -v haproxy >/dev/null || need_pkgs+=(haproxy)
command -v wrk >/dev/null || need_pkgs+=(wrk)
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
[[ $L4 == 0 || -e $STREAM_MODULE ]] || need_pkgs+=(libnginx-mod-stream)
[[ $MODE != profile ]] || command -v perf >/dev/null || need_pkgs+=(linux-perf)
# pgo mode: llvm-profdata must be of rustc's own LLVM major version (LLVM 22 for rustc 1.95).
if [[ $MODE == pgo ]]; then
    rustc_vv=$(rustc -vV)
    TRIPLE=$(sed -n 's/^host: //p' <<<"$rustc_vv")
    LLVM_MAJOR=$(sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' <<<"$rustc_vv")
    PROFDATA=llvm-profdata-$LLVM_MAJOR
    command -v "$PROFDATA" >/dev/null || need_pkgs+=("llvm-$LLVM_MAJOR")
    command -v openssl >/dev/null || need_pkgs+=(openssl)
fi
install_pkgs "${need_pkgs[@]}"
[[ -e $STREAM_MODULE ]] || { [[ $L4 == 1 ]] && die "no nginx stream module"; L4=0; }
[[ $MODE != pgo ]] || command -v "$PROFDATA" >/dev/null || die "no $PROFDATA after installing llvm-$LLVM_MAJOR"

# ---------------------------------------------------------------- Sluicegate, release builds
# clean_env cmd...: runs cmd without the outer cargo/make settings (they must not leak into our builds);
# CARGO_BUILD_JOBS is kept: it is how a busy machine asks for a gentler build.
clean_env() {
    env $(env | grep -oE '^(CARGO_[A-Z_]*|RUSTFLAGS|MAKEFLAGS)=' | grep -v '^CARGO_BUILD_JOBS=' | sed 's/=$//; s/^/-u /') "$@"
}
# build_sluicegate target_dir cargo-args...: a release build of the binary into target_dir.
build_sluicegate() {
    local dir=$1
    shift
    (cd "$ROOT" && clean_env CARGO_TARGET_DIR="$dir" timeout 1800 cargo build --release -q -p sluicegate --bin sluicegate "$@" >&2)
}
# with_binary var target_dir what cargo-args...: sets var to the built binary (unless it is set already).
with_binary() {
    local var=$1 dir=$2 what=$3 bin
    shift 3
    bin=${!var:-}
    if [[ -z $bin ]]; then
        bin=$dir/release/sluicegate
        if [[ $BUILD == 1 ]]; then
            log "building $what (release)"
            if ! build_sluicegate "$dir" "$@"; then
                [[ -x $bin ]] || die "build failed and no binary at $bin"
                log "warning: build failed; using the existing $bin"
            fi
        fi
    fi
    [[ -x $bin ]] || die "no $what binary at $bin"
    printf -v "$var" '%s' "$bin"
}
# pgo mode: the instrumented build serves the loads below, and counts where the code goes; see "pgo mode".
# PGO_VARIANT=native trains and builds the native-choice variant instead (its own directory, and
# start_sluicegate's "native" setup), so that the plugin boundary can be measured between two
# profile-guided builds.
if [[ $MODE == pgo ]]; then
    PGO_VARIANT=${PGO_VARIANT:-wasm}
    case $PGO_VARIANT in
        wasm) PGO_DIR=$ROOT/target/pgo PGO_FEATURES=() PGO_START= ;;
        native) PGO_DIR=$ROOT/target/pgo-native PGO_FEATURES=(--features native-choice) PGO_START=native ;;
        *) die "PGO_VARIANT must be wasm or native, not $PGO_VARIANT" ;;
    esac
    log "building sluicegate ($PGO_VARIANT) instrumented for PGO (release)"
    build_sluicegate "$PGO_DIR/train" "${PGO_FEATURES[@]}" --target "$TRIPLE" --config "build.rustflags=[\"-Cprofile-generate=$PGO_DIR/train/profiles\"]" ||
        die "instrumented build failed"
    # start_sluicegate takes the native variant's binary from SLUICEGATE_NATIVE_BIN: both are this build.
    SLUICEGATE_BIN=$PGO_DIR/train/$TRIPLE/release/sluicegate
    SLUICEGATE_NATIVE_BIN=$SLUICEGATE_BIN
else
    with_binary SLUICEGATE_BIN "$ROOT/target" sluicegate
fi
# The native-choice variant: the same proxy with the plugin boundary taken out (bench/README.md), in its own
# target directory so that building it does not rebuild the normal release binary.
[[ $NATIVE == 0 || $MODE != bench ]] ||
    with_binary SLUICEGATE_NATIVE_BIN "$ROOT/target/bench-native" "sluicegate with native-choice" --features native-choice

# ---------------------------------------------------------------- Pingora (bench/pingora), optional
# A standalone cargo project (bench/pingora/README.md); its first build takes ~10 min on two busy cores.
# A peer that cannot be had is skipped with a warning (PINGORA=1: an error), not the end of the run.
if [[ $PINGORA != 0 && $MODE == bench ]]; then
    if [[ -z ${PINGORA_BIN:-} ]]; then
        PINGORA_BIN=$ROOT/bench/pingora/target/release/pingora-bench-proxy
        if [[ $BUILD == 1 ]]; then
            log "building the Pingora peer (bench/pingora, release)"
            if ! (cd "$ROOT" && clean_env timeout 1800 bench/pingora/build.sh >/dev/null); then
                [[ -x $PINGORA_BIN ]] && log "warning: Pingora build failed; using the existing $PINGORA_BIN" ||
                    log "warning: Pingora build failed"
            fi
        fi
    fi
    if [[ ! -x $PINGORA_BIN ]]; then
        [[ $PINGORA == 1 ]] && die "no Pingora binary at $PINGORA_BIN"
        log "warning: no Pingora binary at $PINGORA_BIN; no pingora rows"
        PINGORA=0
    fi
fi
SG_VERSION="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- host config upstream plugin-runtime plugin-build sdk plugins Cargo.toml Cargo.lock && echo "" || echo "+dirty")"

# ---------------------------------------------------------------- ports, free at start
wait_port() { # port pid name
    port_listening "$1" "$2" 10 && return
    kill -0 "$2" 2>/dev/null || die "$3 exited at start (logs in $WORK; KEEP_WORK=1 keeps them)"
    die "$3 is not listening on $1 after 10 s"
}
start() { # name logfile cmd... ; sets STARTED to the pid
    local name=$1 logf=$2
    shift 2
    "$@" >"$logf" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# The backend ports: every proxy balances round-robin over the four; "direct" is B1 alone.
free_port; B1=$PORT
free_port; B2=$PORT
free_port; B3=$PORT
free_port; B4=$PORT
BACKENDS=("$B1" "$B2" "$B3" "$B4")

# ---------------------------------------------------------------- the proxies' access logs (LOG=1)
# Each proxy that logs writes to access.log in its directory: ACCESS_LOG[pid] is the file. Sluicegate and
# nginx append (O_APPEND), so emptying the file (`: >`) between runs starts it again at 0. haproxy logs to
# its stdout (`log stdout`), which the shell opens with `>>`, but once it logs, haproxy has set
# O_NONBLOCK on it with F_SETFL, which drops O_APPEND: it goes on writing at its own offset, and an
# emptied file turns sparse (a hole up to that offset, no blocks on disk). LOG_AT_OFFSET[pid]=1 marks
# such a writer: its lines of a run are the ones past its offset (/proc/<pid>/fdinfo/1) at the start.
declare -A ACCESS_LOG=() LOG_AT_OFFSET=()
LOG_DISK_PEAK_KB=0
# log_start pid: empties the target's log; prints where this run's lines start (bytes; - when no log).
log_start() {
    local f=${ACCESS_LOG[$1]:-}
    [[ -n $f ]] || { echo -; return; }
    : >"$f"
    if [[ -n ${LOG_AT_OFFSET[$1]:-} ]]; then
        awk '/^pos:/ {print $2}' "/proc/$1/fdinfo/1" 2>/dev/null || echo 0
    else
        echo 0
    fi
}
# log_lines pid start: sets LOG_LINES to the lines written since log_start (- when no log), then empties
# the file; keeps the peak of the logs' blocks on disk (all proxies together) in LOG_DISK_PEAK_KB.
LOG_LINES=-
log_lines() {
    local f=${ACCESS_LOG[$1]:-} kb
    LOG_LINES=-
    [[ -n $f && $2 != - ]] || return 0
    sleep 0.3 # Sluicegate's log thread, the lines of requests cut short when wrk closes
    kb=$(du -ck "${ACCESS_LOG[@]}" 2>/dev/null | awk 'END {print $1 + 0}')
    ((kb <= LOG_DISK_PEAK_KB)) || LOG_DISK_PEAK_KB=$kb
    LOG_LINES=$(tail -c +$(($2 + 1)) "$f" | wc -l)
    : >"$f"
}
# Empties every proxy's log (between the loads of the profile and pgo modes).
logs_empty() { local f; for f in "${ACCESS_LOG[@]}"; do : >"$f"; done; }

# ---------------------------------------------------------------- backends: one nginx, four ports
BODY_small="hello from the backend"
mkdir -p "$WORK/backend/www" "$WORK/backend/tmp"
head -c 1024 /dev/zero | tr '\0' 'a' >"$WORK/backend/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' >"$WORK/backend/www/64k"
chmod -R a+rX "$WORK/backend"
nginx_common() { # dir
    cat <<EOF
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections 16384; }
EOF
}
nginx_http_common() { # dir access_log-setting
    cat <<EOF
    access_log $2;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $1/tmp; proxy_temp_path $1/tmp; fastcgi_temp_path $1/tmp;
    uwsgi_temp_path $1/tmp; scgi_temp_path $1/tmp;
EOF
}
{
    echo "worker_processes ${BACKEND_WORKERS:-$NCPU};"
    nginx_common "$WORK/backend"
    echo "http {"
    nginx_http_common "$WORK/backend" off
    cat <<EOF
    default_type text/plain;
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    server {
        listen 127.0.0.1:$B1;
        listen 127.0.0.1:$B2;
        listen 127.0.0.1:$B3;
        listen 127.0.0.1:$B4;
        root $WORK/backend/www;
        location = /small { return 200 "$BODY_small\n"; }
    }
}
EOF
} >"$WORK/backend/nginx.conf"
start backend "$WORK/backend/out.log" nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -g 'daemon off;'
BACKEND_PID=$STARTED
for b in "${BACKENDS[@]}"; do wait_port "$b" "$BACKEND_PID" backend; done

# ---------------------------------------------------------------- the proxies (all started once; idle ones cost nothing)
# Targets: name|workers|pid|http port|tcp port ("-" when none)
TARGETS=()

# start_sluicegate threads [native|nolog]: the normal build has the Wasm router and the Wasm balancer on every
# request; "native" is the native-choice build with the route table and a plain-Rust round-robin, HTTP only;
# "nolog" is the normal build and config with its access log off (LOG=1 runs only: what logging costs).
start_sluicegate() {
    local t=$1 variant=${2:-} name=sluicegate bin=$SLUICEGATE_BIN dir p pt pa logs=$LOG
    case $variant in
        native) name=sluicegate-native; bin=$SLUICEGATE_NATIVE_BIN ;;
        nolog) name=sluicegate-nolog; logs=0 ;;
    esac
    dir=$WORK/$name-$t
    mkdir -p "$dir"
    free_port; p=$PORT
    free_port; pt=$PORT
    free_port; pa=$PORT
    {
        cat <<EOF
workers = $t

[[listeners]]
address = "127.0.0.1:$p"
protocol = "http"
EOF
        [[ $L4 == 0 || -n $variant ]] || cat <<EOF

[[listeners]]
address = "127.0.0.1:$pt"
protocol = "tcp"
cluster = "web"
EOF
        # pgo mode trains the TLS path too: an https listener with a throwaway self-signed certificate.
        [[ $MODE != pgo ]] || { free_port; cat <<EOF

[[listeners]]
address = "127.0.0.1:$PORT"
protocol = "https"

[[listeners.certificates]]
cert = "$WORK/tls/cert.pem"
key = "$WORK/tls/key.pem"
EOF
            TLS_PORTS+=("$PORT"); }
        cat <<EOF

[admin]
enabled = true
address = "127.0.0.1:$pa"
EOF
        # LOG=1: the access log as it runs by default (one JSON line per request, per connection on L4),
        # to a file.
        if [[ $logs == 1 ]]; then
            printf '\n[access_log]\npath = "%s"\n' "$dir/access.log"
        else
            printf '\n[access_log]\nenabled = false\n'
        fi
        cat <<EOF

[shutdown]
drain_timeout = "1s"
EOF
        if [[ $variant != native ]]; then
            cat <<EOF

[router]
plugin = "router"

[[router.settings.rules]]
path_prefix = "/"
cluster = "web"

[[clusters]]
name = "web"
balancer = "round-robin"
EOF
        else
            cat <<EOF

[[routes]]
path_prefix = "/"
cluster = "web"

[[clusters]]
name = "web"
balancer = "native-round-robin"
EOF
        fi
        echo "max_idle_per_endpoint = 256"
        for b in "${BACKENDS[@]}"; do printf '\n[[clusters.endpoints]]\naddress = "127.0.0.1:%s"\n' "$b"; done
        [[ $variant == native || -z $PLUGIN_DIR ]] || printf '\n[plugins]\ndir = "%s"\n' "$PLUGIN_DIR"
    } >"$dir/sluicegate.toml"
    start "$name-$t" "$dir/out.log" env RUST_LOG=warn "$bin" run --config "$dir/sluicegate.toml"
    [[ $logs == 0 ]] || ACCESS_LOG[$STARTED]=$dir/access.log
    wait_port "$p" "$STARTED" "$name-$t"
    [[ $L4 == 0 || -n $variant ]] && pt=-
    TARGETS+=("$name|$t|$STARTED|$p|$pt")
}

start_haproxy() { # threads
    local t=$1 dir=$WORK/haproxy-$1 p pt
    mkdir -p "$dir"
    free_port; p=$PORT
    free_port; pt=$PORT
    {
        cat <<EOF
global
    nbthread $t
    maxconn 4000
EOF
        # LOG=1: haproxy's HTTP log format (option httplog; tcplog on L4), as raw lines on its stdout,
        # which is the file access.log (haproxy writes no file itself; `log stdout` is what its
        # container images use).
        [[ $LOG == 0 ]] || echo "    log stdout format raw local0"
        cat <<EOF

defaults
    maxconn 4000
    timeout connect 5s
    timeout client 300s
    timeout server 300s
EOF
        [[ $LOG == 0 ]] || printf '    log global\n    option httplog\n'
        cat <<EOF

frontend fe_http
    mode http
    bind 127.0.0.1:$p
    default_backend be_http

backend be_http
    mode http
    balance roundrobin
    http-reuse always
EOF
        for i in "${!BACKENDS[@]}"; do echo "    server b$((i + 1)) 127.0.0.1:${BACKENDS[$i]}"; done
        [[ $L4 == 0 ]] || {
            cat <<EOF

frontend fe_tcp
    mode tcp
EOF
            [[ $LOG == 0 ]] || echo "    option tcplog"
            cat <<EOF
    bind 127.0.0.1:$pt
    default_backend be_tcp

backend be_tcp
    mode tcp
    balance roundrobin
EOF
            for i in "${!BACKENDS[@]}"; do echo "    server b$((i + 1)) 127.0.0.1:${BACKENDS[$i]}"; done
        }
    } >"$dir/haproxy.cfg"
    if [[ $LOG == 1 ]]; then
        # stdout (the log lines) to access.log, opened for appending; stderr (haproxy's own alerts and
        # warnings) to out.log.
        haproxy -db -f "$dir/haproxy.cfg" >>"$dir/access.log" 2>"$dir/out.log" &
        STARTED=$!
        PIDS+=("$STARTED")
        ACCESS_LOG[$STARTED]=$dir/access.log
        LOG_AT_OFFSET[$STARTED]=1
    else
        start "haproxy-$t" "$dir/out.log" haproxy -db -f "$dir/haproxy.cfg"
    fi
    wait_port "$p" "$STARTED" "haproxy-$t"
    [[ $L4 == 0 ]] && pt=-
    TARGETS+=("haproxy|$t|$STARTED|$p|$pt")
}

start_nginx() { # workers
    local w=$1 dir=$WORK/nginx-$1 p pt
    mkdir -p "$dir/tmp"
    free_port; p=$PORT
    free_port; pt=$PORT
    {
        [[ $L4 == 0 ]] || echo "load_module $STREAM_MODULE;"
        echo "worker_processes $w;"
        nginx_common "$dir"
        echo "http {"
        # LOG=1: nginx's default access log (the combined format, unbuffered), to a file.
        if [[ $LOG == 1 ]]; then nginx_http_common "$dir" "$dir/access.log"; else nginx_http_common "$dir" off; fi
        echo "    upstream be {"
        for b in "${BACKENDS[@]}"; do echo "        server 127.0.0.1:$b;"; done
        cat <<EOF
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$p reuseport;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
        [[ $L4 == 0 ]] || {
            echo "stream {"
            # The stream module has no default log format: its documentation's "basic" one.
            [[ $LOG == 0 ]] || cat <<EOF
    log_format basic '\$remote_addr [\$time_local] \$protocol \$status \$bytes_sent \$bytes_received \$session_time';
    access_log $dir/access.log basic;
EOF
            echo "    upstream be_tcp {"
            for b in "${BACKENDS[@]}"; do echo "        server 127.0.0.1:$b;"; done
            cat <<EOF
    }
    server {
        listen 127.0.0.1:$pt reuseport;
        proxy_pass be_tcp;
    }
}
EOF
        }
    } >"$dir/nginx.conf"
    start "nginx-$w" "$dir/out.log" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
    [[ $LOG == 0 ]] || ACCESS_LOG[$STARTED]=$dir/access.log
    wait_port "$p" "$STARTED" "nginx-$w"
    [[ $L4 == 0 ]] && pt=-
    TARGETS+=("nginx|$w|$STARTED|$p|$pt")
}

# start_pingora threads: bench/pingora's proxy (Pingora's round-robin, upstream keep-alive), HTTP only.
# --no-work-stealing: one single-threaded runtime per thread, like the other proxies' per-worker loops
# (Pingora's one accept loop hands each connection to one of them). --keepalive-pool is Pingora's
# upstream_keepalive_pool_size: idle connections across all upstreams, per thread (Pingora multiplies it
# by the threads into one process-wide pool); 4 x 256 = 256 per upstream, as Sluicegate's
# max_idle_per_endpoint and nginx's keepalive 1024 (per worker, over the four). No access log: the peer
# has none.
start_pingora() {
    local t=$1 p
    free_port; p=$PORT
    local ups=() b
    for b in "${BACKENDS[@]}"; do ups+=(--upstream "127.0.0.1:$b"); done
    start "pingora-$t" "$WORK/pingora-$t.log" "$PINGORA_BIN" --listen "127.0.0.1:$p" --threads "$t" \
        "${ups[@]}" --no-work-stealing --keepalive-pool $((${#BACKENDS[@]} * 256))
    wait_port "$p" "$STARTED" "pingora-$t"
    TARGETS+=("pingora|$t|$STARTED|$p|-")
}

# All pids of a target: the process and its children (nginx workers).
target_pids() { echo "$1" $(pgrep -P "$1" || true); }
cpu_ticks() { # pid... -> "utime stime" of them all (threads included)
    local user=0 sys=0 pid f
    for pid in "$@"; do
        f=$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null) || continue
        user=$((user + ${f% *}))
        sys=$((sys + ${f#* }))
    done
    echo "$user $sys"
}
peak_rss_kb() { # pid... -> summed VmHWM
    local sum=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        sum=$((sum + ${v:-0}))
    done
    echo $sum
}
set_affinity() { # cpus pid... (every thread)
    local cpus=$1 pid
    shift
    for pid in "$@"; do taskset -a -p -c "$cpus" "$pid" >/dev/null; done
}
to_us() { # "393.00us" | "1.20ms" | "2.00s" -> µs
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1000000; else print n }'
}

# One wrk run against url; appends a row to RAW. Args: placement layer target workers pid url conns body rep
WRK_CPU=
RAW=
one_run() {
    local placement=$1 layer=$2 name=$3 workers=$4 pid=$5 url=$6 conns=$7 body=$8 rep=$9
    local pids out u0 s0 u1 s1 reqs rps p50 p99 errs load log0
    pids=$(target_pids "$pid")
    log0=$(log_start "$pid")
    read -r u0 s0 <<<"$(cpu_ticks $pids)"
    out=$(timeout $((DURATION + 30)) $WRK_CPU wrk -t1 -c"$conns" -d"${DURATION}s" --latency "$url" 2>&1) || {
        log "wrk failed against $name: $out"
        return 0
    }
    read -r u1 s1 <<<"$(cpu_ticks $pids)"
    log_lines "$pid" "$log0"
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errs=$(awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' <<<"$out")
    load=$(cut -d' ' -f1 /proc/loadavg)
    local cpu_us sys_us per_req='BEGIN { if (r > 0) printf "%.2f", t / hz * 1e6 / r; else print "nan" }'
    cpu_us=$(awk -v t=$((u1 - u0 + s1 - s0)) -v hz="$TICK" -v r="${reqs:-0}" "$per_req")
    sys_us=$(awk -v t=$((s1 - s0)) -v hz="$TICK" -v r="${reqs:-0}" "$per_req")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$placement" "$layer" "$body" "$conns" "$name" "$workers" \
        "$rep" "${rps:-0}" "${p50:-nan}" "${p99:-nan}" "$cpu_us" "$(peak_rss_kb $pids)" "$errs" "$load" "$sys_us" "${reqs:-0}" "$LOG_LINES" >>"$RAW"
    log "$placement $layer $body c$conns $name/$workers #$rep: ${rps:-0} req/s p50 ${p50}us p99 ${p99}us cpu ${cpu_us}us/req (sys $sys_us) errors $errs load $load; ${reqs:-0} requests, log lines $LOG_LINES"
}

path_of() { case $1 in small) echo /small ;; *) echo "/$1" ;; esac; }

# ---------------------------------------------------------------- pgo mode
# Profile-guided optimisation: the request path is instruction-cache bound (bench/README.md, "Instructions
# per request"), and LLVM lays out and inlines code better when it knows which branches run. The training
# is the benchmark's own kinds of load (small, 1 KB and 64 KB bodies at 50 and 200 connections, one and two
# workers, TCP) and HTTPS (rustls), each for a few seconds; the profile is written when the proxies exit
# (SIGTERM drains), merged by the llvm-profdata of rustc's LLVM, and the release build is made again with
# it into target/pgo/use/<triple>/release/sluicegate. The profile's file is named by its hash, so a new
# profile rebuilds and an unchanged one does not.
if [[ $MODE == pgo ]]; then
    rm -rf "$PGO_DIR/train/profiles"
    mkdir -p "$PGO_DIR/train/profiles" "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null || die "openssl could not make a test certificate"
    [[ $L4 == auto ]] && L4=1
    TLS_PORTS=()
    start_sluicegate 1 $PGO_START
    start_sluicegate 2 $PGO_START
    secs=${PGO_SECONDS:-4}
    # train conns url: one load; a profile of error paths would be worse than none, so any error stops here.
    train() {
        local out
        log "training: $2, $1 connections (${secs}s)"
        out=$(timeout $((secs + 30)) wrk -t1 -c"$1" -d"${secs}s" "$2" 2>&1) || die "wrk failed against $2: $out"
        grep -q 'Non-2xx\|Socket errors' <<<"$out" && die "errors in the training load against $2: $out"
        logs_empty
        return 0
    }
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r name w pid p pt <<<"$t"
        for body in small 1k 64k; do
            for c in 50 200; do train "$c" "http://127.0.0.1:$p$(path_of "$body")"; done
        done
        [[ $pt == - ]] || train 50 "http://127.0.0.1:$pt/small"
    done
    for p in "${TLS_PORTS[@]}"; do train 50 "https://127.0.0.1:$p/small"; done
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r _ _ pid _ _ <<<"$t"
        kill -TERM "$pid"
        timeout 30 tail --pid="$pid" -f /dev/null || die "sluicegate $pid did not exit after SIGTERM"
    done
    compgen -G "$PGO_DIR/train/profiles/*.profraw" >/dev/null || die "the instrumented proxies wrote no profile"
    "$PROFDATA" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR/train/profiles/"*.profraw || die "llvm-profdata merge failed"
    sum=$(sha256sum "$PGO_DIR/merged.profdata" | cut -c1-16)
    mkdir -p "$PGO_DIR/profiles"
    mv "$PGO_DIR/merged.profdata" "$PGO_DIR/profiles/$sum.profdata"
    find "$PGO_DIR/profiles" -name '*.profdata' ! -name "$sum.profdata" -delete # earlier profiles (16 MB each)
    log "building sluicegate ($PGO_VARIANT) with the profile $PGO_DIR/profiles/$sum.profdata (release)"
    build_sluicegate "$PGO_DIR/use" "${PGO_FEATURES[@]}" --target "$TRIPLE" --config "build.rustflags=[\"-Cprofile-use=$PGO_DIR/profiles/$sum.profdata\"]" ||
        die "profile-guided build failed"
    echo "$PGO_DIR/use/$TRIPLE/release/sluicegate"
    exit 0
fi

# ---------------------------------------------------------------- profile mode
if [[ $MODE == profile ]]; then
    L4=0
    start_sluicegate 1
    start_haproxy 1
    start_nginx 1
    out=$WORK/profile
    mkdir -p "$out"
    # Voluntary and involuntary context switches summed over every thread of the pids.
    ctx_switches() {
        local pid
        for pid in "$@"; do cat /proc/"$pid"/task/*/status 2>/dev/null; done |
            awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v + 0, n + 0}'
    }
    echo "== per request, the same wrk -t1 -c50 ${PROFILE_SECONDS}s load on each one-worker proxy (perf stat; /proc context switches)"
    printf '  %-12s %9s %12s %12s %14s %14s\n' proxy req/s "task-clock" "ctx switches" "  voluntary" "  involuntary"
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r name _ pid p _ <<<"$t"
        u="http://127.0.0.1:$p/small"
        wrk -t1 -c50 -d2s "$u" >/dev/null
        logs_empty
        pids=$(target_pids "$pid")
        read -r v0 n0 < <(ctx_switches $pids)
        perf stat -e task-clock,context-switches -p "$(tr ' ' ',' <<<"$pids")" -o "$out/stat-$name.txt" -- sleep "$PROFILE_SECONDS" &
        STAT_PID=$!
        PIDS+=($STAT_PID)
        wrkout=$(wrk -t1 -c50 -d"${PROFILE_SECONDS}s" "$u")
        wait $STAT_PID || true
        read -r v1 n1 < <(ctx_switches $pids)
        reqs=$(awk '/requests in/ {print $1}' <<<"$wrkout")
        awk -v r="$reqs" -v name="$name" -v rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$wrkout")" -v dv=$((v1 - v0)) -v dn=$((n1 - n0)) '
            /task-clock/ {gsub(/,/, "", $1); tc = $1} /context-switches/ {gsub(/,/, "", $1); cs = $1}
            END {printf "  %-12s %9.0f %9.2f us %12.2f %14.2f %14.2f\n", name, rps, tc * 1000 / r, cs / r, dv / r, dn / r}' "$out/stat-$name.txt"
    done
    IFS='|' read -r _ _ SG_PID SG_PORT _ <<<"${TARGETS[0]}"
    url="http://127.0.0.1:$SG_PORT/small"
    logs_empty
    log "perf stat + record (${PROFILE_SECONDS}s of wrk -t1 -c50)"
    perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p "$SG_PID" -o "$out/stat.txt" -- sleep "$PROFILE_SECONDS" &
    STAT_PID=$!
    PIDS+=($STAT_PID)
    perf record -F 999 -g --call-graph dwarf,8192 -p "$SG_PID" -o "$out/perf.data" -- sleep "$PROFILE_SECONDS" 2>"$out/record.log" &
    RECORD_PID=$!
    PIDS+=($RECORD_PID)
    wrkout=$(wrk -t1 -c50 -d"${PROFILE_SECONDS}s" "$url")
    wait $STAT_PID $RECORD_PID || true
    reqs=$(awk '/requests in/ {print $1}' <<<"$wrkout")
    echo "== wrk (under perf record: slower than the benchmark)"; echo "$wrkout"
    echo "== perf stat over the run; per request: divide by $reqs"
    cat "$out/stat.txt"
    awk -v r="$reqs" '/context-switches/ {gsub(/,/, "", $1); printf "  %-18s %12.0f per request\n", $2, $1 / r}
        /task-clock/ {gsub(/,/, "", $1); printf "  %-18s %12.2f us per request\n", "task-clock", $1 * 1000 / r}' "$out/stat.txt"
    # --no-inline: resolving inlined frames is minutes of addr2line; the symbols are enough here.
    tidy() { grep -v -e '^#' -e '^$' "$1" | sed 's/ *-  *- *$//; s/ *$//' | cut -c1-180 | head -"$2" || true; }
    perf report -i "$out/perf.data" --no-inline --no-children --sort symbol --stdio -g none --percent-limit 0.25 >"$out/self.txt" 2>/dev/null || true
    perf report -i "$out/perf.data" --no-inline --children --sort symbol --stdio -g none --percent-limit 0.4 >"$out/children.txt" 2>/dev/null || true
    perf report -i "$out/perf.data" --no-inline --no-children --sort dso --stdio -g none >"$out/dso.txt" 2>/dev/null || true
    echo "== where the samples are, by binary ([kernel.kallsyms] is syscalls, loopback TCP and scheduling)"
    tidy "$out/dso.txt" 8
    echo "== top functions, self time (% of the proxy's samples)"
    tidy "$out/self.txt" 20
    echo "== top user-space functions, self time"
    grep -F '[.]' "$out/self.txt" | sed 's/ *-  *- *$//; s/ *$//' | cut -c1-180 | head -25 || true
    echo "== top functions, inclusive (children)"
    tidy "$out/children.txt" 70
    echo "== the proxy's own steps and the libraries' per-request work, inclusive"
    grep -E 'sluicegate::|hyper_util::client::legacy::(client::Client|pool)|wasmtime::runtime::component::func::Func::call|malloc|free|memmove|memcpy|HeaderMap.*clone|time::(sleep|timeout)|TimerEntry|Instant::now|clock_gettime' "$out/children.txt" |
        sed 's/ *-  *- *$//; s/ *$//' | cut -c1-180 | head -45 || true
    logs_empty
    log "syscalls per request (strace -c, ${PROFILE_SECONDS}s; strace slows the proxy, the counts per request still hold)"
    strace -c -f -p "$SG_PID" -o "$out/strace.txt" &
    STRACE_PID=$!
    PIDS+=($STRACE_PID)
    sleep 0.5
    wrkout=$(wrk -t1 -c50 -d"${PROFILE_SECONDS}s" "$url")
    kill -INT $STRACE_PID; wait $STRACE_PID || true
    reqs=$(awk '/requests in/ {print $1}' <<<"$wrkout")
    echo "== syscalls per request ($reqs requests under strace)"
    awk -v r="$reqs" '$1 ~ /^[0-9.]+$/ && NF >= 5 { name = $NF; calls = $4; printf "  %-16s %8.3f per request\n", name, calls / r }' "$out/strace.txt" | sort -k2 -nr | head -12 || true
    exit 0
fi

# ---------------------------------------------------------------- bench mode
[[ $PINNED == auto ]] && { ((NCPU >= 2)) && PINNED=1 || PINNED=0; }
[[ $L4 == auto ]] && L4=1

start_sluicegate 1
start_sluicegate 2
if [[ $NATIVE == 1 ]]; then
    start_sluicegate 1 native
    start_sluicegate 2 native
fi
if [[ $LOG == 1 && $NOLOG == 1 ]]; then
    start_sluicegate 1 nolog
    start_sluicegate 2 nolog
fi
start_haproxy 1
start_haproxy 2
start_nginx 1
start_nginx 2
if [[ $PINGORA != 0 ]]; then
    start_pingora 1
    start_pingora 2
fi
TARGETS+=("direct|-|$BACKEND_PID|$B1|-")

# How many targets run pinned (one worker, or direct) and how many have a tcp port.
npinned=0; ntcp=0
for t in "${TARGETS[@]}"; do
    IFS='|' read -r name w _ _ pt <<<"$t"
    [[ $w == 1 || $name == direct ]] && npinned=$((npinned + 1))
    [[ $pt == - ]] || ntcp=$((ntcp + 1))
done
nconns=$(wc -w <<<"$CONNS"); nbodies=$(wc -w <<<"$BODIES"); npin=$(wc -w <<<"$PIN_CONNS"); nl4=$(wc -w <<<"$L4_CONNS")
planned=$((RUNS * ${#TARGETS[@]} * nconns * nbodies + PINNED * RUNS * npinned * npin * nbodies + L4 * RUNS * ntcp * nl4))
MAX_SECONDS=${MAX_SECONDS:-$((planned * (DURATION + 4) + 120 + PICK_BENCH * 900))}
log "$planned wrk runs of ${DURATION}s planned; the run is bounded to ${MAX_SECONDS}s"
bound_run "$MAX_SECONDS"

RESULTS=${RESULTS:-$ROOT/bench/results/$STAMP}
mkdir -p "$RESULTS"
RAW=$RESULTS/raw.tsv
printf 'placement\tlayer\tbody\tconns\ttarget\tworkers\trep\trps\tp50_us\tp99_us\tcpu_us_per_req\tpeak_rss_kb\terrors\tload1\tsys_us_per_req\trequests\tlog_lines\n' >"$RAW"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

all_proxy_pids() {
    local t pid
    for t in "${TARGETS[@]}"; do
        IFS='|' read -r name _ pid _ _ <<<"$t"
        [[ $name == direct ]] || target_pids "$pid"
    done
}

# Warm every target (connection pools, plugin instances, page cache) once.
for t in "${TARGETS[@]}"; do
    IFS='|' read -r name w pid p pt <<<"$t"
    for body in $BODIES; do wrk -t1 -c50 -d1s "http://127.0.0.1:$p$(path_of "$body")" >/dev/null 2>&1 || true; done
    [[ $pt == - ]] || wrk -t1 -c50 -d1s "http://127.0.0.1:$pt/small" >/dev/null 2>&1 || true
done

# Unpinned, HTTP: A B C A B C.
WRK_CPU=
for rep in $(seq "$RUNS"); do
    for body in $BODIES; do
        for conns in $CONNS; do
            for t in "${TARGETS[@]}"; do
                IFS='|' read -r name w pid p _ <<<"$t"
                one_run unpinned http "$name" "$w" "$pid" "http://127.0.0.1:$p$(path_of "$body")" "$conns" "$body" "$rep"
            done
        done
    done
done

# Unpinned, L4 (TCP): Sluicegate tcp vs haproxy mode tcp vs nginx stream; same backends.
if [[ $L4 == 1 ]]; then
    for rep in $(seq "$RUNS"); do
        for conns in $L4_CONNS; do
            for t in "${TARGETS[@]}"; do
                IFS='|' read -r name w pid _ pt <<<"$t"
                [[ $pt == - ]] && continue
                one_run unpinned tcp "$name" "$w" "$pid" "http://127.0.0.1:$pt/small" "$conns" small "$rep"
            done
        done
    done
fi

# Pinned: the proxy alone on CPU 1; wrk and the backends on CPU 0. One-worker proxies only (one core each).
# "direct" is wrk and the backends on CPU 0: the ceiling of this placement.
if [[ $PINNED == 1 ]]; then
    set_affinity 0 $(target_pids "$BACKEND_PID")
    set_affinity 1 $(all_proxy_pids)
    WRK_CPU="taskset -c 0"
    for rep in $(seq "$RUNS"); do
        for body in $BODIES; do
            for conns in $PIN_CONNS; do
                for t in "${TARGETS[@]}"; do
                    IFS='|' read -r name w pid p _ <<<"$t"
                    [[ $w == 1 || $name == direct ]] || continue
                    one_run pinned http "$name" "$w" "$pid" "http://127.0.0.1:$p$(path_of "$body")" "$conns" "$body" "$rep"
                done
            done
        done
    done
    WRK_CPU=
    set_affinity "0-$((NCPU - 1))" $(target_pids "$BACKEND_PID") $(all_proxy_pids)
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
[[ $LOG == 0 ]] || log "access logs: at most $((LOG_DISK_PEAK_KB / 1024)) MB on disk at once (each emptied after its run)"

# ---------------------------------------------------------------- the table: medians, ratios in the same run
TABLE=$RESULTS/table.md
PG_VERSION=
[[ $PINGORA == 0 ]] ||
    PG_VERSION="pingora $(awk '/^name = "pingora"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "$ROOT/bench/pingora/Cargo.lock") (bench/pingora); "
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $NCPU CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo);" \
        "$(uname -r); load average at start $LOAD_START, at end $LOAD_END"
    echo "Sluicegate $SG_VERSION (${SLUICEGATE_BIN#"$ROOT"/}); $(nginx -v 2>&1 | sed 's/.*: //'); haproxy $(haproxy -v | awk 'NR==1 {print $3}'); wrk -t1, ${DURATION}s," \
        "${PG_VERSION}median of $RUNS interleaved runs; bodies: $BODIES; 4 backend ports, round-robin"
    if [[ $LOG == 1 ]]; then
        echo "Access log: LOG=1, on, each to a file, in sluicegate (its default JSON lines), haproxy (option httplog, log" \
            "stdout to a file) and nginx (access_log, combined format, unbuffered); pingora: no log (the peer has none)." \
            "The logs' peak on disk: $((LOG_DISK_PEAK_KB / 1024)) MB (emptied after every run)."
    else
        echo "Access log: LOG=0, off in every proxy (the tuned comparison; pingora has none)."
    fi
    echo
    echo "| placement | layer | body | conns | target | workers | req/s | p50 µs | p99 µs | CPU µs/req | of it sys | peak RSS MB | errors | log lines/req | × haproxy | × nginx | × pingora | × direct | × sluicegate-native | × sluicegate-nolog |"
    echo "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v runs="$RUNS" -v logon="$LOG" '
        function median(list,   a, n, i, j, t) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n ? a[int((n + 1) / 2)] : "nan"
        }
        NR == 1 { next }
        {
            k = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4 SUBSEP $5 SUBSEP $6
            if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
            rps[k] = rps[k] " " $8; p50[k] = p50[k] " " $9; p99[k] = p99[k] " " $10; cpu[k] = cpu[k] " " $11; sys[k] = sys[k] " " $15
            if ($12 > rss[k]) rss[k] = $12
            err[k] += $13
            if ($17 != "" && $17 != "-" && $16 > 0) lpr[k] = lpr[k] " " $17 / $16
        }
        END {
            for (i = 1; i <= nk; i++) { k = order[i]; m[k] = median(rps[k]) }
            for (i = 1; i <= nk; i++) {
                k = order[i]; split(k, f, SUBSEP)
                w = f[6] == "-" ? 1 : f[6]
                base = f[1] SUBSEP f[2] SUBSEP f[3] SUBSEP f[4]
                h = base SUBSEP "haproxy" SUBSEP w; n = base SUBSEP "nginx" SUBSEP w; d = base SUBSEP "direct" SUBSEP "-"
                g = base SUBSEP "pingora" SUBSEP w
                v = base SUBSEP "sluicegate-native" SUBSEP w
                o = base SUBSEP "sluicegate-nolog" SUBSEP w
                rh = (h in m) && m[h] > 0 ? sprintf("%.2f", m[k] / m[h]) : "-"
                rn = (n in m) && m[n] > 0 ? sprintf("%.2f", m[k] / m[n]) : "-"
                rg = (g in m) && m[g] > 0 ? sprintf("%.2f", m[k] / m[g]) : "-"
                rd = (d in m) && m[d] > 0 ? sprintf("%.2f", m[k] / m[d]) : "-"
                # Only on the Wasm rows: what the plugin boundary costs them in throughput.
                rv = f[5] == "sluicegate" && (v in m) && m[v] > 0 ? sprintf("%.2f", m[k] / m[v]) : "-"
                # Only on the logging rows: what the access log costs them in throughput.
                ro = f[5] == "sluicegate" && (o in m) && m[o] > 0 ? sprintf("%.2f", m[k] / m[o]) : "-"
                # Access log lines per request (wrk counts the requests it completed; the ones cut short at
                # its end are logged too, so a little over 1.00 at many connections).
                lg = f[5] == "direct" ? "-" : f[5] == "pingora" ? "no log" : logon == 0 || f[5] == "sluicegate-nolog" ? "off" : lpr[k] == "" ? "?" : sprintf("%.2f", median(lpr[k]))
                printf "| %s | %s | %s | %s | %s | %s | %.0f | %.0f | %.0f | %s | %s | %.1f | %d | %s | %s | %s | %s | %s | %s | %s |\n",
                    f[1], f[2], f[3], f[4], f[5], f[6], m[k], median(p50[k]), median(p99[k]), median(cpu[k]), median(sys[k]), rss[k] / 1024, err[k], lg, rh, rn, rg, rd, rv, ro
            }
        }' "$RAW"
    echo
    echo "Ratios are req/s against the same placement, layer, body and connections; × haproxy, × nginx and × pingora"
    echo "against the same worker count (pingora is HTTP only: no × pingora on tcp rows); CPU µs/req is the proxy's"
    echo "utime+stime (all its processes) over the run / requests, \"of it sys\" the stime part (the kernel's); for"
    echo "\"direct\" both are the backend nginx's. Peak RSS"
    echo "is VmHWM summed over the proxy's processes. Log lines/req: the access log's lines over wrk's completed requests"
    echo "(requests cut short when wrk stops are logged too: a little over 1.00 at 1,000 connections); tcp rows log one line"
    echo "per connection."
    echo "sluicegate: the Wasm router and round-robin balancer on every request; sluicegate-native: the same proxy built"
    echo "with --features native-choice, route table and a plain-Rust round-robin (no Wasm call). × sluicegate-native is"
    echo "sluicegate's req/s against it, same workers: below 1.00 by what the plugin boundary costs."
    [[ $LOG == 0 || $NOLOG == 0 ]] || echo "sluicegate-nolog: the same build and config with its access log off; × sluicegate-nolog is sluicegate's req/s against it: below 1.00 by what its access log costs."
    [[ -z $PLUGIN_DIR ]] || echo "sluicegate ran the plugin builds in $PLUGIN_DIR in place of its embedded ones."
    [[ $PINGORA == 0 ]] || echo "pingora: bench/pingora, Pingora's round-robin, one single-threaded runtime per thread (--no-work-stealing)."
} >"$TABLE"

if [[ $PICK_BENCH == 1 ]]; then
    log "plugin boundary: cargo bench -p sluicegate --bench pick"
    {
        echo
        echo "Plugin boundary (cargo bench -p sluicegate --bench pick, ns per pick; the per-request CPU budget is 15 µs = 15000 ns):"
        echo
        echo '```'
        (cd "$ROOT" && clean_env timeout 900 cargo bench -q -p sluicegate --bench pick 2>&1 | grep -v -E '^\s*(Compiling|Finished|Running|Blocking)' | tail -20) || echo "(the pick benchmark failed)"
        echo '```'
    } >>"$TABLE"
fi

cat "$TABLE"
log "results in $RESULTS"

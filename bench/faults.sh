#!/usr/bin/env bash
# What a faulty balancer plugin costs Sluicegate under load: one nginx backend, one cluster whose balancer is
# a plugin from the watched plugin directory (`custom`, first a healthy build: tests/plugins/pick-first);
# wrk -t1 -c50 against the healthy proxy, then the plugin file is replaced (atomically) by a build that faults
# on every pick (tests/plugins/faulty-pick: spin | panic | alloc, named by the cluster's balancer_settings),
# and once /status shows the faulty version serving (plus SETTLE seconds) the same wrk again: the circuit
# breaker's steady state, with the fallback balancer (round-robin) answering. One fresh proxy per case.
#
#   bench/faults.sh         prints a table and writes bench/results/<date>-faults/: table.md, raw.tsv, and per
#                           case (w<workers>-<fault>/) the config, the wrk outputs (healthy, swap, after),
#                           the proxy's stderr and stdout, and /status before and after the swap
#
#   BIN=target/debug/sluicegate EXTRA_PLUGINS_TOML="" DURATION=3 WORKERS_LIST=1 FAULTS=panic bench/faults.sh
#                           a quick check of the mechanics (a binary without `rollback_window`)
#
# Settings (environment): BIN (the proxy, default target/release/sluicegate; not built here: build it with
# `cargo build --release -p sluicegate`), WORKERS_LIST ("1 2"), FAULTS ("spin panic alloc"), DURATION (s per
# measured phase, 10), CONNS (50), SETTLE (s between seeing the faulty version and phase 2, 3), SWAP_TIMEOUT
# (s to wait for /status to show it, 20), WARMUP (s of unrecorded wrk before phase 1, 1), WRK_TIMEOUT (wrk's
# --timeout, 2s, wrk's default), EXTRA_PLUGINS_TOML (lines appended to the config's [plugins], default
# `rollback_window = "0s"`: the faulty version stays in place; set it to "" for a binary that does not know the
# key), KEEP_ACCESS_LOG (1: keep each case's access.log; by default only its line count is kept: one line per
# request is large at release speeds), KEEP_WORK (1: keep the scratch directory), MAX_SECONDS (hard bound on the
# run). The plugins are built with the binary's own `plugin build` (into target/wasm-plugins; the first build may
# install Debian's Wasm toolchain with apt-get when run as root). The config also sets [shutdown] drain_timeout =
# "2s", so that stopping each proxy is quick. With a debug binary, loading the faulty build under load can take
# 10-20 s: raise SWAP_TIMEOUT if the swap is not seen in time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-target/release/sluicegate}
WORKERS_LIST=${WORKERS_LIST:-"1 2"}
FAULTS=${FAULTS:-"spin panic alloc"}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
SETTLE=${SETTLE:-3}
SWAP_TIMEOUT=${SWAP_TIMEOUT:-20}
WARMUP=${WARMUP:-1}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
# No colon: an empty EXTRA_PLUGINS_TOML means no extra lines.
EXTRA_PLUGINS_TOML=${EXTRA_PLUGINS_TOML-'rollback_window = "0s"'}
KEEP_ACCESS_LOG=${KEEP_ACCESS_LOG:-0}
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)

log() { printf '[faults %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- settings, checked before anything starts
[[ $BIN == /* ]] || { [[ -e $BIN ]] && BIN=$PWD/$BIN || BIN=$ROOT/$BIN; }
[[ -x $BIN ]] || die "no proxy binary at $BIN: build it (cargo build --release -p sluicegate) or set BIN"
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in DURATION CONNS SETTLE SWAP_TIMEOUT WARMUP; do
    is_uint "${!v}" || die "$v must be a whole number of seconds (or connections), not '${!v}'"
done
((DURATION > 0)) || die "DURATION must be at least 1"
[[ -n ${WORKERS_LIST// /} ]] || die "WORKERS_LIST is empty"
for w in $WORKERS_LIST; do is_uint "$w" && ((w > 0)) || die "WORKERS_LIST: '$w' is not a positive worker count"; done
[[ -n ${FAULTS// /} ]] || die "FAULTS is empty"
for f in $FAULTS; do [[ $f == spin || $f == panic || $f == alloc ]] || die "FAULTS: '$f' is not one of spin, panic, alloc"; done

# ---------------------------------------------------------------- processes: every one is killed on exit
PIDS=()
WORK=$(mktemp -d /tmp/sluicegate-faults.XXXXXX)
chmod 755 "$WORK" # nginx workers run as nobody and read the backend's files
cleanup() {
    local pid alive
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
forget_pid() { # pid: no longer ours to kill (it has exited)
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v jq >/dev/null || need_pkgs+=(jq)
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { timeout 600 apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2; }
    apt_install || { timeout 300 apt-get update -q >&2 && apt_install; } || die "apt-get install ${need_pkgs[*]} failed"
fi

# ---------------------------------------------------------------- the bound on the whole run
read -ra WLIST <<<"$WORKERS_LIST"
read -ra FLIST <<<"$FAULTS"
NCASES=$((${#WLIST[@]} * ${#FLIST[@]}))
MAX_SECONDS=${MAX_SECONDS:-$((1800 + NCASES * (WARMUP + 2 * DURATION + SWAP_TIMEOUT + SETTLE + 120)))}
log "$NCASES cases (workers: $WORKERS_LIST; faults: $FAULTS), ${DURATION}s per phase; the run is bounded to ${MAX_SECONDS}s"
(
    trap 'kill $sleeper 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECONDS" &
    sleeper=$!
    wait $sleeper && log "time bound reached" && kill -TERM $$
) &
PIDS+=($!)

RESULTS=${RESULTS:-$ROOT/bench/results/$STAMP-faults}
mkdir -p "$RESULTS"
SG_VERSION="$(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- host config upstream plugin-runtime plugin-build sdk plugins Cargo.toml Cargo.lock && echo "" || echo "+dirty")"

# ---------------------------------------------------------------- the plugins, built by the binary itself
mkdir -p "$WORK/wasm"
for p in pick-first faulty-pick; do
    log "building tests/plugins/$p ($BIN plugin build)"
    (cd "$ROOT" && timeout 1800 "$BIN" plugin build "tests/plugins/$p" -o "$WORK/wasm/$p.wasm") >>"$RESULTS/plugin-build.log" 2>&1 ||
        die "$BIN plugin build tests/plugins/$p failed (see $RESULTS/plugin-build.log)"
    [[ -s $WORK/wasm/$p.wasm ]] || die "$BIN plugin build tests/plugins/$p wrote no $WORK/wasm/$p.wasm"
done
HEALTHY_SHA=$(sha256sum "$WORK/wasm/pick-first.wasm" | cut -d' ' -f1)
FAULTY_SHA=$(sha256sum "$WORK/wasm/faulty-pick.wasm" | cut -d' ' -f1)
[[ $HEALTHY_SHA != "$FAULTY_SHA" ]] || die "pick-first.wasm and faulty-pick.wasm are the same bytes: the swap would not show"

# ---------------------------------------------------------------- ports, free at start
source "$ROOT/bench/ports.sh"

# ---------------------------------------------------------------- the backend: one nginx worker, a 23-byte file
free_port; BACKEND_PORT=$PORT
mkdir -p "$WORK/backend/www" "$WORK/backend/tmp"
printf 'hello from the backend\n' >"$WORK/backend/www/small" # 23 bytes
chmod -R a+rX "$WORK/backend"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/backend/tmp; proxy_temp_path $WORK/backend/tmp; fastcgi_temp_path $WORK/backend/tmp;
    uwsgi_temp_path $WORK/backend/tmp; scgi_temp_path $WORK/backend/tmp;
    default_type text/plain;
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        root $WORK/backend/www;
    }
}
EOF
nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -g 'daemon off;' >"$WORK/backend/out.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
port_listening "$BACKEND_PORT" "$BACKEND_PID" 10 ||
    die "nginx is not listening on $BACKEND_PORT after 10 s: $(tail -5 "$WORK/backend/error.log" "$WORK/backend/out.log" 2>/dev/null)"
body=$(curl -fsS --max-time 5 "http://127.0.0.1:$BACKEND_PORT/small") || die "the backend does not serve /small"
[[ $body == "hello from the backend" ]] || die "the backend serves '$body', not the test file"

# ---------------------------------------------------------------- one case
# wrk_run out_file: a wrk -t1 run of DURATION against the proxy; its output in out_file (0 req/s when it fails).
wrk_run() {
    timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout "$WRK_TIMEOUT" "$URL" >"$1" 2>&1 ||
        log "warning: wrk failed (exit $?): $(tail -3 "$1" | tr '\n' ' ')"
}
# wrk_stats file -> "req/s non-2xx connect read write timeout"
wrk_stats() {
    awk '/^Requests\/sec/ {rps = $2}
         /Non-2xx or 3xx responses:/ {n = $NF}
         /Socket errors:/ {gsub(/,/, ""); c = $4; r = $6; w = $8; t = $10}
         END {printf "%s %d %d %d %d %d\n", rps == "" ? 0 : rps, n, c, r, w, t}' "$1"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
status_json() { curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/status" 2>/dev/null; }
custom_version() { status_json | jq -r '.plugins[] | select(.name == "custom") | .version' 2>/dev/null || true; }
now() { date +%s.%N; }

RAW=$RESULTS/raw.tsv
printf 'workers\tfault\tphase\trps\tnon2xx\tsock_connect\tsock_read\tsock_write\tsock_timeout\trss_kb\tstderr_lines\tseconds\tnote\n' >"$RAW"
FAILED=0

run_case() { # workers fault
    local w=$1 fault=$2 dir port pa pid v0 v1 t0 t1 lines0 lines1 swap_pid deadline note="" i body
    dir=$RESULTS/w$w-$fault
    mkdir -p "$dir/plugins"
    cp "$WORK/wasm/pick-first.wasm" "$dir/plugins/custom.wasm"
    free_port; port=$PORT
    free_port; pa=$PORT
    ADMIN_PORT=$pa
    URL="http://127.0.0.1:$port/small"
    {
        cat <<EOF
workers = $w

[[listeners]]
address = "127.0.0.1:$port"

[admin]
address = "127.0.0.1:$pa"

[access_log]
path = "access.log"

[shutdown]
drain_timeout = "2s"

[plugins]
dir = "plugins"
EOF
        [[ -z $EXTRA_PLUGINS_TOML ]] || printf '%s\n' "$EXTRA_PLUGINS_TOML"
        cat <<EOF

[[routes]]
cluster = "web"

[[clusters]]
name = "web"
balancer = "custom"
balancer_settings = { fault = "$fault" }
fallback_balancer = "round-robin"

[[clusters.endpoints]]
address = "127.0.0.1:$BACKEND_PORT"
EOF
    } >"$dir/sluicegate.toml"

    log "case workers=$w fault=$fault: starting the proxy (listener $port, admin $pa)"
    env -u RUST_LOG "$BIN" run --config "$dir/sluicegate.toml" >"$dir/proxy.stdout.log" 2>"$dir/proxy.stderr.log" &
    pid=$!
    PIDS+=("$pid")
    # Startup compiles the plugins (a debug build takes seconds): /status answering is the sign it serves.
    for i in $(seq 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            forget_pid "$pid"
            note="the proxy exited at start: $(grep -v '^\s*$' "$dir/proxy.stderr.log" | tail -3 | tr '\n' ' ')"
            grep -q 'unknown field `rollback_window`' "$dir/proxy.stderr.log" &&
                note+="(this binary has no [plugins] rollback_window: EXTRA_PLUGINS_TOML=\"\" runs it without)"
            case_failed "$w" "$fault" "$note"
            return 1
        fi
        status_json >/dev/null && break
        sleep 0.1
    done
    status_json >"$dir/status-start.json" || { stop_proxy "$pid"; case_failed "$w" "$fault" "no answer from http://127.0.0.1:$pa/status 60 s after the start"; return 1; }
    v0=$(jq -r '.plugins[] | select(.name == "custom") | .version' "$dir/status-start.json")
    [[ -n $v0 ]] || { stop_proxy "$pid"; case_failed "$w" "$fault" "/status lists no plugin named custom (see $dir/status-start.json)"; return 1; }
    port_listening "$port" "$pid" 10 || { stop_proxy "$pid"; case_failed "$w" "$fault" "the proxy is not listening on $port"; return 1; }
    body=$(curl -fsS --max-time 5 "$URL") || { stop_proxy "$pid"; case_failed "$w" "$fault" "GET $URL through the healthy proxy failed"; return 1; }
    [[ $body == "hello from the backend" ]] || { stop_proxy "$pid"; case_failed "$w" "$fault" "GET $URL answered '$body'"; return 1; }
    ((WARMUP == 0)) || timeout $((WARMUP + 30)) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$URL" >/dev/null 2>&1 || true

    # Phase 1: healthy.
    log "phase 1 (healthy, custom $v0): wrk -t1 -c$CONNS -d${DURATION}s"
    t0=$(now); lines0=$(wc -l <"$dir/proxy.stderr.log")
    wrk_run "$dir/healthy.wrk.txt"
    t1=$(now); lines1=$(wc -l <"$dir/proxy.stderr.log")
    printf '%s\t%s\thealthy\t%s\t%s\t%s\t%s\t%s\n' "$w" "$fault" "$(wrk_stats "$dir/healthy.wrk.txt" | tr ' ' '\t')" \
        "$(rss_kb "$pid")" $((lines1 - lines0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" "" >>"$RAW"

    # The swap, under load: the faulty build replaces custom.wasm in one rename.
    timeout $((SWAP_TIMEOUT + SETTLE + 60)) wrk -t1 -c"$CONNS" -d$((SWAP_TIMEOUT + SETTLE + 30))s --timeout "$WRK_TIMEOUT" "$URL" >"$dir/swap.wrk.txt" 2>&1 &
    swap_pid=$!
    PIDS+=("$swap_pid")
    sleep 0.5
    cp "$WORK/wasm/faulty-pick.wasm" "$dir/plugins/custom.swap-tmp"
    mv -f "$dir/plugins/custom.swap-tmp" "$dir/plugins/custom.wasm"
    t0=$(now)
    deadline=$((SECONDS + SWAP_TIMEOUT))
    v1=
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || break
        v1=$(custom_version)
        [[ -z $v1 || $v1 == "$v0" ]] || break
        v1=
        sleep 0.2
    done
    if [[ -z $v1 ]]; then
        kill -0 "$pid" 2>/dev/null && note="the faulty version did not show in /status within ${SWAP_TIMEOUT}s" ||
            note="the proxy exited during the swap"
        kill -INT "$swap_pid" 2>/dev/null || true
        stop_proxy "$pid"
        stop_wrk "$swap_pid"
        tidy_access_log "$dir"
        case_failed "$w" "$fault" "$note (logs in $dir)"
        return 1
    fi
    [[ $FAULTY_SHA == "$v1"* ]] || log "warning: custom's new version $v1 is not a prefix of faulty-pick.wasm's sha256 $FAULTY_SHA"
    log "swap: custom $v0 -> $v1 after $(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')s; settling ${SETTLE}s"
    sleep "$SETTLE"
    kill -INT "$swap_pid" 2>/dev/null || true # wrk prints its figures on SIGINT
    stop_wrk "$swap_pid"

    # Phase 2: after the trip.
    log "phase 2 (after, custom $v1 faulting: $fault): wrk -t1 -c$CONNS -d${DURATION}s"
    t0=$(now); lines0=$(wc -l <"$dir/proxy.stderr.log")
    wrk_run "$dir/after.wrk.txt"
    t1=$(now); lines1=$(wc -l <"$dir/proxy.stderr.log")
    kill -0 "$pid" 2>/dev/null || note="the proxy exited during phase 2"
    printf '%s\t%s\tafter\t%s\t%s\t%s\t%s\t%s\n' "$w" "$fault" "$(wrk_stats "$dir/after.wrk.txt" | tr ' ' '\t')" \
        "$(rss_kb "$pid")" $((lines1 - lines0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" "$note" >>"$RAW"
    status_json >"$dir/status-after.json" || true

    stop_proxy "$pid"
    tidy_access_log "$dir"
    [[ -z $note ]] || { log "error: $note"; return 1; }
    return 0
}
tidy_access_log() { # dir: its line count is kept, the log itself only with KEEP_ACCESS_LOG=1
    [[ -e $1/access.log ]] || return 0
    wc -l <"$1/access.log" >"$1/access.log.lines"
    [[ $KEEP_ACCESS_LOG == 1 ]] || rm -f "$1/access.log"
}
case_failed() { # workers fault note: logged, and a row of the table
    log "error: workers $1, fault $2: $3"
    printf '%s\t%s\tfailed\t0\t0\t0\t0\t0\t0\t0\t0\t0\t%s\n' "$1" "$2" "$3" >>"$RAW"
}
stop_wrk() { # pid: SIGINT was sent; bounded wait, then KILL
    local i
    for i in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}
stop_proxy() { # pid: SIGTERM (drains), bounded wait, then KILL
    local i
    kill -TERM "$1" 2>/dev/null || true
    for i in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$1" 2>/dev/null; then
        log "warning: the proxy ($1) did not exit 15 s after SIGTERM; killing it"
        kill -KILL "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for w in "${WLIST[@]}"; do
    for fault in "${FLIST[@]}"; do
        run_case "$w" "$fault" || FAILED=$((FAILED + 1))
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- the table
TABLE=$RESULTS/table.md
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo);" \
        "$(uname -r); load average at start $LOAD_START, at end $LOAD_END"
    echo "Sluicegate $SG_VERSION (${BIN#"$ROOT"/}); $(nginx -v 2>&1 | sed 's/.*: //') (one worker, 23-byte file); wrk -t1 -c$CONNS" \
        "-d${DURATION}s --timeout $WRK_TIMEOUT per phase; phase 2 starts ${SETTLE}s after /status shows the faulty version;" \
        "[plugins] extra: ${EXTRA_PLUGINS_TOML:-none}"
    echo
    echo "| workers | fault | healthy req/s | after-trip req/s | ratio | non-2xx (healthy/after) | timeouts (healthy/after) | log lines/s after | RSS MB healthy/after |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '
        NR == 1 { next }
        {
            k = $1 SUBSEP $2
            if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
            rps[k, $3] = $4; n2[k, $3] = $5; to[k, $3] = $9; rss[k, $3] = $10; lines[k, $3] = $11; secs[k, $3] = $12
            if ($13 != "") note[k] = $13
        }
        END {
            for (i = 1; i <= nk; i++) {
                k = order[i]; split(k, f, SUBSEP)
                hok = (k, "healthy") in rps; aok = (k, "after") in rps
                h = rps[k, "healthy"] + 0; a = rps[k, "after"] + 0
                healthy = hok ? sprintf("%.0f", h) : "-"
                after = aok ? sprintf("%.0f", a) : "-"
                ratio = h > 0 && aok ? sprintf("%.3f", a / h) : "-"
                lps = aok && secs[k, "after"] > 0 ? sprintf("%.0f", lines[k, "after"] / secs[k, "after"]) : "-"
                n2s = (hok ? n2[k, "healthy"] : "-") "/" (aok ? n2[k, "after"] : "-")
                tos = (hok ? to[k, "healthy"] : "-") "/" (aok ? to[k, "after"] : "-")
                rsss = (hok ? sprintf("%.1f", rss[k, "healthy"] / 1024) : "-") "/" (aok ? sprintf("%.1f", rss[k, "after"] / 1024) : "-")
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], healthy, after, ratio, n2s, tos, lps, rsss
            }
            for (i = 1; i <= nk; i++) {
                k = order[i]; split(k, f, SUBSEP)
                if (note[k] != "") printf "\n**Failed:** workers %s, fault %s: %s.\n", f[1], f[2], note[k]
            }
        }' "$RAW"
    echo
    echo "ratio: after-trip req/s / healthy req/s. non-2xx: wrk's \"Non-2xx or 3xx responses\"; timeouts: its socket"
    echo "timeouts (other socket errors are in raw.tsv). log lines/s: lines the proxy wrote to stderr (default log level)"
    echo "during phase 2, per second. RSS: VmRSS at the end of each phase."
} >"$TABLE"
cat "$TABLE"
log "results in $RESULTS"
((FAILED == 0)) || die "$FAILED of $NCASES cases failed (see the log above and $RESULTS)"

#!/usr/bin/env bash
# What a faulty balancer plugin costs Sluicegate under load: one nginx backend, one cluster whose balancer is
# a plugin from the watched plugin directory (`custom`: a healthy build, tests/plugins/pick-first, or a build
# that faults on every pick, tests/plugins/faulty-pick: spin | panic | alloc, named by the cluster's
# balancer_settings), wrk -t1 -c50 against it, and the fallback balancer (round-robin) answering once the
# circuit breaker is open. One fresh proxy per case (workers x fault), and in it ROUNDS rounds, interleaved
# so that the machine's drift (wrk's req/s moves by +-15% between consecutive runs on 2 cores) falls on both
# sides alike. Round k:
#   - healthy phase: pick-first serves (from round 2 on, its file is swapped back in first, atomically and
#     under load, and the phase waits until /status shows the healthy version, plus SETTLE seconds);
#   - the swap: faulty-pick's file replaces custom.wasm in one rename, under load; once /status shows the
#     faulty version, SETTLE seconds more. Each swap is a new load of the same bytes, with a breaker of its
#     own that starts closed and trips again in the first requests: SETTLE covers that;
#   - after phase: the breaker's steady state.
# Per case the table gives the median healthy req/s, the median after-trip req/s, their ratio, the lowest and
# highest per-round ratio (after_k / healthy_k), non-2xx and timeouts summed over every wrk run of the case,
# log lines/s over the after phases, and RSS at the end.
#
#   bench/faults.sh         prints a table and writes bench/results/<date>-faults/: table.md, raw.tsv (one line
#                           per phase and round, the loads during the swaps included), and per case
#                           (w<workers>-<fault>/) the config, the wrk outputs (r<k>-healthy, r<k>-to-faulty,
#                           r<k>-after, r<k>-to-healthy), the proxy's stderr and stdout, /status at the start
#                           and after each after phase. About 85 s per case at the defaults, ~9 min in all.
#
#   DURATION=2 ROUNDS=2 WORKERS_LIST=1 FAULTS=panic bench/faults.sh
#                           a quick check of the mechanics (~25 s)
#   BIN=target/debug/sluicegate EXTRA_PLUGINS_TOML="" DURATION=3 WORKERS_LIST=1 FAULTS=panic bench/faults.sh
#                           the same with a binary older than `rollback_window` (and so without rollbacks)
#
# Settings (environment): BIN (the proxy, default target/release/sluicegate; not built here: build it with
# `cargo build --release -p sluicegate`), WORKERS_LIST ("1 2"), FAULTS ("spin panic alloc"), ROUNDS (healthy +
# after rounds per case, 3), DURATION (s per measured phase, 10), CONNS (50), SETTLE (s between seeing a swapped
# version in /status and the phase after it, 3), SWAP_TIMEOUT (s to wait for /status to show it, 20), WARMUP (s
# of unrecorded wrk before the first phase, 1), WRK_TIMEOUT (wrk's --timeout, 2s, wrk's default),
# EXTRA_PLUGINS_TOML (lines appended to the config's [plugins], default `rollback_window = "0s"`: the faulty
# version stays in place and can be loaded again; set it to "" only for a binary that does not know the key: one
# that knows it rolls the faulty version back within milliseconds of its trip under the default 5-minute window,
# and the case fails), KEEP_ACCESS_LOG (1: keep each case's access.log; by default only its line count is kept:
# one line per request is large at release speeds), KEEP_WORK (1: keep the scratch directory), MAX_SECONDS (hard
# bound on the run). The plugins are built with the binary's own `plugin build` (into target/wasm-plugins; the first
# build may install Debian's Wasm toolchain with apt-get when run as root). The config also sets [shutdown]
# drain_timeout = "2s", so that stopping each proxy is quick. With a debug binary, loading the faulty build
# under load can take 10-20 s: raise SWAP_TIMEOUT if the swap is not seen in time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
BIN=${BIN:-target/release/sluicegate}
WORKERS_LIST=${WORKERS_LIST:-"1 2"}
FAULTS=${FAULTS:-"spin panic alloc"}
ROUNDS=${ROUNDS:-3}
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
for v in ROUNDS DURATION CONNS SETTLE SWAP_TIMEOUT WARMUP; do
    is_uint "${!v}" || die "$v must be a whole number (of seconds, connections or rounds), not '${!v}'"
done
((DURATION > 0)) || die "DURATION must be at least 1"
((ROUNDS > 0)) || die "ROUNDS must be at least 1"
[[ -n ${WORKERS_LIST// /} ]] || die "WORKERS_LIST is empty"
for w in $WORKERS_LIST; do is_uint "$w" && ((w > 0)) || die "WORKERS_LIST: '$w' is not a positive worker count"; done
[[ -n ${FAULTS// /} ]] || die "FAULTS is empty"
for f in $FAULTS; do [[ $f == spin || $f == panic || $f == alloc ]] || die "FAULTS: '$f' is not one of spin, panic, alloc"; done

# ---------------------------------------------------------------- processes: every one is killed on exit
start_work faults

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v nginx >/dev/null || need_pkgs+=(nginx-light)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v jq >/dev/null || need_pkgs+=(jq)
install_pkgs "${need_pkgs[@]}"

# ---------------------------------------------------------------- the bound on the whole run
read -ra WLIST <<<"$WORKERS_LIST"
read -ra FLIST <<<"$FAULTS"
NCASES=$((${#WLIST[@]} * ${#FLIST[@]}))
# Per case: the warmup, 2 x ROUNDS measured phases, 2 x ROUNDS - 1 swaps (each SETTLE after /status shows it).
CASE_EST=$((WARMUP + 2 * ROUNDS * DURATION + (2 * ROUNDS - 1) * (SETTLE + 1) + 5))
MAX_SECONDS=${MAX_SECONDS:-$((1800 + NCASES * (WARMUP + 2 * ROUNDS * DURATION + (2 * ROUNDS - 1) * (SWAP_TIMEOUT + SETTLE + 10) + 120)))}
log "$NCASES cases (workers: $WORKERS_LIST; faults: $FAULTS), $ROUNDS rounds of a healthy and an after phase of ${DURATION}s each;" \
    "about ${CASE_EST}s per case, $(((NCASES * CASE_EST + 59) / 60)) min in all; the run is bounded to ${MAX_SECONDS}s"
bound_run "$MAX_SECONDS"

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
# Why /status says custom's last file was refused (empty when it was not).
custom_refused() { status_json | jq -r '[.refused_plugins[]? | select(.name == "custom") | .error] | join("; ")' 2>/dev/null || true; }
now() { date +%s.%N; }
stderr_lines() { wc -l <"$CASE_DIR/proxy.stderr.log"; }

RAW=$RESULTS/raw.tsv
printf 'workers\tfault\tround\tphase\trps\tnon2xx\tsock_connect\tsock_read\tsock_write\tsock_timeout\trss_kb\tstderr_lines\tseconds\tcustom_version\tnote\n' >"$RAW"
FAILED=0

# The case being run (set by run_case, read by the helpers below).
CASE_W= CASE_FAULT= CASE_DIR= CASE_PID= CASE_NOTE= SWAPPED=

# raw_line round phase wrk_file t0 t1 lines0 lines1 version: one line of raw.tsv.
raw_line() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$CASE_W" "$CASE_FAULT" "$1" "$2" "$(wrk_stats "$3" | tr ' ' '\t')" \
        "$(rss_kb "$CASE_PID")" $(($7 - $6)) "$(awk -v a="$4" -v b="$5" 'BEGIN {printf "%.2f", b - a}')" "$8" "" >>"$RAW"
}

# measure round phase version: a measured phase (healthy or after) of DURATION, as r<round>-<phase>.wrk.txt.
measure() {
    local t0 t1 l0 l1
    local what="custom $3"
    [[ $2 != after ]] || what+=" faulting: $CASE_FAULT"
    log "round $1/$ROUNDS, $2 phase ($what): wrk -t1 -c$CONNS -d${DURATION}s"
    t0=$(now); l0=$(stderr_lines)
    wrk_run "$CASE_DIR/r$1-$2.wrk.txt"
    t1=$(now); l1=$(stderr_lines)
    raw_line "$1" "$2" "$CASE_DIR/r$1-$2.wrk.txt" "$t0" "$t1" "$l0" "$l1" "$3"
    kill -0 "$CASE_PID" 2>/dev/null || { CASE_NOTE="the proxy exited during round $1's $2 phase"; return 1; }
}

# swap_in round label wasm from_version want_version: under load (r<round>-<label>.wrk.txt), custom.wasm is
# replaced by wasm in one rename; waits until /status shows want_version (any version other than from_version
# when want_version is empty), then SETTLE seconds. Sets SWAPPED to the version seen; CASE_NOTE on failure.
swap_in() {
    local r=$1 label=$2 wasm=$3 from=$4 want=$5 load_pid t0 t1 l0 l1 ts seen="" v deadline why
    t0=$(now); l0=$(stderr_lines)
    timeout $((SWAP_TIMEOUT + SETTLE + 60)) wrk -t1 -c"$CONNS" -d$((SWAP_TIMEOUT + SETTLE + 30))s --timeout "$WRK_TIMEOUT" "$URL" \
        >"$CASE_DIR/r$r-$label.wrk.txt" 2>&1 &
    load_pid=$!
    PIDS+=("$load_pid")
    sleep 0.5
    cp "$wasm" "$CASE_DIR/plugins/custom.swap-tmp"
    mv -f "$CASE_DIR/plugins/custom.swap-tmp" "$CASE_DIR/plugins/custom.wasm"
    ts=$(now)
    deadline=$((SECONDS + SWAP_TIMEOUT))
    SWAPPED=
    while ((SECONDS < deadline)); do
        kill -0 "$CASE_PID" 2>/dev/null || break
        v=$(custom_version)
        [[ -z $v ]] || seen=$v
        if [[ -n $v && $v != "$from" && (-z $want || $v == "$want") ]]; then
            SWAPPED=$v
            break
        fi
        sleep 0.2
    done
    if [[ -z $SWAPPED ]]; then
        if kill -0 "$CASE_PID" 2>/dev/null; then
            CASE_NOTE="round $r, $label: /status did not show ${want:-a version other than $from} within ${SWAP_TIMEOUT}s (it showed ${seen:-nothing})"
            why=$(custom_refused)
            [[ -z $why ]] || CASE_NOTE+="; the file was refused: $why"
            grep -q 'plugin rolled back' "$CASE_DIR/proxy.stderr.log" &&
                CASE_NOTE+="; the proxy rolled the faulty version back (EXTRA_PLUGINS_TOML='rollback_window = \"0s\"' keeps it)"
        else
            CASE_NOTE="the proxy exited during round $r's swap ($label)"
        fi
        kill -INT "$load_pid" 2>/dev/null || true
        stop_wrk "$load_pid"
        return 1
    fi
    log "round $r/$ROUNDS, $label: custom $from -> $SWAPPED after $(awk -v a="$ts" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')s; settling ${SETTLE}s"
    sleep "$SETTLE"
    kill -INT "$load_pid" 2>/dev/null || true # wrk prints its figures on SIGINT
    stop_wrk "$load_pid"
    t1=$(now); l1=$(stderr_lines)
    raw_line "$r" "$label" "$CASE_DIR/r$r-$label.wrk.txt" "$t0" "$t1" "$l0" "$l1" "$SWAPPED"
    kill -0 "$CASE_PID" 2>/dev/null || { CASE_NOTE="the proxy exited during round $r's swap ($label)"; return 1; }
}

run_case() { # workers fault
    local w=$1 fault=$2 dir port pa pid v0 vf="" r i body note
    dir=$RESULTS/w$w-$fault
    CASE_W=$w CASE_FAULT=$fault CASE_DIR=$dir CASE_NOTE=
    mkdir -p "$dir/plugins"
    cp "$WORK/wasm/pick-first.wasm" "$dir/plugins/custom.wasm"
    free_port; port=$PORT
    free_port; pa=$PORT
    ADMIN_PORT=$pa
    URL="http://127.0.0.1:$port/small"
    {
        cat <<EOT
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
EOT
        [[ -z $EXTRA_PLUGINS_TOML ]] || printf '%s\n' "$EXTRA_PLUGINS_TOML"
        cat <<EOT

[[routes]]
cluster = "web"

[[clusters]]
name = "web"
balancer = "custom"
balancer_settings = { fault = "$fault" }
fallback_balancer = "round-robin"

[[clusters.endpoints]]
address = "127.0.0.1:$BACKEND_PORT"
EOT
    } >"$dir/sluicegate.toml"

    log "case workers=$w fault=$fault: starting the proxy (listener $port, admin $pa)"
    env -u RUST_LOG "$BIN" run --config "$dir/sluicegate.toml" >"$dir/proxy.stdout.log" 2>"$dir/proxy.stderr.log" &
    pid=$!
    CASE_PID=$pid
    PIDS+=("$pid")
    # Startup compiles the plugins (a debug build takes seconds): /status answering is the sign it serves.
    for i in $(seq 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            forget_pid "$pid"
            note="the proxy exited at start: $(grep -v '^\s*$' "$dir/proxy.stderr.log" | tail -3 | tr '\n' ' ')"
            grep -q 'unknown field `rollback_window`' "$dir/proxy.stderr.log" &&
                note+="(this binary has no [plugins] rollback_window: EXTRA_PLUGINS_TOML=\"\" runs it without)"
            case_failed 0 "$note"
            return 1
        fi
        status_json >/dev/null && break
        sleep 0.1
    done
    status_json >"$dir/status-start.json" || { stop_proxy "$pid"; case_failed 0 "no answer from http://127.0.0.1:$pa/status 60 s after the start"; return 1; }
    v0=$(jq -r '.plugins[] | select(.name == "custom") | .version' "$dir/status-start.json")
    [[ -n $v0 ]] || { stop_proxy "$pid"; case_failed 0 "/status lists no plugin named custom (see $dir/status-start.json)"; return 1; }
    [[ $HEALTHY_SHA == "$v0"* ]] || log "warning: custom's version $v0 is not a prefix of pick-first.wasm's sha256 $HEALTHY_SHA"
    port_listening "$port" "$pid" 10 || { stop_proxy "$pid"; case_failed 0 "the proxy is not listening on $port"; return 1; }
    body=$(curl -fsS --max-time 5 "$URL") || { stop_proxy "$pid"; case_failed 0 "GET $URL through the healthy proxy failed"; return 1; }
    [[ $body == "hello from the backend" ]] || { stop_proxy "$pid"; case_failed 0 "GET $URL answered '$body'"; return 1; }
    ((WARMUP == 0)) || timeout $((WARMUP + 30)) wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$URL" >/dev/null 2>&1 || true

    # The rounds: the faulty version is learnt at its first swap (vf), and each later swap waits for exactly it
    # (or for v0, back to healthy).
    for ((r = 1; r <= ROUNDS; r++)); do
        if ((r > 1)); then
            swap_in "$r" to-healthy "$WORK/wasm/pick-first.wasm" "$vf" "$v0" || break
        fi
        measure "$r" healthy "$v0" || break
        swap_in "$r" to-faulty "$WORK/wasm/faulty-pick.wasm" "$v0" "$vf" || break
        if [[ -z $vf ]]; then
            vf=$SWAPPED
            [[ $FAULTY_SHA == "$vf"* ]] || log "warning: custom's new version $vf is not a prefix of faulty-pick.wasm's sha256 $FAULTY_SHA"
        fi
        measure "$r" after "$vf" || break
        status_json >"$dir/r$r-status-after.json" || true
    done

    stop_proxy "$pid"
    tidy_access_log "$dir"
    if [[ -n $CASE_NOTE ]]; then
        case_failed "$r" "$CASE_NOTE (logs in $dir)"
        return 1
    fi
    return 0
}
tidy_access_log() { # dir: its line count is kept, the log itself only with KEEP_ACCESS_LOG=1
    [[ -e $1/access.log ]] || return 0
    wc -l <"$1/access.log" >"$1/access.log.lines"
    [[ $KEEP_ACCESS_LOG == 1 ]] || rm -f "$1/access.log"
}
case_failed() { # round note: logged, and a line of raw.tsv (the table shows the note)
    log "error: workers $CASE_W, fault $CASE_FAULT: $2"
    printf '%s\t%s\t%s\tfailed\t0\t0\t0\t0\t0\t0\t0\t0\t0\t\t%s\n' "$CASE_W" "$CASE_FAULT" "$1" "$2" >>"$RAW"
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
RUN_START=$SECONDS
for w in "${WLIST[@]}"; do
    for fault in "${FLIST[@]}"; do
        CASE_START=$SECONDS
        run_case "$w" "$fault" || FAILED=$((FAILED + 1))
        log "case workers=$w fault=$fault took $((SECONDS - CASE_START))s"
    done
done
RUN_SECONDS=$((SECONDS - RUN_START))
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- the table
TABLE=$RESULTS/table.md
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo);" \
        "$(uname -r); load average at start $LOAD_START, at end $LOAD_END; the cases took ${RUN_SECONDS}s"
    echo "Sluicegate $SG_VERSION (${BIN#"$ROOT"/}); $(nginx -v 2>&1 | sed 's/.*: //') (one worker, 23-byte file); wrk -t1 -c$CONNS" \
        "-d${DURATION}s --timeout $WRK_TIMEOUT per phase; $ROUNDS rounds per case (healthy phase, swap, after phase), one proxy;" \
        "each phase starts ${SETTLE}s after /status shows the swapped version; [plugins] extra: ${EXTRA_PLUGINS_TOML:-none}"
    echo
    echo "| workers | fault | rounds | healthy req/s (median) | after-trip req/s (median) | ratio | per-round ratios (min–max) | non-2xx | timeouts | log lines/s after | RSS MB at end |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v rounds="$ROUNDS" '
        # The median of a[1..n] (sorts it).
        function median(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) {
                t = a[i]
                for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
                a[j + 1] = t
            }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        NR == 1 { next }
        {
            k = $1 SUBSEP $2
            if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
            r = $3 + 0; ph = $4
            if (r > maxr[k]) maxr[k] = r
            n2[k] += $6; to[k] += $10
            if (ph == "healthy" || ph == "after") rps[k, r, ph] = $5
            if (ph == "after") { lines[k] += $12; secs[k] += $13 }
            if (ph != "failed" && $11 > 0) rss[k] = $11
            if ($15 != "") note[k] = $15
        }
        END {
            for (i = 1; i <= nk; i++) {
                k = order[i]; split(k, f, SUBSEP)
                # Complete rounds only: those with both phases measured.
                n = 0; delete hs; delete as; lo = ""; hi = ""
                for (r = 1; r <= maxr[k]; r++) {
                    if (!((k, r, "healthy") in rps) || !((k, r, "after") in rps)) continue
                    h = rps[k, r, "healthy"] + 0; a = rps[k, r, "after"] + 0
                    n++; hs[n] = h; as[n] = a
                    if (h > 0) {
                        q = a / h
                        if (lo == "" || q < lo) lo = q
                        if (hi == "" || q > hi) hi = q
                    }
                }
                if (n > 0) {
                    mh = median(hs, n); ma = median(as, n)
                    healthy = sprintf("%.0f", mh); after = sprintf("%.0f", ma)
                    ratio = mh > 0 ? sprintf("%.3f", ma / mh) : "-"
                    spread = lo == "" ? "-" : sprintf("%.3f–%.3f", lo, hi)
                } else {
                    healthy = after = ratio = spread = "-"
                }
                lps = secs[k] > 0 ? sprintf("%.1f", lines[k] / secs[k]) : "-"
                rs = rss[k] > 0 ? sprintf("%.1f", rss[k] / 1024) : "-"
                nr = n == rounds ? n : n " of " rounds
                printf "| %s | %s | %s | %s | %s | %s | %s | %d | %d | %s | %s |\n", f[1], f[2], nr, healthy, after, ratio, spread, n2[k], to[k], lps, rs
            }
            for (i = 1; i <= nk; i++) {
                k = order[i]; split(k, f, SUBSEP)
                if (note[k] != "") printf "\n**Failed:** workers %s, fault %s: %s.\n", f[1], f[2], note[k]
            }
        }' "$RAW"
    echo
    echo "rounds: complete rounds (a healthy and an after phase each) behind the figures. healthy and after-trip req/s: the"
    echo "median over the rounds; ratio: after-trip median / healthy median; per-round ratios: the lowest and highest of"
    echo "after_k / healthy_k, each pair measured back to back (their spread is the noise a single pair carries)."
    echo "non-2xx: wrk's \"Non-2xx or 3xx responses\", timeouts: its socket timeouts, both summed over every wrk run of the"
    echo "case, the loads during the swaps included (other socket errors, and each run's figures, are in raw.tsv). log"
    echo "lines/s: lines the proxy wrote to stderr (default log level) during the after phases, per second of them. RSS:"
    echo "VmRSS after the last phase (each phase's is in raw.tsv)."
} >"$TABLE"
cat "$TABLE"
log "results in $RESULTS"
((FAILED == 0)) || die "$FAILED of $NCASES cases failed (see the log above and $RESULTS)"

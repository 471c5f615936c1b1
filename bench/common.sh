# What the bench scripts share (sourced by bench/run.sh, bench/faults.sh and bench/edge.sh): installing
# what is missing, loopback ports, a scratch directory and the processes started, stopped on exit, and a
# bound on the whole run. The scripts define `log` and `die`.

declare -A TAKEN=()
PORT=
# Sets PORT to a port nothing listens on and no earlier call of this run handed out.
free_port() {
    local p
    while :; do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        [[ -z ${TAKEN[$p]:-} ]] || continue
        ss -Htan "( sport = :$p )" | grep -q . && continue
        TAKEN[$p]=1
        PORT=$p
        return
    done
}

# Whether something listens on port $1 within $3 seconds (default 10) while process $2 lives.
port_listening() { # port pid seconds
    local i
    for i in $(seq $((${3:-10} * 10))); do
        kill -0 "$2" 2>/dev/null || return 1
        ss -Htln "( sport = :$1 )" | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

# Stops the processes $@: TERM, up to 3 s for them to exit, then KILL.
stop_all() { # pid...
    local pid alive
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# Installs the Debian packages $@ (none: nothing to do), without recommends; `apt-get update` only
# when the install fails.
install_pkgs() { # package...
    (($#)) || return 0
    log "installing $* from Debian"
    export DEBIAN_FRONTEND=noninteractive
    local try="timeout 600 apt-get install -y -q --no-install-recommends $*"
    $try >&2 || { timeout 300 apt-get update -q >&2 && $try >&2; } || die "apt-get install $* failed"
}

# The processes a script starts (every one is stopped on exit) and its scratch directory (removed on
# exit unless KEEP_WORK is set), named /tmp/sluicegate-$1.XXXXXX.
start_work() { # name
    PIDS=()
    WORK=$(mktemp -d "/tmp/sluicegate-$1.XXXXXX")
    chmod 755 "$WORK" # nginx workers run as nobody and read the backends' files
    trap 'stop_all "${PIDS[@]}"; [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"' EXIT
    trap 'exit 130' INT TERM
}

# Process $1 has exited: no longer one to stop.
forget_pid() { # pid
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Ends the script (TERM, whose trap then stops everything) once $1 seconds have passed. The watchdog's
# sleep is killed with it (else the sleep would hold the script's stdout open after the exit).
bound_run() { # seconds
    (
        trap 'kill $sleeper 2>/dev/null; exit 0' TERM
        sleep "$1" &
        sleeper=$!
        wait $sleeper && log "time bound (${1}s) reached" && kill -TERM $$
    ) &
    PIDS+=($!)
}

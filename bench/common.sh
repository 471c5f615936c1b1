# What the bench scripts share (sourced by bench/run.sh and bench/faults.sh): installing what is
# missing, loopback ports, and stopping what they started. The scripts define `log` and `die`.

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

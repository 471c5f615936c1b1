#!/usr/bin/env bash
# Builds the Pingora benchmark peer (bench/pingora, a standalone cargo project) in release and prints the
# binary's path. Quiet and quick when already built. Needs cmake (zlib-ng, under Pingora's flate2): when it
# is missing and we are root, it is installed from Debian's packages.
# Environment: CARGO_BUILD_JOBS (e.g. 1 on a busy machine) is honoured by cargo.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin="$here/target/release/pingora-bench-proxy"

if ! command -v cmake >/dev/null || ! command -v cc >/dev/null; then
    if [[ $(id -u) -eq 0 ]]; then
        export DEBIAN_FRONTEND=noninteractive
        # apt-get update only when the plain install fails (stale or empty package lists).
        apt-get install -y -qq --no-install-recommends cmake gcc libc6-dev >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends cmake gcc libc6-dev >/dev/null; }
    else
        echo "build.sh: cmake and a C compiler are needed (apt-get install cmake gcc libc6-dev)" >&2
        exit 1
    fi
fi

# cargo is a no-op when nothing changed; --locked keeps the committed Cargo.lock authoritative.
cargo build --release --locked --quiet --manifest-path "$here/Cargo.toml" >&2
echo "$bin"

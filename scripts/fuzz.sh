#!/usr/bin/env bash
# Longer fuzz campaigns than CI's few seconds per target (fuzz/tests/fuzz.rs).
#   scripts/fuzz.sh [target|all|replay] [seconds per target] [seed]
# Targets: config, request, response, proxy-protocol, sni. Prints a table of iterations/s; a failing
# input is saved to fuzz/crashes/<target>/ (with a .txt note) and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-all}"
seconds="${2:-60}"
seed="${3:-}"
# The dev profile by default: the release profile (fat LTO, one codegen unit) takes many minutes
# to build; FUZZ_PROFILE=release for the proxy at its real speed on long campaigns.
profile="${FUZZ_PROFILE:-dev}"
cargo build --profile "$profile" -p sluicegate-fuzz --bin sluicegate-fuzz
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
exec "target/$dir/sluicegate-fuzz" "$target" "$seconds" ${seed:+"$seed"}

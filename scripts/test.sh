#!/usr/bin/env bash
# The whole test suite, as a newcomer runs it on a fresh machine and as CI runs it (.ci/run).
# It installs what the tests need by itself: the wasm toolchain for building plugins is set up by
# `sluicegate plugin build` (Debian's rustc-web recipe when rustup lacks wasm32, installed as root).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# A clean clone gains nothing from incremental state, which is most of a debug target dir.
if [[ "${CI:-}" == "true" ]]; then export CARGO_INCREMENTAL=0; fi
echo "== format and lints"
cargo fmt --all -- --check
cargo clippy -q --workspace --all-targets -- -D warnings
# The benchmark's native-choice build (bench/): lint it and test its balancer too.
cargo clippy -q -p sluicegate -p sluicegate-plugin-runtime --all-targets --features native-choice -- -D warnings
echo "== no module cycles inside a crate (Cargo refuses them between crates)"
python3 scripts/module-cycles.py host/src config/src upstream/src plugin-runtime/src plugin-build/src sdk/src \
    fuzz/src plugins/*/src examples/header-hash/src tests/plugins/*/src
echo "== embedded default plugins are the build of their source"
scripts/default-plugins.sh check
echo "== the SDK packages on its own (a plugin crate outside this repository can depend on it)"
cargo package -q -p sluicegate-sdk --allow-dirty
echo "== tests"
cargo test --workspace
cargo test -p sluicegate-plugin-runtime --features native-choice --lib -- native

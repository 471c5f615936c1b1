#!/usr/bin/env bash
# Builds the default plugins (plugins/*) with the proxy's own build command and either writes them to
# plugins/dist/ (where the host embeds them from) or checks that the committed files are exactly the
# build of their current source.
#   scripts/default-plugins.sh build   # refresh plugins/dist/*.wasm after changing a default plugin
#   scripts/default-plugins.sh check   # fail if any embedded artifact is stale
set -euo pipefail
mode=${1:-check}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build -q -p sluicegate
bin="$root/target/debug/sluicegate"
out="$root/target/default-plugins"
mkdir -p "$out"
stale=0
for dir in plugins/*/; do
  dir=${dir%/}
  # Only plugin crates (cdylib); shared library crates such as plugins/hashing are not embedded.
  grep -q cdylib "$dir/Cargo.toml" 2>/dev/null || continue
  name=$(basename "$dir")
  "$bin" plugin build "$dir" -o "$out/$name.wasm" >/dev/null
  case "$mode" in
    build)
      cp "$out/$name.wasm" "plugins/dist/$name.wasm"
      echo "plugins/dist/$name.wasm updated"
      ;;
    check)
      if ! cmp -s "$out/$name.wasm" "plugins/dist/$name.wasm"; then
        echo "plugins/dist/$name.wasm is not the build of $dir: run scripts/default-plugins.sh build and commit" >&2
        stale=1
      else
        echo "plugins/dist/$name.wasm matches its source"
      fi
      ;;
    *) echo "usage: $0 build|check" >&2; exit 2 ;;
  esac
done
exit $stale

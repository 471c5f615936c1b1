//! The default plugins compiled into the binary, so running the proxy needs no Wasm toolchain.
//! They are ordinary components built from `plugins/*` by `scripts/default-plugins.sh build`
//! (the test command checks that each file is the build of its current source). Only
//! `round-robin`, the universal fallback, is compiled at start; the others when a use first
//! names them, so start-up stays fast.

use super::{PluginError, PluginRuntime};

/// Name and component bytes of every embedded plugin.
const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "round-robin",
        include_bytes!("../../plugins/dist/round-robin.wasm"),
    ),
    (
        "weighted-round-robin",
        include_bytes!("../../plugins/dist/weighted-round-robin.wasm"),
    ),
    (
        "least-connections",
        include_bytes!("../../plugins/dist/least-connections.wasm"),
    ),
    ("ip-hash", include_bytes!("../../plugins/dist/ip-hash.wasm")),
    (
        "ring-hash",
        include_bytes!("../../plugins/dist/ring-hash.wasm"),
    ),
    ("maglev", include_bytes!("../../plugins/dist/maglev.wasm")),
    ("random", include_bytes!("../../plugins/dist/random.wasm")),
    (
        "peak-ewma",
        include_bytes!("../../plugins/dist/peak-ewma.wasm"),
    ),
    ("router", include_bytes!("../../plugins/dist/router.wasm")),
    (
        "header-rewrite",
        include_bytes!("../../plugins/dist/header-rewrite.wasm"),
    ),
    (
        "sticky-session",
        include_bytes!("../../plugins/dist/sticky-session.wasm"),
    ),
];

/// The bytes of the embedded plugin called `name`, if there is one.
pub(crate) fn lookup(name: &str) -> Option<&'static [u8]> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The names of every embedded plugin.
pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(n, _)| *n)
}

/// Registers the universal fallback at start; the others load on first use.
pub(crate) fn register(rt: &PluginRuntime) -> Result<(), PluginError> {
    let bytes = lookup("round-robin").expect("round-robin is embedded");
    rt.load_bytes("round-robin", bytes, "embedded")?;
    Ok(())
}

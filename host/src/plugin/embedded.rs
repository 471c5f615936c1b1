//! The default plugins compiled into the binary, so running the proxy needs no Wasm toolchain.

use super::{PluginError, PluginRuntime};

/// `plugins/round-robin`, built by `sluicegate plugin build plugins/round-robin -o plugins/dist/round-robin.wasm`.
const ROUND_ROBIN: &[u8] = include_bytes!("../../../plugins/dist/round-robin.wasm");

/// Registers the embedded defaults under their names.
pub(crate) fn register(rt: &PluginRuntime) -> Result<(), PluginError> {
    rt.load_bytes("round-robin", ROUND_ROBIN, "embedded")?;
    Ok(())
}

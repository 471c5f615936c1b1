//! What the proxy offers every plugin: logging, a monotonic clock, randomness, the load figures
//! of the cluster's endpoints, and counters. In the proxy these call the `host` imports; natively
//! they read and write the calling thread's [test harness](crate::testing) state.

use crate::EndpointId;

pub use crate::types::Level;

/// Writes a line to the proxy's log, tagged with the plugin's name and version.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// [`log`] at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// [`log`] at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// [`log`] at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// [`log`] at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// [`log`] at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message)
}

/// Monotonic time in nanoseconds since an arbitrary start (only differences count).
/// Natively this is the harness's fake clock, moved by [`crate::testing::advance_clock`].
pub fn now_nanos() -> u64 {
    imp::now_nanos()
}

/// 64 random bits from the proxy's generator. Natively a deterministic sequence per thread,
/// reseeded by [`crate::testing::seed_random`].
pub fn random_u64() -> u64 {
    imp::random_u64()
}

/// Requests currently in flight to an endpoint of the caller's cluster (0 if unknown).
pub fn in_flight(endpoint: EndpointId) -> u32 {
    imp::in_flight(endpoint)
}

/// The endpoint's latency EWMA in microseconds (0 if unknown).
pub fn latency_ewma_micros(endpoint: EndpointId) -> u32 {
    imp::latency_ewma_micros(endpoint)
}

/// Adds `delta` to a counter the proxy exports as `sluicegate_plugin_counter_total{plugin, name}`.
pub fn counter_add(name: &str, delta: u64) {
    imp::counter_add(name, delta)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::wit::host as wit;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message)
    }

    pub use wit::{counter_add, in_flight, latency_ewma_micros, now_nanos, random_u64};
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub use crate::native_host::{
        counter_add, in_flight, latency_ewma_micros, log, now_nanos, random_u64,
    };
}

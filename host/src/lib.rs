//! Sluicegate: a load balancer and edge proxy whose decisions are WebAssembly components.
//!
//! Layout: [`config`] reads and validates the TOML file; [`gateway`] builds it into what serves
//! requests ([`routes`], [`upstream`] clusters with their balancer plugins); [`proxy`] runs the
//! phases of one request; [`server`] owns listeners and shutdown, with [`client_io`] keeping each
//! client connection's deadlines, [`tls`] termination and the [`l4`] (TCP, TLS passthrough) proxy;
//! [`reload`] swaps configs; [`admin`], [`metrics`] and [`access_log`] report; [`plugin`] is the Wasm
//! plugin runtime.

mod accept;
pub mod access_log;
pub mod admin;
pub mod client_io;
pub mod demo;
pub mod gateway;
pub mod headers;
pub mod health;
pub mod l4;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod upstream;
mod woken;

/// The configuration, under the name the proxy's modules use for it.
pub use sluicegate_config as config;
/// The plugin runtime, under the name the proxy's modules use for it.
pub use sluicegate_plugin_runtime as plugin;

//! Sluicegate: a load balancer and edge proxy whose decisions are WebAssembly components.
//!
//! This crate is the proxy itself; the crates below it do one thing each and know nothing of it:
//! `sluicegate-config` (the file, checked), `sluicegate-plugin-runtime` (Wasm plugins; the only crate
//! that links wasmtime), `sluicegate-upstream` (the HTTP/1.1 client, pools, TLS client, retry budget)
//! and `sluicegate-sdk` (the plugin interface). `ARCHITECTURE.md` draws them.
//!
//! Layout: [`gateway`] builds a config into what serves requests (`routes`, `upstream` clusters
//! with their balancer plugins and `health`); [`proxy`] runs the phases of one request; [`server`]
//! owns listeners and shutdown, with `accept` taking connections, `client_io` keeping each client
//! connection's deadlines, `tls` termination and the `l4` (TCP, TLS passthrough) proxy; [`reload`]
//! swaps configs; `admin`, [`metrics`] and `access_log` report.

mod accept;
pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod client_io;
pub(crate) mod conn_limit;
pub mod demo;
pub mod gateway;
pub(crate) mod headers;
pub(crate) mod health;
pub(crate) mod l4;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub(crate) mod routes;
pub mod server;
pub mod shutdown;
pub(crate) mod tls;
pub(crate) mod upstream;
mod woken;

/// The configuration, under the name the proxy's modules use for it.
pub use sluicegate_config as config;
/// The plugin runtime, under the name the proxy's modules use for it.
pub use sluicegate_plugin_runtime as plugin;

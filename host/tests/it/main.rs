//! The proxy's integration tests, in one test binary so that wasmtime and cranelift are linked once:
//! the real proxy (in process on port 0, or the built binary) with real backends, clients, TLS and
//! plugin files. `common`, `plugin_support` and `tls_support` are the shared helpers.

mod common;
mod plugin_support;
mod tls_support;

mod config_examples;
mod edge_connections;
mod edge_requests;
mod edge_robustness;
mod host_fixes;
mod panic_mode;
mod plugin_build;
mod plugin_faults;
mod plugin_kinds;
mod plugin_pick_ahead;
mod plugin_reload;
mod proxy_binary;
mod proxy_default_plugins;
mod proxy_health;
mod proxy_inprocess;
mod proxy_l4;
mod proxy_plugins;
mod proxy_tls;

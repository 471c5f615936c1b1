//! Sluicegate: a load balancer and edge proxy whose decisions are WebAssembly components.

pub mod plugin;

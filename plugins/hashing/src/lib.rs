//! Code shared by Sluicegate's default balancers, so each plugin stays a small file:
//!
//! - [`xxh64`] and [`mix64`]: a deterministic 64-bit hash (no per-instance randomness, so two
//!   proxies with the same pool make the same decisions);
//! - [`HashKey`]: which part of a request a hashing balancer hashes (`key = "header:x-user"`, ...);
//! - [`ClientAddress`]: the client's address, optionally from `X-Forwarded-For` behind trusted proxies;
//! - [`Pool`]: the pool in a push-order-independent order, telling whether derived tables must be rebuilt;
//! - [`choose`]: walks a hashing balancer's candidate sequence skipping unhealthy, tried and
//!   (with bounded load) overloaded endpoints;
//! - [`candidates`], [`consider`], [`random_below`], [`random_sample`]: the healthy endpoints,
//!   untried ones first, and fair random draws among them;
//! - [`no_settings`]: the settings check of balancers that take none, without a TOML parser.
//!
//! Health: `healthy` as the proxy sends it is authoritative, and nothing here picks an unhealthy
//! endpoint. Panic mode is the proxy's alone (while a cluster is in panic it sends every endpoint
//! as healthy); a pool with no healthy endpoint has no candidate, so its balancer answers `None`
//! and the proxy answers 503.
//!
//! It is a plain library (not a plugin): the plugins link it in.

mod address;
mod hash;
mod key;
mod pool;
mod select;
mod settings;

pub use address::{Cidr, ClientAddress};
pub use hash::{mix64, xxh64};
pub use key::HashKey;
pub use pool::{Member, Pool, candidates, consider, draw, random_below, random_sample};
pub use select::{check_balance_factor, choose};
pub use settings::no_settings;

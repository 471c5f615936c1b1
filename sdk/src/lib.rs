//! Write [Sluicegate](https://example.invalid/sluicegate) plugins in plain Rust.
//!
//! A plugin is a crate that implements one (or several) of the plugin traits, adds one export
//! macro line per trait, and is built to Wasm with `sluicegate plugin build <crate-dir>`:
//!
//! | trait | export macro | decides |
//! | --- | --- | --- |
//! | [`Balancer`] | [`export_balancer!`] | which endpoint of a cluster serves a request |
//! | [`Router`] | [`export_router!`] | which cluster serves a request, or a local answer |
//! | [`Filter`] | [`export_filter!`] | header changes on the way in and out, or a local answer |
//! | [`HealthPolicy`] | [`export_health_policy!`] | whether a probe or a request counts as healthy |
//!
//! Plugins read the request lazily through [`Request`], call the proxy through [`host`], parse
//! their settings with [`settings()`], and are unit-tested natively with [`testing`].
//!
//! # Example: a balancer that prefers the least-loaded healthy endpoint
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "least-loaded"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! sluicegate-sdk = "0.3"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request, host};
//!
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     /// Log every pick (default false).
//!     #[serde(default)]
//!     verbose: bool,
//! }
//!
//! pub struct LeastLoaded {
//!     verbose: bool,
//!     healthy: Vec<EndpointId>,
//! }
//!
//! impl Balancer for LeastLoaded {
//!     fn init(config: &str) -> Result<Self, String> {
//!         let settings: Settings = sluicegate_sdk::settings(config)?;
//!         Ok(LeastLoaded { verbose: settings.verbose, healthy: Vec::new() })
//!     }
//!
//!     fn pool_changed(&mut self, endpoints: &[Endpoint]) {
//!         self.healthy = endpoints.iter().filter(|e| e.healthy).map(|e| e.id).collect();
//!     }
//!
//!     fn pick(&mut self, _req: &Request, ctx: &PickContext) -> Option<EndpointId> {
//!         let untried = self.healthy.iter().copied().filter(|id| !ctx.was_tried(*id));
//!         let choice = untried.min_by_key(|id| host::in_flight(*id))?;
//!         if self.verbose {
//!             host::debug(&format!("picked {choice}"));
//!         }
//!         Some(choice)
//!     }
//! }
//!
//! sluicegate_sdk::export_balancer!(LeastLoaded);
//!
//! // Natively, the test harness plays the proxy:
//! # fn main() {
//! use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};
//!
//! let pool = TestPool::new().endpoint("10.0.0.1:80", 1).endpoint("10.0.0.2:80", 1);
//! let mut lb = BalancerHarness::<LeastLoaded>::start("verbose = true", &pool).unwrap();
//! testing::set_in_flight(0, 5);
//! assert_eq!(lb.pick(&TestRequest::get("/")), Some(1));
//! // A retry after endpoint 1 failed goes to the other one.
//! assert_eq!(lb.pick_retry(&TestRequest::get("/"), 2, &[1]), Some(0));
//! assert!(BalancerHarness::<LeastLoaded>::init("verbose = 3").is_err());
//! # }
//! ```
//!
//! Build it with `sluicegate plugin build path/to/least-loaded -o least-loaded.wasm` and copy
//! the file into the proxy's plugin directory.
//!
//! # Health and panic mode
//! A balancer picks only endpoints whose [`Endpoint::healthy`] is set, and answers `None` when
//! none is (the proxy then answers 503), as `LeastLoaded` above does. The flag is authoritative:
//! panic mode belongs to the proxy, which decides it from the cluster's `panic_threshold` and,
//! while the cluster is in panic, sends every endpoint as healthy (with `panic_action =
//! "spread"`, the default; with `"refuse"` it answers 503 without asking the balancer). So a
//! balancer never falls back to unhealthy endpoints on its own: that would override a cluster
//! configured never to panic (`panic_threshold = 0`).
//!
//! # Costs
//! Every [`Request`] accessor crosses into the proxy and copies one field: read what you need,
//! once. Derive tables in [`Balancer::pool_changed`], which runs only when the pool changes. A
//! balancer whose choice reads neither the request nor live load (round-robin, say) implements
//! [`Balancer::pick_ahead`]: the proxy then enters it once per 64 first attempts, not once each.
//! Each call runs under a deadline (default 50 ms) and a memory limit; a panic or an overrun
//! drops the instance and the proxy falls back.
//!
//! In the Wasm build the SDK installs its own global allocator (the default feature `allocator`):
//! small blocks are recycled through free lists, since the strings and lists that cross the
//! boundary are allocated and freed on every call. To declare another `#[global_allocator]`, turn
//! the feature off (`default-features = false`).

#[cfg(any(
    test,
    all(
        target_arch = "wasm32",
        not(target_feature = "atomics"),
        feature = "allocator"
    )
))]
mod alloc;
mod export;
pub mod host;
mod interface;
mod plugin;
mod request;
mod route;
mod types;

#[cfg(not(target_arch = "wasm32"))]
mod native_host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod glue;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wit;

pub use interface::{WIT, WIT_PACKAGE, WIT_VERSION};
pub use plugin::{Balancer, Filter, HealthPolicy, Router};
pub use request::{Request, Response};
pub use types::{
    Endpoint, EndpointId, Failure, HeaderOp, LocalResponse, Outcome, PickContext, ProbeResult,
    RequestAction, RouteDecision, Verdict,
};

#[cfg(all(
    target_arch = "wasm32",
    not(target_feature = "atomics"),
    feature = "allocator"
))]
#[global_allocator]
static ALLOCATOR: alloc::Recycling<std::alloc::System> = alloc::Recycling::new(std::alloc::System);

/// Parses a plugin's settings (the TOML text handed to `init`) into `T`.
///
/// An empty string is an empty table, so a `T` whose fields all have defaults accepts "no
/// settings". The error message names the problem and where it is, ready to return from `init`.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// struct Settings { header: String }
///
/// let s: Settings = sluicegate_sdk::settings("header = \"x-user\"").unwrap();
/// assert_eq!(s.header, "x-user");
/// let err = sluicegate_sdk::settings::<Settings>("").unwrap_err();
/// assert!(err.contains("header"), "{err}");
/// ```
pub fn settings<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, String> {
    toml::from_str(config).map_err(|e| {
        let message = e.message().trim();
        match e.span() {
            Some(span) => {
                let before = config.get(..span.start).unwrap_or(config);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("invalid settings at line {line}, column {column}: {message}")
            }
            None => format!("invalid settings: {message}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[serde(default)]
        verbose: bool,
        #[serde(default)]
        limit: Option<u32>,
    }

    #[test]
    fn empty_settings_are_an_empty_table() {
        assert_eq!(
            settings::<Opts>("").unwrap(),
            Opts {
                verbose: false,
                limit: None
            }
        );
        assert_eq!(settings::<Opts>("limit = 3").unwrap().limit, Some(3));
    }

    #[test]
    fn settings_errors_say_what_and_where() {
        let err = settings::<Opts>("verbose = true\nlimit = \"many\"").unwrap_err();
        assert!(
            err.starts_with("invalid settings at line 2, column 9:"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line for the log: {err}");
        let err = settings::<Opts>("verbos = true").unwrap_err();
        assert!(err.contains("verbos") && err.contains("line 1"), "{err}");
        let err = settings::<Opts>("not toml at all").unwrap_err();
        assert!(err.starts_with("invalid settings"), "{err}");
    }

    #[test]
    fn local_response_builders() {
        let r = LocalResponse::redirect("/login");
        assert_eq!(
            (r.status, r.headers.clone()),
            (302, vec![("location".into(), "/login".into())])
        );
        assert_eq!(LocalResponse::redirect_with(308, "https://a/").status, 308);
        let t = LocalResponse::text(403, "no");
        assert_eq!((t.status, t.body.as_slice()), (403, b"no".as_slice()));
        assert_eq!(t.headers[0].0, "content-type");
        let custom = LocalResponse::new(204).header("x-a", "1").body(vec![1, 2]);
        assert_eq!((custom.headers.len(), custom.body), (1, vec![1, 2]));
    }

    #[test]
    fn small_constructors() {
        assert_eq!(
            HeaderOp::set("a", "1"),
            HeaderOp::Set("a".into(), "1".into())
        );
        assert_eq!(
            HeaderOp::append("a", "1"),
            HeaderOp::Append("a".into(), "1".into())
        );
        assert_eq!(HeaderOp::remove("a"), HeaderOp::Remove("a".into()));
        assert_eq!(
            RouteDecision::cluster("x"),
            RouteDecision::Cluster("x".into())
        );
        assert_eq!(RequestAction::proceed(), RequestAction::Proceed(vec![]));
    }
}

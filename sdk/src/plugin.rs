//! The four kinds of plugin, one trait each. Implement the trait on your type and add the matching
//! export macro line ([`export_balancer!`](crate::export_balancer) and friends).
//!
//! Lifecycle (the same in the proxy and in [`testing`](crate::testing)): the proxy makes one
//! long-lived instance per worker thread, calls `init` once with the plugin's settings, then the
//! decision methods many times. State kept in `self` survives between calls, but an instance can
//! be dropped at any time (reload, fault) and a fresh one made, so keep nothing there that the
//! proxy would miss.

use crate::{
    Endpoint, EndpointId, HeaderOp, Outcome, PickContext, ProbeResult, Request, RequestAction,
    Response, RouteDecision, Verdict,
};

/// Picks an endpoint of one cluster for each request.
pub trait Balancer {
    /// Builds the instance from the plugin's settings (TOML text, empty when there are none;
    /// see [`settings`](crate::settings)). An error refuses the settings with that message.
    fn init(config: &str) -> Result<Self, String>
    where
        Self: Sized;

    /// Called after `init` and whenever the pool changes (membership, weight or health), with the
    /// whole pool. Rebuild derived tables here, never in [`pick`](Balancer::pick).
    fn pool_changed(&mut self, endpoints: &[Endpoint]);

    /// Picks an endpoint for a request, or `None` when none can be chosen (the proxy answers 503).
    /// An id that is not in the pool is a plugin fault. Pick only endpoints marked
    /// [`healthy`](crate::Endpoint::healthy), and answer `None` when none is: the flag is
    /// authoritative, and panic mode is the proxy's (it then marks every endpoint healthy).
    /// Prefer endpoints not in `ctx.tried`.
    fn pick(&mut self, req: &Request<'_>, ctx: &PickContext) -> Option<EndpointId>;

    /// Picks for the next `count` first attempts at once (at most `count` ids, used in order, one
    /// per request), for a balancer whose choice reads neither the request nor anything that
    /// changes between requests. The proxy then enters the plugin once per `count` requests instead
    /// of once per request; it drops unused ids when the pool changes or the plugin is reloaded,
    /// and calls [`pick`](Balancer::pick) for retries. The default, an empty list, means "call
    /// `pick` for every request": keep it if the choice reads the request, the in-flight counts, the
    /// latency or the clock. Only healthy endpoints, as for `pick`: with none healthy, answer an
    /// empty list (and `None` from `pick`).
    fn pick_ahead(&mut self, count: u32) -> Vec<EndpointId> {
        let _ = count;
        Vec::new()
    }
}

/// Chooses the cluster for a request, or answers it directly.
pub trait Router {
    /// Builds the instance from the plugin's settings (TOML text, empty when there are none) and
    /// the names of the proxy's clusters, in the order [`RouteDecision::ClusterIndex`] answers
    /// index them. Refuse settings that name a cluster not in the list: the proxy then refuses
    /// the config with your message, instead of answering 502 at request time.
    fn init(config: &str, clusters: &[String]) -> Result<Self, String>
    where
        Self: Sized;

    /// Called once per request after the request filters.
    fn route(&mut self, req: &Request<'_>) -> RouteDecision;
}

/// Rewrites requests and responses. Both hooks default to "change nothing".
pub trait Filter {
    /// Builds the instance from the plugin's settings (TOML text, empty when there are none).
    fn init(config: &str) -> Result<Self, String>
    where
        Self: Sized;

    /// Called for every request before routing: header changes to apply, or a local answer.
    fn on_request(&mut self, req: &Request<'_>) -> RequestAction {
        let _ = req;
        RequestAction::Proceed(Vec::new())
    }

    /// Called for every response before it reaches the client: header changes to apply.
    fn on_response(&mut self, req: &Request<'_>, resp: &Response<'_>) -> Vec<HeaderOp> {
        let _ = (req, resp);
        Vec::new()
    }
}

/// Judges endpoint health from active probes and real requests. Both default to
/// [`Verdict::Abstain`] (the proxy's own rule decides).
pub trait HealthPolicy {
    /// Builds the instance from the plugin's settings (TOML text, empty when there are none).
    fn init(config: &str) -> Result<Self, String>
    where
        Self: Sized;

    /// Judges one active probe result.
    fn judge_probe(&mut self, result: &ProbeResult) -> Verdict {
        let _ = result;
        Verdict::Abstain
    }

    /// Judges the outcome of one real request.
    fn observe(&mut self, outcome: &Outcome) -> Verdict {
        let _ = outcome;
        Verdict::Abstain
    }
}

//! A test plugin for the proxy's fault handling: one component that is a balancer, a router and a
//! filter, each behaving normally except on request paths that make it fault (trap) or answer
//! something invalid, so the tests can check every fallback the proxy promises.
//!
//! - Balancer: the first untried endpoint in pool order; traps on `/balancer-trap`, answers an
//!   endpoint id that is not in the pool on `/balancer-bogus`.
//! - Router: the cluster named in its settings (`cluster = "..."`); traps on `/router-trap`,
//!   names an unknown cluster on `/router-unknown`, answers 418 itself on `/teapot`.
//! - Filter: sets `x-filtered: yes` on requests and `x-filter-response: yes` on responses; traps
//!   on `/filter-trap`, answers 403 itself on `/filter-deny`.

use sluicegate_sdk::{
    Balancer, Endpoint, EndpointId, Filter, HeaderOp, LocalResponse, PickContext, Request,
    RequestAction, Response, RouteDecision, Router,
};

/// The balancer: deterministic, so the tests know what it picks.
#[derive(Default)]
pub struct FirstUntried {
    pool: Vec<EndpointId>,
}

impl Balancer for FirstUntried {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.pool = endpoints
            .iter()
            .filter(|e| e.healthy)
            .map(|e| e.id)
            .collect();
    }

    fn pick(&mut self, req: &Request<'_>, ctx: &PickContext) -> Option<EndpointId> {
        match req.path().as_str() {
            "/balancer-trap" => panic!("balancer trap on purpose"),
            "/balancer-bogus" => Some(9999),
            _ => self
                .pool
                .iter()
                .copied()
                .find(|id| !ctx.was_tried(*id))
                .or(self.pool.first().copied()),
        }
    }
}

sluicegate_sdk::export_balancer!(FirstUntried);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterSettings {
    cluster: String,
}

/// The router.
pub struct OneCluster {
    cluster: String,
}

impl Router for OneCluster {
    fn init(config: &str, _clusters: &[String]) -> Result<Self, String> {
        let s: RouterSettings = sluicegate_sdk::settings(config)?;
        Ok(OneCluster { cluster: s.cluster })
    }

    fn route(&mut self, req: &Request<'_>) -> RouteDecision {
        match req.path().as_str() {
            "/router-trap" => panic!("router trap on purpose"),
            "/router-unknown" => RouteDecision::cluster("no-such-cluster"),
            "/teapot" => RouteDecision::Respond(LocalResponse::text(418, "short and stout")),
            _ => RouteDecision::cluster(self.cluster.clone()),
        }
    }
}

sluicegate_sdk::export_router!(OneCluster);

/// The filter.
pub struct Marker;

impl Filter for Marker {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Marker)
    }

    fn on_request(&mut self, req: &Request<'_>) -> RequestAction {
        match req.path().as_str() {
            "/filter-trap" => panic!("filter trap on purpose"),
            "/filter-deny" => RequestAction::Respond(LocalResponse::text(403, "denied by filter")),
            _ => RequestAction::Proceed(vec![HeaderOp::set("x-filtered", "yes")]),
        }
    }

    fn on_response(&mut self, _req: &Request<'_>, _resp: &Response<'_>) -> Vec<HeaderOp> {
        vec![HeaderOp::set("x-filter-response", "yes")]
    }
}

sluicegate_sdk::export_filter!(Marker);

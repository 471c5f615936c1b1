//! Test plugin: one component that exports every kind at once, to check that several export
//! macro lines live together in one crate and that the host can use each interface of it.
//!
//! - balancer: the lowest id;
//! - router: cluster `default`, or a 308 redirect to `https://<host><path>` when the request has
//!   `x-force-https`;
//! - filter: response header `x-all-kinds: 1`;
//! - health policy: a probe or request with status >= 500 fails, a failure before a status
//!   ejects, anything else passes. Each judgement bumps counter `judged`.

use sluicegate_sdk::{
    Balancer, Endpoint, EndpointId, Filter, HeaderOp, HealthPolicy, LocalResponse, Outcome,
    PickContext, ProbeResult, Request, Response, RouteDecision, Router, Verdict, host,
};

/// The balancer: remembers the lowest id of the current pool.
pub struct Lowest {
    lowest: Option<EndpointId>,
}

impl Balancer for Lowest {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(Lowest { lowest: None })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.lowest = endpoints.iter().map(|e| e.id).min();
    }

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        self.lowest
    }
}

/// The router.
pub struct DefaultRouter;

impl Router for DefaultRouter {
    fn init(_config: &str, _clusters: &[String]) -> Result<Self, String> {
        Ok(DefaultRouter)
    }

    fn route(&mut self, req: &Request) -> RouteDecision {
        if req.header("x-force-https").is_some() {
            let host = req.host().unwrap_or_default();
            let location = format!("https://{host}{}", req.path());
            return RouteDecision::Respond(LocalResponse::redirect_with(308, location));
        }
        RouteDecision::cluster("default")
    }
}

/// The filter (request hook left at its default: proceed unchanged).
pub struct MarkResponses;

impl Filter for MarkResponses {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(MarkResponses)
    }

    fn on_response(&mut self, _req: &Request, _resp: &Response) -> Vec<HeaderOp> {
        vec![HeaderOp::set("x-all-kinds", "1")]
    }
}

/// The health policy.
pub struct StatusPolicy;

impl StatusPolicy {
    fn judge(status: Option<u16>) -> Verdict {
        host::counter_add("judged", 1);
        match status {
            None => Verdict::Eject,
            Some(s) if s >= 500 => Verdict::Fail,
            Some(_) => Verdict::Pass,
        }
    }
}

impl HealthPolicy for StatusPolicy {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(StatusPolicy)
    }

    fn judge_probe(&mut self, result: &ProbeResult) -> Verdict {
        Self::judge(result.status)
    }

    fn observe(&mut self, outcome: &Outcome) -> Verdict {
        Self::judge(outcome.status)
    }
}

sluicegate_sdk::export_balancer!(Lowest);
sluicegate_sdk::export_router!(DefaultRouter);
sluicegate_sdk::export_filter!(MarkResponses);
sluicegate_sdk::export_health_policy!(StatusPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::Failure;
    use sluicegate_sdk::testing::{
        self, BalancerHarness, FilterHarness, HealthHarness, RouterHarness, TestPool, TestRequest,
        TestResponse,
    };

    #[test]
    fn every_kind_answers() {
        let pool = TestPool::new()
            .endpoint_with_id(4, "10.0.0.4:80", 1)
            .endpoint_with_id(2, "10.0.0.2:80", 1);
        let mut lb = BalancerHarness::<Lowest>::start("", &pool).unwrap();
        assert_eq!(lb.pick(&TestRequest::get("/")), Some(2));

        let mut router = RouterHarness::<DefaultRouter>::init("", &["default"]).unwrap();
        assert_eq!(
            router.route(&TestRequest::get("/")),
            RouteDecision::cluster("default")
        );
        let forced = TestRequest::get("/x")
            .header("host", "example.com:8080")
            .header("x-force-https", "1");
        assert_eq!(
            router.route(&forced),
            RouteDecision::Respond(LocalResponse::redirect_with(308, "https://example.com/x"))
        );

        let mut filter = FilterHarness::<MarkResponses>::init("").unwrap();
        let req = TestRequest::get("/");
        assert_eq!(
            filter.on_request(&req),
            sluicegate_sdk::RequestAction::proceed()
        );
        assert_eq!(
            filter.on_response(&req, &TestResponse::new(200)),
            [HeaderOp::set("x-all-kinds", "1")]
        );

        testing::reset();
        let mut health = HealthHarness::<StatusPolicy>::init("").unwrap();
        let outcome = |status, failure| Outcome {
            endpoint: 2,
            status,
            failure,
            duration_micros: 10,
        };
        assert_eq!(health.observe(&outcome(Some(200), None)), Verdict::Pass);
        assert_eq!(health.observe(&outcome(Some(503), None)), Verdict::Fail);
        assert_eq!(
            health.observe(&outcome(None, Some(Failure::Reset))),
            Verdict::Eject
        );
        assert_eq!(testing::counter("judged"), 3);
    }
}

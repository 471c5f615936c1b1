//! Test plugin: a router, and nothing else, that sends everything to cluster `default`. Loaded
//! where a balancer is expected it tests the "exports the wrong world" refusal.

use sluicegate_sdk::{Request, RouteDecision, Router};

/// Routes every request to `default`.
pub struct OnlyRouter;

impl Router for OnlyRouter {
    fn init(_config: &str, _clusters: &[String]) -> Result<Self, String> {
        Ok(OnlyRouter)
    }

    fn route(&mut self, _req: &Request) -> RouteDecision {
        RouteDecision::cluster("default")
    }
}

sluicegate_sdk::export_router!(OnlyRouter);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{RouterHarness, TestRequest};

    #[test]
    fn routes_everything_to_default() {
        let mut router = RouterHarness::<OnlyRouter>::init("", &["default"]).unwrap();
        assert_eq!(
            router.route(&TestRequest::get("/anything")),
            RouteDecision::cluster("default")
        );
    }
}

//! Test plugin: a balancer that always picks the endpoint with the lowest id (whatever its
//! health). With `pick-last` it tells two plugin versions apart in hot-reload tests.

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// Remembers the lowest id of the current pool.
pub struct PickFirst {
    lowest: Option<EndpointId>,
}

impl Balancer for PickFirst {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(PickFirst { lowest: None })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.lowest = endpoints.iter().map(|e| e.id).min();
    }

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        self.lowest
    }
}

sluicegate_sdk::export_balancer!(PickFirst);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{BalancerHarness, TestPool, TestRequest};

    #[test]
    fn picks_the_lowest_id() {
        let pool = TestPool::new()
            .endpoint_with_id(7, "10.0.0.7:80", 1)
            .endpoint_with_id(3, "10.0.0.3:80", 1)
            .endpoint_with_id(9, "10.0.0.9:80", 1);
        let mut lb = BalancerHarness::<PickFirst>::start("", &pool).unwrap();
        assert_eq!(
            lb.spread(&TestRequest::get("/"), 5)
                .into_iter()
                .collect::<Vec<_>>(),
            [(3, 5)]
        );
        assert_eq!(
            BalancerHarness::<PickFirst>::start("", &TestPool::new())
                .unwrap()
                .pick(&TestRequest::get("/")),
            None
        );
    }
}

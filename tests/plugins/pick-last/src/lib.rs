//! Test plugin: a balancer that always picks the endpoint with the highest id (whatever its
//! health). With `pick-first` it tells two plugin versions apart in hot-reload tests.

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// Remembers the highest id of the current pool.
pub struct PickLast {
    highest: Option<EndpointId>,
}

impl Balancer for PickLast {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(PickLast { highest: None })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.highest = endpoints.iter().map(|e| e.id).max();
    }

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        self.highest
    }
}

sluicegate_sdk::export_balancer!(PickLast);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{BalancerHarness, TestPool, TestRequest};

    #[test]
    fn picks_the_highest_id() {
        let pool = TestPool::new()
            .endpoint_with_id(7, "10.0.0.7:80", 1)
            .endpoint_with_id(3, "10.0.0.3:80", 1)
            .endpoint_with_id(9, "10.0.0.9:80", 1);
        let mut lb = BalancerHarness::<PickLast>::start("", &pool).unwrap();
        assert_eq!(
            lb.spread(&TestRequest::get("/"), 5)
                .into_iter()
                .collect::<Vec<_>>(),
            [(9, 5)]
        );
        assert_eq!(
            BalancerHarness::<PickLast>::start("", &TestPool::new())
                .unwrap()
                .pick(&TestRequest::get("/")),
            None
        );
    }
}

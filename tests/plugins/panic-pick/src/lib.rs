//! Test plugin: a balancer whose `pick` panics, which in Wasm (panic = abort) is a trap.

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// Initializes fine; every pick panics.
pub struct PanicPick;

impl Balancer for PanicPick {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(PanicPick)
    }

    fn pool_changed(&mut self, _endpoints: &[Endpoint]) {}

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        panic!("panic-pick always panics in pick")
    }
}

sluicegate_sdk::export_balancer!(PanicPick);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{BalancerHarness, TestPool, TestRequest};

    #[test]
    #[should_panic(expected = "panic-pick always panics")]
    fn pick_panics() {
        let pool = TestPool::new().endpoint("10.0.0.1:80", 1);
        let mut lb = BalancerHarness::<PanicPick>::start("", &pool).unwrap();
        lb.pick(&TestRequest::get("/"));
    }
}

//! Test plugin: a balancer whose `pick` never returns, for the per-call deadline. The loop reads
//! the host clock through `black_box`, so the optimizer can neither drop it nor prove it infinite.

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request, host};

/// Holds nothing: every pick spins.
pub struct SpinForever;

impl Balancer for SpinForever {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(SpinForever)
    }

    fn pool_changed(&mut self, _endpoints: &[Endpoint]) {}

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        loop {
            std::hint::black_box(host::now_nanos());
        }
    }
}

sluicegate_sdk::export_balancer!(SpinForever);

//! Test plugin: a balancer whose `pick` allocates and touches memory without bound, for the
//! per-instance memory limit. It ends when the allocator fails (an abort, i.e. a trap) or the
//! host refuses to grow the memory.

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// Keeps what it allocated, so nothing is freed and reused.
pub struct AllocForever {
    hoard: Vec<Vec<u8>>,
}

impl Balancer for AllocForever {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(AllocForever { hoard: Vec::new() })
    }

    fn pool_changed(&mut self, _endpoints: &[Endpoint]) {}

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            // Touch every page so the memory is really used, not just reserved.
            for byte in chunk.iter_mut().step_by(4096) {
                *byte = 1;
            }
            self.hoard.push(std::hint::black_box(chunk));
        }
    }
}

sluicegate_sdk::export_balancer!(AllocForever);

//! Test plugin: a balancer whose `init` refuses any settings containing `bad`, so the host's
//! "settings refused" path (and keeping the previous version) can be tested. Otherwise it picks
//! the lowest id.

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// Remembers the lowest id of the current pool.
pub struct RefuseInit {
    lowest: Option<EndpointId>,
}

impl Balancer for RefuseInit {
    fn init(config: &str) -> Result<Self, String> {
        if config.contains("bad") {
            return Err(format!(
                "refuse-init refuses settings containing `bad`: {config:?}"
            ));
        }
        Ok(RefuseInit { lowest: None })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.lowest = endpoints.iter().map(|e| e.id).min();
    }

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        self.lowest
    }
}

sluicegate_sdk::export_balancer!(RefuseInit);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::BalancerHarness;

    #[test]
    fn refuses_bad_settings_with_a_message() {
        let err = BalancerHarness::<RefuseInit>::init("mode = \"bad\"").unwrap_err();
        assert!(err.contains("refuses settings containing `bad`"), "{err}");
        assert!(BalancerHarness::<RefuseInit>::init("mode = \"good\"").is_ok());
    }
}

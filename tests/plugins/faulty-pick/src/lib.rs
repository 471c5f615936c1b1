//! Test plugin: a balancer that initializes fine and whose every `pick` fails in the one way its
//! settings name, so the fault tests load one build under several names:
//! - `fault = "panic"`: panics, which in Wasm (panic = abort) is a trap;
//! - `fault = "spin"`: never returns (the call deadline must end it);
//! - `fault = "alloc"`: allocates without bound (the memory limit must end it).

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request, host};

/// How `pick` fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// Panic.
    Panic,
    /// Loop forever.
    Spin,
    /// Allocate 1 MiB blocks forever, touching each page.
    Alloc,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    fault: Fault,
}

/// The balancer: its fault, and what it hoards.
pub struct FaultyPick {
    fault: Fault,
    hoard: Vec<Vec<u8>>,
}

impl Balancer for FaultyPick {
    fn init(config: &str) -> Result<Self, String> {
        let settings: Settings = sluicegate_sdk::settings(config)?;
        Ok(FaultyPick {
            fault: settings.fault,
            hoard: Vec::new(),
        })
    }

    fn pool_changed(&mut self, _endpoints: &[Endpoint]) {}

    fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> {
        match self.fault {
            Fault::Panic => panic!("faulty-pick panics in pick, as its settings ask"),
            Fault::Spin => loop {
                std::hint::black_box(host::now_nanos());
            },
            Fault::Alloc => loop {
                let mut chunk = vec![0u8; 1 << 20];
                for byte in chunk.iter_mut().step_by(4096) {
                    *byte = 1;
                }
                self.hoard.push(std::hint::black_box(chunk));
            },
        }
    }
}

sluicegate_sdk::export_balancer!(FaultyPick);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::BalancerHarness;

    #[test]
    fn the_settings_name_the_fault() {
        for (text, fault) in [
            ("fault = \"panic\"", Fault::Panic),
            ("fault = \"spin\"", Fault::Spin),
            ("fault = \"alloc\"", Fault::Alloc),
        ] {
            let lb = BalancerHarness::<FaultyPick>::init(text).unwrap();
            assert_eq!(lb.plugin().fault, fault);
        }
        assert!(BalancerHarness::<FaultyPick>::init("").is_err());
        assert!(BalancerHarness::<FaultyPick>::init("fault = \"late\"").is_err());
    }

    #[test]
    #[should_panic(expected = "faulty-pick panics")]
    fn a_panic_fault_panics_natively_too() {
        use sluicegate_sdk::testing::{TestPool, TestRequest};
        let pool = TestPool::new().endpoint("10.0.0.1:80", 1);
        let mut lb = BalancerHarness::<FaultyPick>::start("fault = \"panic\"", &pool).unwrap();
        lb.pick(&TestRequest::get("/"));
    }
}

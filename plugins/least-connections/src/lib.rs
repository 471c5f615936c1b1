//! Least connections: the healthy endpoint with the fewest requests in flight per unit of weight
//! (in-flight counts come from the proxy, `host::in_flight`; loads are compared by
//! cross-multiplication, `a.in_flight × b.weight < b.in_flight × a.weight`, so no rounding).
//!
//! - `mode = "least"` (default) looks at every candidate; ties go round-robin (the scan starts
//!   after the last pick), so an idle pool is spread evenly.
//! - `mode = "p2c"` draws `choices` (default 2) distinct candidates at random and takes the less
//!   loaded one ("power of two choices"): O(choices) host calls per pick instead of one per
//!   endpoint, for large pools, and no herd on the single least-loaded endpoint when several
//!   proxies share a stale view.
//! - Retries skip endpoints already tried while another is left. Only endpoints the proxy sends
//!   as healthy are candidates: with none healthy (or an empty pool) a pick gives `None` (503);
//!   panic mode is the proxy's, which then sends all as healthy. The candidate list is rebuilt
//!   only in `pool_changed`.

use sluicegate_plugin_hashing::{Member, candidates, consider, draw};
use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request, host};

/// How candidates are compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every candidate; the least loaded wins.
    #[default]
    Least,
    /// `choices` random candidates; the least loaded of them wins.
    P2c,
}

/// The plugin's settings.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    mode: Mode,
    /// Candidates drawn per pick in `p2c` mode (at least 2).
    #[serde(default = "two")]
    choices: u32,
}

fn two() -> u32 {
    2
}

/// The balancer's state.
#[derive(Debug)]
pub struct LeastConnections {
    mode: Mode,
    choices: usize,
    list: Vec<Member>,
    /// Where the next `least` scan starts, for round-robin among ties.
    next: usize,
}

/// Whether load `a` (in flight, weight) is strictly lower than `b`.
fn lighter(a: (u32, u32), b: (u32, u32)) -> bool {
    u64::from(a.0) * u64::from(b.1) < u64::from(b.0) * u64::from(a.1)
}

impl Balancer for LeastConnections {
    fn init(config: &str) -> Result<Self, String> {
        let s: Settings = sluicegate_sdk::settings(config)?;
        if s.choices < 2 {
            return Err(format!("choices must be at least 2, not {}", s.choices));
        }
        Ok(LeastConnections {
            mode: s.mode,
            choices: s.choices as usize,
            list: Vec::new(),
            next: 0,
        })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.list = candidates(endpoints);
    }

    fn pick(&mut self, _req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        let keep = consider(&self.list, ctx);
        let n = self.list.len();
        let start = self.next % n.max(1);
        let order: Box<dyn Iterator<Item = usize>> = match self.mode {
            Mode::Least => Box::new((0..n).map(|k| (start + k) % n)),
            Mode::P2c => Box::new(draw(&self.list, self.choices, ctx).into_iter()),
        };
        let mut best: Option<(usize, (u32, u32))> = None;
        for i in order.filter(|i| keep(&self.list[*i])) {
            let m = &self.list[i];
            let load = (host::in_flight(m.id), m.weight);
            if best.is_none_or(|(_, b)| lighter(load, b)) {
                best = Some((i, load));
            }
        }
        let (i, _) = best?;
        self.next = i + 1;
        Some(self.list[i].id)
    }
}

sluicegate_sdk::export_balancer!(LeastConnections);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_plugin_hashing::random_below;
    use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};

    /// A pool of 2 to 10 endpoints with random weights 1 to 5.
    fn random_pool() -> TestPool {
        let n = 2 + random_below(9) as usize;
        (0..n).fold(TestPool::new(), |p, i| {
            p.endpoint(&format!("10.0.0.{i}:80"), 1 + random_below(5) as u32)
        })
    }

    fn load(pool: &TestPool, id: EndpointId) -> (u32, u32) {
        let e = pool.endpoints().iter().find(|e| e.id == id).unwrap();
        (host::in_flight(id), e.weight)
    }

    #[test]
    fn always_picks_a_least_loaded_endpoint() {
        testing::reset();
        let req = TestRequest::get("/");
        for _ in 0..50 {
            let pool = random_pool();
            let mut lb = BalancerHarness::<LeastConnections>::start("", &pool).unwrap();
            for _ in 0..100 {
                for e in pool.endpoints() {
                    testing::set_in_flight(e.id, random_below(20) as u32);
                }
                let picked = lb.pick(&req).unwrap();
                for e in pool.endpoints() {
                    assert!(!lighter(load(&pool, e.id), load(&pool, picked)), "{pool:?}");
                }
            }
        }
    }

    #[test]
    fn ties_go_round_robin() {
        testing::reset();
        let pool = TestPool::new()
            .endpoint("a:1", 1)
            .endpoint("b:1", 2)
            .endpoint("c:1", 3);
        let mut lb = BalancerHarness::<LeastConnections>::start("", &pool).unwrap();
        let spread = lb.spread(&TestRequest::get("/"), 300);
        assert_eq!(
            spread.into_iter().collect::<Vec<_>>(),
            [(0, 100), (1, 100), (2, 100)]
        );
        // b (weight 2) with 2 in flight ties with a and c at 1 per weight: they share the picks.
        testing::set_in_flight(0, 1);
        testing::set_in_flight(1, 2);
        testing::set_in_flight(2, 3);
        assert_eq!(lb.spread(&TestRequest::get("/"), 30).len(), 3);
    }

    #[test]
    fn p2c_never_picks_one_of_the_most_loaded() {
        // The pick is the least loaded of `choices` distinct candidates, so at least
        // choices - 1 others are at least as loaded.
        testing::reset();
        let req = TestRequest::get("/");
        for choices in [2usize, 3] {
            let settings = format!("mode = \"p2c\"\nchoices = {choices}");
            for _ in 0..50 {
                let pool = random_pool();
                let mut lb = BalancerHarness::<LeastConnections>::start(&settings, &pool).unwrap();
                for _ in 0..100 {
                    for e in pool.endpoints() {
                        testing::set_in_flight(e.id, random_below(20) as u32);
                    }
                    let picked = lb.pick(&req).unwrap();
                    let heavier = pool
                        .endpoints()
                        .iter()
                        .filter(|e| e.id != picked)
                        .filter(|e| !lighter(load(&pool, e.id), load(&pool, picked)))
                        .count();
                    assert!(
                        heavier + 1 >= choices.min(pool.endpoints().len()),
                        "{pool:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn p2c_reaches_every_endpoint_when_idle() {
        testing::reset();
        let pool = (0..8).fold(TestPool::new(), |p, i| p.endpoint(&format!("h{i}:1"), 1));
        let mut lb = BalancerHarness::<LeastConnections>::start("mode = \"p2c\"", &pool).unwrap();
        let spread = lb.spread(&TestRequest::get("/"), 8000);
        assert_eq!(spread.len(), 8);
        assert!(
            spread.values().all(|c| (800..1200).contains(c)),
            "{spread:?}"
        );
    }

    #[test]
    fn skips_unhealthy_and_tried_endpoints() {
        testing::reset();
        let pool = TestPool::new()
            .endpoint("a:1", 1)
            .unhealthy("b:1", 1)
            .endpoint("c:1", 1);
        for mode in ["least", "p2c"] {
            let settings = format!("mode = \"{mode}\"");
            let mut lb = BalancerHarness::<LeastConnections>::start(&settings, &pool).unwrap();
            testing::set_in_flight(0, 9);
            let req = TestRequest::get("/");
            assert_eq!(
                lb.spread(&req, 50).into_iter().collect::<Vec<_>>(),
                [(2, 50)]
            );
            assert_eq!(lb.pick_retry(&req, 2, &[2]), Some(0));
            assert!(lb.pick_retry(&req, 3, &[0, 2]).is_some());
        }
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        testing::reset();
        let req = TestRequest::get("/");
        let pools = [
            ("one", TestPool::new().endpoint("a:1", 1)),
            ("two", TestPool::new().endpoint("a:1", 1).endpoint("b:1", 3)),
            (
                "many",
                (0..16).fold(TestPool::new(), |p, i| {
                    p.endpoint(&format!("h{i}:1"), 1 + i % 4)
                }),
            ),
            ("empty", TestPool::new()),
        ];
        for settings in [
            "",
            "mode = \"least\"",
            "mode = \"p2c\"",
            "mode = \"p2c\"\nchoices = 5",
        ] {
            for (_, healthy) in &pools {
                for id in healthy.endpoints().iter().map(|e| &e.id) {
                    testing::set_in_flight(*id, *id % 3);
                }
                testing::assert_no_pick_when_none_healthy::<LeastConnections>(
                    settings,
                    healthy,
                    std::slice::from_ref(&req),
                );
            }
        }
        // One back to health takes every pick, however loaded and even once tried.
        let mut pool = TestPool::new().unhealthy("a:1", 1).endpoint("b:1", 1);
        testing::set_in_flight(1, 50);
        for settings in ["", "mode = \"p2c\""] {
            let mut lb = BalancerHarness::<LeastConnections>::start(settings, &pool).unwrap();
            assert_eq!(
                lb.spread(&req, 10).into_iter().collect::<Vec<_>>(),
                [(1, 10)]
            );
            assert_eq!(lb.pick_retry(&req, 2, &[1]), Some(1));
        }
        pool.set_healthy(1, false);
        let mut lb = BalancerHarness::<LeastConnections>::start("", &pool).unwrap();
        assert_eq!(lb.pick(&req), None);
    }

    #[test]
    fn refuses_bad_settings() {
        for bad in ["mode = \"fastest\"", "choices = 1", "colour = 2"] {
            assert!(
                BalancerHarness::<LeastConnections>::init(bad).is_err(),
                "{bad}"
            );
        }
    }
}

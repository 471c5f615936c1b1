//! Latency-aware power of two choices, after linkerd's and Finagle's peak-EWMA balancers: draw
//! `choices` (default 2) distinct healthy endpoints at random and send the request to the one with
//! the lowest cost, `latency × (in flight + 1) / weight`. Latency is the proxy's EWMA
//! (`host::latency_ewma_micros`); in-flight counts are the proxy's too.
//!
//! What the plugin does about the EWMA's blind spots (see the README for the full story):
//! - **Unknown latency** (0: no sample yet) counts as the mean of the drawn candidates' known
//!   latencies, so a new endpoint is neither starved nor flooded while it gets measured.
//! - **Fast errors**: the proxy's EWMA includes fast error responses, and a balancer never sees
//!   statuses, so an endpoint failing fast looks fast. A latency below `latency_floor_micros`
//!   counts as the floor: a failing endpoint looks no better than a floor-fast healthy one, and
//!   the in-flight term then shares load among them. Ejecting it is the proxy's passive health
//!   checking's job; this plugin only skips what the proxy reports unhealthy.
//!
//! Retries skip endpoints already tried while another is left. Only endpoints the proxy sends as
//! healthy are drawn: with none healthy (or an empty pool) a pick gives `None` (503); panic mode
//! is the proxy's, which then sends all as healthy. The candidate list is rebuilt only in
//! `pool_changed`; a pick makes 2 host calls per drawn candidate.

use sluicegate_plugin_hashing::{Member, candidates, draw};
use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request, host};

/// The plugin's settings.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Candidates drawn per pick (at least 2).
    #[serde(default = "default_choices")]
    choices: u32,
    /// Latencies below this count as this, in microseconds (at least 1).
    #[serde(default = "default_floor")]
    latency_floor_micros: u32,
}

fn default_choices() -> u32 {
    2
}

fn default_floor() -> u32 {
    1_000
}

/// The balancer's state.
#[derive(Debug)]
pub struct PeakEwma {
    choices: usize,
    floor: u64,
    list: Vec<Member>,
}

impl Balancer for PeakEwma {
    fn init(config: &str) -> Result<Self, String> {
        let s: Settings = sluicegate_sdk::settings(config)?;
        if s.choices < 2 {
            return Err(format!("choices must be at least 2, not {}", s.choices));
        }
        if s.latency_floor_micros == 0 {
            return Err("latency_floor_micros must be at least 1".to_owned());
        }
        Ok(PeakEwma {
            choices: s.choices as usize,
            floor: u64::from(s.latency_floor_micros),
            list: Vec::new(),
        })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.list = candidates(endpoints);
    }

    fn pick(&mut self, _req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        let drawn: Vec<(&Member, u64, u64)> = draw(&self.list, self.choices, ctx)
            .into_iter()
            .map(|i| {
                let m = &self.list[i];
                let latency = u64::from(host::latency_ewma_micros(m.id));
                (m, latency, u64::from(host::in_flight(m.id)))
            })
            .collect();
        let known: Vec<u64> = drawn.iter().map(|d| d.1).filter(|l| *l > 0).collect();
        let unknown_as = known.iter().sum::<u64>() / (known.len() as u64).max(1);
        // cost = latency × (in flight + 1) / weight, compared by cross-multiplication.
        let cost = |(m, latency, in_flight): &(&Member, u64, u64)| {
            let latency = if *latency == 0 { unknown_as } else { *latency };
            (
                u128::from(latency.max(self.floor)) * u128::from(in_flight + 1),
                m.weight,
            )
        };
        let mut best: Option<(&Member, (u128, u32))> = None;
        for d in &drawn {
            let c = cost(d);
            if best.is_none_or(|(_, b)| c.0 * u128::from(b.1) < b.0 * u128::from(c.1)) {
                best = Some((d.0, c));
            }
        }
        best.map(|(m, _)| m.id)
    }
}

sluicegate_sdk::export_balancer!(PeakEwma);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_plugin_hashing::random_below;
    use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};
    use std::collections::BTreeMap;

    fn pool_of(n: u32) -> TestPool {
        (0..n).fold(TestPool::new(), |p, i| {
            p.endpoint(&format!("10.5.0.{i}:80"), 1)
        })
    }

    fn cost(id: EndpointId, floor: u32) -> u64 {
        u64::from(host::latency_ewma_micros(id).max(floor)) * u64::from(host::in_flight(id) + 1)
    }

    #[test]
    fn never_picks_one_of_the_costliest() {
        // Latencies all known: the pick is the cheapest of `choices` distinct candidates, so at
        // least choices - 1 others cost as much or more.
        testing::reset();
        let req = TestRequest::get("/");
        for choices in [2usize, 3] {
            let settings = format!("choices = {choices}");
            for n in [2u32, 5, 12] {
                let pool = pool_of(n);
                let mut lb = BalancerHarness::<PeakEwma>::start(&settings, &pool).unwrap();
                for _ in 0..300 {
                    for id in 0..n {
                        testing::set_latency(id, 1 + random_below(50_000) as u32);
                        testing::set_in_flight(id, random_below(10) as u32);
                    }
                    let picked = lb.pick(&req).unwrap();
                    let dearer = (0..n)
                        .filter(|id| *id != picked && cost(*id, 1000) >= cost(picked, 1000))
                        .count();
                    assert!(dearer + 1 >= choices.min(n as usize));
                }
            }
        }
    }

    #[test]
    fn in_flight_requests_outweigh_a_latency_edge() {
        testing::reset();
        let mut lb = BalancerHarness::<PeakEwma>::start("", &pool_of(2)).unwrap();
        testing::set_latency(0, 2_000);
        testing::set_latency(1, 8_000);
        let req = TestRequest::get("/");
        assert_eq!(
            lb.spread(&req, 20).into_iter().collect::<Vec<_>>(),
            [(0, 20)]
        );
        // 2 ms × 5 = 10 ms of queue is worse than 8 ms × 1.
        testing::set_in_flight(0, 4);
        assert_eq!(
            lb.spread(&req, 20).into_iter().collect::<Vec<_>>(),
            [(1, 20)]
        );
    }

    #[test]
    fn load_piles_up_in_proportion_to_speed() {
        // Requests accumulate without completing: each endpoint takes requests until its queue
        // costs as much as the others', so the in-flight counts end near the speed ratio 1:2:4.
        testing::reset();
        let pool = pool_of(3);
        let mut lb = BalancerHarness::<PeakEwma>::start("choices = 3", &pool).unwrap();
        for (id, micros) in [(0, 40_000), (1, 20_000), (2, 10_000)] {
            testing::set_latency(id, micros);
        }
        let mut in_flight = [0u32; 3];
        for _ in 0..700 {
            let id = lb.pick(&TestRequest::get("/")).unwrap() as usize;
            in_flight[id] += 1;
            testing::set_in_flight(id as u32, in_flight[id]);
        }
        assert!(in_flight[0].abs_diff(100) <= 2, "{in_flight:?}");
        assert!(in_flight[1].abs_diff(200) <= 2, "{in_flight:?}");
        assert!(in_flight[2].abs_diff(400) <= 2, "{in_flight:?}");
    }

    #[test]
    fn unknown_latency_counts_as_the_known_mean() {
        testing::reset();
        let mut lb = BalancerHarness::<PeakEwma>::start("", &pool_of(2)).unwrap();
        testing::set_latency(1, 30_000);
        let counts: BTreeMap<_, _> = lb.spread(&TestRequest::get("/"), 10_000);
        // Equal cost: the first drawn wins, so the new endpoint gets about half, not all or none.
        assert!((4_500..5_500).contains(&counts[&0]), "{counts:?}");
    }

    #[test]
    fn the_floor_caps_what_a_fast_failing_endpoint_can_draw() {
        // Endpoint 0 answers errors in 20 µs; endpoint 1 serves in 900 µs. Under the default
        // 1 ms floor both count as 1 ms and share the load; with a 1 µs floor 0 takes everything.
        testing::reset();
        testing::set_latency(0, 20);
        testing::set_latency(1, 900);
        let req = TestRequest::get("/");
        let mut floored = BalancerHarness::<PeakEwma>::start("", &pool_of(2)).unwrap();
        let counts = floored.spread(&req, 10_000);
        assert!((4_500..5_500).contains(&counts[&0]), "{counts:?}");
        let mut bare =
            BalancerHarness::<PeakEwma>::start("latency_floor_micros = 1", &pool_of(2)).unwrap();
        assert_eq!(bare.spread(&req, 1_000).get(&0), Some(&1_000));
    }

    #[test]
    fn weights_scale_the_cost() {
        testing::reset();
        let pool = TestPool::new().endpoint("a:1", 1).endpoint("b:1", 3);
        let mut lb = BalancerHarness::<PeakEwma>::start("", &pool).unwrap();
        testing::set_latency(0, 10_000);
        testing::set_latency(1, 20_000);
        // b: 20 ms / 3 beats a: 10 ms / 1.
        assert_eq!(lb.spread(&TestRequest::get("/"), 10).get(&1), Some(&10));
    }

    #[test]
    fn skips_unhealthy_and_tried_gives_none_when_none_is_healthy() {
        testing::reset();
        let mut pool = pool_of(3);
        pool.set_healthy(1, false);
        let mut lb = BalancerHarness::<PeakEwma>::start("", &pool).unwrap();
        let req = TestRequest::get("/");
        assert!(!lb.spread(&req, 200).contains_key(&1));
        assert_eq!(lb.pick_retry(&req, 2, &[0]), Some(2));
        assert!(lb.pick_retry(&req, 3, &[0, 2]).is_some());
        for id in [0, 2] {
            pool.set_healthy(id, false);
        }
        lb.set_pool(&pool);
        assert!(lb.spread(&req, 300).is_empty());
        lb.set_pool(&TestPool::new());
        assert_eq!(lb.pick(&req), None);
        for bad in ["choices = 1", "latency_floor_micros = 0", "decay = 3"] {
            assert!(BalancerHarness::<PeakEwma>::init(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        testing::reset();
        let req = TestRequest::get("/");
        let pools = [
            ("one", pool_of(1)),
            (
                "weighted",
                TestPool::new().endpoint("a:1", 1).endpoint("b:1", 3),
            ),
            ("many", pool_of(16)),
            ("empty", TestPool::new()),
        ];
        for settings in ["", "choices = 3", "choices = 20\nlatency_floor_micros = 1"] {
            for (_, healthy) in &pools {
                for id in healthy.endpoints().iter().map(|e| &e.id) {
                    testing::set_latency(*id, 1_000 * (id + 1));
                }
                testing::assert_no_pick_when_none_healthy::<PeakEwma>(
                    settings,
                    healthy,
                    std::slice::from_ref(&req),
                );
            }
        }
    }
}

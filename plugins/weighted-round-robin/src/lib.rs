//! Smooth weighted round-robin over the healthy endpoints, as nginx does it: on each pick every
//! candidate's `current` grows by its weight, the largest `current` wins and loses the total
//! weight. Over each cycle of `total weight` picks every endpoint gets exactly its weight, spread
//! out rather than in a burst (weights 5, 1, 1 give a a b a c a a, not a a a a a b c).
//!
//! - Retries skip endpoints already tried while another is left (they are left out of that
//!   pick, as nginx does, so their `current` does not move).
//! - Only endpoints the proxy sends as healthy are candidates: with none healthy (or an empty
//!   pool) a pick gives `None` (503). Panic mode is the proxy's: it then sends all as healthy.
//! - The candidate list is rebuilt (and the `current` values reset) only in `pool_changed`.
//!   It takes no settings.
//! - First attempts read nothing of the request: they are picked ahead (`pick_ahead`), the same
//!   sequence, many per call.

use sluicegate_plugin_hashing::{Member, candidates, consider, no_settings};
use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// The candidates and their running `current` values.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    list: Vec<Member>,
    current: Vec<i64>,
}

impl WeightedRoundRobin {
    /// One step of the smooth weighted round-robin among the candidates `ctx` leaves.
    fn choose(&mut self, ctx: &PickContext) -> Option<EndpointId> {
        let keep = consider(&self.list, ctx);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, m) in self.list.iter().enumerate().filter(|(_, m)| keep(m)) {
            self.current[i] += i64::from(m.weight);
            total += i64::from(m.weight);
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(self.list[best].id)
    }
}

impl Balancer for WeightedRoundRobin {
    fn init(config: &str) -> Result<Self, String> {
        no_settings("weighted-round-robin", config)?;
        Ok(WeightedRoundRobin::default())
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.list = candidates(endpoints);
        self.current = vec![0; self.list.len()];
    }

    fn pick(&mut self, _req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        self.choose(ctx)
    }

    /// A first try reads nothing of the request: the next picks of the same sequence.
    fn pick_ahead(&mut self, count: u32) -> Vec<EndpointId> {
        let first = PickContext {
            attempt: 1,
            tried: Vec::new(),
        };
        (0..count).map_while(|_| self.choose(&first)).collect()
    }
}

sluicegate_sdk::export_balancer!(WeightedRoundRobin);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::host;
    use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};

    fn pool_with(weights: &[u32]) -> TestPool {
        weights
            .iter()
            .enumerate()
            .fold(TestPool::new(), |p, (i, w)| {
                p.endpoint(&format!("10.0.0.{}:80", i + 1), *w)
            })
    }

    /// Random weight sets (2 to 7 endpoints, weights 1 to 30) from the harness's seeded generator.
    fn weight_sets(count: usize) -> Vec<Vec<u32>> {
        testing::seed_random(7);
        (0..count)
            .map(|_| {
                let n = 2 + (host::random_u64() % 6) as usize;
                (0..n)
                    .map(|_| 1 + (host::random_u64() % 30) as u32)
                    .collect()
            })
            .collect()
    }

    fn picks(weights: &[u32], n: usize) -> Vec<EndpointId> {
        let mut lb = BalancerHarness::<WeightedRoundRobin>::start("", &pool_with(weights)).unwrap();
        let req = TestRequest::get("/");
        (0..n).map(|_| lb.pick(&req).unwrap()).collect()
    }

    #[test]
    fn picks_made_ahead_are_the_sequence_single_picks_make() {
        let pool = pool_with(&[5, 1, 1]);
        let mut ahead = WeightedRoundRobin::init("").unwrap();
        ahead.pool_changed(pool.endpoints());
        let mut single = WeightedRoundRobin::init("").unwrap();
        single.pool_changed(pool.endpoints());
        let first = PickContext {
            attempt: 1,
            tried: vec![],
        };
        let req = TestRequest::get("/");
        let one_by_one: Vec<_> = (0..14)
            .map(|_| single.pick(&req.as_request(), &first).unwrap())
            .collect();
        assert_eq!(ahead.pick_ahead(14), one_by_one);
        assert_eq!(&one_by_one[..7], [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn every_full_cycle_gives_exact_shares() {
        for weights in weight_sets(300) {
            let total: u32 = weights.iter().sum();
            let seq = picks(&weights, 3 * total as usize);
            for cycle in seq.chunks(total as usize) {
                for (id, w) in weights.iter().enumerate() {
                    let got = cycle.iter().filter(|p| **p == id as u32).count();
                    assert_eq!(got, *w as usize, "weights {weights:?}, endpoint {id}");
                }
            }
        }
    }

    #[test]
    fn never_strays_a_pick_from_the_ideal_share() {
        // After k picks endpoint i has had k × w_i / W picks, give or take less than one.
        for weights in weight_sets(300) {
            let total = i64::from(weights.iter().sum::<u32>());
            let mut count = vec![0i64; weights.len()];
            for (k, id) in picks(&weights, 2 * total as usize).into_iter().enumerate() {
                count[id as usize] += 1;
                for (i, w) in weights.iter().enumerate() {
                    let drift = count[i] * total - (k as i64 + 1) * i64::from(*w);
                    assert!(
                        drift.abs() <= total,
                        "weights {weights:?} after {k}: {drift}"
                    );
                }
            }
        }
    }

    #[test]
    fn no_burst_longer_than_the_weight_implies() {
        // Perfectly interleaved, endpoint i would run at most ceil(w_i / (W - w_i)) picks in a
        // row; smooth WRR stays within two of that (plain WRR would run w_i in a row).
        for weights in weight_sets(300) {
            let total: u32 = weights.iter().sum();
            let seq = picks(&weights, 3 * total as usize);
            for (id, w) in weights.iter().enumerate() {
                let longest = seq
                    .chunk_by(|a, b| a == b)
                    .filter(|run| run[0] == id as u32)
                    .map(<[u32]>::len)
                    .max()
                    .unwrap_or(0);
                let ideal = w.div_ceil(total - w) as usize;
                assert!(
                    longest <= ideal + 2,
                    "weights {weights:?}: {id} ran {longest}"
                );
            }
        }
        assert_eq!(picks(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn skips_unhealthy_and_tried_endpoints() {
        let mut pool = pool_with(&[3, 2, 1]);
        pool.set_healthy(1, false);
        let mut lb = BalancerHarness::<WeightedRoundRobin>::start("", &pool).unwrap();
        let req = TestRequest::get("/");
        let spread = lb.spread(&req, 400);
        assert_eq!(spread.into_iter().collect::<Vec<_>>(), [(0, 300), (2, 100)]);
        for _ in 0..20 {
            assert_eq!(lb.pick_retry(&req, 2, &[0]), Some(2));
        }
        assert!(lb.pick_retry(&req, 3, &[0, 2]).is_some());
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        let req = TestRequest::get("/");
        let cases: [(&str, &[u32]); 4] = [
            ("one", &[1]),
            ("weighted", &[2, 1]),
            ("many", &[5, 1, 1, 3, 7, 2, 2, 9]),
            ("empty", &[]),
        ];
        for (_, weights) in cases {
            testing::assert_no_pick_when_none_healthy::<WeightedRoundRobin>(
                "",
                &pool_with(weights),
                std::slice::from_ref(&req),
            );
        }
        // One back to health takes every pick, tried or not.
        let mut pool = pool_with(&[2, 1, 3]);
        pool.set_healthy(0, false);
        pool.set_healthy(2, false);
        let mut lb = BalancerHarness::<WeightedRoundRobin>::start("", &pool).unwrap();
        assert_eq!(lb.spread(&req, 9).into_iter().collect::<Vec<_>>(), [(1, 9)]);
        assert_eq!(lb.pick_retry(&req, 2, &[1]), Some(1));
    }

    #[test]
    fn refuses_settings() {
        assert!(BalancerHarness::<WeightedRoundRobin>::init("weights = 1").is_err());
    }
}

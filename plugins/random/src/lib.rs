//! Weighted random: each pick draws a healthy endpoint with probability weight / total weight,
//! from the proxy's generator (`host::random_u64`). No state to share or herd on, which suits many
//! proxies in front of one pool.
//!
//! - Cumulative weights are built in `pool_changed`, so a first try is one draw and a binary search.
//! - Retries draw among the endpoints not yet tried (weighted likewise) while any is left.
//! - Only endpoints the proxy sends as healthy are drawn: with none healthy (or an empty pool) a
//!   pick gives `None` (503). Panic mode is the proxy's: it then sends all as healthy. It takes
//!   no settings.
//! - First tries read nothing of the request: they are drawn ahead (`pick_ahead`), many per call.

use sluicegate_plugin_hashing::{Member, candidates, consider, no_settings, random_below};
use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// The candidates and their cumulative weights.
#[derive(Debug, Default)]
pub struct Random {
    list: Vec<Member>,
    /// `cumulative[i]` = sum of the weights of `list[..=i]`.
    cumulative: Vec<u64>,
}

impl Random {
    /// One draw among all candidates, by weight.
    fn draw(&self) -> Option<EndpointId> {
        let total = *self.cumulative.last()?;
        let r = random_below(total);
        let i = self.cumulative.partition_point(|c| *c <= r);
        Some(self.list[i].id)
    }
}

impl Balancer for Random {
    fn init(config: &str) -> Result<Self, String> {
        no_settings("random", config)?;
        Ok(Random::default())
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.list = candidates(endpoints);
        self.cumulative = self
            .list
            .iter()
            .scan(0u64, |sum, m| {
                *sum += u64::from(m.weight);
                Some(*sum)
            })
            .collect();
    }

    fn pick(&mut self, _req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        if ctx.tried.is_empty() {
            return self.draw();
        }
        let keep = consider(&self.list, ctx);
        let kept = || self.list.iter().filter(|m| keep(m));
        let mut r = random_below(kept().map(|m| u64::from(m.weight)).sum());
        kept()
            .find(|m| {
                let inside = r < u64::from(m.weight);
                r = r.saturating_sub(u64::from(m.weight));
                inside
            })
            .map(|m| m.id)
    }

    /// First tries read nothing of the request: independent draws, made ahead.
    fn pick_ahead(&mut self, count: u32) -> Vec<EndpointId> {
        (0..count).map_while(|_| self.draw()).collect()
    }
}

sluicegate_sdk::export_balancer!(Random);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};

    fn pool_with(weights: &[u32]) -> TestPool {
        weights
            .iter()
            .enumerate()
            .fold(TestPool::new(), |p, (i, w)| {
                p.endpoint(&format!("10.4.0.{i}:80"), *w)
            })
    }

    /// Asserts each endpoint's count is within 3% (relative) of its weight's share of `n`.
    fn assert_shares(counts: &std::collections::BTreeMap<EndpointId, usize>, want: &[(u32, u32)]) {
        let n: usize = counts.values().sum();
        let total: u32 = want.iter().map(|(_, w)| w).sum();
        assert_eq!(counts.len(), want.len(), "{counts:?}");
        for (id, w) in want {
            let fair = n as f64 * f64::from(*w) / f64::from(total);
            let got = counts[id] as f64;
            assert!((got - fair).abs() <= fair * 0.03, "{counts:?}");
        }
    }

    #[test]
    fn shares_follow_weights() {
        testing::reset();
        let mut lb = BalancerHarness::<Random>::start("", &pool_with(&[1, 2, 3, 4])).unwrap();
        let counts = lb.spread(&TestRequest::get("/"), 100_000);
        assert_shares(&counts, &[(0, 1), (1, 2), (2, 3), (3, 4)]);
    }

    #[test]
    fn retries_draw_among_the_untried_by_weight() {
        testing::reset();
        let mut lb = BalancerHarness::<Random>::start("", &pool_with(&[1, 2, 3, 4])).unwrap();
        let req = TestRequest::get("/");
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..60_000 {
            let id = lb.pick_retry(&req, 2, &[1, 3]).unwrap();
            *counts.entry(id).or_insert(0) += 1;
        }
        assert_shares(&counts, &[(0, 1), (2, 3)]);
        assert!(lb.pick_retry(&req, 5, &[0, 1, 2, 3]).is_some());
    }

    #[test]
    fn skips_unhealthy_gives_none_when_none_is_healthy() {
        testing::reset();
        let mut pool = pool_with(&[1, 1, 1]);
        pool.set_healthy(1, false);
        let mut lb = BalancerHarness::<Random>::start("", &pool).unwrap();
        let counts = lb.spread(&TestRequest::get("/"), 10_000);
        assert_shares(&counts, &[(0, 1), (2, 1)]);
        // The last healthy one takes every retry, even once tried.
        pool.set_healthy(0, false);
        lb.set_pool(&pool);
        assert_eq!(lb.pick_retry(&TestRequest::get("/"), 2, &[2]), Some(2));
        pool.set_healthy(2, false);
        lb.set_pool(&pool);
        assert!(lb.spread(&TestRequest::get("/"), 300).is_empty());
        lb.set_pool(&TestPool::new());
        assert_eq!(lb.pick(&TestRequest::get("/")), None);
        assert!(BalancerHarness::<Random>::init("seed = 4").is_err());
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        testing::reset();
        let req = TestRequest::get("/");
        let cases: [(&str, &[u32]); 4] = [
            ("one", &[1]),
            ("weighted", &[1, 2, 3, 4]),
            ("many", &[3; 30]),
            ("empty", &[]),
        ];
        for (_, weights) in cases {
            testing::assert_no_pick_when_none_healthy::<Random>(
                "",
                &pool_with(weights),
                std::slice::from_ref(&req),
            );
        }
    }
}

//! The default balancer: round-robin over the healthy endpoints.
//!
//! - Picks cycle through the healthy endpoints in pool order, one step per request.
//! - On a retry, endpoints in `ctx.tried` are skipped when another candidate is available
//!   (when every candidate was tried, it picks the next one in turn rather than failing).
//! - Only endpoints the proxy sends as healthy are picked: when none is healthy (or the pool is
//!   empty) a pick gives `None` and the proxy answers 503. Panic mode is the proxy's alone: while
//!   a cluster is in panic it sends every endpoint as healthy, so the rotation covers them all.
//!
//! The candidate list is built in `pool_changed`; a pick only advances a cursor. First attempts
//! read nothing of the request, so they are picked ahead (`pick_ahead`), many per call.
//! Weights are ignored. It takes no settings: anything but an empty table is refused.

use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// Round-robin state: the candidates for the current pool and the cursor.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// The healthy endpoints (none when none is healthy).
    candidates: Vec<EndpointId>,
    /// Index into `candidates` of the next pick (taken modulo the length, which may change).
    next: usize,
}

impl RoundRobin {
    /// Moves the cursor one step; the index of the candidate whose turn it was (`None`: none).
    fn advance(&mut self) -> Option<usize> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        self.next = (start + 1) % n;
        Some(start)
    }
}

impl Balancer for RoundRobin {
    fn init(config: &str) -> Result<Self, String> {
        // No settings, and anything given is refused so a typo doesn't pass silently. Checked
        // by hand rather than with `sluicegate_sdk::settings`, which keeps a TOML parser out of
        // the default plugin embedded in every proxy (about 25 KB instead of 190 KB).
        let given = config
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'));
        match given {
            Some(line) => Err(format!("round-robin takes no settings, got `{line}`")),
            None => Ok(RoundRobin::default()),
        }
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.candidates = endpoints
            .iter()
            .filter(|e| e.healthy)
            .map(|e| e.id)
            .collect();
    }

    fn pick(&mut self, _req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        let n = self.candidates.len();
        let start = self.advance()?;
        let in_turn = |i: usize| self.candidates[(start + i) % n];
        let untried = (0..n).map(in_turn).find(|id| !ctx.was_tried(*id));
        Some(untried.unwrap_or_else(|| in_turn(0)))
    }

    /// A first try skips nothing and reads nothing of the request: the next candidates in turn.
    fn pick_ahead(&mut self, count: u32) -> Vec<EndpointId> {
        (0..count)
            .map_while(|_| self.advance().map(|i| self.candidates[i]))
            .collect()
    }
}

sluicegate_sdk::export_balancer!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};

    fn pool_of(n: usize) -> TestPool {
        (0..n).fold(TestPool::new(), |pool, i| {
            pool.endpoint(&format!("10.0.0.{}:80", i + 1), 1)
        })
    }

    #[test]
    fn picks_made_ahead_continue_the_rotation_and_retries_share_it() {
        let mut rr = RoundRobin::init("").unwrap();
        let pool = pool_of(3);
        rr.pool_changed(pool.endpoints());
        assert_eq!(rr.pick_ahead(5), [0, 1, 2, 0, 1]);
        let retry = PickContext {
            attempt: 2,
            tried: vec![2],
        };
        // Endpoint 2's turn, but it was tried: the next one in turn.
        assert_eq!(
            rr.pick(&TestRequest::get("/").as_request(), &retry),
            Some(0)
        );
        assert_eq!(rr.pick_ahead(2), [0, 1]);
        rr.pool_changed(&[]);
        assert!(
            rr.pick_ahead(4).is_empty(),
            "an empty pool gives nothing ahead"
        );
    }

    #[test]
    fn spreads_picks_evenly() {
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool_of(3)).unwrap();
        let spread = lb.spread(&TestRequest::get("/"), 300);
        assert_eq!(
            spread.into_iter().collect::<Vec<_>>(),
            [(0, 100), (1, 100), (2, 100)]
        );
    }

    #[test]
    fn cycles_in_pool_order() {
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool_of(3)).unwrap();
        let req = TestRequest::get("/");
        let picks: Vec<_> = (0..6).map(|_| lb.pick(&req).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_unhealthy_endpoints() {
        let pool = pool_of(2)
            .unhealthy("10.0.0.9:80", 1)
            .endpoint("10.0.0.4:80", 1);
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool).unwrap();
        let spread = lb.spread(&TestRequest::get("/"), 300);
        assert_eq!(
            spread.into_iter().collect::<Vec<_>>(),
            [(0, 100), (1, 100), (3, 100)]
        );
    }

    #[test]
    fn follows_health_changes() {
        let mut pool = pool_of(3);
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool).unwrap();
        pool.set_healthy(1, false);
        lb.set_pool(&pool);
        let spread = lb.spread(&TestRequest::get("/"), 10);
        assert_eq!(spread.keys().copied().collect::<Vec<_>>(), [0, 2]);
        pool.set_healthy(1, true);
        lb.set_pool(&pool);
        assert_eq!(lb.spread(&TestRequest::get("/"), 9).len(), 3);
    }

    #[test]
    fn skips_tried_endpoints_on_retry() {
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool_of(3)).unwrap();
        let req = TestRequest::get("/");
        for _ in 0..30 {
            let picked = lb.pick_retry(&req, 2, &[0, 2]);
            assert_eq!(picked, Some(1));
        }
        let picked = lb.pick_retry(&req, 2, &[1]).unwrap();
        assert_ne!(picked, 1);
    }

    #[test]
    fn picks_a_tried_endpoint_when_all_were_tried() {
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool_of(2)).unwrap();
        let picked = lb.pick_retry(&TestRequest::get("/"), 3, &[0, 1]);
        assert!(matches!(picked, Some(0 | 1)));
    }

    /// Pools in which no endpoint is healthy (the proxy's panic mode is off, or refuses).
    fn unhealthy_pools() -> Vec<(&'static str, TestPool)> {
        let many = (0..12).fold(TestPool::new(), |p, i| {
            p.unhealthy(&format!("10.0.1.{i}:80"), 1 + i % 3)
        });
        vec![
            ("one", TestPool::new().unhealthy("10.0.0.1:80", 1)),
            (
                "two",
                pool_of(0)
                    .unhealthy("10.0.0.1:80", 1)
                    .unhealthy("10.0.0.2:80", 1),
            ),
            ("twelve", many),
            ("empty", TestPool::new()),
        ]
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        let req = TestRequest::get("/");
        for (_, pool) in unhealthy_pools() {
            let mut healthy = pool.clone();
            for id in pool.endpoints().iter().map(|e| e.id) {
                healthy.set_healthy(id, true);
            }
            testing::assert_no_pick_when_none_healthy::<RoundRobin>(
                "",
                &healthy,
                std::slice::from_ref(&req),
            );
            let mut lb = BalancerHarness::<RoundRobin>::start("", &pool).unwrap();
            assert!(lb.spread(&req, 50).is_empty());
        }
    }

    #[test]
    fn only_the_healthy_are_picked_however_few() {
        // One healthy endpoint among unhealthy ones gets every pick, first tries and retries,
        // even when it was already tried: the unhealthy ones are never a fall-back.
        let pool = TestPool::new()
            .unhealthy("10.0.0.1:80", 1)
            .endpoint("10.0.0.2:80", 1)
            .unhealthy("10.0.0.3:80", 1);
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool).unwrap();
        let req = TestRequest::get("/");
        assert_eq!(
            lb.spread(&req, 10).into_iter().collect::<Vec<_>>(),
            [(1, 10)]
        );
        assert_eq!(lb.pick_retry(&req, 2, &[1]), Some(1));
        assert_eq!(lb.pick_retry(&req, 3, &[0, 1, 2]), Some(1));
    }

    #[test]
    fn pool_shrinking_under_the_cursor_stays_in_range() {
        let mut pool = pool_of(5);
        let mut lb = BalancerHarness::<RoundRobin>::start("", &pool).unwrap();
        let req = TestRequest::get("/");
        for _ in 0..4 {
            lb.pick(&req);
        }
        pool.remove(3);
        pool.remove(4);
        lb.set_pool(&pool);
        // The harness panics if a pick falls outside the pool.
        let spread = lb.spread(&req, 30);
        assert_eq!(
            spread.into_iter().collect::<Vec<_>>(),
            [(0, 10), (1, 10), (2, 10)]
        );
    }

    #[test]
    fn refuses_settings() {
        let err = BalancerHarness::<RoundRobin>::init("weights = true").unwrap_err();
        assert!(err.contains("weights"), "{err}");
        assert!(BalancerHarness::<RoundRobin>::init("").is_ok());
        assert!(BalancerHarness::<RoundRobin>::init("\n# just a comment\n").is_ok());
    }
}

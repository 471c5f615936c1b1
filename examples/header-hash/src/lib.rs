//! Example custom balancer: requests carrying the same value of a configured header (say
//! `x-user`) go to the same endpoint, so per-user caches on the backends stay warm.
//!
//! - The endpoint is chosen by rendezvous (highest-random-weight) hashing: each candidate scores
//!   `mix(fnv1a(value), id)` and the highest score wins. It is deterministic across instances
//!   and restarts, and when an endpoint leaves (or turns unhealthy) only the values that were on
//!   it move; everyone else stays put.
//! - On a retry, endpoints already tried are skipped: the value goes to its next-highest
//!   scoring endpoint, which is again stable.
//! - Requests without the header fall back to round-robin.
//! - Only endpoints the proxy sends as healthy are candidates: when none is healthy (or the pool
//!   is empty) a pick gives `None` and the proxy answers 503. `healthy` is authoritative: panic
//!   mode is the proxy's alone, and while a cluster is in panic it sends every endpoint as
//!   healthy, so a balancer never needs a fall-back of its own.

use serde::Deserialize;
use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// The plugin's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The header whose value picks the endpoint (case-insensitive).
    header: String,
}

/// The balancer's state.
#[derive(Debug)]
pub struct HeaderHash {
    header: String,
    /// The healthy endpoints' ids (none when none is healthy).
    candidates: Vec<EndpointId>,
    /// Round-robin cursor for requests without the header.
    next: usize,
}

/// 64-bit FNV-1a: tiny, deterministic and good enough to spread header values.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The rendezvous score of `endpoint` for a key hash: the splitmix64 finalizer over both, so
/// neighbouring ids get unrelated scores.
pub fn score(key_hash: u64, endpoint: EndpointId) -> u64 {
    let mut z = key_hash ^ u64::from(endpoint).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl HeaderHash {
    /// The endpoint for a header value among the untried candidates (all of them when every
    /// candidate was tried).
    fn by_value(&self, value: &str, ctx: &PickContext) -> Option<EndpointId> {
        let key = fnv1a(value.as_bytes());
        let best =
            |ids: &mut dyn Iterator<Item = EndpointId>| ids.max_by_key(|id| (score(key, *id), *id));
        let untried = &mut self
            .candidates
            .iter()
            .copied()
            .filter(|id| !ctx.was_tried(*id));
        best(untried).or_else(|| best(&mut self.candidates.iter().copied()))
    }

    /// Round-robin among the untried candidates.
    fn in_turn(&mut self, ctx: &PickContext) -> Option<EndpointId> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        self.next = (start + 1) % n;
        let at = |i: usize| self.candidates[(start + i) % n];
        Some(
            (0..n)
                .map(at)
                .find(|id| !ctx.was_tried(*id))
                .unwrap_or_else(|| at(0)),
        )
    }
}

impl Balancer for HeaderHash {
    fn init(config: &str) -> Result<Self, String> {
        let settings: Settings = sluicegate_sdk::settings(config)?;
        if settings.header.trim().is_empty() {
            return Err("invalid settings: `header` must name a header".to_owned());
        }
        Ok(HeaderHash {
            header: settings.header.trim().to_ascii_lowercase(),
            candidates: Vec::new(),
            next: 0,
        })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        self.candidates = endpoints
            .iter()
            .filter(|e| e.healthy)
            .map(|e| e.id)
            .collect();
    }

    fn pick(&mut self, req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        match req.header(&self.header) {
            Some(value) => self.by_value(&value, ctx),
            None => self.in_turn(ctx),
        }
    }
}

sluicegate_sdk::export_balancer!(HeaderHash);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{BalancerHarness, TestPool, TestRequest};

    const SETTINGS: &str = "header = \"x-user\"";

    fn pool_of(n: u32) -> TestPool {
        (0..n).fold(TestPool::new(), |pool, i| {
            pool.endpoint(&format!("10.0.0.{i}:80"), 1)
        })
    }

    fn user(name: &str) -> TestRequest {
        TestRequest::get("/").header("X-User", name)
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn same_value_same_endpoint() {
        let mut lb = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool_of(5)).unwrap();
        for name in ["alice", "bob", "carol"] {
            let spread = lb.spread(&user(name), 50);
            assert_eq!(spread.len(), 1, "{name} went to {spread:?}");
        }
        // A fresh instance (another worker, or after a restart) agrees.
        let mut other = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool_of(5)).unwrap();
        assert_eq!(other.pick(&user("alice")), lb.pick(&user("alice")));
    }

    #[test]
    fn values_spread_over_endpoints() {
        let mut lb = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool_of(3)).unwrap();
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let id = lb.pick(&user(&format!("user-{i}"))).unwrap();
            counts[id as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn missing_header_falls_back_to_round_robin() {
        let mut lb = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool_of(3)).unwrap();
        let req = TestRequest::get("/");
        let picks: Vec<_> = (0..6).map(|_| lb.pick(&req).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_unhealthy_and_moves_only_their_values() {
        let mut pool = pool_of(4);
        let mut lb = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool).unwrap();
        let users: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
        let before: Vec<_> = users.iter().map(|u| lb.pick(&user(u)).unwrap()).collect();
        pool.set_healthy(2, false);
        lb.set_pool(&pool);
        for (u, was) in users.iter().zip(&before) {
            let now = lb.pick(&user(u)).unwrap();
            assert_ne!(now, 2, "{u} went to the unhealthy endpoint");
            if *was != 2 {
                assert_eq!(now, *was, "{u} moved although its endpoint stayed healthy");
            }
        }
    }

    #[test]
    fn retry_skips_tried_endpoints() {
        let mut lb = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool_of(3)).unwrap();
        let first = lb.pick(&user("alice")).unwrap();
        let second = lb.pick_retry(&user("alice"), 2, &[first]).unwrap();
        assert_ne!(second, first);
        // The second choice is stable too.
        assert_eq!(lb.pick_retry(&user("alice"), 2, &[first]), Some(second));
        let third = lb.pick_retry(&user("alice"), 3, &[first, second]).unwrap();
        assert!(third != first && third != second);
        // Everything tried: still answers, with the first choice.
        assert_eq!(lb.pick_retry(&user("alice"), 4, &[0, 1, 2]), Some(first));
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        let pools = [
            ("one", pool_of(1)),
            (
                "weighted",
                TestPool::new().endpoint("a:1", 1).endpoint("b:1", 4),
            ),
            ("many", pool_of(12)),
            ("empty", TestPool::new()),
        ];
        // With the header (rendezvous) and without it (round-robin).
        let requests = [user("alice"), user("bob"), TestRequest::get("/")];
        for (name, healthy) in &pools {
            let mut pool = healthy.clone();
            let ids: Vec<EndpointId> = pool.endpoints().iter().map(|e| e.id).collect();
            for id in &ids {
                pool.set_healthy(*id, false);
            }
            // A fresh instance, and one that served the same endpoints healthy first.
            let mut fresh = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool).unwrap();
            let mut was_healthy = BalancerHarness::<HeaderHash>::start(SETTINGS, healthy).unwrap();
            for req in &requests {
                was_healthy.pick(req);
            }
            was_healthy.set_pool(&pool);
            for lb in [&mut fresh, &mut was_healthy] {
                for req in &requests {
                    assert_eq!(lb.pick(req), None, "{name}: first try");
                    assert_eq!(
                        lb.pick_retry(req, 2, &ids[..ids.len().min(1)]),
                        None,
                        "{name}"
                    );
                    assert_eq!(lb.pick_retry(req, 3, &ids), None, "{name}: all tried");
                }
            }
        }
        // One back to health takes every value and every retry.
        let mut pool = pool_of(3);
        pool.set_healthy(0, false);
        pool.set_healthy(2, false);
        let mut lb = BalancerHarness::<HeaderHash>::start(SETTINGS, &pool).unwrap();
        for req in &requests {
            assert_eq!(lb.pick(req), Some(1));
            assert_eq!(lb.pick_retry(req, 2, &[1]), Some(1));
        }
    }

    #[test]
    fn settings_are_checked() {
        let missing = BalancerHarness::<HeaderHash>::init("").unwrap_err();
        assert!(missing.contains("header"), "{missing}");
        let typo =
            BalancerHarness::<HeaderHash>::init("header = \"x\"\nheadr = \"y\"").unwrap_err();
        assert!(typo.contains("headr") && typo.contains("line 2"), "{typo}");
        assert!(BalancerHarness::<HeaderHash>::init("header = \"  \"").is_err());
    }
}

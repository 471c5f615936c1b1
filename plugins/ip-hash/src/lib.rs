//! Client-address affinity: the client's address (IPv4 or IPv6; the first `X-Forwarded-For`
//! entry when the peer is one of `trusted_proxies`) picks the endpoint.
//!
//! The choice is weighted rendezvous hashing (highest random weight) over the healthy endpoints:
//! each scores `weight / -ln(u)` with `u` a uniform value from hashing the client's address
//! together with the endpoint's address, and the highest score wins. So:
//! - it is deterministic (no per-instance randomness, and endpoint addresses rather than ids are
//!   hashed): two proxies with the same pool send a client to the same endpoint;
//! - weights are honoured (an endpoint's share is its weight's share);
//! - when an endpoint leaves or turns unhealthy only its clients move, and they come back when it
//!   returns; a retry goes to the client's next-highest endpoint, which is just as stable.
//!
//! Only endpoints the proxy sends as healthy are picked: with none healthy (or an empty pool) a
//! pick gives `None` (503). Panic mode is the proxy's, which then sends all of them as healthy.
//! Endpoint hashes are computed in `pool_changed`; a pick costs one hash mix per endpoint (and a
//! logarithm when the weights differ) and allocates nothing: only a retry whose first choice was
//! tried ranks them all.

use sluicegate_plugin_hashing::{Cidr, ClientAddress, HashKey, Pool, choose, mix64, xxh64};
use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};

/// The plugin's settings.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Peers whose `X-Forwarded-For` is believed (CIDR blocks; none by default).
    #[serde(default)]
    trusted_proxies: Vec<Cidr>,
}

/// The balancer's state.
#[derive(Debug, Default)]
pub struct IpHash {
    client: ClientAddress,
    pool: Pool,
    /// xxh64 of each member's address, in pool order.
    member_hashes: Vec<u64>,
    /// Whether every member has the same weight: then `u` alone orders the scores.
    same_weights: bool,
}

/// Maps a 64-bit hash to a uniform value in (0, 1).
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

impl IpHash {
    /// Member `i`'s score for the client hashed as `key`, or, when all weights are the same, a
    /// value in the same order: `weight / -ln(u)` grows with `u` for a fixed weight (at least 1),
    /// so the logarithm, most of a pick's cost in a large pool, is skipped.
    fn score(&self, key: u64, i: usize) -> f64 {
        let u = unit(mix64(key ^ self.member_hashes[i]));
        if self.same_weights {
            return u;
        }
        f64::from(self.pool.members()[i].weight) / -u.ln()
    }

    /// Every member's index, highest score first (ties: the lowest index).
    fn ranking(&self, key: u64) -> Vec<usize> {
        let mut ranked: Vec<(f64, usize)> = (0..self.member_hashes.len())
            .map(|i| (self.score(key, i), i))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.into_iter().map(|(_, i)| i).collect()
    }
}

impl Balancer for IpHash {
    fn init(config: &str) -> Result<Self, String> {
        let s: Settings = sluicegate_sdk::settings(config)?;
        Ok(IpHash {
            client: ClientAddress::new(s.trusted_proxies),
            ..IpHash::default()
        })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        if self.pool.update(endpoints) {
            let members = self.pool.members();
            self.member_hashes = members
                .iter()
                .map(|m| xxh64(m.address.as_bytes(), 0))
                .collect();
            self.same_weights = members.windows(2).all(|w| w[0].weight == w[1].weight);
        }
    }

    fn pick(&mut self, req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        let key = HashKey::ClientIp.hash(req, &self.client);
        let members = self.pool.members();
        // The highest-scoring usable member (ties: the lowest index) is what the ranking below
        // would choose unless it was already tried: find it in one pass.
        let mut best: Option<(f64, usize)> = None;
        for i in (0..members.len()).filter(|&i| self.pool.usable(i)) {
            let score = self.score(key, i);
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, i));
            }
        }
        match best {
            None => return None,
            Some((_, i)) if !ctx.was_tried(members[i].id) => return Some(members[i].id),
            Some(_) => {}
        }
        choose(&self.pool, self.ranking(key).into_iter(), ctx, None)
    }
}

sluicegate_sdk::export_balancer!(IpHash);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::host;
    use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn pool_of(n: u32) -> TestPool {
        (0..n).fold(TestPool::new(), |p, i| {
            p.endpoint(&format!("10.1.0.{i}:8080"), 1)
        })
    }

    /// Random client addresses, one in four IPv6.
    fn clients(n: usize) -> Vec<IpAddr> {
        testing::seed_random(42);
        (0..n)
            .map(|i| {
                let r = host::random_u64();
                if i % 4 == 0 {
                    IpAddr::V6(Ipv6Addr::from(u128::from(r) << 64 | u128::from(r >> 7)))
                } else {
                    IpAddr::V4(Ipv4Addr::from(r as u32))
                }
            })
            .collect()
    }

    fn picks(lb: &mut BalancerHarness<IpHash>, ips: &[IpAddr]) -> Vec<EndpointId> {
        ips.iter()
            .map(|ip| lb.pick(&TestRequest::get("/").client_ip(*ip)).unwrap())
            .collect()
    }

    #[test]
    fn two_instances_agree_whatever_order_the_pool_comes_in() {
        let pool = pool_of(7);
        let mut reversed = TestPool::new();
        for e in pool.endpoints().iter().rev() {
            reversed = reversed.endpoint_with_id(e.id, &e.address, e.weight);
        }
        let mut a = BalancerHarness::<IpHash>::start("", &pool).unwrap();
        let mut b = BalancerHarness::<IpHash>::start("", &reversed).unwrap();
        let ips = clients(10_000);
        assert_eq!(picks(&mut a, &ips), picks(&mut b, &ips));
        // And a client sticks to its endpoint.
        assert_eq!(picks(&mut a, &ips[..100]), picks(&mut a, &ips[..100]));
    }

    #[test]
    fn shares_follow_weights() {
        let pool = TestPool::new()
            .endpoint("a:1", 1)
            .endpoint("b:1", 2)
            .endpoint("c:1", 3);
        let mut lb = BalancerHarness::<IpHash>::start("", &pool).unwrap();
        let ips = clients(60_000);
        let mut counts = BTreeMap::new();
        for id in picks(&mut lb, &ips) {
            *counts.entry(id).or_insert(0usize) += 1;
        }
        for (id, want) in [(0, 10_000.0), (1, 20_000.0), (2, 30_000.0)] {
            let got = counts[&id] as f64;
            assert!((got - want).abs() < want * 0.03, "{counts:?}");
        }
    }

    #[test]
    fn only_the_clients_of_a_leaving_or_failing_endpoint_move() {
        let mut pool = pool_of(10);
        let mut lb = BalancerHarness::<IpHash>::start("", &pool).unwrap();
        let ips = clients(20_000);
        let before = picks(&mut lb, &ips);
        pool.set_healthy(3, false);
        lb.set_pool(&pool);
        let failing = picks(&mut lb, &ips);
        pool.remove(3);
        lb.set_pool(&pool);
        let removed = picks(&mut lb, &ips);
        for (i, was) in before.iter().enumerate() {
            if *was != 3 {
                assert_eq!((failing[i], removed[i]), (*was, *was));
            } else {
                assert_ne!(failing[i], 3);
                assert_eq!(failing[i], removed[i]);
            }
        }
        pool = pool.endpoint_with_id(3, "10.1.0.3:8080", 1);
        lb.set_pool(&pool);
        assert_eq!(picks(&mut lb, &ips), before);
    }

    #[test]
    fn retries_go_to_the_next_choice_of_that_client() {
        let mut lb = BalancerHarness::<IpHash>::start("", &pool_of(5)).unwrap();
        for ip in clients(200) {
            let req = TestRequest::get("/").client_ip(ip);
            let first = lb.pick(&req).unwrap();
            let second = lb.pick_retry(&req, 2, &[first]).unwrap();
            assert_ne!(first, second);
            assert_eq!(lb.pick_retry(&req, 2, &[first]), Some(second));
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let settings = "trusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]";
        let mut lb = BalancerHarness::<IpHash>::start(settings, &pool_of(16)).unwrap();
        let via = |peer: &str, xff: &str| {
            TestRequest::get("/")
                .client_ip(peer.parse().unwrap())
                .header("x-forwarded-for", xff)
        };
        for ip in clients(200) {
            let xff = ip.to_string();
            let direct = lb.pick(&TestRequest::get("/").client_ip(ip));
            assert_eq!(lb.pick(&via("10.0.0.1", &xff)), direct);
            assert_eq!(
                lb.pick(&via("fd00::9", &format!("{xff}, 10.0.0.1"))),
                direct
            );
        }
        // From an untrusted peer the header is ignored: 200 clients' headers, one endpoint.
        let spread: std::collections::BTreeSet<_> = clients(200)
            .iter()
            .map(|ip| lb.pick(&via("198.51.100.1", &ip.to_string())))
            .collect();
        assert_eq!(spread.len(), 1);
        assert!(BalancerHarness::<IpHash>::init("trusted_proxies = [\"10.0.0.0/99\"]").is_err());
    }

    #[test]
    fn ipv4_mapped_ipv6_is_the_same_client() {
        let mut lb = BalancerHarness::<IpHash>::start("", &pool_of(16)).unwrap();
        for ip in clients(400) {
            if let IpAddr::V4(v4) = ip {
                let mapped = IpAddr::V6(v4.to_ipv6_mapped());
                assert_eq!(picks(&mut lb, &[ip]), picks(&mut lb, &[mapped]));
            }
        }
    }

    #[test]
    fn the_one_pass_first_choice_is_the_ranking_s_first_usable_member() {
        let mut pool = TestPool::new();
        for i in 0..12u32 {
            pool = pool.endpoint(&format!("10.2.0.{i}:80"), 1 + i % 4);
        }
        pool.set_healthy(2, false);
        pool.set_healthy(7, false);
        let mut lb = BalancerHarness::<IpHash>::start("", &pool).unwrap();
        for ip in clients(5_000) {
            let req = TestRequest::get("/").client_ip(ip);
            let key = HashKey::ClientIp.hash(&req.as_request(), &lb.plugin().client);
            let plugin = lb.plugin();
            let ranked = plugin.ranking(key);
            let first = ranked.iter().copied().find(|&i| plugin.pool.usable(i));
            let want = first.map(|i| plugin.pool.members()[i].id);
            assert_eq!(lb.pick(&req), want);
            assert!(!matches!(want, Some(2 | 7)));
            // A retry after it takes the ranking's next usable member.
            let next = ranked
                .iter()
                .copied()
                .filter(|&i| lb.plugin().pool.usable(i))
                .nth(1)
                .map(|i| lb.plugin().pool.members()[i].id);
            assert_eq!(lb.pick_retry(&req, 2, &[want.unwrap()]), next);
        }
    }

    #[test]
    fn equal_weights_choose_what_the_weighted_score_chooses() {
        // The shortcut (no logarithm when all weights are equal) must not move any client: the
        // choice is the highest `weight / -ln(u)`, ties to the lowest index, as with unequal weights.
        let mut pool = TestPool::new();
        for i in 0..40u32 {
            pool = pool.endpoint(&format!("10.3.0.{i}:80"), 3);
        }
        let mut lb = BalancerHarness::<IpHash>::start("", &pool).unwrap();
        assert!(lb.plugin().same_weights);
        for ip in clients(5_000) {
            let req = TestRequest::get("/").client_ip(ip);
            let plugin = lb.plugin();
            let key = HashKey::ClientIp.hash(&req.as_request(), &plugin.client);
            let weighted = |i: usize| 3.0 / -unit(mix64(key ^ plugin.member_hashes[i])).ln();
            let want = (0..40).fold(0, |b, i| if weighted(i) > weighted(b) { i } else { b });
            let want = Some(plugin.pool.members()[want].id);
            assert_eq!(lb.pick(&req), want);
        }
        // One different weight turns the shortcut off.
        lb.set_pool(&pool.clone().endpoint("10.3.1.0:80", 5));
        assert!(!lb.plugin().same_weights);
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        let pools = [
            ("one", pool_of(1)),
            (
                "weighted",
                TestPool::new().endpoint("a:1", 1).endpoint("b:1", 3),
            ),
            ("many", pool_of(16)),
            ("empty", TestPool::new()),
        ];
        let settings = ["", "trusted_proxies = [\"10.0.0.0/8\"]"];
        let ips = clients(50);
        let requests: Vec<TestRequest> = ips
            .iter()
            .map(|ip| {
                TestRequest::get("/")
                    .client_ip(*ip)
                    .header("x-forwarded-for", "192.0.2.7")
            })
            .collect();
        for settings in settings {
            for (_, healthy) in &pools {
                testing::assert_no_pick_when_none_healthy::<IpHash>(settings, healthy, &requests);
            }
        }
        // One back to health takes every client, and their retries too.
        let mut pool = pool_of(4);
        for id in [0, 1, 3] {
            pool.set_healthy(id, false);
        }
        let mut lb = BalancerHarness::<IpHash>::start("", &pool).unwrap();
        assert!(picks(&mut lb, &ips).iter().all(|id| *id == 2));
        let req = TestRequest::get("/").client_ip(ips[0]);
        assert_eq!(lb.pick_retry(&req, 2, &[2]), Some(2));
    }
}

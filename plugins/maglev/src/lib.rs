//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016): a lookup table of prime size M, filled by letting every endpoint claim
//! slots in turn along its own permutation `(offset + j × skip) mod M` (both from hashing its
//! `host:port`). A request's key picks slot `hash mod M`: one array read per pick, and every
//! endpoint owns its weight's share of the table to within a slot or two.
//!
//! - Weights: in fill round r an endpoint claims a slot only while `r × weight` has caught up with
//!   its running target (+ max weight per claim), as Envoy does, so claims follow weights.
//! - Table size: `table_size` if set (it must be prime), else 65537; when that is below 100 × the
//!   number of endpoints, the smallest prime ≥ 100 × endpoints is used instead (and logged).
//! - Unhealthy, tried and (with `bounded_load`) overloaded endpoints: the pick walks on through
//!   the table from the key's slot, a deterministic sequence that spreads the skipped endpoint's
//!   keys over the others in proportion to their shares.
//! - Keys and bounded load work as in `ring-hash` (shared code). The table is built over all
//!   endpoints and rebuilt only when membership or a weight changes. Only endpoints the proxy
//!   sends as healthy are picked: with none healthy (or an empty pool) a pick gives `None` (503).
//!   Panic mode is the proxy's, which then sends all of them as healthy.

use std::collections::BTreeMap;

use sluicegate_plugin_hashing::{
    Cidr, ClientAddress, HashKey, Pool, check_balance_factor, choose, xxh64,
};
use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request, host};

/// The default table size (a prime), as Envoy's.
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;
/// The largest table accepted: 2^24 slots (64 MB per instance).
pub const MAX_TABLE_SIZE: u64 = 1 << 24;

/// The plugin's settings.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    key: HashKey,
    #[serde(default)]
    table_size: Option<u64>,
    #[serde(default)]
    bounded_load: Option<f64>,
    #[serde(default)]
    trusted_proxies: Vec<Cidr>,
}

/// The balancer's state.
#[derive(Debug)]
pub struct Maglev {
    key: HashKey,
    client: ClientAddress,
    table_size: u64,
    balance_factor: Option<f64>,
    pool: Pool,
    /// Member index per slot.
    table: Vec<u32>,
}

/// Whether `n` is prime (trial division: table sizes are at most 2^24).
pub fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn next_prime(mut n: u64) -> u64 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

impl Maglev {
    /// The size of the current lookup table (0 for an empty pool).
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// How many table slots each endpoint owns.
    pub fn table_shares(&self) -> BTreeMap<EndpointId, usize> {
        let mut shares = BTreeMap::new();
        for m in &self.table {
            *shares
                .entry(self.pool.members()[*m as usize].id)
                .or_insert(0) += 1;
        }
        shares
    }

    fn rebuild(&mut self) {
        let members = self.pool.members();
        let n = members.len() as u64;
        self.table.clear();
        if n == 0 {
            return;
        }
        let mut size = self.table_size;
        if size < 100 * n {
            size = next_prime(100 * n);
            host::warn(&format!(
                "maglev: table size {} is below 100 × {n} endpoints; using {size}",
                self.table_size
            ));
        }
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; size as usize];
        // Each endpoint's permutation is offset, offset + skip, offset + 2 × skip, ... (mod size):
        // kept as the current position, advanced by an add and a compare rather than a division.
        let mut position: Vec<u64> = Vec::with_capacity(members.len());
        let mut skip: Vec<u64> = Vec::with_capacity(members.len());
        for m in members {
            let a = m.address.as_bytes();
            position.push(xxh64(a, 0x6d61_676c) % size);
            skip.push(xxh64(a, 0x736b_6970) % (size - 1) + 1);
        }
        let max_weight = members
            .iter()
            .map(|m| u64::from(m.weight))
            .max()
            .unwrap_or(1);
        let mut target = vec![0u64; members.len()];
        let mut filled = 0;
        'fill: for round in 1u64.. {
            for (i, m) in members.iter().enumerate() {
                if filled == size {
                    break 'fill;
                }
                if round * u64::from(m.weight) < target[i] {
                    continue;
                }
                target[i] += max_weight;
                loop {
                    let slot = position[i] as usize;
                    position[i] += skip[i];
                    if position[i] >= size {
                        position[i] -= size;
                    }
                    if table[slot] == EMPTY {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
        }
        self.table = table;
    }
}

impl Balancer for Maglev {
    fn init(config: &str) -> Result<Self, String> {
        let s: Settings = sluicegate_sdk::settings(config)?;
        let table_size = s.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !is_prime(table_size) || table_size > MAX_TABLE_SIZE {
            return Err(format!(
                "table_size must be a prime of at most {MAX_TABLE_SIZE} (like 65537), not {table_size}"
            ));
        }
        check_balance_factor(s.bounded_load)?;
        Ok(Maglev {
            key: s.key,
            client: ClientAddress::new(s.trusted_proxies),
            table_size,
            balance_factor: s.bounded_load,
            pool: Pool::default(),
            table: Vec::new(),
        })
    }

    fn pool_changed(&mut self, endpoints: &[Endpoint]) {
        if self.pool.update(endpoints) {
            self.rebuild();
        }
    }

    fn pick(&mut self, req: &Request, ctx: &PickContext) -> Option<EndpointId> {
        if self.table.is_empty() {
            return None;
        }
        let slot = (self.key.hash(req, &self.client) % self.table.len() as u64) as usize;
        let (before, from) = self.table.split_at(slot);
        let walk = from.iter().chain(before).map(|m| *m as usize);
        choose(&self.pool, walk, ctx, self.balance_factor)
    }
}

sluicegate_sdk::export_balancer!(Maglev);

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{self, BalancerHarness, TestPool, TestRequest};

    const KEYS: usize = 100_000;

    fn pool_of(n: u32) -> TestPool {
        (0..n).fold(TestPool::new(), |p, i| {
            p.endpoint(&format!("10.3.0.{i}:80"), 1)
        })
    }

    fn user(i: usize) -> TestRequest {
        TestRequest::get("/").header("x-user", &format!("user-{i}"))
    }

    fn picks(lb: &mut BalancerHarness<Maglev>, keys: usize) -> Vec<EndpointId> {
        (0..keys).map(|i| lb.pick(&user(i)).unwrap()).collect()
    }

    const BY_USER: &str = "key = \"header:x-user\"";

    #[test]
    fn every_endpoint_owns_its_fair_share_of_the_table() {
        let cases: [&[u32]; 4] = [&[1; 10], &[1, 2, 3, 4], &[1, 1, 10], &[1; 100]];
        for weights in cases {
            let pool = weights
                .iter()
                .enumerate()
                .fold(TestPool::new(), |p, (i, w)| {
                    p.endpoint(&format!("10.3.1.{i}:80"), *w)
                });
            let lb = BalancerHarness::<Maglev>::start("", &pool).unwrap();
            let size = lb.plugin().table_len() as f64;
            let total: u32 = weights.iter().sum();
            let shares = lb.plugin().table_shares();
            for (id, w) in weights.iter().enumerate() {
                let fair = size * f64::from(*w) / f64::from(total);
                let got = shares[&(id as u32)] as f64;
                assert!(
                    (got - fair).abs() <= fair * 0.01,
                    "{weights:?}: {id} {got} vs {fair}"
                );
            }
        }
    }

    #[test]
    fn removing_one_endpoint_moves_its_keys_and_few_others() {
        let n = 10;
        let pool = pool_of(n);
        let mut lb = BalancerHarness::<Maglev>::start(BY_USER, &pool).unwrap();
        let before = picks(&mut lb, KEYS);
        let mut worst_extra = 0f64;
        for gone in 0..n {
            let mut smaller = pool.clone();
            smaller.remove(gone);
            lb.set_pool(&smaller);
            let after = picks(&mut lb, KEYS);
            let extra = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != gone && a != b)
                .count() as f64
                / KEYS as f64;
            worst_extra = worst_extra.max(extra);
        }
        eprintln!("maglev, N = 10, M = 65537: worst extra keys moved {worst_extra:.4}");
        assert!(worst_extra <= 0.01, "{worst_extra}");
    }

    #[test]
    fn a_larger_pool_also_moves_few_extra_keys() {
        let n = 100;
        let pool = pool_of(n);
        let mut lb = BalancerHarness::<Maglev>::start(BY_USER, &pool).unwrap();
        let before = picks(&mut lb, KEYS);
        let mut smaller = pool.clone();
        smaller.remove(17);
        lb.set_pool(&smaller);
        let after = picks(&mut lb, KEYS);
        let moved = before.iter().zip(&after).filter(|(b, a)| a != b).count();
        let own = before.iter().filter(|b| **b == 17).count();
        let extra = (moved - own) as f64 / KEYS as f64;
        eprintln!("maglev, N = 100, M = 65537: extra keys moved {extra:.4}");
        assert!(extra <= 0.01, "{extra}");
    }

    #[test]
    fn two_instances_agree() {
        let pool = pool_of(12);
        let mut reversed = TestPool::new();
        for e in pool.endpoints().iter().rev() {
            reversed = reversed.endpoint_with_id(e.id, &e.address, e.weight);
        }
        let mut a = BalancerHarness::<Maglev>::start(BY_USER, &pool).unwrap();
        let mut b = BalancerHarness::<Maglev>::start(BY_USER, &reversed).unwrap();
        assert_eq!(picks(&mut a, 20_000), picks(&mut b, 20_000));
    }

    #[test]
    fn unhealthy_and_tried_endpoints_are_walked_past() {
        let mut pool = pool_of(6);
        let mut lb = BalancerHarness::<Maglev>::start(BY_USER, &pool).unwrap();
        let before = picks(&mut lb, 5_000);
        pool.set_healthy(4, false);
        lb.set_pool(&pool);
        let during = picks(&mut lb, 5_000);
        for (b, d) in before.iter().zip(&during) {
            assert!(if *b == 4 { *d != 4 } else { d == b });
        }
        let heirs: std::collections::BTreeSet<_> = before
            .iter()
            .zip(&during)
            .filter(|(b, _)| **b == 4)
            .map(|(_, d)| *d)
            .collect();
        assert_eq!(heirs.len(), 5, "{heirs:?}");
        pool.set_healthy(4, true);
        lb.set_pool(&pool);
        assert_eq!(picks(&mut lb, 5_000), before);
        for i in 0..500 {
            let first = lb.pick(&user(i)).unwrap();
            let retry = lb.pick_retry(&user(i), 2, &[first]).unwrap();
            assert_ne!(first, retry);
            assert_eq!(lb.pick_retry(&user(i), 2, &[first]), Some(retry));
        }
    }

    #[test]
    fn bounded_load_keeps_every_endpoint_under_the_bound() {
        // As for ring-hash: requests pile up, a fifth share one hot key.
        for (settings, bounded) in [
            ("key = \"header:x-user\"\nbounded_load = 1.25", true),
            (BY_USER, false),
        ] {
            testing::reset();
            let n = 8u32;
            let mut lb = BalancerHarness::<Maglev>::start(settings, &pool_of(n)).unwrap();
            let mut in_flight = vec![0u32; n as usize];
            let mut over = false;
            for i in 0..4_000usize {
                let req = if i % 5 == 0 { user(0) } else { user(i) };
                let id = lb.pick(&req).unwrap();
                in_flight[id as usize] += 1;
                testing::set_in_flight(id, in_flight[id as usize]);
                let total: u32 = in_flight.iter().sum();
                let bound = (1.25 * f64::from(total) / f64::from(n)).ceil() as u32;
                over |= in_flight.iter().any(|c| *c > bound);
                if bounded {
                    assert!(!over, "pick {i}: {in_flight:?} over {bound}");
                }
            }
            assert_eq!(over, !bounded);
        }
    }

    #[test]
    fn table_size_setting() {
        let lb = BalancerHarness::<Maglev>::start("table_size = 1009", &pool_of(3)).unwrap();
        assert_eq!(lb.plugin().table_len(), 1009);
        // Too small for 20 endpoints: the smallest prime ≥ 2000 is used.
        let lb = BalancerHarness::<Maglev>::start("table_size = 1009", &pool_of(20)).unwrap();
        assert_eq!(lb.plugin().table_len(), 2003);
        for bad in [
            "table_size = 1000",
            "table_size = 1",
            "bounded_load = 0.9",
            "key = \"x\"",
        ] {
            assert!(BalancerHarness::<Maglev>::init(bad).is_err(), "{bad}");
        }
        assert!(is_prime(65_537) && !is_prime(65_535) && next_prime(2000) == 2003);
    }

    #[test]
    fn no_healthy_endpoint_gives_none() {
        testing::reset();
        let pools = [
            ("one", pool_of(1)),
            (
                "weighted",
                TestPool::new().endpoint("a:1", 1).endpoint("b:1", 3),
            ),
            ("many", pool_of(16)),
            ("empty", TestPool::new()),
        ];
        let settings = [
            "",
            BY_USER,
            "key = \"path\"\ntable_size = 1009",
            "key = \"cookie:session\"\nbounded_load = 1.25",
            "key = \"header:x-user\"\nbounded_load = 1.0",
        ];
        let requests: Vec<TestRequest> = (0..50)
            .map(|i| {
                TestRequest::get(&format!("/p{i}"))
                    .header("x-user", &format!("user-{i}"))
                    .cookie("session", &format!("s{i}"))
            })
            .collect();
        for settings in settings {
            for (_, healthy) in &pools {
                for id in healthy.endpoints().iter().map(|e| e.id) {
                    testing::set_in_flight(id, id % 4);
                }
                testing::assert_no_pick_when_none_healthy::<Maglev>(settings, healthy, &requests);
            }
        }
        // One back to health takes every key, and the retries too.
        let mut pool = pool_of(4);
        for id in [0, 1, 3] {
            pool.set_healthy(id, false);
        }
        let mut lb = BalancerHarness::<Maglev>::start(BY_USER, &pool).unwrap();
        assert!(picks(&mut lb, 200).iter().all(|id| *id == 2));
        assert_eq!(lb.pick_retry(&user(0), 2, &[2]), Some(2));
    }

    #[test]
    fn empty_pool_gives_none() {
        let mut lb = BalancerHarness::<Maglev>::start(BY_USER, &TestPool::new()).unwrap();
        assert_eq!(lb.pick(&TestRequest::get("/")), None);
    }
}

//! The pool as the default balancers keep it: members in an order that does not depend on the
//! order the proxy pushed them in (so two instances build identical tables), and the candidate
//! rules every balancer shares (healthy ones only; untried ones first).
//!
//! `healthy` as the proxy sends it is authoritative. Panic mode is the proxy's alone: while a
//! cluster is in panic it sends every endpoint as healthy, and otherwise (including with
//! `panic_threshold = 0`) a pool with no healthy member has no candidate, so a pick answers
//! `None` and the proxy answers 503.

use sluicegate_sdk::{Endpoint, EndpointId, PickContext};

/// One pool member: what the balancers need of an [`Endpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The endpoint's id.
    pub id: EndpointId,
    /// `host:port`: what hashing balancers hash to place the endpoint, so placement does not
    /// depend on ids the two proxies may number differently.
    pub address: String,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Whether the proxy considers it healthy: only healthy members are ever picked.
    pub healthy: bool,
}

impl Member {
    fn of(e: &Endpoint) -> Member {
        Member {
            id: e.id,
            address: e.address.clone(),
            weight: e.weight.max(1),
            healthy: e.healthy,
        }
    }
}

/// The whole pool, healthy or not (tables built over it do not move when health flaps), sorted
/// by address then id.
#[derive(Clone, Debug, Default)]
pub struct Pool {
    members: Vec<Member>,
    /// How many members are healthy.
    healthy: usize,
}

impl Pool {
    /// Takes a pushed pool. Returns whether membership or a weight changed, i.e. whether tables
    /// derived from the members must be rebuilt (a health change alone does not need that).
    pub fn update(&mut self, endpoints: &[Endpoint]) -> bool {
        let mut members: Vec<Member> = endpoints.iter().map(Member::of).collect();
        members.sort_by(|a, b| (&a.address, a.id).cmp(&(&b.address, b.id)));
        let same_shape = members.len() == self.members.len()
            && members
                .iter()
                .zip(&self.members)
                .all(|(a, b)| (a.id, &a.address, a.weight) == (b.id, &b.address, b.weight));
        self.healthy = members.iter().filter(|m| m.healthy).count();
        self.members = members;
        !same_shape
    }

    /// The members, sorted by address then id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether any member is healthy, i.e. whether a pick can find one at all.
    pub fn any_healthy(&self) -> bool {
        self.healthy > 0
    }

    /// Whether member `index` may be picked as far as health goes: whether it is healthy. (In
    /// panic mode the proxy itself marks every member healthy.)
    pub fn usable(&self, index: usize) -> bool {
        self.members[index].healthy
    }
}

/// The candidates of a pool: its healthy members, and only those. When none is healthy there
/// is none, and a pick answers `None` (503): panic mode is the proxy's to decide, and while it
/// is on the proxy sends every endpoint as healthy.
pub fn candidates(endpoints: &[Endpoint]) -> Vec<Member> {
    endpoints
        .iter()
        .filter(|e| e.healthy)
        .map(Member::of)
        .collect()
}

/// Whether `member` should be considered for this pick: untried members only, unless every one
/// of `list` was already tried (then any of them, rather than failing the request).
pub fn consider<'a>(list: &[Member], ctx: &'a PickContext) -> impl Fn(&Member) -> bool + 'a {
    let skip_tried = !ctx.tried.is_empty() && list.iter().any(|m| !ctx.was_tried(m.id));
    move |m| !(skip_tried && ctx.was_tried(m.id))
}

/// A uniform random number below `n` (> 0) from the host's generator (multiply-shift: the bias
/// is below n / 2^64).
pub fn random_below(n: u64) -> u64 {
    ((u128::from(sluicegate_sdk::host::random_u64()) * u128::from(n)) >> 64) as u64
}

/// `k` distinct entries of `items` drawn uniformly at random (a partial Fisher-Yates shuffle);
/// all of them, shuffled, when there are `k` or fewer.
pub fn random_sample<T>(mut items: Vec<T>, k: usize) -> Vec<T> {
    let k = k.min(items.len());
    for j in 0..k {
        let r = j + random_below((items.len() - j) as u64) as usize;
        items.swap(j, r);
    }
    items.truncate(k);
    items
}

/// `k` distinct indices into `list` drawn uniformly at random among the members this pick may
/// consider ([`consider`]), in random order. On a first attempt every member may be considered,
/// so with `k` small against the list the indices are drawn directly: O(k), where filtering and
/// shuffling the whole list would be O(n) per pick.
pub fn draw(list: &[Member], k: usize, ctx: &PickContext) -> Vec<usize> {
    let n = list.len();
    if ctx.tried.is_empty() && 2 * k <= n {
        let mut drawn = Vec::with_capacity(k);
        while drawn.len() < k {
            let i = random_below(n as u64) as usize;
            if !drawn.contains(&i) {
                drawn.push(i);
            }
        }
        return drawn;
    }
    let keep = consider(list, ctx);
    random_sample((0..n).filter(|i| keep(&list[*i])).collect(), k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::TestPool;

    #[test]
    fn order_and_rebuild_flag_ignore_push_order_and_health() {
        let a = TestPool::new()
            .endpoint_with_id(0, "10.0.0.2:80", 1)
            .endpoint_with_id(1, "10.0.0.1:80", 2);
        let b = TestPool::new()
            .endpoint_with_id(1, "10.0.0.1:80", 2)
            .endpoint_with_id(0, "10.0.0.2:80", 1);
        let mut pool = Pool::default();
        assert!(pool.update(a.endpoints()));
        assert_eq!(pool.members()[0].address, "10.0.0.1:80");
        assert!(!pool.update(b.endpoints()));
        let mut c = b.clone();
        c.set_healthy(0, false);
        assert!(!pool.update(c.endpoints()));
        assert!(!pool.usable(1));
        c.set_weight(0, 5);
        assert!(pool.update(c.endpoints()));
    }

    #[test]
    fn random_sample_is_distinct_and_uniform() {
        sluicegate_sdk::testing::seed_random(3);
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            let mut s = random_sample((0..10).collect(), 3);
            for i in &s {
                hits[*i] += 1;
            }
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 3);
        }
        assert!(hits.iter().all(|h| (2800..3200).contains(h)), "{hits:?}");
        assert_eq!(random_sample(vec![7], 2), [7]);
    }

    #[test]
    fn draw_is_distinct_uniform_and_skips_tried() {
        sluicegate_sdk::testing::seed_random(5);
        let pool = (0..10).fold(TestPool::new(), |p, i| {
            p.endpoint(&format!("10.0.0.{i}:80"), 1)
        });
        let list = candidates(pool.endpoints());
        let first = PickContext {
            attempt: 1,
            tried: vec![],
        };
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            let mut d = draw(&list, 2, &first);
            for i in &d {
                hits[*i] += 1;
            }
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 2);
        }
        assert!(hits.iter().all(|h| (1800..2200).contains(h)), "{hits:?}");
        let retry = PickContext {
            attempt: 2,
            tried: vec![list[0].id, list[1].id],
        };
        for _ in 0..200 {
            let d = draw(&list, 2, &retry);
            assert_eq!(d.len(), 2);
            assert!(d.iter().all(|i| *i >= 2), "{d:?}");
        }
        // More choices than half the list: all drawn from the shuffle.
        assert_eq!(draw(&list[..3], 5, &first).len(), 3);
        assert!(draw(&[], 2, &first).is_empty());
    }

    #[test]
    fn candidates_are_the_healthy_members_only() {
        let mut p = TestPool::new().endpoint("a:1", 1).unhealthy("b:1", 1);
        let ids = |list: Vec<Member>| list.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(candidates(p.endpoints())), [0]);
        // None healthy: no candidate, never a fall-back to the unhealthy ones.
        p.set_healthy(0, false);
        assert!(candidates(p.endpoints()).is_empty());
        assert!(candidates(&[]).is_empty());
        // What the proxy sends in panic mode: every endpoint marked healthy.
        p.set_healthy(0, true);
        p.set_healthy(1, true);
        assert_eq!(ids(candidates(p.endpoints())), [0, 1]);
    }

    #[test]
    fn a_pool_with_no_healthy_member_has_none_usable() {
        let mut p = TestPool::new().unhealthy("a:1", 1).unhealthy("b:1", 2);
        let mut pool = Pool::default();
        pool.update(p.endpoints());
        assert!(!pool.any_healthy());
        assert!((0..2).all(|i| !pool.usable(i)));
        p.set_healthy(1, true);
        assert!(!pool.update(p.endpoints()), "health alone does not rebuild");
        assert!(pool.any_healthy());
        assert_eq!((0..2).filter(|i| pool.usable(*i)).collect::<Vec<_>>(), [1]);
        pool.update(&[]);
        assert!(!pool.any_healthy());
    }

    #[test]
    fn consider_skips_tried_unless_all_were() {
        let list = candidates(
            TestPool::new()
                .endpoint("a:1", 1)
                .endpoint("b:1", 1)
                .endpoints(),
        );
        let ctx = PickContext {
            attempt: 2,
            tried: vec![0],
        };
        let keep = consider(&list, &ctx);
        assert!(!keep(&list[0]) && keep(&list[1]));
        let all = PickContext {
            attempt: 3,
            tried: vec![0, 1],
        };
        let keep = consider(&list, &all);
        assert!(keep(&list[0]) && keep(&list[1]));
    }
}

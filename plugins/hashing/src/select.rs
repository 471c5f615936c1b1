//! Turning a hashing balancer's candidate sequence (ring walk, Maglev table walk, rendezvous
//! ranking) into one pick: skip unhealthy (never picked) and tried members and, with bounded
//! load, the members that would go over ceil(factor × mean in-flight) (Mirrokni, Thorup and
//! Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018; HAProxy's `hash-balance-factor`).

use sluicegate_sdk::{EndpointId, PickContext, host};

use crate::Pool;

/// Checks a `bounded_load` setting: a finite factor of at least 1.0 (1.25 allows 25% above the mean).
pub fn check_balance_factor(factor: Option<f64>) -> Result<(), String> {
    match factor {
        Some(f) if !(f.is_finite() && f >= 1.0) => Err(format!(
            "bounded_load must be a factor of at least 1.0 (like 1.25), not {f}"
        )),
        _ => Ok(()),
    }
}

/// In-flight counts of the usable members and the bound a pick must respect.
struct Load {
    in_flight: Vec<u32>,
    bound: u64,
}

impl Load {
    /// Reads every usable member's in-flight count from the host (one call each). The bound is
    /// ceil(factor × (total + 1) / usable members): the mean counting the request being placed.
    fn read(pool: &Pool, factor: f64) -> Load {
        let members = pool.members();
        let in_flight: Vec<u32> = (0..members.len())
            .map(|i| {
                if pool.usable(i) {
                    host::in_flight(members[i].id)
                } else {
                    0
                }
            })
            .collect();
        let usable = (0..members.len())
            .filter(|i| pool.usable(*i))
            .count()
            .max(1);
        let total: u64 = in_flight.iter().map(|n| u64::from(*n)).sum();
        let bound = (factor * (total + 1) as f64 / usable as f64).ceil() as u64;
        Load { in_flight, bound }
    }

    fn has_room(&self, index: usize) -> bool {
        u64::from(self.in_flight[index]) < self.bound
    }
}

/// Picks from `walk`, a deterministic sequence of member indices (repeats allowed) in order of
/// preference for this request. Returns the first healthy, untried member with room under the
/// bound. When there is none: the first healthy untried one regardless of load, then the first
/// healthy one even if tried. Members the walk never reaches are considered after it, in pool
/// order. Unhealthy members are never picked: `None` when no member is healthy (or the pool is
/// empty), and the proxy answers 503 (in panic mode it sends every member as healthy).
///
/// The walk stops as soon as a member qualifies, or once every member has been seen.
pub fn choose(
    pool: &Pool,
    walk: impl Iterator<Item = usize>,
    ctx: &PickContext,
    balance_factor: Option<f64>,
) -> Option<EndpointId> {
    if !pool.any_healthy() {
        return None;
    }
    let members = pool.members();
    let load = balance_factor.map(|f| Load::read(pool, f));
    let mut seen = vec![false; members.len()];
    let mut unseen = members.len();
    let (mut overloaded, mut tried) = (None, None);
    for i in walk.chain(0..members.len()) {
        if unseen == 0 {
            break;
        }
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        unseen -= 1;
        if !pool.usable(i) {
            continue;
        }
        let id = members[i].id;
        if ctx.was_tried(id) {
            tried.get_or_insert(id);
        } else if load.as_ref().is_some_and(|l| !l.has_room(i)) {
            overloaded.get_or_insert(id);
        } else {
            return Some(id);
        }
    }
    overloaded.or(tried)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::{self, TestPool};

    fn pool_of(p: &TestPool) -> Pool {
        let mut pool = Pool::default();
        pool.update(p.endpoints());
        pool
    }

    #[test]
    fn follows_the_walk_skipping_unhealthy_and_tried() {
        let p = TestPool::new()
            .endpoint("a:1", 1)
            .unhealthy("b:1", 1)
            .endpoint("c:1", 1);
        let pool = pool_of(&p);
        let first = PickContext::default();
        assert_eq!(choose(&pool, [1, 2, 0].into_iter(), &first, None), Some(2));
        let retry = PickContext {
            attempt: 2,
            tried: vec![2],
        };
        assert_eq!(choose(&pool, [1, 2, 0].into_iter(), &retry, None), Some(0));
        let all = PickContext {
            attempt: 3,
            tried: vec![0, 2],
        };
        assert_eq!(choose(&pool, [1, 2, 0].into_iter(), &all, None), Some(2));
        // A walk that misses members still ends on one.
        assert_eq!(choose(&pool, [1].into_iter(), &first, None), Some(0));
        assert_eq!(choose(&Pool::default(), [].into_iter(), &first, None), None);
    }

    #[test]
    fn no_healthy_member_gives_none() {
        testing::reset();
        let ctxs = [
            PickContext::default(),
            PickContext {
                attempt: 2,
                tried: vec![1],
            },
            PickContext {
                attempt: 4,
                tried: vec![0, 1, 2],
            },
        ];
        let p = TestPool::new()
            .unhealthy("a:1", 1)
            .unhealthy("b:1", 3)
            .unhealthy("c:1", 2);
        let pool = pool_of(&p);
        for ctx in &ctxs {
            for factor in [None, Some(1.0), Some(1.25)] {
                let walk = [2, 0, 1, 1, 2].into_iter();
                assert_eq!(choose(&pool, walk, ctx, factor), None, "{ctx:?} {factor:?}");
                assert_eq!(choose(&pool, [].into_iter(), ctx, factor), None);
            }
        }
        // One back to health: the only member ever picked, tried or not.
        let mut p = p;
        p.set_healthy(1, true);
        let pool = pool_of(&p);
        for ctx in &ctxs {
            let walk = [2, 0, 1].into_iter();
            assert_eq!(choose(&pool, walk, ctx, Some(1.0)), Some(1), "{ctx:?}");
        }
    }

    #[test]
    fn bounded_load_skips_members_at_the_bound() {
        testing::reset();
        let pool = pool_of(&TestPool::new().endpoint("a:1", 1).endpoint("b:1", 1));
        // total 4, mean with this request 2.5, factor 1.0: bound 3; a has 3 so it is skipped.
        testing::set_in_flight(0, 3);
        testing::set_in_flight(1, 1);
        let ctx = PickContext::default();
        assert_eq!(choose(&pool, [0, 1].into_iter(), &ctx, Some(1.0)), Some(1));
        assert_eq!(choose(&pool, [0, 1].into_iter(), &ctx, Some(1.25)), Some(0));
        // Overloaded but untried beats tried.
        let retry = PickContext {
            attempt: 2,
            tried: vec![1],
        };
        assert_eq!(
            choose(&pool, [1, 0].into_iter(), &retry, Some(1.0)),
            Some(0)
        );
    }

    #[test]
    fn balance_factor_must_be_at_least_one() {
        assert!(check_balance_factor(None).is_ok());
        assert!(check_balance_factor(Some(1.0)).is_ok());
        assert!(check_balance_factor(Some(0.9)).is_err());
        assert!(check_balance_factor(Some(f64::NAN)).is_err());
    }
}

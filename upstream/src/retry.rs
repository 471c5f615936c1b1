//! The retry budget: retries in flight may be at most a share of the cluster's active requests, as
//! Envoy's retry budgets, so retries cannot multiply the load on a struggling cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Active requests and retries in flight of one cluster.
#[derive(Debug)]
pub struct RetryBudget {
    active: AtomicU32,
    retries: AtomicU32,
    ratio: f64,
    min_retries: u32,
}

impl RetryBudget {
    /// A budget allowing `max(min_retries, ratio × active)` retries in flight.
    pub fn new(ratio: f64, min_retries: u32) -> Arc<Self> {
        Arc::new(Self {
            active: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            ratio,
            min_retries,
        })
    }

    /// Counts an active request until the guard drops.
    pub fn request(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }

    /// Takes a retry from the budget, if one is left; it is given back when the guard drops.
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryPermit> {
        let active = self.active.load(Ordering::Relaxed);
        let limit = ((f64::from(active) * self.ratio) as u32).max(self.min_retries);
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |r| {
                (r < limit).then_some(r + 1)
            })
            .ok()
            .map(|_| RetryPermit(self.clone(), 1))
    }

    /// Retries in flight now.
    pub fn retries_in_flight(&self) -> u32 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// An active request of the cluster.
#[derive(Debug)]
pub struct ActiveRequest(Arc<RetryBudget>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries in flight (one, or several a request took), given back when it drops.
#[derive(Debug)]
pub struct RetryPermit(Arc<RetryBudget>, u32);

impl RetryPermit {
    /// Holds `other`'s retries with this permit's: a request keeps every retry it took until it
    /// ends, so the budget bounds one request's retries as well as the cluster's.
    pub fn absorb(&mut self, mut other: RetryPermit) {
        self.1 += std::mem::take(&mut other.1);
    }

    /// Retries this permit holds.
    pub fn count(&self) -> u32 {
        self.1
    }
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(self.1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_retries_apply_when_few_requests_are_active() {
        let budget = RetryBudget::new(0.2, 2);
        let _r = budget.request();
        let a = budget.try_retry();
        let b = budget.try_retry();
        assert!(a.is_some() && b.is_some());
        assert!(
            budget.try_retry().is_none(),
            "a third retry exceeds min_retries = 2"
        );
        drop(a);
        assert!(
            budget.try_retry().is_some(),
            "a finished retry gives its permit back"
        );
    }

    #[test]
    fn a_permit_holds_every_retry_it_absorbed_until_it_drops() {
        let budget = RetryBudget::new(0.0, 3);
        let _r = budget.request();
        let mut held = budget.try_retry().unwrap();
        held.absorb(budget.try_retry().unwrap());
        held.absorb(budget.try_retry().unwrap());
        assert_eq!((held.count(), budget.retries_in_flight()), (3, 3));
        assert!(
            budget.try_retry().is_none(),
            "one request took the whole budget"
        );
        drop(held);
        assert_eq!(budget.retries_in_flight(), 0);
    }

    #[test]
    fn the_ratio_of_active_requests_bounds_retries() {
        let budget = RetryBudget::new(0.5, 0);
        let active: Vec<_> = (0..10).map(|_| budget.request()).collect();
        let permits: Vec<_> = (0..10).filter_map(|_| budget.try_retry()).collect();
        assert_eq!(permits.len(), 5);
        assert_eq!(budget.retries_in_flight(), 5);
        drop(active);
        drop(permits);
        assert_eq!(budget.retries_in_flight(), 0);
        assert!(
            budget.try_retry().is_none(),
            "no active request, min 0: no retry"
        );
    }
}

//! Per-endpoint facts the host measures (in-flight requests, latency EWMA) and balancers read.
//!
//! They live in the host, not in plugins, so they survive a plugin swap; plugins read them through
//! the `in-flight` and `latency-ewma-micros` imports via [`EndpointFacts`].

use crate::plugin::{EndpointFacts, EndpointId};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Live figures of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    in_flight: AtomicU32,
    ewma_micros: AtomicU32,
}

impl EndpointStats {
    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Latency EWMA in microseconds (0 before the first sample).
    pub fn latency_ewma_micros(&self) -> u32 {
        self.ewma_micros.load(Ordering::Relaxed)
    }

    /// Adds a latency sample (time to response headers). Weight 1/4 for the new sample: reacts in a
    /// handful of requests without jumping on one outlier.
    pub fn record_latency_micros(&self, sample: u64) {
        let sample = sample.min(u64::from(u32::MAX)) as u32;
        let _ = self
            .ewma_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample.max(1)
                } else {
                    ((u64::from(old) * 3 + u64::from(sample)) / 4).max(1) as u32
                })
            });
    }
}

/// The facts of every endpoint of one cluster, indexed by endpoint id.
#[derive(Debug)]
pub struct ClusterFacts {
    endpoints: Vec<EndpointStats>,
}

impl ClusterFacts {
    /// Facts for `n` endpoints with ids `0..n`.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            endpoints: (0..n).map(|_| EndpointStats::default()).collect(),
        })
    }

    /// The stats of one endpoint.
    pub fn get(&self, id: EndpointId) -> Option<&EndpointStats> {
        self.endpoints.get(id as usize)
    }

    /// Counts a request in flight to `id` until the guard drops.
    pub fn start(self: &Arc<Self>, id: EndpointId) -> InFlight {
        if let Some(s) = self.get(id) {
            s.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            facts: self.clone(),
            id,
        }
    }
}

impl EndpointFacts for ClusterFacts {
    fn in_flight(&self, id: EndpointId) -> u32 {
        self.get(id).map_or(0, EndpointStats::in_flight)
    }

    fn latency_ewma_micros(&self, id: EndpointId) -> u32 {
        self.get(id).map_or(0, EndpointStats::latency_ewma_micros)
    }
}

/// One request in flight to an endpoint; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight {
    facts: Arc<ClusterFacts>,
    id: EndpointId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = self.facts.get(self.id) {
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_the_guard_drops() {
        let facts = ClusterFacts::new(2);
        let a = facts.start(1);
        let b = facts.start(1);
        assert_eq!((facts.in_flight(0), facts.in_flight(1)), (0, 2));
        drop(a);
        assert_eq!(facts.in_flight(1), 1);
        drop(b);
        assert_eq!(facts.in_flight(1), 0);
        assert_eq!(facts.in_flight(7), 0, "unknown ids read as zero");
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_a_quarter() {
        let facts = ClusterFacts::new(1);
        let s = facts.get(0).unwrap();
        s.record_latency_micros(1000);
        assert_eq!(facts.latency_ewma_micros(0), 1000);
        s.record_latency_micros(2000);
        assert_eq!(facts.latency_ewma_micros(0), 1250);
    }
}

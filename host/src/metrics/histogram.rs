//! A histogram of durations whose observations take no lock. prometheus-client's `Histogram` takes a
//! write lock per observation, which every worker thread would contend for on every request to a
//! cluster; here each observation is two relaxed atomic adds.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Durations in buckets of seconds, exposed as a Prometheus histogram.
#[derive(Clone, Debug)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, ascending, the last one `f64::MAX` (the `+Inf` bucket).
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative: the encoder adds them up).
    counts: Vec<AtomicU64>,
    /// The sum of all observations, in nanoseconds (wraps after ~584 years of summed time).
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    /// A histogram with these upper bounds (seconds, ascending) and a `+Inf` bucket.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().chain([f64::MAX]).collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        DurationHistogram {
            inner: Arc::new(Inner {
                bounds,
                counts,
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let inner = &*self.inner;
        let bucket = inner
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(inner.bounds.len() - 1);
        inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sum (seconds), count and per-bucket counts, read now.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(&inner.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn encodes_like_a_prometheus_histogram() {
        let h = DurationHistogram::new([0.001, 0.01]);
        for ms in [0, 1, 5, 10, 11, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut registry = Registry::default();
        registry.register("d_seconds", "durations", h.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE d_seconds histogram",
            "d_seconds_sum 2.027",
            "d_seconds_count 6",
            "d_seconds_bucket{le=\"0.001\"} 2",
            "d_seconds_bucket{le=\"0.01\"} 4",
            "d_seconds_bucket{le=\"+Inf\"} 6",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }

    #[test]
    fn observations_from_many_threads_all_count() {
        let h = DurationHistogram::new([0.5]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        h.observe(Duration::from_millis(1));
                    }
                });
            }
        });
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4000);
        assert_eq!(buckets, vec![(0.5, 4000), (f64::MAX, 0)]);
        assert!((sum - 4.0).abs() < 1e-9, "{sum}");
    }
}

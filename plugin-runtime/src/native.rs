//! `native-round-robin` (feature `native-choice`): the embedded `round-robin` balancer written as plain Rust,
//! with no Wasm call. It exists only so bench/ can measure what the plugin boundary costs per request; it is
//! not a plugin (no hot reload, no status, no deadline) and is off in normal builds.
//!
//! Same choices as `plugins/round-robin`: the healthy endpoints in pool order (the host alone decides panic
//! mode, by marking every endpoint healthy), tried endpoints skipped on a retry while another is left,
//! `None` when no endpoint is healthy.
//! One cursor is shared by all threads (the Wasm one keeps one per thread's instance).

use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::{EndpointId, PluginError, PoolEndpoint};

/// The name a cluster's `balancer` key gives to get this balancer.
pub(crate) const NAME: &str = "native-round-robin";

/// Round-robin over the candidates of the last pool pushed.
pub(crate) struct NativeRoundRobin {
    /// The healthy endpoints; replaced whole by `set_pool`.
    candidates: ArcSwap<Vec<EndpointId>>,
    /// The next pick, taken modulo the number of candidates (which may change).
    next: AtomicUsize,
}

impl NativeRoundRobin {
    /// A balancer with an empty pool. Like `round-robin`, it takes no settings.
    pub(crate) fn new(settings: &str) -> Result<Self, PluginError> {
        let given = settings
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'));
        if let Some(line) = given {
            return Err(PluginError::InitRefused {
                name: NAME.to_owned(),
                version: "native".to_owned(),
                message: format!("{NAME} takes no settings, got `{line}`"),
            });
        }
        Ok(NativeRoundRobin {
            candidates: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        })
    }

    /// Takes a new pool: its healthy endpoints become the candidates.
    pub(crate) fn set_pool(&self, endpoints: &[PoolEndpoint]) {
        let ids: Vec<EndpointId> = endpoints
            .iter()
            .filter(|e| e.healthy)
            .map(|e| e.id)
            .collect();
        self.candidates.store(ids.into());
    }

    /// The next candidate in turn, skipping `tried` while an untried one is left.
    pub(crate) fn pick(&self, tried: &[EndpointId]) -> Option<EndpointId> {
        let candidates = self.candidates.load();
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let in_turn = |i: usize| candidates[(start + i) % n];
        if tried.is_empty() {
            return Some(in_turn(0));
        }
        let untried = (0..n).map(in_turn).find(|id| !tried.contains(id));
        Some(untried.unwrap_or_else(|| in_turn(0)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{NoFacts, PluginRuntime, RuntimeOptions};
    use super::*;

    fn pool(healthy: &[bool]) -> Vec<PoolEndpoint> {
        healthy
            .iter()
            .enumerate()
            .map(|(i, &healthy)| PoolEndpoint {
                id: i as EndpointId,
                address: format!("10.0.0.{i}:80"),
                weight: 1,
                healthy,
                metadata: vec![],
            })
            .collect()
    }

    #[test]
    fn rotates_and_skips_endpoints_the_pool_no_longer_has_healthy() {
        let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
        let b = rt.balancer(NAME, "", Arc::new(NoFacts)).unwrap();
        assert_eq!(b.plugin(), NAME);
        let req = crate::tests::head();
        let picks = |n: usize| -> Vec<_> {
            (0..n)
                .map(|_| b.pick(&req, 1, &[]).unwrap().unwrap())
                .collect()
        };
        assert_eq!(b.pick(&req, 1, &[]).unwrap(), None, "empty pool");
        b.set_pool(pool(&[true, true, true]));
        let p = picks(6);
        assert_eq!(p[..3], p[3..], "a cycle of three");
        let mut cycle = p[..3].to_vec();
        cycle.sort_unstable();
        assert_eq!(cycle, [0, 1, 2]);

        b.set_pool(pool(&[true, false, true]));
        let mut p = picks(4);
        p.sort_unstable();
        assert_eq!(p, [0, 0, 2, 2], "endpoint 1 was ejected");

        b.set_pool(pool(&[false, false, false]));
        assert_eq!(
            b.pick(&req, 1, &[]).unwrap(),
            None,
            "none healthy: no pick (panic mode is the host's, which marks every endpoint healthy)"
        );
    }

    #[test]
    fn a_retry_skips_tried_endpoints_and_settings_are_refused() {
        let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
        let b = rt.balancer(NAME, "", Arc::new(NoFacts)).unwrap();
        b.set_pool(pool(&[true, true]));
        let req = crate::tests::head();
        for _ in 0..4 {
            assert_eq!(b.pick(&req, 2, &[0]).unwrap(), Some(1));
        }
        assert_eq!(
            b.pick(&req, 3, &[0, 1]).unwrap().map(|id| id < 2),
            Some(true)
        );
        assert!(matches!(
            rt.balancer(NAME, "x = 1", Arc::new(NoFacts)),
            Err(PluginError::InitRefused { .. })
        ));
    }
}

//! Endpoint health: active probes, passive outlier detection, the panic threshold, slow start and
//! health policys, turned into the `healthy` flags and weights of the pool pushed to balancers.
//!
//! Each cluster has one [`ClusterHealth`]; a supervisor task per cluster (started with the cluster,
//! stopped when a reload replaces it) runs one probe loop per endpoint and ends ejections when
//! their time comes. Endpoint state is keyed by cluster name and address, so an endpoint that stays
//! across a reload keeps its health. The request path only reports outcomes ([`ClusterHealth::observe`]),
//! which is a no-op unless outlier detection or a health policy is configured.

mod probe;
mod state;

pub use probe::{ProbeTls, describe, passes, probe};
pub use state::{Change, EndpointState, LastProbe, in_panic, may_eject, success_rate_outliers};

use crate::config::{ClusterConfig, HealthConfig, OutlierConfig, PanicAction};
use crate::metrics::{HealthLeases, HealthMetrics};
use crate::plugin::{
    BalancerHandle, EndpointId, Failure, HealthPolicyHandle, Outcome, PoolEndpoint, Verdict,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One endpoint as health checking knows it.
#[derive(Debug)]
struct EndpointHealth {
    address: String,
    weight: u32,
    metadata: Vec<(String, String)>,
    /// Shared with the next config's cluster when the endpoint stays.
    state: Arc<SharedState>,
    /// Requests and successes since the last success-rate check.
    requests: AtomicU64,
    successes: AtomicU64,
}

/// An endpoint's state, and whether a success would change it, readable without the lock.
#[derive(Debug)]
struct SharedState {
    state: Mutex<EndpointState>,
    /// Set while an error streak is counting (or could be): a success must take the lock to end
    /// it. Clear, a success changes nothing, so the request path skips the lock the worker
    /// threads would otherwise all take on every response.
    streak: AtomicBool,
}

impl EndpointHealth {
    fn state(&self) -> MutexGuard<'_, EndpointState> {
        self.state
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What was last pushed to the balancers.
#[derive(Debug, Default)]
struct View {
    pool: Vec<PoolEndpoint>,
    healthy: Vec<bool>,
    panic: bool,
    pushed: bool,
}

/// The health of one cluster's endpoints, and the balancers it keeps informed.
pub struct ClusterHealth {
    cluster: String,
    config: HealthConfig,
    /// The outlier rules in force: the configured ones, or defaults for a plugin's verdicts.
    outlier: OutlierConfig,
    endpoints: Vec<EndpointHealth>,
    balancers: Vec<BalancerHandle>,
    plugin: Option<HealthPolicyHandle>,
    /// TLS for probes, when the cluster's endpoints speak TLS.
    tls: Option<ProbeTls>,
    view: Mutex<View>,
    /// The cluster of the config that replaced this one, which shares its endpoint states:
    /// requests still finishing here may eject an endpoint, and that one must hear of it.
    successor: Mutex<Option<std::sync::Weak<ClusterHealth>>>,
    /// Panic mode with `panic_action = "refuse"`: read on every request, so an atomic.
    refusing: AtomicBool,
    wake: Notify,
    metrics: HealthMetrics,
    /// Keeps the series of the cluster and its endpoints while this can write them: probes and
    /// requests of a replaced config may still be finishing.
    _leases: HealthLeases,
}

impl std::fmt::Debug for ClusterHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHealth")
            .field("cluster", &self.cluster)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Envoy's outlier defaults, used for a health policy's verdicts when `[clusters.outlier]` is absent.
fn default_outlier() -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: 5,
        consecutive_gateway_errors: 5,
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 10,
        success_rate: None,
    }
}

impl ClusterHealth {
    /// Health for `config`'s endpoints, taking over the state of endpoints with the same address
    /// in `previous` (the same cluster of the config being replaced). Endpoints new to an existing
    /// cluster start a slow-start ramp. Pushes the first pool to `balancers`.
    pub fn new(
        config: &ClusterConfig,
        balancers: Vec<BalancerHandle>,
        plugin: Option<HealthPolicyHandle>,
        previous: Option<&ClusterHealth>,
        metrics: HealthMetrics,
    ) -> Arc<Self> {
        let now = Instant::now();
        // Before any figure is written (`refresh` below writes the gauges).
        let leases = metrics.leases(
            &config.name,
            config.endpoints.iter().map(|e| e.address.as_str()),
        );
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                let kept = previous.and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|old| old.address == e.address)
                        .map(|old| old.state.clone())
                });
                let state = kept.unwrap_or_else(|| {
                    let ramp = previous.is_some().then_some(now);
                    Arc::new(SharedState {
                        state: Mutex::new(EndpointState::new(ramp)),
                        streak: AtomicBool::new(false),
                    })
                });
                EndpointHealth {
                    address: e.address.clone(),
                    weight: e.weight,
                    metadata: e.metadata.clone(),
                    state,
                    requests: AtomicU64::new(0),
                    successes: AtomicU64::new(0),
                }
            })
            .collect();
        let tls = match (&config.tls, &config.health.check) {
            (Some(t), Some(_)) => match sluicegate_upstream::tls::client_config(&config.name, t) {
                Ok(c) => Some(ProbeTls {
                    config: Arc::new(c),
                    server_name: t.server_name.clone(),
                }),
                Err(e) => {
                    tracing::warn!(cluster = %config.name, error = %e, "health probes cannot use TLS: they will fail");
                    None
                }
            },
            _ => None,
        };
        let health = Arc::new(ClusterHealth {
            tls,
            cluster: config.name.clone(),
            outlier: config
                .health
                .outlier
                .clone()
                .unwrap_or_else(default_outlier),
            config: config.health.clone(),
            endpoints,
            balancers,
            plugin,
            view: Mutex::new(View::default()),
            successor: Mutex::new(None),
            refusing: AtomicBool::new(false),
            wake: Notify::new(),
            metrics,
            _leases: leases,
        });
        health.refresh(now);
        if let Some(p) = previous {
            *p.successor.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Arc::downgrade(&health));
        }
        health
    }

    /// An endpoint's state changed: push the pool, re-plan the supervisor's wake-up, and tell the
    /// successor (if a reload replaced this cluster) to do the same.
    fn changed(&self, now: Instant) {
        self.refresh(now);
        self.wake.notify_one();
        let next = self
            .successor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(std::sync::Weak::upgrade);
        if let Some(next) = next {
            next.changed(now);
        }
    }

    /// Whether anything is configured that needs the supervisor task.
    fn needs_task(&self) -> bool {
        self.config.check.is_some()
            || self.config.outlier.is_some()
            || self.config.slow_start.is_some()
            || self.plugin.is_some()
    }

    /// Starts the supervisor (probes, ejection ends, slow-start steps) on the current tokio runtime.
    /// Without a runtime (`sluicegate check`) nothing runs.
    pub fn start(self: &Arc<Self>) -> HealthTask {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if self.needs_task() => HealthTask(Some(rt.spawn(supervise(self.clone())))),
            _ => HealthTask(None),
        }
    }

    /// Whether the cluster is in panic mode (traffic spread over every endpoint).
    pub fn panic(&self) -> bool {
        self.view().panic
    }

    /// Whether requests must be answered 503: panic mode with `panic_action = "refuse"`.
    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether endpoint `id` gets traffic on its own merits (ignoring panic mode), as last pushed
    /// to the balancers: an ejection whose time is up counts once the supervisor has returned it.
    pub fn healthy(&self, id: EndpointId) -> bool {
        self.view()
            .healthy
            .get(id as usize)
            .copied()
            .unwrap_or(true)
    }

    /// Recomputes the pool (health, panic mode, slow-start weights) and pushes it to the balancers
    /// when it changed.
    fn refresh(&self, now: Instant) {
        let mut view = self.view();
        let mut healthy = Vec::with_capacity(self.endpoints.len());
        let mut weights = Vec::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            let s = e.state();
            healthy.push(s.healthy(now));
            weights.push(s.effective_weight(
                s.agent_weight.unwrap_or(e.weight),
                self.config.slow_start,
                now,
            ));
        }
        let n_healthy = healthy.iter().filter(|h| **h).count();
        let panic = in_panic(n_healthy, healthy.len(), self.config.panic_threshold);
        if panic != view.panic || !view.pushed {
            if panic {
                tracing::warn!(
                    cluster = %self.cluster,
                    healthy = n_healthy,
                    endpoints = healthy.len(),
                    threshold_percent = self.config.panic_threshold,
                    action = ?self.config.panic_action,
                    "panic mode: too few healthy endpoints"
                );
            } else if view.panic {
                tracing::info!(cluster = %self.cluster, healthy = n_healthy, "panic mode over");
            }
            self.metrics.set_panic(&self.cluster, panic);
            self.refusing.store(
                panic && self.config.panic_action == PanicAction::Refuse,
                Ordering::Relaxed,
            );
        }
        let spread = panic && self.config.panic_action == PanicAction::Spread;
        for (i, (e, h)) in self.endpoints.iter().zip(&healthy).enumerate() {
            if view.healthy.get(i) != Some(h) {
                self.metrics.set_healthy(&self.cluster, &e.address, *h);
            }
        }
        let pool: Vec<PoolEndpoint> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| PoolEndpoint {
                id: i as EndpointId,
                address: e.address.clone(),
                weight: weights[i],
                healthy: spread || healthy[i],
                metadata: e.metadata.clone(),
            })
            .collect();
        if pool != view.pool || !view.pushed {
            for b in &self.balancers {
                b.set_pool(pool.clone());
            }
            view.pool = pool;
            view.pushed = true;
        }
        view.healthy = healthy;
        view.panic = panic;
    }

    fn log_change(&self, id: usize, change: Change, why: &str) {
        let address = &self.endpoints[id].address;
        let event = match change {
            Change::Down => {
                tracing::warn!(cluster = %self.cluster, endpoint = %address, why, "endpoint down: active checks failed");
                "down"
            }
            Change::Up => {
                tracing::info!(cluster = %self.cluster, endpoint = %address, why, "endpoint up: active checks pass");
                "up"
            }
            Change::Ejected(time) => {
                tracing::warn!(cluster = %self.cluster, endpoint = %address, why, ?time, "endpoint ejected by outlier detection");
                "ejected"
            }
            Change::Returned => {
                tracing::info!(cluster = %self.cluster, endpoint = %address, why, "ejected endpoint returns");
                "returned"
            }
        };
        self.metrics.transition(&self.cluster, address, event);
    }

    /// Judges one active probe result (the health policy first, the host's rule when it abstains
    /// or faults) and updates the endpoint's state.
    pub fn record_probe(&self, result: &crate::plugin::ProbeResult) {
        let Some(check) = &self.config.check else {
            return;
        };
        let id = result.endpoint as usize;
        let Some(e) = self.endpoints.get(id) else {
            return;
        };
        let verdict = match &self.plugin {
            Some(p) => p.judge_probe(result).unwrap_or(Verdict::Abstain),
            None => Verdict::Abstain,
        };
        let (passed, force) = match verdict {
            Verdict::Pass => (true, false),
            Verdict::Fail => (false, false),
            Verdict::Eject => (false, true),
            Verdict::Abstain => (passes(&check.kind, result), false),
        };
        self.metrics.probe(&self.cluster, &e.address, passed);
        let now = Instant::now();
        let detail = describe(result);
        let announced = match &check.weight_header {
            Some(name) if passed => announced_weight(result, name),
            _ => None,
        };
        let (changes, reweighted) = {
            let mut s = e.state();
            s.last_probe = Some(LastProbe {
                passed,
                detail: detail.clone(),
                at: now,
            });
            let reweighted = announced.is_some() && announced != s.agent_weight;
            if reweighted {
                tracing::info!(cluster = %self.cluster, endpoint = %e.address, weight = announced, "endpoint announced a new weight");
                s.agent_weight = announced;
            }
            (
                s.on_probe(passed, force, check.rise, check.fall, now),
                reweighted,
            )
        };
        if changes.is_empty() {
            if reweighted {
                self.changed(now);
            }
            return;
        }
        for c in changes {
            self.log_change(id, c, &detail);
        }
        self.changed(now);
    }

    /// Reports the outcome of one real request to endpoint `id`: counts consecutive errors and
    /// ejects when the outlier rules (or the health policy) say so. A no-op without either.
    pub fn observe(
        &self,
        id: EndpointId,
        status: Option<u16>,
        failure: Option<Failure>,
        duration: Duration,
    ) {
        if self.config.outlier.is_none() && self.plugin.is_none() {
            return;
        }
        let Some(e) = self.endpoints.get(id as usize) else {
            return;
        };
        let verdict = match &self.plugin {
            Some(p) => p
                .observe(&Outcome {
                    endpoint: id,
                    status,
                    failure,
                    duration_micros: duration.as_micros() as u64,
                })
                .unwrap_or(Verdict::Abstain),
            None => Verdict::Abstain,
        };
        if self.outlier.success_rate.is_some() {
            e.requests.fetch_add(1, Ordering::Relaxed);
            if failure.is_none() && status.is_some_and(|s| s < 500) {
                e.successes.fetch_add(1, Ordering::Relaxed);
            }
        }
        let success = match verdict {
            Verdict::Pass => true,
            Verdict::Abstain => failure.is_none() && status.is_some_and(|s| s < 500),
            Verdict::Fail | Verdict::Eject => false,
        };
        if success && !e.state.streak.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let wants = {
            let mut s = e.state();
            if s.ejected(now) {
                return;
            }
            let wants = match verdict {
                Verdict::Eject => true,
                Verdict::Pass => s.on_outcome(Some(200), false, &self.outlier),
                Verdict::Fail => s.on_outcome(None, true, &self.outlier),
                Verdict::Abstain if self.config.outlier.is_some() => {
                    s.on_outcome(status, failure.is_some(), &self.outlier)
                }
                Verdict::Abstain => false,
            };
            e.state.streak.store(s.in_streak(), Ordering::Relaxed);
            wants
        };
        if !wants {
            return;
        }
        let why = match (verdict, failure, status) {
            (Verdict::Eject, ..) => "health policy verdict".to_string(),
            (_, Some(f), _) => format!("consecutive errors, last {f:?}"),
            (_, None, Some(s)) => format!("consecutive errors, last status {s}"),
            _ => "consecutive errors".to_string(),
        };
        self.eject(id as usize, &why, now);
    }

    /// Ejects endpoint `id` unless the cluster's ejection cap is reached.
    fn eject(&self, id: usize, why: &str, now: Instant) {
        let e = &self.endpoints[id];
        let ejected = self
            .endpoints
            .iter()
            .filter(|o| o.state().ejected(now))
            .count();
        if !may_eject(
            ejected,
            self.endpoints.len(),
            self.outlier.max_ejection_percent,
        ) {
            tracing::debug!(cluster = %self.cluster, endpoint = %e.address, "not ejected: max_ejection_percent reached");
            return;
        }
        let time = {
            let mut s = e.state();
            if s.ejected(now) {
                return;
            }
            s.eject(&self.outlier, now)
        };
        self.log_change(id, Change::Ejected(time), why);
        self.changed(now);
    }

    /// Compares the endpoints' success rates since the last check and ejects the outliers; the
    /// counts start afresh.
    fn check_success_rates(&self, now: Instant) {
        let Some(sr) = &self.outlier.success_rate else {
            return;
        };
        let samples: Vec<(usize, u64, u64)> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    i,
                    e.requests.swap(0, Ordering::Relaxed),
                    e.successes.swap(0, Ordering::Relaxed),
                )
            })
            .filter(|(i, ..)| !self.endpoints[*i].state().ejected(now))
            .collect();
        for id in success_rate_outliers(
            &samples,
            sr.request_volume,
            sr.minimum_hosts,
            sr.stdev_factor,
        ) {
            self.eject(id, "success rate below the cluster's", now);
        }
    }

    /// Ends ejections whose time has come; true when one did.
    fn expire(&self, now: Instant) -> bool {
        let mut any = false;
        for (i, e) in self.endpoints.iter().enumerate() {
            let returned = e.state().expire(now);
            if returned {
                self.log_change(i, Change::Returned, "ejection time served");
                any = true;
            }
        }
        any
    }

    /// When the supervisor must look again: the next ejection end, or the next slow-start step.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for e in &self.endpoints {
            let s = e.state();
            let mut candidates = [None, None];
            candidates[0] = s.ejected_until.filter(|t| *t > now);
            if s.ramping(self.config.slow_start, now) {
                let step = (self.config.slow_start.unwrap_or_default() / 20)
                    .max(Duration::from_millis(50));
                candidates[1] = Some(now + step);
            }
            for t in candidates.into_iter().flatten() {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        next
    }

    /// The health part of `/status` for endpoint `id`.
    pub fn endpoint_status(&self, id: EndpointId) -> serde_json::Value {
        let Some(e) = self.endpoints.get(id as usize) else {
            return serde_json::Value::Null;
        };
        // Before the state lock: `refresh` takes the view, then states.
        let healthy = self.healthy(id);
        let now = Instant::now();
        let s = e.state();
        let active = match (&self.config.check, s.active_up) {
            (None, _) => "unchecked",
            (Some(_), true) => "up",
            (Some(_), false) => "down",
        };
        json!({
            "healthy": healthy,
            "active": active,
            "consecutive_passes": s.passes,
            "consecutive_failures": s.failures,
            "last_probe": s.last_probe.as_ref().map(|p| json!({
                "passed": p.passed,
                "result": p.detail,
                "ago_ms": now.saturating_duration_since(p.at).as_millis() as u64,
            })),
            "ejected": s.ejected(now),
            "ejections": s.total_ejections,
            "returns_in_ms": s.ejected_until
                .filter(|t| *t > now)
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
            "consecutive_5xx": s.consecutive_5xx,
            "consecutive_gateway_errors": s.consecutive_gateway,
            "agent_weight": s.agent_weight,
            "effective_weight": s.effective_weight(
                s.agent_weight.unwrap_or(e.weight),
                self.config.slow_start,
                now,
            ),
        })
    }
}

/// The weight a probe answer announces in header `name` (lower case): a whole number, clamped to
/// 1..=10000; anything else is ignored.
fn announced_weight(result: &crate::plugin::ProbeResult, name: &str) -> Option<u32> {
    let value = result
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))?
        .1
        .trim();
    let n: u64 = value.trim_end_matches('%').trim().parse().ok()?;
    Some(n.clamp(1, 10_000) as u32)
}

/// The running supervisor of a cluster; dropping it (or [`HealthTask::stop`]) stops its probes.
#[derive(Debug)]
pub struct HealthTask(Option<tokio::task::JoinHandle<()>>);

impl HealthTask {
    /// Stops the supervisor and its probes.
    pub fn stop(&self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A random duration in `[0, max)`, for jitter (no cryptographic needs).
fn random_below(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    if max.is_zero() {
        return Duration::ZERO;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    max.mul_f64((h.finish() % 1_000_000) as f64 / 1_000_000.0)
}

/// Runs the probe loops and ends ejections on time, until aborted.
async fn supervise(health: Arc<ClusterHealth>) {
    // Dropping the set (when this task is aborted) aborts every probe loop.
    let mut probes = tokio::task::JoinSet::new();
    if let Some(check) = &health.config.check {
        let n = health.endpoints.len().max(1) as u32;
        for id in 0..health.endpoints.len() {
            // Spread the first probes over one interval, so many endpoints are not probed at once.
            let first = check.interval * id as u32 / n + random_below(check.jitter);
            probes.spawn(probe_loop(health.clone(), id as EndpointId, first));
        }
    }
    let sr_interval = health.outlier.success_rate.as_ref().map(|sr| sr.interval);
    let mut next_sr = sr_interval.map(|i| Instant::now() + i);
    loop {
        let now = Instant::now();
        if let (Some(t), Some(i)) = (next_sr, sr_interval)
            && t <= now
        {
            health.check_success_rates(now);
            next_sr = Some(now + i);
        }
        health.expire(now);
        health.refresh(now);
        let next = match (health.next_wake(now), next_sr) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = health.wake.notified() => {}
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Probes one endpoint forever: every `interval` while it is up, `unhealthy_interval` while it is
/// down, each wait lengthened by a random share of the jitter.
async fn probe_loop(health: Arc<ClusterHealth>, id: EndpointId, first: Duration) {
    let Some(check) = health.config.check.clone() else {
        return;
    };
    let address = health.endpoints[id as usize].address.clone();
    tokio::time::sleep(first).await;
    loop {
        let result = probe(
            &check.kind,
            id,
            &address,
            check.timeout,
            check.body_prefix_bytes,
            health.tls.as_ref(),
        )
        .await;
        health.record_probe(&result);
        let up = health.endpoints[id as usize].state().active_up;
        let wait = if up {
            check.interval
        } else {
            check.unhealthy_interval
        };
        tokio::time::sleep(wait + random_below(check.jitter)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::plugin::{NoFacts, PluginRuntime, RuntimeOptions};

    fn cluster(endpoints: &[&str]) -> ClusterConfig {
        cluster_with(endpoints, "")
    }

    fn cluster_with(endpoints: &[&str], tables: &str) -> ClusterConfig {
        let mut text = format!("[[clusters]]\nname = \"web\"\nslow_start = \"10s\"\n{tables}\n");
        for e in endpoints {
            text.push_str(&format!(
                "[[clusters.endpoints]]\naddress = \"{e}\"\nweight = 10\n"
            ));
        }
        Config::parse(&text, "test.toml", std::path::Path::new("/"))
            .unwrap()
            .clusters
            .remove(0)
    }

    fn pushed_weights(h: &ClusterHealth) -> Vec<u32> {
        h.view().pool.iter().map(|e| e.weight).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_added_by_a_reload_ramps_up_over_slow_start() {
        let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
        let metrics = Metrics::new(rt.clone());
        let balancer = rt.balancer("round-robin", "", Arc::new(NoFacts)).unwrap();
        let first = ClusterHealth::new(
            &cluster(&["10.0.0.1:80"]),
            vec![balancer.clone()],
            None,
            None,
            metrics.health(),
        );
        assert_eq!(pushed_weights(&first), [10], "no ramp for the first config");
        let second = ClusterHealth::new(
            &cluster(&["10.0.0.1:80", "10.0.0.2:80"]),
            vec![balancer],
            None,
            Some(&first),
            metrics.health(),
        );
        assert_eq!(
            pushed_weights(&second),
            [10, 1],
            "the new one starts at a tenth"
        );
        let _task = second.start();
        for (after, want) in [(5, 5), (3, 8), (2, 10)] {
            tokio::time::advance(Duration::from_secs(after)).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(pushed_weights(&second), [10, want]);
        }
        assert_eq!(second.endpoint_status(1)["effective_weight"], 10);
    }

    fn pushed_healthy(h: &ClusterHealth) -> Vec<bool> {
        h.view().pool.iter().map(|e| e.healthy).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_by_a_request_finishing_on_the_old_config_reaches_the_new_one() {
        let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
        let metrics = Metrics::new(rt.clone());
        let lb = || rt.balancer("round-robin", "", Arc::new(NoFacts)).unwrap();
        let config = cluster_with(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
            "[clusters.outlier]\nconsecutive_5xx = 1\nmax_ejection_percent = 100\n",
        );
        let old = ClusterHealth::new(&config, vec![lb()], None, None, metrics.health());
        let new = ClusterHealth::new(&config, vec![lb()], None, Some(&old), metrics.health());
        assert_eq!(pushed_healthy(&new), [true, true, true]);
        old.observe(1, Some(500), None, Duration::from_millis(1));
        assert_eq!(pushed_healthy(&old), [true, false, true]);
        assert_eq!(
            pushed_healthy(&new),
            [true, false, true],
            "shared state, both pools"
        );
        assert!(!new.healthy(1));
    }

    // Successes skip the lock unless an error streak is counting; one must still end a streak,
    // whichever config's cluster counted it.
    #[tokio::test(start_paused = true)]
    async fn a_success_ends_an_error_streak_even_on_the_lock_free_path() {
        let rt = PluginRuntime::new(RuntimeOptions::default()).unwrap();
        let metrics = Metrics::new(rt.clone());
        let lb = || rt.balancer("round-robin", "", Arc::new(NoFacts)).unwrap();
        let config = cluster_with(
            &["10.0.0.1:80", "10.0.0.2:80"],
            "[clusters.outlier]\nconsecutive_5xx = 3\nmax_ejection_percent = 100\n",
        );
        let old = ClusterHealth::new(&config, vec![lb()], None, None, metrics.health());
        let new = ClusterHealth::new(&config, vec![lb()], None, Some(&old), metrics.health());
        let ms = Duration::from_millis(1);
        for _ in 0..10 {
            new.observe(0, Some(200), None, ms);
        }
        old.observe(0, Some(500), None, ms);
        new.observe(0, Some(503), None, ms);
        new.observe(0, Some(200), None, ms);
        old.observe(0, Some(500), None, ms);
        new.observe(0, None, Some(Failure::Reset), ms);
        assert!(new.healthy(0), "two errors since the success: no ejection");
        new.observe(0, Some(500), None, ms);
        assert!(!new.healthy(0), "the third in a row ejects");
        assert!(new.healthy(1));
    }
}

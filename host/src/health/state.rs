//! The health of one endpoint as plain logic: rise/fall counting of active probes, consecutive
//! error counting and ejection times of passive checks, the panic rule and the slow-start weight.
//! No clocks or sockets here: callers pass `now`, so every rule is tested without waiting.

use crate::config::OutlierConfig;
use std::time::Duration;
use tokio::time::Instant;

/// The last active probe, for `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastProbe {
    /// Whether it passed.
    pub passed: bool,
    /// What was seen: `200`, `connect failure`, `timeout`, ...
    pub detail: String,
    /// When it finished.
    pub at: Instant,
}

/// What changed with one event, so the caller logs and counts it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Active checks took it out.
    Down,
    /// Active checks brought it back.
    Up,
    /// Passive checks ejected it for this long.
    Ejected(Duration),
    /// Its ejection ended (time served, or an active probe passed).
    Returned,
}

/// Everything known about one endpoint's health. Survives config reloads for endpoints that stay.
#[derive(Clone, Debug)]
pub struct EndpointState {
    /// Whether active checks consider it up (always true without active checks).
    pub active_up: bool,
    /// Consecutive passing probes.
    pub passes: u32,
    /// Consecutive failing probes.
    pub failures: u32,
    /// The last probe.
    pub last_probe: Option<LastProbe>,
    /// Consecutive 5xx answers or local errors of real traffic.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (connect failure, reset, timeout, 502-504) of real traffic.
    pub consecutive_gateway: u32,
    /// Ejected until then.
    pub ejected_until: Option<Instant>,
    /// Ejections counted for the next ejection's length (forgotten after a quiet spell).
    pub ejections: u32,
    /// Ejections since the proxy started.
    pub total_ejections: u64,
    ejection_end: Option<Instant>,
    /// Since when it has been serving again (for slow start); `None` = from the start, no ramp.
    pub serving_since: Option<Instant>,
    /// The weight the endpoint announced in its last passing probe (`weight_header`).
    pub agent_weight: Option<u32>,
}

impl EndpointState {
    /// A healthy endpoint. `ramp_from` starts a slow-start ramp (a newly added endpoint).
    pub fn new(ramp_from: Option<Instant>) -> Self {
        EndpointState {
            active_up: true,
            passes: 0,
            failures: 0,
            last_probe: None,
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            ejected_until: None,
            ejections: 0,
            total_ejections: 0,
            ejection_end: None,
            serving_since: ramp_from,
            agent_weight: None,
        }
    }

    /// Whether it is ejected by passive checks at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now)
    }

    /// Whether it should get traffic at `now`.
    pub fn healthy(&self, now: Instant) -> bool {
        self.active_up && !self.ejected(now)
    }

    /// Counts one active probe. `force_down` takes it out at once (a plugin's `eject` verdict).
    pub fn on_probe(
        &mut self,
        passed: bool,
        force_down: bool,
        rise: u32,
        fall: u32,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            // Like Envoy: a passing active check ends an ejection early.
            if self.ejected(now) {
                self.ejected_until = None;
                self.ejection_end = Some(now);
                self.serving_since = Some(now);
                changes.push(Change::Returned);
            }
            if !self.active_up && self.passes >= rise {
                self.active_up = true;
                self.serving_since = Some(now);
                changes.push(Change::Up);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            if self.active_up && (force_down || self.failures >= fall) {
                self.active_up = false;
                changes.push(Change::Down);
            }
        }
        changes
    }

    /// Counts one outcome of real traffic; true when it calls for an ejection (the caller checks
    /// the cluster's ejection cap, then calls [`EndpointState::eject`]).
    pub fn on_outcome(&mut self, status: Option<u16>, failed: bool, cfg: &OutlierConfig) -> bool {
        let error = failed || status.is_some_and(|s| s >= 500);
        let gateway = failed || matches!(status, Some(502..=504));
        self.consecutive_5xx = if error { self.consecutive_5xx + 1 } else { 0 };
        self.consecutive_gateway = if gateway {
            self.consecutive_gateway + 1
        } else {
            0
        };
        (cfg.consecutive_5xx > 0 && self.consecutive_5xx >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway_errors > 0
                && self.consecutive_gateway >= cfg.consecutive_gateway_errors)
    }

    /// Whether an error streak is counting (a success would end it).
    pub fn in_streak(&self) -> bool {
        self.consecutive_5xx > 0 || self.consecutive_gateway > 0
    }

    /// Ejects it: base time × ejections so far (this one included), at most the max. An endpoint
    /// that stayed in for `max_ejection_time` since its last ejection starts counting afresh.
    pub fn eject(&mut self, cfg: &OutlierConfig, now: Instant) -> Duration {
        if self
            .ejection_end
            .is_some_and(|end| now.saturating_duration_since(end) >= cfg.max_ejection_time)
        {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        self.total_ejections += 1;
        let time = cfg
            .base_ejection_time
            .saturating_mul(self.ejections)
            .min(cfg.max_ejection_time);
        self.ejected_until = Some(now + time);
        self.ejection_end = Some(now + time);
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        time
    }

    /// Ends an ejection whose time has come; true when it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(t) if t <= now => {
                self.ejected_until = None;
                self.serving_since = Some(now);
                true
            }
            _ => false,
        }
    }

    /// The weight to give balancers at `now`: during slow start, a share of `weight` growing
    /// linearly from 10% to 100% over `window` (at least 1).
    pub fn effective_weight(&self, weight: u32, window: Option<Duration>, now: Instant) -> u32 {
        let (Some(window), Some(since)) = (window, self.serving_since) else {
            return weight;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= window {
            return weight;
        }
        let share = (elapsed.as_secs_f64() / window.as_secs_f64()).max(0.1);
        ((f64::from(weight) * share).ceil() as u32).clamp(1, weight)
    }

    /// Whether it is still ramping up at `now`.
    pub fn ramping(&self, window: Option<Duration>, now: Instant) -> bool {
        match (window, self.serving_since) {
            (Some(w), Some(since)) => now.saturating_duration_since(since) < w,
            _ => false,
        }
    }
}

/// Whether a cluster with `healthy` of `total` endpoints healthy is in panic mode: below
/// `threshold` percent healthy, traffic spreads over every endpoint (Envoy's healthy panic threshold).
pub fn in_panic(healthy: usize, total: usize, threshold: u32) -> bool {
    total > 0 && healthy * 100 < threshold as usize * total
}

/// Whether one more endpoint may be ejected when `ejected` of `total` already are: at most
/// `max_percent` of the cluster, but one endpoint always may be (as Envoy).
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    ejected == 0 || (ejected + 1) * 100 <= max_percent as usize * total
}

/// Success-rate outliers among `samples` of `(id, requests, successes)` (as Envoy's): endpoints with
/// at least `request_volume` requests qualify; with at least `minimum_hosts` qualifying, those whose
/// success rate is below `mean - stdev_factor × stdev` are outliers.
pub fn success_rate_outliers(
    samples: &[(usize, u64, u64)],
    request_volume: u64,
    minimum_hosts: usize,
    stdev_factor: f64,
) -> Vec<usize> {
    let rates: Vec<(usize, f64)> = samples
        .iter()
        .filter(|(_, total, _)| *total >= request_volume && *total > 0)
        .map(|(id, total, ok)| (*id, *ok as f64 / *total as f64))
        .collect();
    if rates.len() < minimum_hosts || rates.is_empty() {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - stdev_factor * variance.sqrt();
    rates
        .into_iter()
        .filter(|(_, r)| *r < threshold)
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 2,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            max_ejection_percent: 50,
            success_rate: None,
        }
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_passes() {
        let now = Instant::now();
        let mut s = EndpointState::new(None);
        assert!(s.on_probe(false, false, 2, 3, now).is_empty());
        assert!(s.on_probe(false, false, 2, 3, now).is_empty());
        assert!(s.healthy(now));
        assert_eq!(s.on_probe(false, false, 2, 3, now), [Change::Down]);
        assert!(!s.healthy(now));
        assert!(s.on_probe(false, false, 2, 3, now).is_empty(), "down once");
        assert!(s.on_probe(true, false, 2, 3, now).is_empty());
        assert!(!s.healthy(now), "one pass of two is not enough");
        assert_eq!(s.on_probe(true, false, 2, 3, now), [Change::Up]);
        assert!(s.healthy(now));
    }

    #[test]
    fn a_pass_resets_the_failure_count() {
        let now = Instant::now();
        let mut s = EndpointState::new(None);
        for _ in 0..5 {
            s.on_probe(false, false, 2, 3, now);
            s.on_probe(false, false, 2, 3, now);
            s.on_probe(true, false, 2, 3, now);
        }
        assert!(s.healthy(now), "never three failures in a row");
    }

    #[test]
    fn a_forced_failure_takes_it_down_at_once() {
        let now = Instant::now();
        let mut s = EndpointState::new(None);
        assert_eq!(s.on_probe(false, true, 2, 3, now), [Change::Down]);
    }

    #[test]
    fn consecutive_errors_call_for_ejection_and_successes_reset_them() {
        let cfg = outlier();
        let mut s = EndpointState::new(None);
        assert!(!s.on_outcome(Some(500), false, &cfg));
        assert!(!s.on_outcome(Some(500), false, &cfg));
        assert!(!s.on_outcome(Some(200), false, &cfg));
        assert!(!s.on_outcome(Some(500), false, &cfg));
        assert!(!s.on_outcome(Some(500), false, &cfg));
        assert!(s.on_outcome(Some(500), false, &cfg), "third 5xx in a row");
        let mut s = EndpointState::new(None);
        assert!(!s.on_outcome(None, true, &cfg));
        assert!(s.on_outcome(Some(503), false, &cfg), "two gateway errors");
        let mut s = EndpointState::new(None);
        assert!(!s.on_outcome(Some(404), false, &cfg));
        assert!(!s.on_outcome(Some(404), false, &cfg));
        assert!(!s.on_outcome(Some(404), false, &cfg), "4xx is not an error");
    }

    #[test]
    fn ejection_time_grows_with_ejections_up_to_the_max_then_resets() {
        let cfg = outlier();
        let t0 = Instant::now();
        let mut s = EndpointState::new(None);
        assert_eq!(s.eject(&cfg, t0), Duration::from_secs(30));
        assert!(!s.healthy(t0 + Duration::from_secs(29)));
        assert!(s.healthy(t0 + Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(31);
        assert!(s.expire(t1));
        assert!(!s.expire(t1), "expires once");
        assert_eq!(s.eject(&cfg, t1), Duration::from_secs(60));
        let t2 = t1 + Duration::from_secs(61);
        assert!(s.expire(t2));
        assert_eq!(s.eject(&cfg, t2), Duration::from_secs(90));
        let t3 = t2 + Duration::from_secs(91);
        s.expire(t3);
        assert_eq!(s.eject(&cfg, t3), Duration::from_secs(100), "capped");
        let t4 = t3 + Duration::from_secs(100 + 100);
        s.expire(t4);
        assert_eq!(
            s.eject(&cfg, t4),
            Duration::from_secs(30),
            "a max_ejection_time in service forgets past ejections"
        );
        assert_eq!(s.total_ejections, 5);
    }

    #[test]
    fn a_passing_probe_ends_an_ejection_early() {
        let now = Instant::now();
        let mut s = EndpointState::new(None);
        s.eject(&outlier(), now);
        assert!(!s.healthy(now));
        assert_eq!(s.on_probe(true, false, 2, 3, now), [Change::Returned]);
        assert!(s.healthy(now));
    }

    #[test]
    fn panic_below_the_threshold_share() {
        assert!(!in_panic(1, 2, 50), "exactly half is not below half");
        assert!(in_panic(1, 3, 50));
        assert!(in_panic(0, 3, 1));
        assert!(!in_panic(0, 3, 0), "0 turns panic mode off");
        assert!(!in_panic(0, 0, 50), "an empty cluster is not in panic");
        assert!(!in_panic(10, 10, 100));
        assert!(in_panic(9, 10, 100));
    }

    #[test]
    fn success_rate_outliers_are_below_mean_minus_factor_stdev() {
        let good = |id| (id, 200, 199);
        let samples = [good(0), good(1), good(2), good(3), (4, 200, 100)];
        assert_eq!(success_rate_outliers(&samples, 100, 5, 1.9), [4]);
        assert!(
            success_rate_outliers(&samples, 100, 6, 1.9).is_empty(),
            "too few hosts"
        );
        assert!(
            success_rate_outliers(&samples, 201, 1, 1.9).is_empty(),
            "too few requests"
        );
        let same = [good(0), good(1), good(2), good(3), good(4)];
        assert!(success_rate_outliers(&same, 100, 5, 1.9).is_empty());
        let low_volume = [good(0), good(1), good(2), good(3), (4, 10, 0)];
        assert!(
            success_rate_outliers(&low_volume, 100, 4, 1.9).is_empty(),
            "an endpoint below the request volume is not judged"
        );
    }

    #[test]
    fn ejection_cap_allows_one_always() {
        assert!(may_eject(0, 10, 10));
        assert!(!may_eject(1, 10, 10));
        assert!(may_eject(1, 10, 20));
        assert!(!may_eject(2, 10, 20));
        assert!(may_eject(0, 2, 0), "one endpoint may always be ejected");
    }

    #[test]
    fn slow_start_ramps_from_a_tenth_to_the_full_weight() {
        let t0 = Instant::now();
        let w = Some(Duration::from_secs(10));
        let s = EndpointState::new(Some(t0));
        assert_eq!(s.effective_weight(100, w, t0), 10);
        assert_eq!(s.effective_weight(100, w, t0 + Duration::from_secs(5)), 50);
        assert_eq!(
            s.effective_weight(100, w, t0 + Duration::from_secs(10)),
            100
        );
        assert_eq!(s.effective_weight(1, w, t0), 1, "never below 1");
        assert!(s.ramping(w, t0 + Duration::from_secs(9)));
        assert!(!s.ramping(w, t0 + Duration::from_secs(10)));
        let fresh = EndpointState::new(None);
        assert_eq!(fresh.effective_weight(100, w, t0), 100, "no ramp at start");
        assert_eq!(s.effective_weight(100, None, t0), 100, "no window, no ramp");
    }
}

//! The circuit breaker of one plugin use, shared by every worker thread: after repeated faults the
//! host stops calling the plugin (the caller's fallback serves) and lets one probe call through
//! per backoff interval, so a broken plugin costs a bounded share of capacity and a healed one
//! comes back by itself. A breaker belongs to one version: a new version starts closed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a breaker opens and how it tries again.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerOptions {
    /// Consecutive faults that open the breaker. Default 5.
    pub faults: u32,
    /// ...or a share of faulty calls above this over `window` (with at least `min_calls` calls).
    /// Default 0.5.
    pub fault_ratio: f64,
    /// The window of the fault ratio. Default 10 s.
    pub window: Duration,
    /// Calls a window needs before its ratio counts. Default 20.
    pub min_calls: u64,
    /// Wait before the first probe call once open; doubles after each failed probe. Default 1 s.
    pub backoff: Duration,
    /// The longest wait between probes. Default 60 s.
    pub backoff_max: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        BreakerOptions {
            faults: 5,
            fault_ratio: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls go to the plugin.
    Closed,
    /// Calls are refused; the next probe is due at the end of the backoff.
    Open,
    /// One probe call is in flight; the others are refused until it ends.
    HalfOpen,
}

/// A breaker as `/status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BreakerStatus {
    /// Where it stands.
    pub state: BreakerState,
    /// The version it counts for (a new version starts closed).
    pub version: String,
    /// Times it opened for this version.
    pub trips: u64,
    /// Faults since the last call that succeeded.
    pub consecutive_faults: u32,
    /// When open: milliseconds until the next probe call.
    pub next_probe_in_ms: Option<u64>,
    /// The last fault, as logged.
    pub last_fault: Option<String>,
}

/// What the call path may do while the breaker is not closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Call: the breaker closed (another version took over) or was never open.
    Call,
    /// Call, as the one probe of a half-open breaker: report how it went.
    Probe,
    /// Do not call; the next probe is this far away.
    Refuse(Duration),
}

/// A change of state worth one log line.
#[derive(Debug, PartialEq)]
pub(crate) enum Transition {
    /// It opened (`first` for the first time for this version), after `why`.
    Opened { first: bool, why: String },
    /// A probe failed; the next one is `retry_in` away.
    ProbeFailed { retry_in: Duration },
    /// A probe succeeded: calls go to the plugin again.
    Closed,
}

/// A breaker. The call path reads one relaxed flag while closed; everything else takes a lock,
/// which only faults, probes and refused calls reach.
pub(crate) struct Breaker {
    open: AtomicBool,
    consecutive: AtomicU32,
    /// Calls made, counted in batches by each thread's instance (for the fault ratio).
    calls: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The generation this breaker counts for.
    generation: u64,
    version: String,
    state: BreakerState,
    next_probe: Instant,
    backoff: Duration,
    window_start: Instant,
    window_calls_at_start: u64,
    window_faults: u64,
    trips: u64,
    last_fault: Option<String>,
}

impl Breaker {
    pub(crate) fn new(now: Instant) -> Self {
        Breaker {
            open: AtomicBool::new(false),
            consecutive: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                generation: 0,
                version: String::new(),
                state: BreakerState::Closed,
                next_probe: now,
                backoff: Duration::ZERO,
                window_start: now,
                window_calls_at_start: 0,
                window_faults: 0,
                trips: 0,
                last_fault: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether calls may skip [`admit`](Self::admit): the breaker is closed.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Relaxed)
    }

    /// Adds `n` calls to the count the fault ratio reads.
    #[inline]
    pub(crate) fn count_calls(&self, n: u64) {
        self.calls.fetch_add(n, Ordering::Relaxed);
    }

    /// A call that succeeded.
    #[inline]
    pub(crate) fn on_success(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a call to `generation` may go ahead while the flag says open.
    pub(crate) fn admit(&self, generation: u64, now: Instant) -> Admit {
        let mut s = self.lock();
        if s.generation != generation {
            // Another version took over (a reload, a rollback): it starts with a closed breaker.
            self.reset(&mut s, generation, String::new(), now);
            return Admit::Call;
        }
        match s.state {
            BreakerState::Closed => Admit::Call,
            BreakerState::HalfOpen => Admit::Refuse(s.backoff),
            BreakerState::Open if now >= s.next_probe => {
                s.state = BreakerState::HalfOpen;
                Admit::Probe
            }
            BreakerState::Open => Admit::Refuse(s.next_probe - now),
        }
    }

    /// The probe call succeeded: the breaker closes.
    pub(crate) fn probe_succeeded(&self, now: Instant) -> Option<Transition> {
        let mut s = self.lock();
        if s.state != BreakerState::HalfOpen {
            return None;
        }
        let (generation, version) = (s.generation, std::mem::take(&mut s.version));
        let (trips, last) = (s.trips, s.last_fault.take());
        self.reset(&mut s, generation, version, now);
        s.trips = trips;
        s.last_fault = last;
        Some(Transition::Closed)
    }

    fn reset(&self, s: &mut Inner, generation: u64, version: String, now: Instant) {
        *s = Inner {
            generation,
            version,
            state: BreakerState::Closed,
            next_probe: now,
            backoff: Duration::ZERO,
            window_start: now,
            window_calls_at_start: self.calls.load(Ordering::Relaxed),
            window_faults: 0,
            trips: 0,
            last_fault: None,
        };
        self.consecutive.store(0, Ordering::Relaxed);
        self.open.store(false, Ordering::Relaxed);
    }

    /// A fault of `generation` (`version`), described by `fault`; `probe` when it was the probe
    /// call. Says how the breaker moved, if it did.
    pub(crate) fn on_fault(
        &self,
        opts: &BreakerOptions,
        generation: u64,
        version: &str,
        fault: &str,
        probe: bool,
        now: Instant,
    ) -> Option<Transition> {
        let mut s = self.lock();
        if s.generation != generation {
            self.reset(&mut s, generation, version.to_owned(), now);
        }
        if s.version.is_empty() {
            version.clone_into(&mut s.version);
        }
        s.last_fault = Some(fault.to_owned());
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if now.duration_since(s.window_start) > opts.window {
            s.window_start = now;
            s.window_calls_at_start = self.calls.load(Ordering::Relaxed);
            s.window_faults = 0;
        }
        s.window_faults += 1;
        match s.state {
            BreakerState::HalfOpen if probe => {
                s.backoff = (s.backoff * 2).min(opts.backoff_max).max(opts.backoff);
                s.state = BreakerState::Open;
                s.next_probe = now + s.backoff;
                Some(Transition::ProbeFailed {
                    retry_in: s.backoff,
                })
            }
            // A call that started before the breaker opened: already counted as open.
            BreakerState::Open | BreakerState::HalfOpen => None,
            BreakerState::Closed => {
                let calls = self
                    .calls
                    .load(Ordering::Relaxed)
                    .saturating_sub(s.window_calls_at_start)
                    .max(s.window_faults);
                let ratio = s.window_faults as f64 / calls as f64;
                let why = if opts.faults > 0 && consecutive >= opts.faults {
                    format!("{consecutive} consecutive faults")
                } else if calls >= opts.min_calls && ratio > opts.fault_ratio {
                    format!(
                        "{} faults in about {calls} calls within {:?}",
                        s.window_faults, opts.window
                    )
                } else {
                    return None;
                };
                s.trips += 1;
                s.state = BreakerState::Open;
                s.backoff = opts.backoff;
                s.next_probe = now + s.backoff;
                self.open.store(true, Ordering::Relaxed);
                Some(Transition::Opened {
                    first: s.trips == 1,
                    why,
                })
            }
        }
    }

    /// The breaker as `/status` shows it, for the version `generation` (`version`) now serving.
    pub(crate) fn status(&self, generation: u64, version: &str, now: Instant) -> BreakerStatus {
        let s = self.lock();
        if s.generation != generation {
            return BreakerStatus {
                state: BreakerState::Closed,
                version: version.to_owned(),
                trips: 0,
                consecutive_faults: 0,
                next_probe_in_ms: None,
                last_fault: None,
            };
        }
        BreakerStatus {
            state: s.state,
            version: version.to_owned(),
            trips: s.trips,
            consecutive_faults: self.consecutive.load(Ordering::Relaxed),
            next_probe_in_ms: (s.state == BreakerState::Open).then(|| {
                u64::try_from(s.next_probe.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX)
            }),
            last_fault: s.last_fault.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BreakerOptions {
        BreakerOptions::default()
    }

    fn fault(b: &Breaker, now: Instant) -> Option<Transition> {
        b.on_fault(&opts(), 1, "v1", "boom", false, now)
    }

    #[test]
    fn opens_after_consecutive_faults_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        for _ in 0..4 {
            assert_eq!(fault(&b, t0), None);
        }
        b.on_success();
        for _ in 0..4 {
            assert_eq!(fault(&b, t0), None);
        }
        assert!(b.is_closed());
        assert!(matches!(
            fault(&b, t0),
            Some(Transition::Opened { first: true, .. })
        ));
        assert!(!b.is_closed());
        assert_eq!(b.status(1, "v1", t0).state, BreakerState::Open);
        assert_eq!(b.status(1, "v1", t0).trips, 1);
    }

    #[test]
    fn opens_on_a_fault_ratio_over_the_window() {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        // The window starts at the version's first fault; then 30 calls, every other one
        // faulty: never 5 in a row, but more than half of the window.
        assert_eq!(fault(&b, t0), None);
        b.on_success();
        b.count_calls(30);
        for _ in 0..17 {
            if let Some(t) = fault(&b, t0) {
                assert!(matches!(t, Transition::Opened { .. }), "{t:?}");
                return;
            }
            b.on_success();
        }
        panic!("a 17-in-30 fault ratio did not open the breaker");
    }

    #[test]
    fn a_low_fault_ratio_keeps_it_closed() {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        assert_eq!(fault(&b, t0), None);
        b.on_success();
        b.count_calls(1000);
        for _ in 0..100 {
            assert_eq!(fault(&b, t0), None);
            b.on_success();
        }
    }

    #[test]
    fn probes_once_per_backoff_which_doubles_up_to_the_maximum() {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        for _ in 0..5 {
            fault(&b, t0);
        }
        let s = Duration::from_secs(1);
        assert_eq!(b.admit(1, t0), Admit::Refuse(s));
        assert_eq!(b.admit(1, t0 + s), Admit::Probe);
        // While the probe is in flight, the others are refused.
        assert!(matches!(b.admit(1, t0 + s), Admit::Refuse(_)));
        let mut at = t0 + s;
        let mut waits = Vec::new();
        for _ in 0..8 {
            match b.on_fault(&opts(), 1, "v1", "boom", true, at) {
                Some(Transition::ProbeFailed { retry_in }) => waits.push(retry_in.as_secs()),
                other => panic!("{other:?}"),
            }
            assert!(matches!(b.admit(1, at), Admit::Refuse(_)));
            at += waits.last().map(|w| Duration::from_secs(*w)).unwrap();
            assert_eq!(b.admit(1, at), Admit::Probe);
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.probe_succeeded(at), Some(Transition::Closed));
        assert!(b.is_closed());
        assert_eq!(b.status(1, "v1", at).trips, 1, "trips are kept");
    }

    #[test]
    fn a_new_version_starts_closed() {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        for _ in 0..5 {
            fault(&b, t0);
        }
        assert!(!b.is_closed());
        assert_eq!(b.status(2, "v2", t0).state, BreakerState::Closed);
        assert_eq!(b.admit(2, t0), Admit::Call);
        assert!(b.is_closed());
        // Faults of the old version still in flight do not count against the new one.
        assert_eq!(b.on_fault(&opts(), 2, "v2", "x", false, t0), None);
        assert_eq!(b.status(2, "v2", t0).consecutive_faults, 1);
    }

    #[test]
    fn a_fault_of_a_call_made_before_it_opened_changes_nothing() {
        let t0 = Instant::now();
        let b = Breaker::new(t0);
        for _ in 0..5 {
            fault(&b, t0);
        }
        assert_eq!(fault(&b, t0), None);
        assert_eq!(b.admit(1, t0 + Duration::from_secs(1)), Admit::Probe);
    }
}

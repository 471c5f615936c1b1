//! The native stand-ins of the `host` imports, for plugins run by the test harness: each thread
//! has its own fake proxy state, which [`testing`](crate::testing) sets and [`host`](crate::host)
//! reads. Kept apart from both so that neither depends on the other.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::EndpointId;
use crate::types::Level;

/// The fake proxy state of one test thread.
pub(crate) struct HarnessState {
    pub(crate) in_flight: HashMap<EndpointId, u32>,
    pub(crate) latency: HashMap<EndpointId, u32>,
    pub(crate) logs: Vec<(Level, String)>,
    pub(crate) counters: BTreeMap<String, u64>,
    pub(crate) now_nanos: u64,
    pub(crate) rng: u64,
}

const DEFAULT_SEED: u64 = 0x5eed_1e55_c0ff_ee00;

impl HarnessState {
    pub(crate) fn new() -> Self {
        HarnessState {
            in_flight: HashMap::new(),
            latency: HashMap::new(),
            logs: Vec::new(),
            counters: BTreeMap::new(),
            now_nanos: 0,
            rng: DEFAULT_SEED,
        }
    }
}

thread_local! {
    static STATE: RefCell<HarnessState> = RefCell::new(HarnessState::new());
}

pub(crate) fn with_state<R>(f: impl FnOnce(&mut HarnessState) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

pub fn log(level: Level, message: &str) {
    with_state(|s| s.logs.push((level, message.to_owned())))
}

pub fn now_nanos() -> u64 {
    with_state(|s| s.now_nanos)
}

pub fn random_u64() -> u64 {
    // splitmix64: deterministic, well spread, no dependency.
    with_state(|s| {
        s.rng = s.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

pub fn in_flight(endpoint: EndpointId) -> u32 {
    with_state(|s| s.in_flight.get(&endpoint).copied().unwrap_or(0))
}

pub fn latency_ewma_micros(endpoint: EndpointId) -> u32 {
    with_state(|s| s.latency.get(&endpoint).copied().unwrap_or(0))
}

pub fn counter_add(name: &str, delta: u64) {
    with_state(|s| {
        let c = s.counters.entry(name.to_owned()).or_insert(0);
        *c = c.saturating_add(delta);
    })
}

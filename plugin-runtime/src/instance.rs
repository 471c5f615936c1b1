//! Instances and the call path. Each use (handle) keeps one long-lived instance per worker thread, in a
//! thread-local map keyed by the handle's id, made from the generation's `InstancePre` on the first call (and
//! again after a reload or a fault). A call takes no lock shared across threads: an arc-swap load of the current
//! generation and pool, the thread's own instance, and relaxed atomics for the statistics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use wasmtime::Store;
use wasmtime::component::Resource;

use super::bindings::{RequestRef, ResponseRef, balance, filter, health, route, types};
use super::breaker::{Admit, Breaker, Transition};
use super::registry::{Generation, RuntimeInner, Slot};
use super::store::{HOST_CALL_FUEL, HostCallsExhausted, StoreData, StoreParts};
use super::{BreakerStatus, EndpointFacts, Kind, PluginError, PoolEndpoint, UseStatus, convert};

/// Handle ids are process-wide, since the thread-local maps are shared by every runtime of the process.
static NEXT_HANDLE_ID: AtomicU64 = AtomicU64::new(1);
/// One call in this many (per thread and use) is timed for `call_nanos_total`.
const TIME_SAMPLE: u32 = 16;
/// Bumped when a handle goes away; threads purge dead handles' instances when they see it move.
static HANDLES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// A pool as pushed to a balancer: the WIT records, built once per change, and the sorted ids to check picks.
pub(crate) struct Pool {
    version: u64,
    wit: Vec<types::Endpoint>,
    ids: Vec<u32>,
}

impl Pool {
    fn empty() -> Self {
        Pool {
            version: 0,
            wit: Vec::new(),
            ids: Vec::new(),
        }
    }
}

/// The shared part of a handle: which plugin, as what, with which settings.
pub(crate) struct HandleCore {
    id: u64,
    pub(crate) kind: Kind,
    pub(crate) name: Arc<str>,
    rt: Arc<RuntimeInner>,
    slot: Arc<Slot>,
    settings: String,
    /// For routers: the proxy's cluster names, given to `init` (their order is what answers index).
    clusters: Vec<String>,
    facts: Arc<dyn EndpointFacts>,
    pool: ArcSwap<Pool>,
    /// Serializes `set_pool`, so `pool` and `pool_version` always move together.
    pool_seq: Mutex<u64>,
    /// The version of `pool`, so the call path compares a number instead of loading the pool.
    pool_version: AtomicU64,
    /// Stops calls to a version that keeps faulting; shared by every thread's instance.
    breaker: Breaker,
}

impl Drop for HandleCore {
    fn drop(&mut self) {
        HANDLES_DROPPED.fetch_add(1, Ordering::Release);
    }
}

/// The exports of one instance, for the one interface its use needs.
pub(crate) enum Exports {
    Balance(balance::Guest),
    Route(route::Guest),
    Filter(filter::Guest),
    Health(health::Guest),
}

/// A store and its instance's exports.
pub(crate) struct Instance {
    pub(crate) store: Store<StoreData>,
    pub(crate) exports: Exports,
    /// The table entries the request and response are lent through, made once per instance.
    pub(crate) request_slot: Resource<RequestRef>,
    pub(crate) response_slot: Resource<ResponseRef>,
}

/// What went wrong in a call, before it is turned into a `PluginError`.
pub(crate) enum CallError {
    /// A trap, deadline, memory exhaustion or host error: the instance is dropped.
    Wasm(wasmtime::Error),
    /// The plugin answered something unusable: counted as a fault, the instance is kept.
    Invalid(String),
}

impl From<wasmtime::Error> for CallError {
    fn from(e: wasmtime::Error) -> Self {
        CallError::Wasm(e)
    }
}

/// One thread's instance of one handle.
pub(crate) struct Live {
    generation: Arc<Generation>,
    owner: Weak<HandleCore>,
    pub(crate) inst: Instance,
    /// The pool this instance was last told about.
    pool: Arc<Pool>,
    /// Calls made on this instance, to pick the ones that are timed.
    calls_here: u32,
    /// A balancer's picks made ahead for the pool above (`pick-ahead`).
    pub(crate) ahead: Ahead,
}

/// First-attempt picks a balancer made ahead with `pick-ahead`, handed out in order. They belong to
/// one pool and one instance: a pool change or a new instance starts again from an empty list.
#[derive(Debug)]
pub(crate) enum Ahead {
    /// The ids it gave, next one last; when empty (none asked yet, or all used), it is asked.
    Ids(Vec<u32>),
    /// It gave none (or a faulty list): `pick` for every request until the pool changes.
    Declined,
}

impl Default for Ahead {
    fn default() -> Self {
        Ahead::Ids(Vec::new())
    }
}

impl Ahead {
    /// The next id made ahead, if one is left.
    pub(crate) fn take(&mut self) -> Option<u32> {
        match self {
            Ahead::Ids(ids) => ids.pop(),
            _ => None,
        }
    }
}

impl Live {
    /// Whether `id` is in the pool this instance was given.
    pub(crate) fn in_pool(&self, id: u32) -> bool {
        self.pool.ids.binary_search(&id).is_ok()
    }

    /// Size of the pool this instance was given.
    pub(crate) fn pool_len(&self) -> usize {
        self.pool.ids.len()
    }
}

/// Hashes the u64 handle ids of the thread-local map with one multiply (they are sequential, not hostile).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Default)]
struct LiveMap {
    live: HashMap<u64, Live, BuildHasherDefault<IdHasher>>,
    seen_dropped: u64,
}

thread_local! {
    static LIVE: RefCell<LiveMap> = RefCell::new(LiveMap::default());
}

/// Makes an instance of `generation` for `kind` and runs `init(settings)` on it (routers also get the
/// cluster names).
fn instantiate(
    rt: &RuntimeInner,
    generation: &Generation,
    kind: Kind,
    settings: &str,
    clusters: &[String],
    facts: Arc<dyn EndpointFacts>,
) -> Result<Instance, PluginError> {
    let mut inst = bare_instance(rt, generation, kind, facts)?;
    let store = &mut inst.store;
    init_budget(rt, store);
    let init = match &inst.exports {
        Exports::Balance(g) => g.call_init(&mut *store, settings),
        Exports::Route(g) => g.call_init(&mut *store, settings, clusters),
        Exports::Filter(g) => g.call_init(&mut *store, settings),
        Exports::Health(g) => g.call_init(&mut *store, settings),
    };
    #[cfg(test)]
    fuel_used::record(Phase::Init, store);
    match init {
        Ok(Ok(())) => Ok(inst),
        Ok(Err(message)) => Err(PluginError::InitRefused {
            name: generation.name.to_string(),
            version: generation.version.to_string(),
            message,
        }),
        Err(e) => Err(classify(rt, generation, store, e, Phase::Init)),
    }
}

/// Which budget a call had, for the error that says it ran out.
#[derive(Clone, Copy)]
enum Phase {
    /// `init` or `pool-changed`: `init_fuel`, `init_deadline`.
    Init,
    /// A decision: `fuel_per_call`, `call_deadline`.
    Call,
}

/// Gives the store the budget of `init` or `pool-changed`.
fn init_budget(rt: &RuntimeInner, store: &mut Store<StoreData>) {
    store.set_epoch_deadline(rt.init_ticks);
    set_fuel(store, rt.opts.init_fuel);
}

/// Gives the store the fuel of `decisions` decisions (a balancer's `pick-ahead` makes many).
pub(crate) fn decision_budget(store: &mut Store<StoreData>, decisions: u64) {
    let fuel = store.data().fuel_per_decision.saturating_mul(decisions);
    set_fuel(store, fuel);
}

fn set_fuel(store: &mut Store<StoreData>, fuel: u64) {
    if store.data().fuel_per_decision == 0 {
        return; // Metering is off (`fuel_per_call = 0`, for benches).
    }
    let data = store.data_mut();
    data.budget = fuel;
    data.host_calls_left = fuel / HOST_CALL_FUEL;
    // Cannot fail: fuel is on in every engine of this crate.
    let _ = store.set_fuel(fuel);
}

fn new_store(
    rt: &RuntimeInner,
    generation: &Generation,
    facts: Arc<dyn EndpointFacts>,
) -> Store<StoreData> {
    let mut store = Store::new(
        &rt.engine,
        StoreData::new(StoreParts {
            plugin: generation.name.clone(),
            version: generation.version.clone(),
            facts,
            clock_base: rt.clock_base,
            counters: rt.counters.clone(),
            memory_limit: rt.opts.memory_limit,
            fuel_per_decision: rt.opts.fuel_per_call,
        }),
    );
    store.limiter(|d| &mut d.limiter);
    store.epoch_deadline_trap();
    init_budget(rt, &mut store);
    store
}

/// Makes an instance of `generation` and loads the exports of `kind`, without calling anything.
fn bare_instance(
    rt: &RuntimeInner,
    generation: &Generation,
    kind: Kind,
    facts: Arc<dyn EndpointFacts>,
) -> Result<Instance, PluginError> {
    let mut store = new_store(rt, generation, facts);
    let instance = match generation.pre.instantiate(&mut store) {
        Ok(i) => i,
        Err(e) => return Err(classify(rt, generation, &store, e, Phase::Init)),
    };
    let wrong_world = || PluginError::WrongWorld {
        name: generation.name.to_string(),
        version: generation.version.to_string(),
        interface: kind.interface(),
    };
    let mismatch = |e: wasmtime::Error| PluginError::Compile {
        name: generation.name.to_string(),
        version: generation.version.to_string(),
        reason: format!(
            "export `{}` does not match {}: {e:#}",
            kind.interface(),
            super::WIT_PACKAGE
        ),
    };
    let exports = match kind {
        Kind::Balancer => Exports::Balance(
            generation
                .balance
                .as_ref()
                .ok_or_else(wrong_world)?
                .load(&mut store, &instance)
                .map_err(mismatch)?,
        ),
        Kind::Router => Exports::Route(
            generation
                .route
                .as_ref()
                .ok_or_else(wrong_world)?
                .load(&mut store, &instance)
                .map_err(mismatch)?,
        ),
        Kind::Filter => Exports::Filter(
            generation
                .filter
                .as_ref()
                .ok_or_else(wrong_world)?
                .load(&mut store, &instance)
                .map_err(mismatch)?,
        ),
        Kind::HealthPolicy => Exports::Health(
            generation
                .health
                .as_ref()
                .ok_or_else(wrong_world)?
                .load(&mut store, &instance)
                .map_err(mismatch)?,
        ),
    };
    let table_err = |e: wasmtime::component::ResourceTableError| PluginError::Runtime {
        reason: format!(
            "cannot make the request table of plugin `{}`: {e}",
            generation.name
        ),
    };
    let request_slot = store
        .data_mut()
        .table
        .push(RequestRef(None))
        .map_err(table_err)?;
    let response_slot = store
        .data_mut()
        .table
        .push(ResponseRef(None))
        .map_err(table_err)?;
    Ok(Instance {
        store,
        exports,
        request_slot,
        response_slot,
    })
}

/// Checks that every interface `generation` exports has the signatures this host expects.
pub(crate) fn typecheck(rt: &RuntimeInner, generation: &Generation) -> Result<(), PluginError> {
    for kind in &generation.kinds {
        bare_instance(rt, generation, *kind, Arc::new(super::NoFacts))?;
    }
    Ok(())
}

/// Turns a wasmtime error of a call into the typed error saying why.
fn classify(
    rt: &RuntimeInner,
    generation: &Generation,
    store: &Store<StoreData>,
    e: wasmtime::Error,
    phase: Phase,
) -> PluginError {
    let name = generation.name.to_string();
    let version = generation.version.to_string();
    if store.data().limiter.exhausted {
        return PluginError::MemoryExhausted {
            name,
            version,
            limit_bytes: rt.opts.memory_limit,
        };
    }
    let deadline = match phase {
        Phase::Init => rt.opts.init_deadline,
        Phase::Call => rt.opts.call_deadline,
    };
    if e.downcast_ref::<HostCallsExhausted>().is_some() {
        return PluginError::FuelExhausted {
            name,
            version,
            budget: store.data().budget,
        };
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => PluginError::DeadlineExceeded {
            name,
            version,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        },
        Some(wasmtime::Trap::OutOfFuel) => PluginError::FuelExhausted {
            name,
            version,
            budget: store.data().budget,
        },
        Some(wasmtime::Trap::UnreachableCodeReached) if store.data().panic.is_some() => {
            PluginError::Panic {
                name,
                version,
                message: store.data().panic.clone().unwrap_or_default(),
            }
        }
        Some(trap) => PluginError::Trap {
            name,
            version,
            reason: trap.to_string(),
        },
        None => {
            // Not a trap code: a host-side error (e.g. a lowering failure). Keep the first line only.
            let full = format!("{e:#}");
            let reason = full.lines().next().unwrap_or("unknown error").to_owned();
            PluginError::Trap {
                name,
                version,
                reason,
            }
        }
    }
}

impl HandleCore {
    pub(crate) fn new(
        rt: Arc<RuntimeInner>,
        slot: Arc<Slot>,
        kind: Kind,
        settings: &str,
        clusters: Vec<String>,
        facts: Arc<dyn EndpointFacts>,
    ) -> Self {
        let name = slot.current.load().name.clone();
        HandleCore {
            id: NEXT_HANDLE_ID.fetch_add(1, Ordering::Relaxed),
            kind,
            name,
            rt,
            slot,
            settings: settings.to_owned(),
            clusters,
            facts,
            pool: ArcSwap::from_pointee(Pool::empty()),
            pool_seq: Mutex::new(0),
            pool_version: AtomicU64::new(0),
            breaker: Breaker::new(Instant::now()),
        }
    }

    /// This use's breaker, for the version serving now.
    pub(crate) fn breaker(&self) -> BreakerStatus {
        let current = self.slot.current.load();
        self.status(&current, Instant::now()).breaker
    }

    /// This use and its breaker, for the version `generation`.
    pub(crate) fn status(&self, generation: &Generation, now: Instant) -> UseStatus {
        UseStatus {
            kind: self.kind,
            breaker: self
                .breaker
                .status(generation.seq, &generation.version, now),
        }
    }

    /// For routers: the cluster names `init` was given, which answers index (empty for other kinds).
    pub(crate) fn clusters(&self) -> &[String] {
        &self.clusters
    }

    /// Checks `generation` can serve this use: it exports the interface, `init` accepts the settings and, for
    /// balancers, it takes the current pool.
    pub(crate) fn validate(
        &self,
        rt: &RuntimeInner,
        generation: &Generation,
    ) -> Result<(), PluginError> {
        let mut inst = instantiate(
            rt,
            generation,
            self.kind,
            &self.settings,
            &self.clusters,
            self.facts.clone(),
        )?;
        if let Exports::Balance(g) = &inst.exports {
            let pool = self.pool.load();
            init_budget(rt, &mut inst.store);
            if let Err(e) = g.call_pool_changed(&mut inst.store, &pool.wit) {
                return Err(classify(rt, generation, &inst.store, e, Phase::Init));
            }
        }
        Ok(())
    }

    /// Replaces the pool; every thread's instance gets `pool-changed` before its next pick.
    pub(crate) fn set_pool(&self, endpoints: Vec<PoolEndpoint>) {
        let mut ids: Vec<u32> = endpoints.iter().map(|e| e.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let wit = endpoints.into_iter().map(convert::endpoint).collect();
        let mut seq = self.pool_seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq += 1;
        self.pool.store(Arc::new(Pool {
            version: *seq,
            wit,
            ids,
        }));
        self.pool_version.store(*seq, Ordering::Release);
    }

    /// A fresh instance of `generation` for this use on this thread: init, then the pool for balancers.
    fn make_live(self: &Arc<Self>, generation: Arc<Generation>) -> Result<Live, PluginError> {
        let inst = instantiate(
            &self.rt,
            &generation,
            self.kind,
            &self.settings,
            &self.clusters,
            self.facts.clone(),
        )?;
        let mut live = Live {
            generation,
            owner: Arc::downgrade(self),
            inst,
            pool: Arc::new(Pool::empty()),
            calls_here: 0,
            ahead: Ahead::default(),
        };
        if self.kind == Kind::Balancer {
            self.sync_pool(&mut live, true)?;
        }
        Ok(live)
    }

    /// Tells the instance about the current pool if it has not seen it yet (or always, when `force`).
    fn sync_pool(&self, live: &mut Live, force: bool) -> Result<(), PluginError> {
        if !force && self.pool_version.load(Ordering::Acquire) == live.pool.version {
            return Ok(());
        }
        let current = self.pool.load();
        if let Exports::Balance(g) = &live.inst.exports {
            let store = &mut live.inst.store;
            init_budget(&self.rt, store);
            if let Err(e) = g.call_pool_changed(&mut *store, &current.wit) {
                return Err(classify(&self.rt, &live.generation, store, e, Phase::Init));
            }
            #[cfg(test)]
            fuel_used::record(Phase::Init, store);
        }
        live.pool = arc_swap::Guard::into_inner(current);
        live.ahead = Ahead::default();
        Ok(())
    }

    /// Runs `f` on this thread's instance of this handle, making or refreshing it first. Faults drop the
    /// instance, are counted and logged, and come back as typed errors.
    pub(crate) fn call<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Live) -> Result<R, CallError>,
    ) -> Result<R, PluginError> {
        self.call_unless(|_| None, f)
    }

    /// [`call`](Self::call), unless `answered` finds the answer in the instance's state (picks made
    /// ahead): then nothing enters Wasm and nothing is counted or timed as a call. While the use's
    /// breaker is open nothing is called (no instance is made either) and the error says so.
    pub(crate) fn call_unless<R>(
        self: &Arc<Self>,
        answered: impl FnOnce(&mut Live) -> Option<R>,
        f: impl FnOnce(&mut Live) -> Result<R, CallError>,
    ) -> Result<R, PluginError> {
        let outcome = LIVE.try_with(|cell| {
            let Ok(mut map) = cell.try_borrow_mut() else {
                return Err(PluginError::Reentrant {
                    name: self.name.to_string(),
                });
            };
            let dropped = HANDLES_DROPPED.load(Ordering::Acquire);
            if dropped != map.seen_dropped {
                map.seen_dropped = dropped;
                map.live.retain(|_, l| l.owner.strong_count() > 0);
            }
            let current = self.slot.current.load();
            let probe = !self.breaker.is_closed() && self.admit(&current)?;
            let live = match map.live.entry(self.id) {
                Entry::Occupied(mut o) => {
                    if !Arc::ptr_eq(&o.get().generation, &current) {
                        // A new generation was published: this thread moves to it at its next call.
                        match self.fresh(arc_swap::Guard::into_inner(current), probe) {
                            Ok(live) => {
                                o.insert(live);
                            }
                            Err(e) => {
                                o.remove();
                                return Err(e);
                            }
                        }
                    }
                    o.into_mut()
                }
                Entry::Vacant(v) => {
                    v.insert(self.fresh(arc_swap::Guard::into_inner(current), probe)?)
                }
            };
            if self.kind == Kind::Balancer
                && let Err(e) = self.sync_pool(live, false)
            {
                let generation = live.generation.clone();
                map.live.remove(&self.id);
                return Err(self.fault(&generation, e, true, probe));
            }
            if !probe && let Some(r) = answered(live) {
                return Ok(r);
            }
            live.inst.store.set_epoch_deadline(self.rt.call_ticks);
            decision_budget(&mut live.inst.store, 1);
            // Reading the clock twice costs about a tenth of a call, so only every TIME_SAMPLE-th call per thread
            // is timed and counted for TIME_SAMPLE calls; so are the calls the breaker's fault ratio reads.
            live.calls_here = live.calls_here.wrapping_add(1);
            let sampled = live.calls_here % TIME_SAMPLE == 1;
            let started = sampled.then(Instant::now);
            let result = f(live);
            #[cfg(test)]
            fuel_used::record(Phase::Call, &live.inst.store);
            let generation = &live.generation;
            generation.stats.calls.fetch_add(1, Ordering::Relaxed);
            if let Some(started) = started {
                self.breaker.count_calls(u64::from(TIME_SAMPLE));
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX / 64);
                generation.stats.call_nanos.fetch_add(
                    nanos.saturating_mul(u64::from(TIME_SAMPLE)),
                    Ordering::Relaxed,
                );
            }
            match result {
                Ok(r) => {
                    if probe {
                        self.probe_succeeded(generation);
                    } else {
                        self.breaker.on_success();
                    }
                    Ok(r)
                }
                Err(CallError::Invalid(reason)) => {
                    let e = PluginError::InvalidAnswer {
                        name: generation.name.to_string(),
                        version: generation.version.to_string(),
                        reason,
                    };
                    let generation = generation.clone();
                    Err(self.fault(&generation, e, false, probe))
                }
                Err(CallError::Wasm(e)) => {
                    let e = classify(&self.rt, generation, &live.inst.store, e, Phase::Call);
                    let generation = generation.clone();
                    map.live.remove(&self.id);
                    Err(self.fault(&generation, e, true, probe))
                }
            }
        });
        // Only during thread teardown (a call from another thread-local's destructor) is the map gone.
        outcome.unwrap_or_else(|_| {
            Err(PluginError::Runtime {
                reason: format!("plugin `{}` called while its thread shuts down", self.name),
            })
        })
    }

    /// Asks the open breaker whether this call may go to `current`: `Ok(true)` as the probe,
    /// `Ok(false)` as an ordinary call (another version took over), else the refusal.
    fn admit(&self, current: &Generation) -> Result<bool, PluginError> {
        match self.breaker.admit(current.seq, Instant::now()) {
            Admit::Call => Ok(false),
            Admit::Probe => Ok(true),
            Admit::Refuse(wait) => Err(PluginError::BreakerOpen {
                name: current.name.to_string(),
                version: current.version.to_string(),
                retry_in_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// A new instance for this thread; a failure is a fault of that generation.
    fn fresh(
        self: &Arc<Self>,
        generation: Arc<Generation>,
        probe: bool,
    ) -> Result<Live, PluginError> {
        self.make_live(generation.clone())
            .map_err(|e| self.fault(&generation, e, true, probe))
    }

    /// The probe call of a half-open breaker succeeded: calls go to the plugin again.
    fn probe_succeeded(&self, generation: &Generation) {
        if self.breaker.probe_succeeded(Instant::now()) == Some(Transition::Closed) {
            tracing::warn!(
                plugin = &*generation.name,
                version = &*generation.version,
                kind = self.kind.name(),
                "plugin circuit breaker closed: a probe call succeeded, the plugin decides again"
            );
        }
    }

    /// Counts a fault, tells the breaker, and logs it (at most one line a second per plugin, with
    /// the number left out; the breaker's changes always). A breaker that opens for the first time
    /// within the rollback window of its version's load starts a rollback.
    fn fault(
        &self,
        generation: &Arc<Generation>,
        e: PluginError,
        dropped: bool,
        probe: bool,
    ) -> PluginError {
        generation.stats.faults.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let text = e.to_string();
        let transition = self.breaker.on_fault(
            &self.rt.opts.breaker,
            generation.seq,
            &generation.version,
            &text,
            probe,
            now,
        );
        let second = now.saturating_duration_since(self.rt.clock_base).as_secs();
        // A fault that moves the breaker is told in the breaker's line.
        if transition.is_none()
            && let Some(suppressed) = self.slot.quiet.admit(second)
        {
            let what = if dropped {
                "instance dropped"
            } else {
                "answer ignored"
            };
            tracing::warn!(
                plugin = &*generation.name,
                version = &*generation.version,
                kind = self.kind.name(),
                suppressed,
                "plugin fault, {what}: {e}"
            );
        }
        let (plugin, version, kind) = (&*generation.name, &*generation.version, self.kind.name());
        let backoff = self.rt.opts.breaker.backoff.as_millis();
        match transition {
            None => {}
            Some(Transition::Opened { first, why }) => {
                generation.stats.trips.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    plugin,
                    version,
                    kind,
                    "plugin switched off by its circuit breaker after {why} (last: {e}); its fallback serves, next try in {backoff} ms"
                );
                if first {
                    self.maybe_roll_back(generation, text);
                }
            }
            Some(Transition::ProbeFailed { retry_in }) => tracing::warn!(
                plugin,
                version,
                kind,
                "plugin probe call failed ({e}); next try in {} ms",
                retry_in.as_millis()
            ),
            Some(Transition::Closed) => {}
        }
        e
    }

    /// Starts a rollback of `generation` on its own thread when it is young enough and nobody
    /// started one yet.
    fn maybe_roll_back(&self, generation: &Arc<Generation>, fault: String) {
        let window = self.rt.opts.rollback_window;
        if window.is_zero()
            || generation.loaded.elapsed() > window
            || generation.rolling_back.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let (rt, slot, bad) = (self.rt.clone(), self.slot.clone(), generation.clone());
        let spawned = std::thread::Builder::new()
            .name("sluicegate-plugin-rollback".into())
            .spawn(move || rt.roll_back(&slot, &bad, &fault));
        if let Err(e) = spawned {
            tracing::error!(
                plugin = &*generation.name,
                "cannot start the plugin rollback: {e}"
            );
        }
    }
}

/// How many instances this thread holds (for tests of the purge).
#[cfg(test)]
pub(crate) fn live_instances() -> usize {
    LIVE.with(|m| m.borrow().live.len())
}

/// The most fuel a call of each phase used on this thread, for the test that sizes the default
/// budgets against the default plugins.
#[cfg(test)]
pub(crate) mod fuel_used {
    use super::{Phase, Store, StoreData};
    use std::cell::Cell;

    thread_local! {
        static MAX: Cell<[u64; 2]> = const { Cell::new([0; 2]) };
    }

    /// Records what the call just made used (its Wasm instructions and its host calls), per
    /// decision for a decision call.
    pub(super) fn record(phase: Phase, store: &Store<StoreData>) {
        let d = store.data();
        // Host calls count a hundred units each (against their own allowance, in the same units).
        let calls = (d.budget / super::HOST_CALL_FUEL).saturating_sub(d.host_calls_left);
        let used =
            d.budget.saturating_sub(store.get_fuel().unwrap_or(0)) + calls * super::HOST_CALL_FUEL;
        let (i, used) = match phase {
            Phase::Init => (0, used),
            Phase::Call => (1, used / (d.budget / d.fuel_per_decision).max(1)),
        };
        MAX.with(|m| {
            let mut v = m.get();
            v[i] = v[i].max(used);
            m.set(v);
        });
    }

    /// The most fuel an `init`/`pool-changed` and a decision (a `pick-ahead` call's share per
    /// pick) used since the last `take`.
    pub(crate) fn take() -> (u64, u64) {
        let [init, call] = MAX.with(|m| m.replace([0; 2]));
        (init, call)
    }
}

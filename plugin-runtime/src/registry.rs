//! Plugin names, their current generation (one compiled version, published atomically with arc-swap) and the
//! live uses of each, plus loading: compile, validate the exports, init with the settings of every live use, and
//! only then publish. A failed load leaves the previous generation serving.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::bindings::{HostView, balance, filter, health, route};
use super::embedded;
use super::engine;
use super::instance::{self, HandleCore};
use super::quiet::QuietLog;
use super::store::{Counters, StoreData};
use super::{
    EndpointFacts, Kind, PluginError, PluginStatus, RefusedPlugin, Rollback, RuntimeOptions,
    VersionStatus, WIT_PACKAGE, WIT_VERSION,
};

/// Sequence numbers of generations (0 is no generation).
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// One compiled version of a plugin, ready to instantiate.
pub(crate) struct Generation {
    /// Process-wide sequence number: what a breaker compares to know it counts for this version.
    pub(crate) seq: u64,
    pub(crate) name: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) pre: InstancePre<StoreData>,
    pub(crate) balance: Option<balance::GuestIndices>,
    pub(crate) route: Option<route::GuestIndices>,
    pub(crate) filter: Option<filter::GuestIndices>,
    pub(crate) health: Option<health::GuestIndices>,
    /// When it was published (for the rollback window).
    pub(crate) loaded: Instant,
    pub(crate) cache_hit: bool,
    /// Its figures, kept in the plugin's history once it no longer serves.
    pub(crate) stats: Arc<VersionStats>,
    /// Set by the first breaker trip that asks for a rollback, so only one is attempted.
    pub(crate) rolling_back: AtomicBool,
}

/// The figures of one version, which outlive its compiled code.
pub(crate) struct VersionStats {
    version: Arc<str>,
    source: String,
    loaded_at_unix: u64,
    pub(crate) calls: AtomicU64,
    pub(crate) faults: AtomicU64,
    pub(crate) call_nanos: AtomicU64,
    pub(crate) trips: AtomicU64,
    rolled_back: AtomicBool,
}

impl VersionStats {
    fn status(&self) -> VersionStatus {
        VersionStatus {
            version: self.version.to_string(),
            source: self.source.clone(),
            loaded_at_unix: self.loaded_at_unix,
            calls: self.calls.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            trips: self.trips.load(Ordering::Relaxed),
            rolled_back: self.rolled_back.load(Ordering::Relaxed),
        }
    }
}

/// How many versions a plugin's history keeps.
const HISTORY: usize = 8;

/// A plugin name: its current generation and the uses that follow it.
pub(crate) struct Slot {
    pub(crate) current: ArcSwap<Generation>,
    uses: Mutex<Vec<Weak<HandleCore>>>,
    /// The plugin's fault lines, at most one a second.
    pub(crate) quiet: QuietLog,
    /// What happened before the current version; see [`Past`].
    past: Mutex<Past>,
}

/// A plugin's versions before the current one.
#[derive(Default)]
struct Past {
    /// The last version that served before the current one without its breaker opening: what a
    /// rollback restores.
    good: Option<Arc<Generation>>,
    /// The versions that served before, newest first.
    history: VecDeque<Arc<VersionStats>>,
    /// The last rollback, while the version it restored serves.
    rollback: Option<Rollback>,
    /// Versions rolled back, with the fault: refused until the file changes.
    rolled_back: HashMap<Arc<str>, String>,
    /// Rollbacks of this plugin so far.
    rollbacks: u64,
}

impl Slot {
    fn new(generation: Arc<Generation>) -> Self {
        Slot {
            current: ArcSwap::new(generation),
            uses: Mutex::new(Vec::new()),
            quiet: QuietLog::default(),
            past: Mutex::new(Past::default()),
        }
    }

    fn live_uses(&self) -> Vec<Arc<HandleCore>> {
        let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
        uses.retain(|u| u.strong_count() > 0);
        uses.iter().filter_map(Weak::upgrade).collect()
    }

    fn past(&self) -> std::sync::MutexGuard<'_, Past> {
        self.past.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `next` in place of the current version, which goes into the history (and, if its
    /// breakers never opened, becomes the version a rollback restores).
    fn publish(&self, next: Arc<Generation>) {
        let old = self.current.swap(next);
        let mut past = self.past();
        past.rollback = None;
        past.rolled_back.clear();
        if old.stats.trips.load(Ordering::Relaxed) == 0 {
            past.good = Some(old.clone());
        }
        past.history.push_front(old.stats.clone());
        past.history.truncate(HISTORY);
    }

    fn status(&self) -> PluginStatus {
        let g = self.current.load();
        let now = Instant::now();
        let s = &g.stats;
        let past = self.past();
        PluginStatus {
            name: g.name.to_string(),
            version: g.version.to_string(),
            source: s.source.clone(),
            kinds: g.kinds.clone(),
            calls: s.calls.load(Ordering::Relaxed),
            faults: s.faults.load(Ordering::Relaxed),
            trips: s.trips.load(Ordering::Relaxed),
            call_nanos_total: s.call_nanos.load(Ordering::Relaxed),
            loaded_at_unix: s.loaded_at_unix,
            cache_hit: g.cache_hit,
            uses: self.live_uses().iter().map(|u| u.status(&g, now)).collect(),
            rolled_back_from: past.rollback.clone(),
            rollbacks: past.rollbacks,
            previous_versions: past.history.iter().map(|v| v.status()).collect(),
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads a plugin file, refusing it before reading it whole when it is larger than `max` bytes or
/// does not start with a WebAssembly header: a stray large file in the watched directory must not
/// cost its size in memory. The read stops at `max` too, for a file that grows meanwhile.
fn read_plugin_file(path: &Path, name: &str, max: u64) -> Result<Vec<u8>, PluginError> {
    use std::io::Read;
    let io = |source| PluginError::Io {
        context: "cannot read plugin file",
        path: path.to_owned(),
        source,
    };
    let refuse = |reason: String| PluginError::NotWasm {
        name: name.to_owned(),
        source_desc: path.display().to_string(),
        reason,
    };
    let too_large = |len: u64| {
        refuse(format!(
            "the file is {len} bytes, more than `[plugins] max_file_size` ({max} bytes)"
        ))
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > max {
        return Err(too_large(len));
    }
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    engine::detect(&header[..got]).map_err(refuse)?;
    let mut bytes = Vec::with_capacity(len as usize);
    bytes.extend_from_slice(&header[..got]);
    file.take(max + 1 - got as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Everything behind a `PluginRuntime`.
pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    linker: Linker<StoreData>,
    pub(crate) opts: RuntimeOptions,
    /// The epoch ticker's interval.
    pub(crate) tick: std::time::Duration,
    pub(crate) call_ticks: u64,
    pub(crate) init_ticks: u64,
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    /// The last refusal of each plugin name, until a load of that name succeeds.
    refused: Mutex<BTreeMap<String, RefusedPlugin>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock_base: Instant,
    /// Serializes loads and new uses, so a use is always validated against the generation it will follow.
    load_lock: Mutex<()>,
}

impl RuntimeInner {
    pub(crate) fn new(opts: RuntimeOptions) -> Result<Arc<Self>, PluginError> {
        let engine = engine::new_engine(opts.fuel_per_call > 0)
            .map_err(|reason| PluginError::Runtime { reason })?;
        let mut linker = Linker::new(&engine);
        HostView::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |d| d).map_err(
            |e| PluginError::Runtime {
                reason: format!("cannot link the host imports: {e:#}"),
            },
        )?;
        if let Some(dir) = &opts.cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| PluginError::Io {
                context: "cannot create the plugin cache directory",
                path: dir.clone(),
                source,
            })?;
        }
        let tick = engine::tick_for(opts.call_deadline);
        Ok(Arc::new(RuntimeInner {
            engine,
            linker,
            tick,
            call_ticks: engine::ticks(opts.call_deadline, tick),
            init_ticks: engine::ticks(opts.init_deadline, tick),
            opts,
            slots: RwLock::new(HashMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            counters: Arc::new(Counters::default()),
            clock_base: Instant::now(),
            load_lock: Mutex::new(()),
        }))
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub(crate) fn plugins(&self) -> Vec<PluginStatus> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<PluginStatus> = slots.values().map(|s| s.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn refused(&self) -> Vec<RefusedPlugin> {
        let refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.values().cloned().collect()
    }

    /// Remembers that a load of `name` from `source` failed with `e`.
    fn record_refusal(&self, name: &str, source: &str, e: &PluginError) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.insert(
            name.to_owned(),
            RefusedPlugin {
                name: name.to_owned(),
                source: source.to_owned(),
                error: e.to_string(),
                at_unix: unix_now(),
            },
        );
    }

    /// Forgets the refusal of `name`; whether there was one.
    pub(crate) fn clear_refusal(&self, name: &str) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.remove(name).is_some()
    }

    /// The version of `name` that serves, if one does.
    pub(crate) fn loaded_version(&self, name: &str) -> Option<String> {
        self.slot(name)
            .map(|s| s.current.load().version.to_string())
    }

    pub(crate) fn load_file(&self, path: &Path) -> Result<PluginStatus, PluginError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| PluginError::NotWasm {
                name: path.display().to_string(),
                source_desc: path.display().to_string(),
                reason: "the file name is not valid UTF-8".into(),
            })?
            .to_owned();
        let bytes = read_plugin_file(path, &name, self.opts.max_file_size);
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(plugin = %name, "plugin refused: {e}");
                self.record_refusal(&name, &path.display().to_string(), &e);
                return Err(e);
            }
        };
        self.load_bytes(&name, &bytes, &path.display().to_string())
    }

    pub(crate) fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        source: &str,
    ) -> Result<PluginStatus, PluginError> {
        let _serial = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        let sha = engine::sha256_hex(bytes);
        let version = &sha[..12];
        let slot = self.slot(name);
        let old = slot.as_ref().map(|s| s.current.load_full());
        if let Some(old) = &old
            && &*old.version == version
        {
            // The same bytes again (a touch, a revert to what serves): nothing to load, and
            // nothing refused any more.
            self.clear_refusal(name);
            return Ok(slot.as_ref().expect("old is its current").status());
        }
        if let Some(fault) = slot
            .as_ref()
            .and_then(|s| s.past().rolled_back.get(version).cloned())
        {
            let e = PluginError::RolledBack {
                name: name.to_owned(),
                version: version.to_owned(),
                fault,
            };
            tracing::error!(
                plugin = name,
                source,
                "plugin version {version} refused: {e}"
            );
            self.record_refusal(name, source, &e);
            return Err(e);
        }
        let started = Instant::now();
        let result = self.prepare(name, bytes, source, &sha, slot.as_deref());
        let keeping = old
            .as_ref()
            .map_or_else(|| "none".to_owned(), |g| g.version.to_string());
        let generation = match result {
            Ok(g) => Arc::new(g),
            Err(e) => {
                tracing::error!(plugin = name, source, keeping = %keeping, "plugin version {version} refused: {e}");
                self.record_refusal(name, source, &e);
                return Err(e);
            }
        };
        self.clear_refusal(name);
        let kinds = generation.kinds.clone();
        let cache_hit = generation.cache_hit;
        let slot = match slot {
            Some(slot) => {
                slot.publish(generation);
                slot
            }
            None => {
                let slot = Arc::new(Slot::new(generation));
                self.slots
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned(), slot.clone());
                slot
            }
        };
        tracing::info!(
            plugin = name,
            version,
            source,
            replaced = %keeping,
            kinds = ?kinds,
            cache_hit,
            "plugin loaded in {} ms",
            started.elapsed().as_millis()
        );
        Ok(slot.status())
    }

    /// Puts back the version that served before `bad`, whose breaker opened within the rollback
    /// window of its load, after checking it still accepts every live use; `bad` is then refused
    /// until its file changes. Runs on its own thread (instances are made and `init` runs).
    pub(crate) fn roll_back(&self, slot: &Slot, bad: &Arc<Generation>, fault: &str) {
        let _serial = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        let name = &*bad.name;
        if !Arc::ptr_eq(&slot.current.load(), bad) {
            return; // Another version was loaded in the meantime.
        }
        let Some(good) = slot.past().good.clone() else {
            return;
        };
        for use_ in slot.live_uses() {
            if let Err(e) = use_.validate(self, &good) {
                tracing::error!(
                    plugin = name,
                    version = &*bad.version,
                    "plugin not rolled back to version {}: it refuses a use now: {e}",
                    good.version
                );
                return;
            }
        }
        slot.current.store(good.clone());
        bad.stats.rolled_back.store(true, Ordering::Relaxed);
        let mut past = slot.past();
        past.good = None;
        past.history.retain(|v| !Arc::ptr_eq(v, &good.stats));
        past.history.push_front(bad.stats.clone());
        past.history.truncate(HISTORY);
        past.rolled_back
            .insert(bad.version.clone(), fault.to_owned());
        past.rollbacks += 1;
        past.rollback = Some(Rollback {
            version: bad.version.to_string(),
            fault: fault.to_owned(),
            at_unix: unix_now(),
        });
        drop(past);
        tracing::error!(
            plugin = name,
            version = &*good.version,
            rolled_back_from = &*bad.version,
            "plugin rolled back to version {}: version {} tripped its circuit breaker {} s after it was loaded ({fault}); it is not loaded again until its file changes",
            good.version,
            bad.version,
            bad.loaded.elapsed().as_secs()
        );
    }

    /// Compiles and validates `bytes` as a plugin without publishing it (for `sluicegate plugin build`).
    pub(crate) fn check_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), PluginError> {
        let sha = engine::sha256_hex(bytes);
        self.prepare(name, bytes, "build output", &sha, None)
            .map(|_| ())
    }

    /// Compiles and validates a new generation, including `init` for every live use of `slot`.
    fn prepare(
        &self,
        name: &str,
        bytes: &[u8],
        source: &str,
        sha: &str,
        slot: Option<&Slot>,
    ) -> Result<Generation, PluginError> {
        let version: Arc<str> = Arc::from(&sha[..12]);
        let not_wasm = |reason: String| PluginError::NotWasm {
            name: name.to_owned(),
            source_desc: source.to_owned(),
            reason,
        };
        let compile_err = |reason: String| PluginError::Compile {
            name: name.to_owned(),
            version: version.to_string(),
            reason,
        };
        let kind = engine::detect(bytes).map_err(not_wasm)?;
        let compiled = engine::compile(
            &self.engine,
            bytes,
            kind,
            sha,
            self.opts.cache_dir.as_deref(),
        )
        .map_err(compile_err)?;
        if let Some(theirs) = foreign_version(&self.engine, &compiled.component) {
            return Err(compile_err(format!(
                "built against sluicegate:plugin@{theirs}, but this Sluicegate serves {WIT_PACKAGE}: \
                 rebuild the plugin with sluicegate-sdk {WIT_VERSION} (`sluicegate plugin build`)"
            )));
        }
        let pre = self
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| compile_err(format!("cannot link against the host's imports: {e:#}")))?;
        let balance = balance::GuestIndices::new(&pre).ok();
        let route = route::GuestIndices::new(&pre).ok();
        let filter = filter::GuestIndices::new(&pre).ok();
        let health = health::GuestIndices::new(&pre).ok();
        let kinds: Vec<Kind> = [
            (Kind::Balancer, balance.is_some()),
            (Kind::Router, route.is_some()),
            (Kind::Filter, filter.is_some()),
            (Kind::HealthPolicy, health.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, has)| has.then_some(k))
        .collect();
        if kinds.is_empty() {
            return Err(compile_err(format!(
                "exports none of {WIT_PACKAGE}'s balance, route, filter or health"
            )));
        }
        let generation = Generation {
            seq: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name),
            version: version.clone(),
            kinds,
            pre,
            balance,
            route,
            filter,
            health,
            loaded: Instant::now(),
            cache_hit: compiled.cache_hit,
            stats: Arc::new(VersionStats {
                version,
                source: source.to_owned(),
                loaded_at_unix: unix_now(),
                calls: AtomicU64::new(0),
                faults: AtomicU64::new(0),
                call_nanos: AtomicU64::new(0),
                trips: AtomicU64::new(0),
                rolled_back: AtomicBool::new(false),
            }),
            rolling_back: AtomicBool::new(false),
        };
        instance::typecheck(self, &generation)?;
        if let Some(slot) = slot {
            for use_ in slot.live_uses() {
                use_.validate(self, &generation)?;
            }
        }
        Ok(generation)
    }

    /// Registers a new use of `plugin` after checking it exports `kind` and accepts `settings`.
    pub(crate) fn new_use(
        self: &Arc<Self>,
        plugin: &str,
        kind: Kind,
        settings: &str,
        clusters: Vec<String>,
        facts: Arc<dyn EndpointFacts>,
    ) -> Result<Arc<HandleCore>, PluginError> {
        // An embedded default is compiled the first time a use names it (unless a file of the
        // same name was loaded first: a user's plugin may replace a default).
        if self.slot(plugin).is_none()
            && let Some(bytes) = embedded::lookup(plugin)
        {
            self.load_bytes(plugin, bytes, "embedded")?;
        }
        let _serial = self.load_lock.lock().unwrap_or_else(|e| e.into_inner());
        let slot = self.slot(plugin).ok_or_else(|| PluginError::NotFound {
            name: plugin.to_owned(),
            embedded: embedded::names().collect::<Vec<_>>().join(", "),
        })?;
        let generation = slot.current.load_full();
        let core = Arc::new(HandleCore::new(
            self.clone(),
            slot.clone(),
            kind,
            settings,
            clusters,
            facts,
        ));
        if let Err(e) = core.validate(self, &generation) {
            tracing::error!(
                plugin,
                version = &*generation.version,
                "plugin refused as {kind:?}: {e}"
            );
            return Err(e);
        }
        slot.uses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&core));
        Ok(core)
    }
}

/// The version of the `sluicegate:plugin` package a component was built against, when it is not
/// the one this host serves (read from the names of its imports and exports).
fn foreign_version(engine: &Engine, component: &wasmtime::component::Component) -> Option<String> {
    let ty = component.component_type();
    let imports = ty.imports(engine).map(|(name, _)| name);
    let exports = ty.exports(engine).map(|(name, _)| name);
    imports
        .chain(exports)
        .filter_map(|name| name.strip_prefix("sluicegate:plugin/")?.split_once('@'))
        .map(|(_, version)| version)
        .find(|&version| version != WIT_VERSION)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of this test process.
    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sg-read-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn plugin_files_are_refused_by_size_and_header_before_being_read_whole() {
        let d = dir("plugin-files");
        let big = d.join("big.wasm");
        // Sparse: 1 GiB on paper, nothing on disk, and nothing read.
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let e = read_plugin_file(&big, "big", 64 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1073741824 bytes, more than"), "{e}");
        assert!(e.contains("max_file_size"), "{e}");

        let text = d.join("text.wasm");
        std::fs::write(&text, b"#!/bin/sh\necho not wasm\n").unwrap();
        let e = read_plugin_file(&text, "text", 64 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a WebAssembly file"), "{e}");

        let short = d.join("short.wasm");
        std::fs::write(&short, b"\0as").unwrap();
        let e = read_plugin_file(&short, "short", 64 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a WebAssembly file"), "{e}");

        let good = d.join("good.wasm");
        let bytes = b"\0asm\x01\0\0\0\x00\x01\x02".to_vec();
        std::fs::write(&good, &bytes).unwrap();
        assert_eq!(read_plugin_file(&good, "good", 64 << 20).unwrap(), bytes);
        let e = read_plugin_file(&good, "good", 10).unwrap_err().to_string();
        assert!(e.contains("11 bytes, more than"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

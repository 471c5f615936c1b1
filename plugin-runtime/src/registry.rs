//! Plugin names, their current generation (one compiled version, published atomically with arc-swap) and the
//! live uses of each, plus loading: compile, validate the exports, init with the settings of every live use, and
//! only then publish. A failed load leaves the previous generation serving.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use wasmtime::Engine;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::bindings::{HostView, balance, filter, health, route};
use super::embedded;
use super::engine;
use super::instance::{self, HandleCore};
use super::store::{Counters, StoreData};
use super::{
    EndpointFacts, Kind, PluginError, PluginStatus, RuntimeOptions, WIT_PACKAGE, WIT_VERSION,
};

/// One compiled version of a plugin, ready to instantiate.
pub(crate) struct Generation {
    pub(crate) name: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) source: String,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) pre: InstancePre<StoreData>,
    pub(crate) balance: Option<balance::GuestIndices>,
    pub(crate) route: Option<route::GuestIndices>,
    pub(crate) filter: Option<filter::GuestIndices>,
    pub(crate) health: Option<health::GuestIndices>,
    pub(crate) loaded_at_unix: u64,
    pub(crate) cache_hit: bool,
    pub(crate) calls: AtomicU64,
    pub(crate) faults: AtomicU64,
    pub(crate) call_nanos: AtomicU64,
}

impl Generation {
    fn status(&self) -> PluginStatus {
        PluginStatus {
            name: self.name.to_string(),
            version: self.version.to_string(),
            source: self.source.clone(),
            kinds: self.kinds.clone(),
            calls: self.calls.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            call_nanos_total: self.call_nanos.load(Ordering::Relaxed),
            loaded_at_unix: self.loaded_at_unix,
            cache_hit: self.cache_hit,
        }
    }
}

/// A plugin name: its current generation and the uses that follow it.
pub(crate) struct Slot {
    pub(crate) current: ArcSwap<Generation>,
    uses: Mutex<Vec<Weak<HandleCore>>>,
}

impl Slot {
    fn live_uses(&self) -> Vec<Arc<HandleCore>> {
        let mut uses = self.uses.lock().unwrap_or_else(|e| e.into_inner());
        uses.retain(|u| u.strong_count() > 0);
        uses.iter().filter_map(Weak::upgrade).collect()
    }
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
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock_base: Instant,
    /// Serializes loads and new uses, so a use is always validated against the generation it will follow.
    load_lock: Mutex<()>,
}

impl RuntimeInner {
    pub(crate) fn new(opts: RuntimeOptions) -> Result<Arc<Self>, PluginError> {
        let engine = engine::new_engine().map_err(|reason| PluginError::Runtime { reason })?;
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
        let mut all: Vec<PluginStatus> =
            slots.values().map(|s| s.current.load().status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
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
        let bytes = std::fs::read(path).map_err(|source| PluginError::Io {
            context: "cannot read plugin file",
            path: path.to_owned(),
            source,
        });
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(plugin = %name, "plugin refused: {e}");
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
            return Ok(old.status());
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
                return Err(e);
            }
        };
        let status = generation.status();
        match slot {
            Some(slot) => slot.current.store(generation),
            None => {
                let slot = Arc::new(Slot {
                    current: ArcSwap::new(generation),
                    uses: Mutex::new(Vec::new()),
                });
                self.slots
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned(), slot);
            }
        }
        tracing::info!(
            plugin = name,
            version,
            source,
            replaced = %keeping,
            kinds = ?status.kinds,
            cache_hit = status.cache_hit,
            "plugin loaded in {} ms",
            started.elapsed().as_millis()
        );
        Ok(status)
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
            name: Arc::from(name),
            version,
            source: source.to_owned(),
            kinds,
            pre,
            balance,
            route,
            filter,
            health,
            loaded_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cache_hit: compiled.cache_hit,
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            call_nanos: AtomicU64::new(0),
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

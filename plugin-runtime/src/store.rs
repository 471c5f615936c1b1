//! The state each plugin instance's store carries, and the `host`/`types` imports implemented over it: logging
//! tagged with the plugin's name and version, a monotonic clock, a per-instance PRNG, the host's endpoint facts,
//! plugin counters, and the `request`/`response` resources read lazily from the host's own heads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable};

use super::bindings::{RequestRef, ResponseRef, host, types};
use super::{EndpointFacts, EndpointId};

/// Longest plugin log message kept, in bytes.
const MAX_LOG_LINE: usize = 4096;

/// How many distinct counter names one instance may create (bounds metric cardinality).
const MAX_COUNTERS_PER_INSTANCE: usize = 256;

/// The registry behind `counter-add`: (plugin, name) -> value, shared by every instance of the runtime.
#[derive(Default)]
pub(crate) struct Counters {
    map: Mutex<BTreeMap<(String, String), Arc<AtomicU64>>>,
}

impl Counters {
    /// The counter cell for (plugin, name), created at zero.
    fn cell(&self, plugin: &str, name: &str) -> Arc<AtomicU64> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((plugin.to_owned(), name.to_owned()))
            .or_default()
            .clone()
    }

    /// Every counter with its current value, sorted by plugin then name.
    pub(crate) fn snapshot(&self) -> Vec<(String, String, u64)> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|((p, n), v)| (p.clone(), n.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Memory limit of one instance; remembers that the limit was hit so the error can say so.
pub(crate) struct Limiter {
    limit: usize,
    pub(crate) exhausted: bool,
}

impl Limiter {
    pub(crate) fn new(limit: usize) -> Self {
        Limiter {
            limit,
            exhausted: false,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            // Trap right away rather than letting the guest's allocator abort: the instance is dropped either
            // way, and this way the error says why.
            self.exhausted = true;
            wasmtime::bail!(
                "memory limit of {} bytes reached (wanted {desired})",
                self.limit
            );
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20 && maximum.is_none_or(|max| desired <= max))
    }
}

/// The data of one instance's store.
pub(crate) struct StoreData {
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    plugin: Arc<str>,
    version: Arc<str>,
    facts: Arc<dyn EndpointFacts>,
    clock_base: Instant,
    rng: u64,
    counters: Arc<Counters>,
    counter_cells: HashMap<String, Arc<AtomicU64>>,
    /// Endpoints already tried by the request being picked for (empty outside `pick`).
    tried: Vec<EndpointId>,
    /// What the plugin's panic hook said just before it trapped (see [`PANIC_PREFIX`]).
    pub(crate) panic: Option<String>,
    /// The fuel of one decision (`fuel_per_call`).
    pub(crate) fuel_per_decision: u64,
    /// The fuel the running call was given.
    pub(crate) budget: u64,
    /// Host calls the running call may still make: its fuel over [`HOST_CALL_FUEL`]. Fuel counts
    /// only Wasm instructions, and a plugin looping on a host call would otherwise spin for a
    /// hundred times longer before it runs out.
    pub(crate) host_calls_left: u64,
}

/// What one host call counts for, in fuel (a host call costs about as much as a hundred Wasm
/// instructions).
pub(crate) const HOST_CALL_FUEL: u64 = 100;

/// The trap of a call that made more host calls than its fuel allows.
#[derive(Debug, thiserror::Error)]
#[error("made more host calls than its fuel allows (one per {HOST_CALL_FUEL} units)")]
pub(crate) struct HostCallsExhausted;

/// An `error` log line that starts with this is the plugin's panic message, handed over by its
/// panic hook right before the trap (the SDK's hook writes `panicked at <file>:<line>:<col>: <text>`):
/// the host puts it in the fault's one line instead of logging it apart.
pub(crate) const PANIC_PREFIX: &str = "panicked at ";

/// Everything needed to make a store for one instance.
pub(crate) struct StoreParts {
    pub(crate) plugin: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) facts: Arc<dyn EndpointFacts>,
    pub(crate) clock_base: Instant,
    pub(crate) counters: Arc<Counters>,
    pub(crate) memory_limit: usize,
    pub(crate) fuel_per_decision: u64,
}

impl StoreData {
    pub(crate) fn new(p: StoreParts) -> Self {
        StoreData {
            table: ResourceTable::new(),
            limiter: Limiter::new(p.memory_limit),
            plugin: p.plugin,
            version: p.version,
            facts: p.facts,
            clock_base: p.clock_base,
            rng: seed(),
            counters: p.counters,
            counter_cells: HashMap::new(),
            tried: Vec::new(),
            panic: None,
            fuel_per_decision: p.fuel_per_decision,
            budget: 0,
            host_calls_left: u64::MAX,
        }
    }

    /// Counts one host call against the call's budget; past it, the call traps.
    #[inline]
    fn charge(&mut self) -> wasmtime::Result<()> {
        match self.host_calls_left.checked_sub(1) {
            Some(left) => {
                self.host_calls_left = left;
                Ok(())
            }
            None => Err(wasmtime::Error::new(HostCallsExhausted)),
        }
    }

    /// Runs a host call's body once it is counted against the call's budget.
    #[inline]
    fn charged<T>(&mut self, body: impl FnOnce(&mut Self) -> T) -> wasmtime::Result<T> {
        self.charge()?;
        Ok(body(self))
    }

    /// Sets what `request.tried-endpoints` answers (reusing the buffer: no allocation per pick).
    pub(crate) fn set_tried(&mut self, tried: &[EndpointId]) {
        self.tried.clear();
        self.tried.extend_from_slice(tried);
    }
}

/// A seed that differs per instance: the clock, a process-wide sequence and std's random hasher keys.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

/// splitmix64: fast, well mixed, and plenty for load balancing (not for secrets, and the WIT promises none).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl host::Host for StoreData {
    fn log(&mut self, level: host::Level, mut message: String) -> wasmtime::Result<()> {
        self.charge()?;
        if message.len() > MAX_LOG_LINE {
            // A plugin cannot flood the proxy's log with one huge line.
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" [truncated]");
        }
        if matches!(level, host::Level::Error) && message.starts_with(PANIC_PREFIX) {
            self.panic = Some(message);
            return Ok(());
        }
        let (p, v) = (&*self.plugin, &*self.version);
        match level {
            host::Level::Trace => tracing::trace!(plugin = p, version = v, "{message}"),
            host::Level::Debug => tracing::debug!(plugin = p, version = v, "{message}"),
            host::Level::Info => tracing::info!(plugin = p, version = v, "{message}"),
            host::Level::Warn => tracing::warn!(plugin = p, version = v, "{message}"),
            host::Level::Error => tracing::error!(plugin = p, version = v, "{message}"),
        }
        Ok(())
    }

    fn now_nanos(&mut self) -> wasmtime::Result<u64> {
        self.charge()?;
        Ok(u64::try_from(self.clock_base.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn random_u64(&mut self) -> wasmtime::Result<u64> {
        self.charge()?;
        Ok(splitmix64(&mut self.rng))
    }

    fn in_flight(&mut self, endpoint: u32) -> wasmtime::Result<u32> {
        self.charge()?;
        Ok(self.facts.in_flight(endpoint))
    }

    fn latency_ewma_micros(&mut self, endpoint: u32) -> wasmtime::Result<u32> {
        self.charge()?;
        Ok(self.facts.latency_ewma_micros(endpoint))
    }

    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        self.charge()?;
        if let Some(cell) = self.counter_cells.get(&name) {
            cell.fetch_add(delta, Ordering::Relaxed);
            return Ok(());
        }
        if self.counter_cells.len() >= MAX_COUNTERS_PER_INSTANCE {
            tracing::warn!(
                plugin = &*self.plugin,
                version = &*self.version,
                "counter `{name}` dropped: more than {MAX_COUNTERS_PER_INSTANCE} counter names"
            );
            return Ok(());
        }
        let cell = self.counters.cell(&self.plugin, &name);
        cell.fetch_add(delta, Ordering::Relaxed);
        self.counter_cells.insert(name, cell);
        Ok(())
    }
}

impl types::Host for StoreData {}

impl StoreData {
    fn request(&self, r: &Resource<RequestRef>) -> Option<&super::RequestHead> {
        self.table.get(r).ok().and_then(|r| r.0.as_deref())
    }

    fn response(&self, r: &Resource<ResponseRef>) -> Option<&super::ResponseHead> {
        self.table.get(r).ok().and_then(|r| r.0.as_deref())
    }
}

/// The first value of a header as UTF-8, if present and valid.
fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl types::HostRequest for StoreData {
    fn method(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<String> {
        self.charged(|this| {
            this.request(&r)
                .map(|h| h.parts.method.as_str().to_owned())
                .unwrap_or_default()
        })
    }

    fn path(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<String> {
        self.charged(|this| {
            this.request(&r)
                .map(|h| h.parts.uri.path().to_owned())
                .unwrap_or_default()
        })
    }

    fn query(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<Option<String>> {
        self.charged(|this| this.request(&r)?.parts.uri.query().map(str::to_owned))
    }

    fn host(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<Option<String>> {
        self.charged(|this| {
            let head = this.request(&r)?;
            if let Some(host) = head.parts.uri.host() {
                return Some(host.to_owned());
            }
            let value = header_str(&head.parts.headers, "host")?;
            let authority: http::uri::Authority = value.parse().ok()?;
            Some(authority.host().to_owned())
        })
    }

    fn header(
        &mut self,
        r: Resource<RequestRef>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        self.charged(|this| header_str(&this.request(&r)?.parts.headers, &name).map(str::to_owned))
    }

    fn cookie(
        &mut self,
        r: Resource<RequestRef>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        self.charged(|this| {
            let head = this.request(&r)?;
            head.parts
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        })
    }

    fn client_ip(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<types::IpAddress> {
        self.charged(|this| match this.request(&r).map(|h| h.client.ip()) {
            Some(std::net::IpAddr::V6(ip)) => {
                let s = ip.segments();
                types::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
            }
            Some(std::net::IpAddr::V4(ip)) => {
                let o = ip.octets();
                types::IpAddress::Ipv4((o[0], o[1], o[2], o[3]))
            }
            None => types::IpAddress::Ipv4((0, 0, 0, 0)),
        })
    }

    fn request_id(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<String> {
        self.charged(|this| {
            this.request(&r)
                .map(|h| h.request_id.as_str().to_owned())
                .unwrap_or_default()
        })
    }

    fn tried_endpoints(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<Vec<EndpointId>> {
        self.charged(|this| {
            let _ = r;
            this.tried.clone()
        })
    }

    fn drop(&mut self, r: Resource<RequestRef>) -> wasmtime::Result<()> {
        // Guests only ever borrow requests (the WIT has no owned request), so this is never called for the
        // host's own entry; there is nothing to free.
        let _ = r;
        Ok(())
    }
}

impl types::HostResponse for StoreData {
    fn status(&mut self, r: Resource<ResponseRef>) -> wasmtime::Result<u16> {
        self.charged(|this| this.response(&r).map_or(0, |h| h.status.as_u16()))
    }

    fn header(
        &mut self,
        r: Resource<ResponseRef>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        self.charged(|this| header_str(&this.response(&r)?.headers, &name).map(str::to_owned))
    }

    fn endpoint(&mut self, r: Resource<ResponseRef>) -> wasmtime::Result<Option<u32>> {
        self.charged(|this| this.response(&r)?.endpoint)
    }

    fn cluster(&mut self, r: Resource<ResponseRef>) -> wasmtime::Result<Option<String>> {
        self.charged(|this| this.response(&r)?.cluster.clone())
    }

    fn drop(&mut self, r: Resource<ResponseRef>) -> wasmtime::Result<()> {
        let _ = r;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_differs_per_step_and_seed() {
        let (mut a, mut b) = (1u64, 2u64);
        let (x1, x2, y1) = (splitmix64(&mut a), splitmix64(&mut a), splitmix64(&mut b));
        assert_ne!(x1, x2);
        assert_ne!(x1, y1);
        assert_ne!(seed(), seed());
    }

    #[test]
    fn limiter_refuses_growth_past_the_limit_and_remembers() {
        use wasmtime::ResourceLimiter;
        let mut l = Limiter::new(1 << 20);
        assert!(l.memory_growing(0, 1 << 19, None).unwrap());
        assert!(!l.exhausted);
        assert!(l.memory_growing(0, 2 << 20, None).is_err());
        assert!(l.exhausted);
    }
}

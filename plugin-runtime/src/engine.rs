//! The wasmtime engine (slim, synchronous, fuel-metered and epoch-interrupted), the one epoch ticker thread per runtime, turning
//! bytes into a compiled component (componentizing core modules), and the on-disk cache of compiled artifacts.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::registry::RuntimeInner;

/// Interval of the epoch ticker, the resolution of call deadlines: a tenth of the call deadline,
/// between 1 and 10 ms. A deadline is enforced within one tick; ticking faster only costs wake-ups
/// (a thread woken every millisecond shows up in a proxy's per-request CPU).
pub(crate) fn tick_for(call_deadline: Duration) -> Duration {
    (call_deadline / 10).clamp(Duration::from_millis(1), Duration::from_millis(10))
}

/// The engine every plugin of a runtime is compiled for.
/// `fuel`: whether calls are metered (they are unless a bench measures what metering costs).
pub(crate) fn new_engine(fuel: bool) -> Result<Engine, String> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        // Plugins are called synchronously from the request path; no component-model async machinery.
        .concurrency_support(false)
        // Fuel bounds a call's CPU the same way on an idle or a loaded machine; the epoch deadline
        // stays as the backstop for time spent outside Wasm.
        .consume_fuel(fuel)
        .epoch_interruption(true);
    Engine::new(&config).map_err(|e| format!("cannot create the wasmtime engine: {e}"))
}

/// Epoch ticks that cover `deadline` whatever the phase of the ticker (one extra tick).
pub(crate) fn ticks(deadline: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    let n = deadline.as_nanos().div_ceil(tick).max(1);
    u64::try_from(n).unwrap_or(u64::MAX / 2) + 1
}

/// Starts the runtime's one ticker thread; it stops by itself once the runtime is gone.
pub(crate) fn start_ticker(inner: &Arc<RuntimeInner>) {
    let weak: Weak<RuntimeInner> = Arc::downgrade(inner);
    let engine = inner.engine.clone();
    let tick = inner.tick;
    let spawned = std::thread::Builder::new()
        .name("sluicegate-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                if weak.strong_count() == 0 {
                    break;
                }
                engine.increment_epoch();
            }
        });
    if let Err(e) = spawned {
        // Without a ticker deadlines never fire; say so loudly but keep running (plugins still work).
        tracing::error!(
            "cannot start the plugin epoch ticker, call deadlines are not enforced: {e}"
        );
    }
}

/// Whether bytes are a core module or a component (from the 8-byte header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WasmKind {
    /// A core module (e.g. built with wit-bindgen for wasm32-unknown-unknown).
    Module,
    /// A component.
    Component,
}

/// Tells modules from components, or says why the bytes are neither.
pub(crate) fn detect(bytes: &[u8]) -> Result<WasmKind, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly file (no `\\0asm` header)".into());
    }
    let header: [u8; 4] = [bytes[4], bytes[5], bytes[6], bytes[7]];
    match header {
        [1, 0, 0, 0] => Ok(WasmKind::Module),
        [0x0d, 0, 1, 0] => Ok(WasmKind::Component),
        [a, b, c, d] => Err(format!(
            "unsupported WebAssembly version/layer {:#x} {:#x}",
            u16::from_le_bytes([a, b]),
            u16::from_le_bytes([c, d])
        )),
    }
}

/// Turns a core module with wit-bindgen's component-type sections into a component.
pub(crate) fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("cannot turn the core module into a component: {e:#}"))
}

/// Full sha256 of bytes, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A compiled component and whether it came from the disk cache.
pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) cache_hit: bool,
}

/// Compiles bytes (module or component) for `engine`, through the disk cache when there is one. `sha` is the
/// full sha256 of `bytes`; the cache key adds the engine's compatibility hash and our own version, since
/// componentizing depends on the wit-component we were built with.
pub(crate) fn compile(
    engine: &Engine,
    bytes: &[u8],
    kind: WasmKind,
    sha: &str,
    cache_dir: Option<&Path>,
) -> Result<Compiled, String> {
    let cache_file = cache_dir.map(|dir| dir.join(cache_name(engine, sha)));
    if let Some(file) = &cache_file
        && file.is_file()
    {
        match deserialize_own_cache_file(engine, file) {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    cache_hit: true,
                });
            }
            Err(e) => tracing::warn!(
                "ignoring unusable plugin cache file `{}`: {e}",
                file.display()
            ),
        }
    }
    let component = match kind {
        WasmKind::Module => {
            let encoded = componentize(bytes)?;
            Component::new(engine, &encoded)
        }
        WasmKind::Component => Component::new(engine, bytes),
    };
    release_freed_heap();
    let component = component.map_err(|e| format!("{e:#}"))?;
    if let Some(file) = &cache_file
        && let Err(e) = write_cache(&component, file)
    {
        tracing::warn!("cannot write plugin cache file `{}`: {e}", file.display());
    }
    Ok(Compiled {
        component,
        cache_hit: false,
    })
}

/// Gives the heap memory that compiling freed back to the system. Cranelift's scratch memory (~9 MB
/// for the embedded plugins) is freed in the allocator's arenas of wasmtime's compile threads, which
/// glibc keeps mapped: without this the proxy carries it in its resident memory for good.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` only hands free pages of the arenas back to the kernel, under the arenas'
    // own locks; it touches no memory that is in use and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The cache file name: content hash, engine compatibility hash, our version.
fn cache_name(engine: &Engine, sha: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    format!("{sha}-{:016x}.cwasm", h.finish())
}

/// Writes a compiled component atomically (temp file + rename), so a reader never sees half a file.
fn write_cache(component: &Component, file: &Path) -> Result<(), String> {
    let bytes = component.serialize().map_err(|e| format!("{e:#}"))?;
    let dir = file.parent().ok_or("cache file has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let tmp = tmp_name(file);
    std::fs::write(&tmp, &bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

fn tmp_name(file: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    PathBuf::from(name)
}

/// Loads a compiled artifact from our cache directory.
#[allow(unsafe_code)]
fn deserialize_own_cache_file(engine: &Engine, file: &Path) -> Result<Component, String> {
    // SAFETY: wasmtime requires that deserialized bytes were produced by `serialize` of a compatible engine and
    // not tampered with. We only read files that this runtime wrote itself (atomically, via rename) into the
    // cache directory the operator configured for us, named by content hash and engine compatibility hash;
    // wasmtime additionally checks the engine compatibility header of the file.
    unsafe { Component::deserialize_file(engine, file) }.map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_tells_modules_components_and_junk_apart() {
        assert_eq!(detect(b"\0asm\x01\0\0\0"), Ok(WasmKind::Module));
        assert_eq!(detect(b"\0asm\x0d\0\x01\0"), Ok(WasmKind::Component));
        assert!(
            detect(b"#!/bin/sh\necho hi")
                .unwrap_err()
                .contains("not a WebAssembly file")
        );
        assert!(
            detect(b"\0asm\x02\0\0\0")
                .unwrap_err()
                .contains("unsupported")
        );
        assert!(detect(b"\0as").is_err());
    }

    #[test]
    fn ticks_cover_the_deadline() {
        let ms = Duration::from_millis(1);
        assert_eq!(ticks(Duration::from_millis(10), ms), 11);
        assert_eq!(ticks(Duration::from_micros(1500), ms), 3);
        assert_eq!(ticks(Duration::ZERO, ms), 2);
        assert_eq!(ticks(Duration::from_millis(50), 5 * ms), 11);
        assert_eq!(tick_for(Duration::from_millis(50)), 5 * ms);
        assert_eq!(tick_for(Duration::from_millis(2)), ms);
        assert_eq!(tick_for(Duration::from_secs(5)), 10 * ms);
    }

    #[test]
    fn engine_builds_and_cache_names_are_stable() {
        let engine = new_engine(true).unwrap();
        let sha = sha256_hex(b"abc");
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(cache_name(&engine, &sha), cache_name(&engine, &sha));
        assert!(cache_name(&engine, &sha).starts_with(&sha));
    }
}

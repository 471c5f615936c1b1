//! Shared helpers of the plugin runtime tests: build the SDK helper's plugin crates once per test binary with
//! the real build command, make requests and pools, and capture the log so tests can check the reasons given.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sluicegate::plugin::{PluginRuntime, PoolEndpoint, RequestHead};
use sluicegate_plugin_build::build_plugin;

/// The repository root (the workspace above `host/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// Builds the plugin crate at `rel` (relative to the repo root) once per test binary and returns the component.
/// Builds are serialized (build_plugin holds a process-wide lock; this map's lock is held while building too,
/// so two tests asking for the same crate build it once).
pub fn built(rel: &str) -> Vec<u8> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut map = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let path = match map.get(rel) {
        Some(p) => p.clone(),
        None => {
            let p = build_plugin(&repo_root().join(rel), None).unwrap_or_else(|e| panic!("{e}"));
            map.insert(rel.to_owned(), p.clone());
            p
        }
    };
    std::fs::read(&path).expect("built plugin is readable")
}

/// A GET request for `path` with `headers`.
pub fn request(path: &str, headers: &[(&str, &str)]) -> Arc<RequestHead> {
    let mut b = http::Request::builder().uri(path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let (parts, ()) = b.body(()).expect("request").into_parts();
    Arc::new(RequestHead {
        parts,
        client: "192.0.2.1:40000".parse().expect("addr"),
        request_id: "req-1".into(),
    })
}

/// A pool with the given endpoint ids, all healthy.
pub fn pool(ids: &[u32]) -> Vec<PoolEndpoint> {
    ids.iter()
        .map(|&id| PoolEndpoint {
            id,
            address: format!("10.0.0.{id}:80"),
            weight: 1,
            healthy: true,
            metadata: vec![],
        })
        .collect()
}

/// Writes `bytes` to `path` atomically (temp file + rename), as a deploy would.
pub fn install(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).expect("write temp plugin");
    std::fs::rename(&tmp, path).expect("rename plugin into place");
}

/// Waits (bounded) until `plugin` is loaded at `version`.
pub fn wait_for_version(rt: &PluginRuntime, plugin: &str, version: &str, within: Duration) {
    let start = Instant::now();
    loop {
        if rt
            .plugins()
            .iter()
            .any(|p| p.name == plugin && p.version == version)
        {
            return;
        }
        assert!(
            start.elapsed() < within,
            "`{plugin}` never reached version {version}: {:?}",
            rt.plugins()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The short version (sha256 prefix) the runtime gives `bytes`.
pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..12].to_owned()
}

/// The log of this test binary, captured from every thread.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits (bounded) until a line contains every one of `needles`, and returns it.
    pub fn wait_for_line(&self, needles: &[&str], within: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self
                .text()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_owned();
            }
            assert!(
                start.elapsed() < within,
                "no log line with {needles:?} in:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a global subscriber writing into a buffer, so logs of watcher and worker threads are seen.
pub fn log() -> Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("first subscriber of this test binary");
        log
    })
    .clone()
}

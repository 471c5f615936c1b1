//! The plugin directory watcher: loads every `*.wasm` at start, then reloads changed files off the request path
//! (debounced, on its own thread). A deleted file keeps its last good version serving, with a warning
//! (or, when it never loaded, a warning that says so).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

use super::PluginError;
use super::registry::RuntimeInner;

/// How long a file must be quiet before it is loaded (editors and copies write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches a plugin directory until dropped.
pub struct PluginWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl PluginWatcher {
    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl std::fmt::Debug for PluginWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginWatcher")
            .field("dir", &self.dir)
            .finish()
    }
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        // Dropping the notify watcher closes the event channel, which ends the reload thread.
        drop(self.watcher.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_wasm(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
}

pub(crate) fn watch_dir(
    inner: &Arc<RuntimeInner>,
    dir: &Path,
) -> Result<(PluginWatcher, Vec<PluginError>), PluginError> {
    let io = |context, source| PluginError::Io {
        context,
        path: dir.to_owned(),
        source,
    };
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).map_err(|e| PluginError::Runtime {
        reason: format!("cannot watch `{}`: {e}", dir.display()),
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| PluginError::Runtime {
            reason: format!("cannot watch `{}`: {e}", dir.display()),
        })?;
    // Start watching before the first scan so a file written in between is not missed.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io("cannot read plugin directory", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_wasm(p) && p.is_file())
        .collect();
    files.sort();
    let errors: Vec<PluginError> = files
        .iter()
        .filter_map(|p| inner.load_file(p).err())
        .collect();
    let weak = Arc::downgrade(inner);
    let thread = std::thread::Builder::new()
        .name("sluicegate-plugin-watch".into())
        .spawn(move || reload_loop(weak, rx))
        .map_err(|e| io("cannot start the plugin watcher thread for", e))?;
    tracing::info!(dir = %dir.display(), plugins = files.len(), failed = errors.len(), "watching plugin directory");
    Ok((
        PluginWatcher {
            watcher: Some(watcher),
            thread: Some(thread),
            dir: dir.to_owned(),
        },
        errors,
    ))
}

/// Says what a removed plugin file means: its last good version keeps serving, or, when none
/// ever loaded, that nothing changes (and its refusal is forgotten).
fn removed(rt: &RuntimeInner, path: &Path) {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    match rt.loaded_version(name) {
        Some(version) => tracing::warn!(
            file = %path.display(),
            "plugin file removed; its last good version {version} keeps serving until the next restart"
        ),
        None => {
            rt.clear_refusal(name);
            tracing::warn!(
                file = %path.display(),
                "plugin file removed; it never loaded, so no version of it serves"
            );
        }
    }
}

fn reload_loop(rt: Weak<RuntimeInner>, rx: mpsc::Receiver<notify::Result<notify::Event>>) {
    let mut pending = BTreeSet::new();
    loop {
        let wait = if pending.is_empty() {
            Duration::from_secs(3600)
        } else {
            DEBOUNCE
        };
        match rx.recv_timeout(wait) {
            Ok(Ok(event)) => {
                if matches!(
                    event.kind,
                    EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
                ) {
                    pending.extend(event.paths.into_iter().filter(|p| is_wasm(p)));
                }
            }
            Ok(Err(e)) => tracing::warn!("plugin directory watch error: {e}"),
            Err(RecvTimeoutError::Timeout) => {
                let Some(rt) = rt.upgrade() else { return };
                for path in std::mem::take(&mut pending) {
                    if path.is_file() {
                        // Errors are logged by load_file, and the previous version keeps serving.
                        let _ = rt.load_file(&path);
                    } else {
                        removed(&rt, &path);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

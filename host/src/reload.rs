//! Config reload on file change (notify) and SIGHUP. A new config is validated and built (every
//! plugin use created, so `init` runs) off the request path, then swapped in whole; a bad one is
//! refused with its error logged and the running config keeps serving.
//!
//! A reload changes routes, the router, filters, clusters (endpoints, balancers, timeouts, retry
//! policy; their connection pools and in-flight/latency figures start afresh) and the drain deadline.
//! Listeners (their limits too), the admin listener, the access log, the plugin directory and
//! `[limits]` stay as they were at start: changing them needs a restart (a reload that changes them logs a warning), except for
//! listener certificates and L4 clusters and SNI routes, which follow the reloaded config.

use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;
use crate::proxy::Proxy;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The config file's path as every load uses it: made absolute once, against the working directory.
/// Relative paths in the file (plugin directory, access log, certificates) are taken from its
/// directory as the path spells it, so a relative `--config` read once as given and then as the
/// watcher's absolute path gave two configs (`examples/plugins`, `/srv/examples/plugins`) whose
/// restart-only settings seemed to differ on every reload.
pub fn config_path(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Reads and validates the config file at `path`: the one way to, at start and at every reload.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    Config::load(&config_path(path))
}

/// The settings `new` changes that only a restart applies.
pub fn restart_only_changes(new: &Config, old: &Config) -> Vec<&'static str> {
    [
        (
            !crate::config::listeners_restart_equal(&new.listeners, &old.listeners),
            "listeners",
        ),
        (new.admin != old.admin, "admin"),
        (new.access_log != old.access_log, "access log"),
        (new.plugins != old.plugins, "plugins"),
        (new.limits != old.limits, "limits"),
    ]
    .into_iter()
    .filter_map(|(changed, what)| changed.then_some(what))
    .collect()
}

/// Keeps the config watcher alive; dropping it stops reloads.
pub struct Reloader {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reloads `path` into `proxy` whenever the file changes or the process gets SIGHUP.
pub fn watch(proxy: Arc<Proxy>, path: &Path) -> Result<Reloader, notify::Error> {
    let path = config_path(path);
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let name = path.file_name().map(|n| n.to_os_string());
    let file_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = file_tx.try_send(());
        }
    })?;
    // Watch the directory: editors and deploy tools replace the file rather than write it in place.
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let task = tokio::spawn(async move {
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = rx.recv() => if r.is_none() { break },
                _ = hup_recv => tracing::info!("SIGHUP: reloading the config"),
            }
            // Let a burst of writes settle, then read the file once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let _ = reload(&proxy, &path).await;
        }
    });
    drop(tx);
    Ok(Reloader {
        _watcher: watcher,
        task,
    })
}

/// Reads, validates and builds the config at `path`, then swaps it in. Returns the error when the
/// new config is refused (the running one keeps serving).
pub async fn reload(proxy: &Arc<Proxy>, path: &Path) -> Result<(), String> {
    let p = proxy.clone();
    let owned = path.to_path_buf();
    let built = tokio::task::spawn_blocking(move || {
        let config = load(&owned).map_err(|e| e.to_string())?;
        let old = p.gateway();
        let changed = restart_only_changes(&config, &old.config);
        if !changed.is_empty() {
            tracing::warn!(
                changed = %changed.join(", "),
                "listeners, admin, access log, plugin and limits settings change only on restart"
            );
        }
        Gateway::build_from(config, &p.runtime, &p.metrics, Some(&old)).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("reload task failed: {e}"))
    .and_then(|r| r);
    match built {
        Ok(gateway) => {
            if gateway.config == proxy.gateway().config {
                // A revert to the config that serves (or a SIGHUP without a change) is a good
                // reload too: an earlier refusal no longer stands.
                tracing::debug!("config unchanged");
                proxy.clear_reload_error();
                return Ok(());
            }
            proxy.swap(gateway);
            proxy.record_reload(Ok(()));
            tracing::info!(config = %path.display(), "config reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused: the running config keeps serving");
            proxy.record_reload(Err(e.clone()));
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path` spelled relative to the working directory (`../../tmp/...`).
    fn relative(path: &Path) -> PathBuf {
        let cwd = std::env::current_dir().unwrap();
        let mut rel = PathBuf::new();
        for _ in cwd.components().skip(1) {
            rel.push("..");
        }
        rel.join(path.strip_prefix("/").unwrap())
    }

    #[test]
    fn a_relative_config_path_reads_the_same_config_at_start_and_at_reload() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        let file = dir.path().join("sluicegate.toml");
        std::fs::write(
            &file,
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[access_log]\npath = \"access.log\"\n\n\
             [plugins]\ndir = \"plugins\"\n\n[[routes]]\ncluster = \"web\"\n\n\
             [[clusters]]\nname = \"web\"\n[[clusters.endpoints]]\naddress = \"127.0.0.1:9\"\n",
        )
        .unwrap();
        let given = relative(&file);
        assert!(given.is_relative() && given.exists(), "{}", given.display());
        // As `run` reads it, and as a reload does (the watcher's path).
        let at_start = load(&given).unwrap();
        let at_reload = load(&config_path(&given)).unwrap();
        assert_eq!(
            restart_only_changes(&at_reload, &at_start),
            Vec::<&str>::new()
        );
        assert!(at_start == at_reload);
        // Absolute, from the file's directory.
        let log = at_start.access_log.path.clone().unwrap();
        assert!(
            log.is_absolute() && log.ends_with("access.log"),
            "{}",
            log.display()
        );
        let same_dir = |p: &Path| p.canonicalize().unwrap() == dir.path().canonicalize().unwrap();
        assert!(same_dir(log.parent().unwrap()), "{}", log.display());
        let plugins = at_start.plugins.dir.clone().unwrap();
        assert!(plugins.is_absolute(), "{}", plugins.display());
        assert!(same_dir(&plugins.join("..")), "{}", plugins.display());
    }
}

//! Config reload on file change (notify) and SIGHUP. A new config is validated and built (every
//! plugin use created, so `init` runs) off the request path, then swapped in whole; a bad one is
//! refused with its error logged and the running config keeps serving.
//!
//! A reload changes routes, the router, filters, clusters (endpoints, balancers, timeouts, retry
//! policy; their connection pools and in-flight/latency figures start afresh) and the drain deadline.
//! Listeners, the admin listener, the access log and the plugin directory stay as they were at
//! start: changing them needs a restart (a reload that changes them logs a warning), except for
//! listener certificates and L4 clusters and SNI routes, which follow the reloaded config.

use crate::config::Config;
use crate::gateway::Gateway;
use crate::proxy::Proxy;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
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
        let config = Config::load(&owned).map_err(|e| e.to_string())?;
        let old = p.gateway();
        if !crate::config::listeners_restart_equal(&config.listeners, &old.config.listeners)
            || config.admin != old.config.admin
            || config.access_log != old.config.access_log
            || config.plugins != old.config.plugins
        {
            tracing::warn!(
                "listeners, admin, access log and plugin settings change only on restart"
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
                tracing::debug!("config unchanged");
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

//! Caps on client connections, so that no number of clients can take the descriptors the proxy
//! needs for everything else (backend connections, health probes, the admin listener, files).
//!
//! One cap over every listener of every worker (`[limits] max_connections`, by default half of
//! what the descriptor limit leaves after `reserved_descriptors`: each client connection may hold
//! one to a backend) and each listener's own `max_connections`. At a cap, the oldest idle
//! keep-alive HTTP connection (HTTP/1.1 between requests, HTTP/2 without an open stream) is asked
//! to close, as nginx does, and the new connection takes its slot; when none is idle the accept
//! loop stops until a slot frees, and the kernel's backlog holds the clients meanwhile (no spinning
//! on `EMFILE`).
//!
//! The bookkeeping is one mutex taken when a connection opens and when it closes, never per
//! request; the search for an idle connection runs only at a cap.

use crate::client_io::ClientInfo;
use crate::config::LimitsConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a connection held at a cap looks again for an idle one to evict: connections going
/// idle do not signal it (that would cost every request), only closing ones do.
const RECHECK: Duration = Duration::from_millis(100);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; the soft limit obtained.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The soft `RLIMIT_NOFILE` in force (1024, the usual default, when it cannot be read).
fn nofile() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The global cap and the connections it counts, shared by every worker.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    /// The soft descriptor limit the cap was derived from.
    pub(crate) nofile: u64,
    /// Client connections open at once over every listener.
    pub(crate) max_connections: usize,
    inner: Mutex<Inner>,
    /// Signalled whenever a connection closes.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    open: usize,
    next_id: u64,
    /// Open connections by age (ids grow), for the oldest idle one.
    conns: BTreeMap<u64, Entry>,
    per_listener: HashMap<SocketAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    listener: SocketAddr,
    /// Set for HTTP connections once they serve: where they are between requests.
    client: Option<Arc<ClientInfo>>,
    evict: Arc<Notify>,
    /// Asked to close; not asked again, and no other is asked while it closes.
    evicting: bool,
}

/// What a listener's accept loop counts with the global limits.
#[derive(Clone, Debug)]
pub(crate) struct ListenerSlots {
    /// The listener.
    pub(crate) address: SocketAddr,
    /// Its own cap.
    pub(crate) max_connections: Option<usize>,
    /// Its open connections.
    pub(crate) open: Gauge,
    /// Idle connections closed to make room for new ones.
    pub(crate) evicted: Counter,
    /// New connections that found every slot busy and waited (with the accept loop) for one.
    pub(crate) held: Counter,
}

impl ConnLimits {
    /// The limits `config` asks for, with the descriptor limit in force.
    pub(crate) fn new(config: &LimitsConfig) -> ConnLimits {
        Self::with_nofile(config, nofile())
    }

    fn with_nofile(config: &LimitsConfig, nofile: u64) -> ConnLimits {
        let usable = usize::try_from(nofile)
            .unwrap_or(usize::MAX)
            .saturating_sub(config.reserved_descriptors)
            .max(1);
        let max_connections = match config.max_connections {
            Some(n) if n > usable => {
                tracing::warn!(
                    max_connections = n,
                    nofile,
                    reserved = config.reserved_descriptors,
                    "[limits] max_connections leaves no reserve under the descriptor limit: \
                     capped at {usable}"
                );
                usable
            }
            Some(n) => n,
            None => (usable / 2).max(1),
        };
        ConnLimits {
            nofile,
            max_connections,
            inner: Mutex::new(Inner::default()),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The bookkeeping stays consistent across a panic elsewhere: no step of it can panic midway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Client connections open now (every listener).
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }

    /// A slot for a new connection on `listener`: at once when under both caps, else after
    /// evicting an idle connection or waiting for one to close.
    pub(crate) async fn admit(self: &Arc<Self>, listener: &ListenerSlots) -> Slot {
        let mut held = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_admit(listener) {
                return slot;
            }
            if !held {
                held = true;
                listener.held.inc();
            }
            // Woken by a close, or after a while to look for a connection that went idle.
            let _ = tokio::time::timeout(RECHECK, freed).await;
        }
    }

    /// A slot if there is room; else asks the oldest idle connection in the full scope to close.
    fn try_admit(self: &Arc<Self>, listener: &ListenerSlots) -> Option<Slot> {
        let mut inner = self.lock();
        let here = inner
            .per_listener
            .get(&listener.address)
            .copied()
            .unwrap_or(0);
        let listener_full = listener.max_connections.is_some_and(|max| here >= max);
        let global_full = inner.open >= self.max_connections;
        if !listener_full && !global_full {
            let id = inner.next_id;
            inner.next_id += 1;
            inner.open += 1;
            *inner.per_listener.entry(listener.address).or_insert(0) += 1;
            let evict = Arc::new(Notify::new());
            inner.conns.insert(
                id,
                Entry {
                    listener: listener.address,
                    client: None,
                    evict: evict.clone(),
                    evicting: false,
                },
            );
            listener.open.inc();
            return Some(Slot {
                limits: self.clone(),
                id,
                listener: listener.address,
                open: listener.open.clone(),
                evict,
            });
        }
        // The full scope: this listener when it is at its own cap, else every listener.
        let scope = listener_full.then_some(listener.address);
        let in_scope = |e: &Entry| scope.is_none_or(|a| e.listener == a);
        if inner.conns.values().any(|e| e.evicting && in_scope(e)) {
            return None;
        }
        let oldest_idle = inner
            .conns
            .values_mut()
            .find(|e| in_scope(e) && e.client.as_ref().is_some_and(|c| c.phase.idle_keep_alive()));
        if let Some(e) = oldest_idle {
            e.evicting = true;
            e.evict.notify_one();
            listener.evicted.inc();
        }
        None
    }
}

/// A connection's place under the caps, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<ConnLimits>,
    id: u64,
    listener: SocketAddr,
    open: Gauge,
    evict: Arc<Notify>,
}

impl Slot {
    /// An HTTP connection serving `client`: it may be evicted while idle between requests.
    pub(crate) fn evictable(&self, client: Arc<ClientInfo>) {
        if let Some(e) = self.limits.lock().conns.get_mut(&self.id) {
            e.client = Some(client);
        }
    }

    /// Notified when the connection is asked to close to make room (it finishes what it serves).
    pub(crate) fn evicted(&self) -> &Notify {
        &self.evict
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut inner = self.limits.lock();
            inner.conns.remove(&self.id);
            inner.open -= 1;
            if let Some(n) = inner.per_listener.get_mut(&self.listener) {
                *n -= 1;
            }
        }
        self.open.dec();
        self.limits.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;

    fn slots(max: Option<usize>) -> ListenerSlots {
        ListenerSlots {
            address: "127.0.0.1:1".parse().unwrap(),
            max_connections: max,
            open: Gauge::default(),
            evicted: Counter::default(),
            held: Counter::default(),
        }
    }

    fn client() -> Arc<ClientInfo> {
        Arc::new(ClientInfo::new(
            "127.0.0.1:2".parse().unwrap(),
            "http",
            Default::default(),
        ))
    }

    #[test]
    fn the_default_cap_is_half_of_what_the_reserve_leaves() {
        let config = LimitsConfig::default();
        assert_eq!(
            ConnLimits::with_nofile(&config, 20_000).max_connections,
            (20_000 - 512) / 2
        );
        let explicit = LimitsConfig {
            max_connections: Some(100_000),
            ..config
        };
        assert_eq!(
            ConnLimits::with_nofile(&explicit, 20_000).max_connections,
            20_000 - 512,
            "never into the reserve"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_oldest_idle_connection_is_evicted() {
        let config = LimitsConfig {
            max_connections: Some(100),
            ..Default::default()
        };
        let limits = Arc::new(ConnLimits::with_nofile(&config, 20_000));
        let l = slots(Some(3));
        let (a, b, c) = (
            limits.admit(&l).await,
            limits.admit(&l).await,
            limits.admit(&l).await,
        );
        let clients: Vec<_> = (0..3).map(|_| client()).collect();
        for (slot, cl) in [&a, &b, &c].into_iter().zip(&clients) {
            slot.evictable(cl.clone());
            cl.phase.request_started(Version::HTTP_11);
        }
        // b and c are idle keep-alive; a is mid-request.
        for cl in &clients[1..] {
            cl.phase.request_ended(false);
        }
        let next = tokio::spawn({
            let (limits, l) = (limits.clone(), l.clone());
            async move { limits.admit(&l).await }
        });
        b.evicted().notified().await;
        assert_eq!(l.evicted.get(), 1);
        assert_eq!(l.held.get(), 1);
        drop(b);
        let d = next.await.unwrap();
        assert_eq!(limits.open(), 3);
        assert_eq!(l.open.get(), 3);
        drop((a, c, d));
        assert_eq!(limits.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_none_idle_a_new_connection_waits_for_a_close() {
        let config = LimitsConfig {
            max_connections: Some(2),
            ..Default::default()
        };
        let limits = Arc::new(ConnLimits::with_nofile(&config, 20_000));
        let l = slots(None);
        let a = limits.admit(&l).await;
        let _b = limits.admit(&l).await;
        let next = tokio::spawn({
            let (limits, l) = (limits.clone(), l.clone());
            async move { limits.admit(&l).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!next.is_finished(), "held while every slot is busy");
        assert_eq!(l.evicted.get(), 0);
        drop(a);
        let _c = next.await.unwrap();
        assert_eq!(limits.open(), 2);
    }
}

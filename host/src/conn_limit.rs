//! Caps on client connections, so that no number of clients can take the descriptors the proxy
//! needs for everything else (backend connections, health probes, the admin listener, files).
//!
//! One cap over every listener of every worker (`[limits] max_connections`, by default half of
//! what the descriptor limit leaves after `reserved_descriptors`: each client connection may hold
//! one to a backend) and each listener's own `max_connections`. At a cap, the oldest idle
//! keep-alive HTTP connection (HTTP/1.1 between requests, HTTP/2 without an open stream) is asked
//! to close, as nginx does, and the new connection takes its slot; when none is idle the accept
//! loop stops until a slot frees, and the kernel's backlog holds the clients meanwhile (no spinning
//! on `EMFILE`). Idle connections are asked to close in batches (a 64th of the cap, at most
//! [`EVICT_BATCH`]; nginx drains 32), and a connection asked to close no longer counts: under a
//! flood of idle connections the accept loop keeps taking new ones instead of waiting for each
//! close in turn while clients' SYNs pile up in the backlog. The cap is then exceeded by at most a
//! batch, for as long as the closes take, which the descriptor reserve covers.
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

/// The most idle connections asked to close at once at a cap (a 64th of the cap, at least one).
pub(crate) const EVICT_BATCH: usize = 32;

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
    /// Open connections, and those of them asked to close.
    count: Count,
    next_id: u64,
    /// Open connections by age (ids grow), for the oldest idle one.
    conns: BTreeMap<u64, Entry>,
    per_listener: HashMap<SocketAddr, Count>,
}

/// Connections open in a scope (every listener, or one), and how many of them were asked to close.
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    open: usize,
    evicting: usize,
}

impl Count {
    /// The connections that stay: those asked to close are on their way out.
    fn staying(self) -> usize {
        self.open - self.evicting
    }
}

#[derive(Debug)]
struct Entry {
    listener: SocketAddr,
    /// Set for HTTP connections once they serve: where they are between requests.
    client: Option<Arc<ClientInfo>>,
    evict: Arc<Notify>,
    /// Asked to close; not asked again, and no longer counted against the caps.
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
        self.lock().count.open
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

    /// A slot if there is room (counting the connections asked to close as gone); else asks the
    /// oldest idle connections in the full scope to close, a batch at a time, and takes a slot
    /// if that made room.
    fn try_admit(self: &Arc<Self>, listener: &ListenerSlots) -> Option<Slot> {
        let mut inner = self.lock();
        let mut asked_batch = false;
        loop {
            let here = inner
                .per_listener
                .get(&listener.address)
                .copied()
                .unwrap_or_default();
            let listener_full = listener
                .max_connections
                .is_some_and(|max| here.staying() >= max);
            let global_full = inner.count.staying() >= self.max_connections;
            if !listener_full && !global_full {
                return Some(self.take_slot(&mut inner, listener));
            }
            if asked_batch || !self.ask_idle_to_close(&mut inner, listener, listener_full) {
                return None;
            }
            asked_batch = true;
        }
    }

    fn take_slot(self: &Arc<Self>, inner: &mut Inner, listener: &ListenerSlots) -> Slot {
        let id = inner.next_id;
        inner.next_id += 1;
        inner.count.open += 1;
        inner.per_listener.entry(listener.address).or_default().open += 1;
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
        Slot {
            limits: self.clone(),
            id,
            listener: listener.address,
            open: listener.open.clone(),
            evict,
        }
    }

    /// Asks a batch of the oldest idle connections of the full scope (`listener`'s
    /// own when it is at its cap, else every listener's) to close; whether any was.
    fn ask_idle_to_close(
        &self,
        inner: &mut Inner,
        listener: &ListenerSlots,
        listener_full: bool,
    ) -> bool {
        let scope = listener_full.then_some(listener.address);
        let cap = match listener.max_connections {
            Some(max) if listener_full => max,
            _ => self.max_connections,
        };
        let batch = (cap / 64).clamp(1, EVICT_BATCH);
        let mut asked = Vec::new();
        for e in inner.conns.values_mut() {
            if asked.len() == batch {
                break;
            }
            if !e.evicting
                && scope.is_none_or(|a| e.listener == a)
                && e.client.as_ref().is_some_and(|c| c.phase.idle_keep_alive())
            {
                e.evicting = true;
                e.evict.notify_one();
                asked.push(e.listener);
            }
        }
        inner.count.evicting += asked.len();
        for address in &asked {
            if let Some(c) = inner.per_listener.get_mut(address) {
                c.evicting += 1;
            }
        }
        listener.evicted.inc_by(asked.len() as u64);
        !asked.is_empty()
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
            let evicting = inner.conns.remove(&self.id).is_some_and(|e| e.evicting);
            inner.count.open -= 1;
            inner.count.evicting -= usize::from(evicting);
            if let Some(n) = inner.per_listener.get_mut(&self.listener) {
                n.open -= 1;
                n.evicting -= usize::from(evicting);
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
    async fn at_the_cap_idle_connections_are_asked_to_close_and_no_longer_count() {
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
        // The oldest idle one is asked to close (a cap of 3 makes batches of one), and the new
        // connection is taken at once.
        let d = limits.admit(&l).await;
        b.evicted().notified().await;
        assert_eq!(l.evicted.get(), 1);
        assert_eq!(l.held.get(), 0);
        assert_eq!(
            limits.open(),
            4,
            "over the cap by the closing one, while it closes"
        );
        // Then c; a is busy, so the next one after waits.
        let e = limits.admit(&l).await;
        c.evicted().notified().await;
        assert_eq!(limits.open(), 5);
        let next = tokio::spawn({
            let (limits, l) = (limits.clone(), l.clone());
            async move { limits.admit(&l).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !next.is_finished(),
            "held: only a busy connection is left to the cap"
        );
        assert_eq!(l.held.get(), 1);
        assert_eq!(l.evicted.get(), 2, "a busy connection is never asked");
        drop((b, c));
        assert_eq!(limits.open(), 3);
        tokio::task::yield_now().await;
        assert!(!next.is_finished(), "a, d and e fill the cap");
        drop(d);
        let f = next.await.unwrap();
        assert_eq!(limits.open(), 3);
        assert_eq!(l.open.get(), 3);
        drop((a, e, f));
        assert_eq!(limits.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_cap_asks_a_batch_of_idle_connections_at_once() {
        let config = LimitsConfig {
            max_connections: Some(640),
            ..Default::default()
        };
        let limits = Arc::new(ConnLimits::with_nofile(&config, 20_000));
        let l = slots(None);
        let mut open = Vec::new();
        for _ in 0..640 {
            let slot = limits.admit(&l).await;
            let cl = client();
            slot.evictable(cl.clone());
            cl.phase.request_started(Version::HTTP_11);
            cl.phase.request_ended(false);
            open.push((slot, cl));
        }
        // A 64th of 640: ten are asked, and the next nine connections need no new batch.
        for _ in 0..10 {
            open.push((limits.admit(&l).await, client()));
        }
        assert_eq!(l.evicted.get(), 10);
        for (slot, _) in &open[..10] {
            slot.evicted().notified().await;
        }
        assert_eq!(limits.open(), 650);
        let _next = limits.admit(&l).await;
        assert_eq!(l.evicted.get(), 20, "a second batch");
        assert_eq!(l.held.get(), 0);
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

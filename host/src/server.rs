//! Listeners and the serving loop. Shaped like mini-redis: the caller binds ([`Listeners`]) and
//! passes a shutdown future to [`Server::run`], so tests bind port 0 and run the real server
//! in-process.
//!
//! Each listener serves its protocol: `http` and `https` (TLS terminated with [`crate::tls`], then
//! the same HTTP/1.1 + HTTP/2 server) go through [`Proxy::handle`]; `tcp` and `tls-passthrough`
//! are served by [`crate::l4`]. Any listener may first read a PROXY protocol header from a trusted
//! front load balancer.
//!
//! `run` serves with one event loop per worker thread ([`Server::run_workers`]); tests and the demo
//! serve on the caller's runtime ([`Server::run`]).
//!
//! Shutdown: stop accepting, mark the proxy draining (`/ready` answers 503), ask every connection to
//! finish its in-flight requests (HTTP/1.1 closes after the current response, HTTP/2 sends GOAWAY),
//! and wait for them up to the config's drain deadline. L4 connections cannot be asked to finish:
//! they are waited for up to the same deadline.

use crate::access_log::AccessLog;
use crate::client_io::ClientInfo;
use crate::client_io::ClientIo;
use crate::config::{Config, ConfigError, ListenerConfig, ListenerLimits, Protocol};
pub use crate::conn_limit::raise_nofile_limit;
use crate::conn_limit::{ConnLimits, ListenerSlots, Slot};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::plugin::{BreakerOptions, PluginError, PluginRuntime, PluginWatcher, RuntimeOptions};
use crate::proxy::Proxy;
use crate::tls::{CERT_POLL_INTERVAL, CertWatcher, ListenerCerts};
use crate::woken::PollWhenWoken;
use futures_util::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is wrong (or names a plugin that cannot be used).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The plugin runtime could not start.
    #[error("the plugin runtime could not start: {0}")]
    Runtime(#[source] PluginError),
    /// A listener could not bind.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A worker thread (or its event loop) could not start.
    #[error("cannot start a worker thread: {0}")]
    Worker(#[source] std::io::Error),
    /// The access log file could not be opened.
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The bound sockets: client listeners with their settings, and the admin listener.
#[derive(Debug)]
pub struct Listeners {
    /// Client listeners.
    pub proxy: Vec<(TcpListener, ListenerConfig)>,
    /// The admin listener.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener of `config` (port 0 picks a free port). Client listeners are bound with
    /// `SO_REUSEPORT`, so each worker thread can bind its own socket to the same address (see
    /// [`Server::run_workers`]).
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        let mut proxy = Vec::new();
        for l in &config.listeners {
            let listener = bind_shared(l.address, true)
                .and_then(TcpListener::from_std)
                .map_err(|source| StartError::Bind {
                    address: l.address,
                    source,
                })?;
            proxy.push((listener, l.clone()));
        }
        let admin = match config.admin {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::Bind { address, source })?,
            ),
            None => None,
        };
        Ok(Listeners { proxy, admin })
    }

    /// The bound addresses of the client listeners.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxy
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// The bound address of the admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// A non-blocking listening socket on `address` with `SO_REUSEPORT`, for one worker's share of a
/// listener. With `first`, the address must not be in use already: `SO_REUSEPORT` alone would let
/// a second proxy (or a stale one) silently share the port instead of failing to start.
fn bind_shared(address: SocketAddr, first: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    if first && address.port() != 0 {
        drop(std::net::TcpListener::bind(address)?);
    }
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    // Clients wait here while a cap holds the accept loop (the kernel bounds it by somaxconn).
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The runtime options a config asks for.
pub fn runtime_options(config: &Config) -> RuntimeOptions {
    let p = &config.plugins;
    RuntimeOptions {
        fuel_per_call: p.fuel_per_call,
        init_fuel: p.init_fuel,
        call_deadline: p.call_deadline,
        memory_limit: p.memory_limit_mb as usize * 1024 * 1024,
        breaker: BreakerOptions {
            faults: p.breaker.faults,
            fault_ratio: p.breaker.fault_ratio,
            window: p.breaker.window,
            min_calls: p.breaker.min_calls,
            backoff: p.breaker.backoff,
            backoff_max: p.breaker.backoff_max,
        },
        rollback_window: p.rollback_window,
        cache_dir: p.cache_dir.clone(),
        max_file_size: p.max_file_size,
        ..RuntimeOptions::default()
    }
}

/// A proxy ready to serve: plugins loaded, config built.
pub struct Server {
    /// The proxy's shared state.
    pub proxy: Arc<Proxy>,
    _plugin_watcher: Option<PluginWatcher>,
    /// The certificates of the `https` listeners, loaded at start.
    certs: Vec<(SocketAddr, ListenerCerts)>,
}

impl Server {
    /// Starts the plugin runtime, loads (and watches) the config's plugin directory, builds the
    /// config (every plugin use is created, so each `init` runs) and opens the access log.
    pub fn new(config: Config) -> Result<Server, StartError> {
        let runtime = PluginRuntime::new(runtime_options(&config)).map_err(StartError::Runtime)?;
        Self::with_runtime(config, runtime)
    }

    /// Like [`Server::new`] with a runtime made by the caller.
    pub fn with_runtime(config: Config, runtime: PluginRuntime) -> Result<Server, StartError> {
        let watcher = match &config.plugins.dir {
            Some(dir) => {
                let (watcher, errors) = runtime.watch_dir(dir).map_err(StartError::Runtime)?;
                for e in errors {
                    tracing::error!(error = %e, "plugin refused");
                }
                Some(watcher)
            }
            None => None,
        };
        let metrics = Metrics::new(runtime.clone());
        let access_log =
            AccessLog::open(&config.access_log, metrics.access_log.clone()).map_err(|source| {
                StartError::AccessLog {
                    path: config
                        .access_log
                        .path
                        .as_ref()
                        .map_or_else(|| "stdout".to_string(), |p| p.display().to_string()),
                    source,
                }
            })?;
        let gateway = Gateway::build(config, &runtime, &metrics)?;
        let mut certs = Vec::new();
        for l in &gateway.config.listeners {
            if l.protocol == Protocol::Https {
                let loaded = ListenerCerts::load(l).map_err(|e| ConfigError::Other {
                    file: gateway.config.file.clone(),
                    message: e.to_string(),
                })?;
                certs.push((l.address, loaded));
            }
        }
        Ok(Server {
            proxy: Proxy::new(gateway, runtime, metrics, access_log),
            _plugin_watcher: watcher,
            certs,
        })
    }

    /// Serves on the caller's runtime until `shutdown` completes, then drains (see the module docs).
    pub async fn run(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        if let Err(e) = self.run_workers(listeners, shutdown, 0).await {
            tracing::error!(error = %e, "the server could not start");
        }
    }

    /// Serves with `workers` worker threads, each running its own single-threaded event loop over
    /// its own `SO_REUSEPORT` socket of every listener (the kernel spreads new connections over
    /// them), until `shutdown` completes; then drains. A connection, its upstream connections (see
    /// [`crate::upstream::Cluster::client`]) and its plugin instances stay on one thread, so the
    /// request path never hands work between threads. The caller's runtime keeps the control
    /// plane: admin API, health checks, reloads, certificate watching. `workers == 0` serves on
    /// the caller's runtime instead (tests, the demo).
    pub async fn run_workers(
        mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
        workers: usize,
    ) -> Result<(), StartError> {
        let proxy = self.proxy.clone();
        let limits = Arc::new(ConnLimits::new(&proxy.gateway().config.limits));
        tracing::info!(
            nofile = limits.nofile,
            max_connections = limits.max_connections,
            "client connection cap"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        // Kept until the server stops: each polls its listener's certificate files.
        let mut cert_watchers = Vec::new();
        let mut serving = Vec::new();
        for (listener, config) in listeners.proxy {
            let tls = match config.protocol {
                Protocol::Https => match self.tls_acceptor(&config) {
                    Ok((acceptor, watcher)) => {
                        cert_watchers.push(watcher);
                        Some(acceptor)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "https listener not started");
                        continue;
                    }
                },
                _ => None,
            };
            let limits = Arc::new(config.limits.clone());
            serving.push((
                listener,
                Arc::new(Serving {
                    config,
                    tls,
                    limits,
                }),
            ));
        }
        // Each worker says it is done (drained, or past the deadline) by dropping its sender.
        let done = if workers == 0 {
            let (tx, rx) = oneshot::channel::<()>();
            let (proxy, stop, limits) = (proxy.clone(), stop_rx.clone(), limits.clone());
            tokio::spawn(async move {
                serve_listeners(serving, proxy, limits, stop, "main").await;
                drop(tx);
            });
            vec![rx]
        } else {
            match start_workers(serving, workers, &proxy, &limits, &stop_rx) {
                Ok(done) => done,
                Err((started, e)) => {
                    let _ = stop_tx.send(true);
                    for rx in started {
                        let _ = rx.await;
                    }
                    return Err(e);
                }
            }
        };
        // The admin API stays up while draining, so `/ready` can say 503.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = listeners.admin.map(|admin| {
            tokio::spawn(crate::admin::serve(
                admin,
                proxy.clone(),
                limits.clone(),
                admin_stop_rx,
            ))
        });

        let reopen_log = tokio::spawn(crate::access_log::reopen_on_sigusr1(
            proxy.access_log().clone(),
        ));
        shutdown.await;
        let deadline = proxy.gateway().config.drain_timeout;
        tracing::info!(?deadline, "shutting down: draining in-flight requests");
        proxy.set_draining();
        let _ = stop_tx.send(true);
        for rx in done {
            let _ = rx.await;
        }
        let _ = admin_stop_tx.send(true);
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        drop(cert_watchers);
        reopen_log.abort();
        // The last requests' lines, still in the workers' buffers, are in the file before the
        // process may exit.
        proxy.access_log().flush();
        drop(self);
        Ok(())
    }

    /// The TLS acceptor of an `https` listener and the watcher that keeps its certificates
    /// current (following the listener's entry in the config as reloaded).
    fn tls_acceptor(
        &mut self,
        config: &ListenerConfig,
    ) -> Result<(TlsAcceptor, CertWatcher), crate::tls::TlsError> {
        let loaded = match self.certs.iter().position(|(a, _)| *a == config.address) {
            Some(i) => self.certs.swap_remove(i).1,
            None => ListenerCerts::load(config)?,
        };
        let proxy = Arc::downgrade(&self.proxy);
        let (address, protocol) = (config.address, config.protocol);
        let watcher = CertWatcher::start(config, loaded, CERT_POLL_INTERVAL, move || {
            let proxy = proxy.upgrade()?;
            let gateway = proxy.gateway();
            gateway
                .config
                .listeners
                .iter()
                .find(|l| l.address == address && l.protocol == protocol)
                .cloned()
        });
        let server_config = crate::tls::server_config(config.address, watcher.certs.clone())?;
        Ok((TlsAcceptor::from(server_config), watcher))
    }
}

/// What serving a listener needs besides its socket; shared by the workers.
struct Serving {
    config: ListenerConfig,
    tls: Option<TlsAcceptor>,
    /// The listener's limits, shared by its connections.
    limits: Arc<ListenerLimits>,
}

/// Starts `workers` threads, each with its own event loop serving its own socket of every
/// listener (the sockets bound at start go to the first; the others bind theirs to the same
/// addresses). Returns each worker's done signal; when one cannot start, the signals of those that
/// did, with the error (the caller stops them).
#[allow(clippy::type_complexity)]
fn start_workers(
    serving: Vec<(TcpListener, Arc<Serving>)>,
    workers: usize,
    proxy: &Arc<Proxy>,
    limits: &Arc<ConnLimits>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<oneshot::Receiver<()>>, (Vec<oneshot::Receiver<()>>, StartError)> {
    let mut done = Vec::new();
    let mut first = Vec::new();
    let mut addrs = Vec::new();
    for (listener, s) in serving {
        let bound = listener
            .local_addr()
            .and_then(|a| Ok((a, listener.into_std()?)));
        match bound {
            Ok((address, l)) => {
                addrs.push((address, s.clone()));
                first.push((l, s));
            }
            Err(source) => {
                let address = s.config.address;
                return Err((done, StartError::Bind { address, source }));
            }
        }
    }
    for worker in 0..workers {
        let sockets = if worker == 0 {
            Ok(std::mem::take(&mut first))
        } else {
            addrs
                .iter()
                .map(|(address, s)| {
                    bind_shared(*address, false)
                        .map(|l| (l, s.clone()))
                        .map_err(|source| StartError::Bind {
                            address: *address,
                            source,
                        })
                })
                .collect()
        };
        let runtime = sockets.and_then(|sockets| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| (sockets, rt))
                .map_err(StartError::Worker)
        });
        let (sockets, runtime) = match runtime {
            Ok(r) => r,
            Err(e) => return Err((done, e)),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let (proxy, stop, limits) = (proxy.clone(), stop.clone(), limits.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("sluicegate-worker-{worker}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut listeners = Vec::new();
                    for (l, s) in sockets {
                        match TcpListener::from_std(l) {
                            Ok(l) => listeners.push((l, s)),
                            Err(e) => tracing::error!(
                                address = %s.config.address, error = %e,
                                "a worker cannot serve this listener"
                            ),
                        }
                    }
                    serve_listeners(listeners, proxy, limits, stop, &worker.to_string()).await;
                });
                // Connections still open past the drain deadline close with the runtime.
                drop(runtime);
                drop(tx);
            });
        match spawned {
            Ok(_) => done.push(rx),
            Err(e) => return Err((done, StartError::Worker(e))),
        }
    }
    Ok(done)
}

/// One event loop's share of the listeners: accepts until `stop`, then waits for this loop's
/// connections to finish, up to the drain deadline.
async fn serve_listeners(
    listeners: Vec<(TcpListener, Arc<Serving>)>,
    proxy: Arc<Proxy>,
    limits: Arc<ConnLimits>,
    stop: watch::Receiver<bool>,
    worker: &str,
) {
    let accepted = proxy.metrics.worker_connections(worker);
    // Every connection task holds a sender; when all are gone, every connection is done.
    let (conns_tx, mut conns_rx) = mpsc::channel::<()>(1);
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|(listener, s)| {
            let (proxy, stop, conns) = (proxy.clone(), stop.clone(), conns_tx.clone());
            // Named by the bound address: a configured port 0 is a real one by now.
            let address = listener.local_addr().unwrap_or(s.config.address);
            let slots = proxy
                .metrics
                .listener_slots(address, s.config.limits.max_connections);
            let capped = (limits.clone(), slots);
            match s.config.protocol {
                Protocol::Tcp | Protocol::TlsPassthrough => tokio::spawn(crate::l4::accept_loop(
                    listener,
                    s.config.clone(),
                    proxy,
                    capped,
                    stop,
                    conns,
                    accepted.clone(),
                )),
                Protocol::Http | Protocol::Https => tokio::spawn(accept_loop(
                    listener,
                    s,
                    proxy,
                    capped,
                    stop,
                    conns,
                    accepted.clone(),
                )),
            }
        })
        .collect();
    drop(conns_tx);
    for t in tasks {
        let _ = t.await;
    }
    let deadline = proxy.gateway().config.drain_timeout;
    match tokio::time::timeout(deadline, conns_rx.recv()).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("drain deadline passed: closing the remaining connections"),
    }
}

async fn accept_loop(
    listener: TcpListener,
    serving: Arc<Serving>,
    proxy: Arc<Proxy>,
    (limits, slots): (Arc<ConnLimits>, ListenerSlots),
    mut stop: watch::Receiver<bool>,
    conns: mpsc::Sender<()>,
    accepted: Counter,
) {
    let config = &serving.config;
    let builder = Arc::new(http_builder(&serving.limits));
    while let Some((stream, peer)) = crate::accept::accept(&listener, &mut stop).await {
        accepted.inc();
        // At a cap, this loop accepts nothing more until the connection in hand has a slot.
        let slot = tokio::select! {
            slot = limits.admit(&slots) => slot,
            _ = stop.changed() => break,
        };
        let proxy = proxy.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        let conns = conns.clone();
        let idle = config.idle_timeout;
        let header_timeout = config.header_read_timeout;
        let redirect_https = config.redirect_https;
        let proxy_from = config.proxy_protocol_from.clone();
        let listener_addr = config.address;
        let tls = serving.tls.clone();
        let limits = serving.limits.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            // Behind a front load balancer: the client is the one its PROXY header names.
            let peer = match crate::l4::proxy_protocol::accept(
                &proxy_from,
                header_timeout,
                &mut stream,
                peer,
            )
            .await
            {
                Ok(client) => client,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "connection refused");
                    drop(conns);
                    return;
                }
            };
            proxy.metrics.open_connections.inc();
            // The forwarding header values for this client, made once for all its requests.
            let client = Arc::new(ClientInfo::new(
                peer,
                if tls.is_some() { "https" } else { "http" },
                limits,
            ));
            slot.evictable(client.clone());
            let io = ClientIo::new(stream, client.clone(), idle, header_timeout);
            let redirect = redirect_https;
            let service = {
                let proxy = proxy.clone();
                service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let (proxy, client) = (proxy.clone(), client.clone());
                    if let Some(port) = redirect {
                        req.extensions_mut()
                            .insert(crate::tls::RedirectHttps { port });
                    }
                    // Not boxed: hyper's HTTP/1 dispatcher keeps the request's future in a
                    // slot allocated once per connection, so this saves a large allocation
                    // per request. Mapped, not awaited in an async block, which would keep the
                    // request (264 bytes) in the future beside the handler's.
                    proxy.handle(req, client).map(Ok::<_, Infallible>)
                })
            };
            let result = match tls {
                None => {
                    serve_connection(&builder, TokioIo::new(io), service, &mut stop, &slot).await
                }
                Some(acceptor) => {
                    // The handshake gets the header read timeout: a client that stalls in it
                    // holds a connection like one that stalls in its headers.
                    match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(
                                &builder,
                                TokioIo::new(tls_stream),
                                service,
                                &mut stop,
                                &slot,
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            proxy
                                .metrics
                                .l4
                                .tls_handshake_failed(listener_addr, "error");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            proxy
                                .metrics
                                .l4
                                .tls_handshake_failed(listener_addr, "timeout");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            proxy.metrics.open_connections.dec();
            drop(slot);
            drop(conns);
        });
    }
}

/// The initial HTTP/2 stream window: what a client may send on one stream before its request is
/// read (spec default 64 KB), enough for an upload to keep a 1 Gb/s, 2 ms path busy.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// The initial HTTP/2 connection window: what all of a connection's request bodies may hold
/// unread at once.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes queued per HTTP/2 stream for a client that does not read (h2's default is
/// ~400 KB, so 100 streams of a large file held 40 MB per connection). 64 KB is one full default
/// window, so a reading client is never starved by it: the upstream body is read again as soon as
/// the client's window lets the queue drain.
const H2_SEND_BUFFER: usize = 64 * 1024;
/// Streams a client may reset before the server has accepted them (the rapid-reset attack,
/// CVE-2023-44487); hyper's default, written down so it stays.
const H2_PENDING_RESETS: usize = 20;
/// Streams the server may reset because the client broke the protocol before the connection is
/// closed with a GOAWAY (CVE-2025-8671, "MadeYouReset"); hyper's default, written down.
const H2_LOCAL_ERROR_RESETS: usize = 1024;

/// The HTTP/1.1 + HTTP/2 server of a listener, bounded by its `limits`: what one connection and
/// one stream may hold in memory is fixed here.
fn http_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let h1_buffer = limits
        .max_header_size
        .clamp(HYPER_MIN_BUFFER, u32::MAX as usize);
    let mut h1 = builder.http1();
    // The header read timeout is kept by `ClientIo`, hyper's per-request timer is off.
    h1.header_read_timeout(None)
        .keep_alive(true)
        // One bound for both directions: the head being read (past it hyper answers 431), and
        // the response bytes queued for a client that does not read (~400 KB by default, which
        // 3,000 such clients of a large file turned into 1.1 GB).
        .max_buf_size(h1_buffer);
    // hyper keeps up to 100 headers on the stack; any other number costs an allocation per
    // request, so it is set only when the config asks for another.
    if limits.max_headers != ListenerLimits::default().max_headers {
        h1.max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(h1_buffer as u32)
        .max_send_buf_size(H2_SEND_BUFFER)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_pending_accept_reset_streams(H2_PENDING_RESETS)
        .max_local_error_reset_streams(H2_LOCAL_ERROR_RESETS);
    builder
}

/// hyper's smallest HTTP/1 buffer (it panics below it; the config refuses less too).
const HYPER_MIN_BUFFER: usize = 8 * 1024;

/// Serves HTTP on one client connection until it ends; on `stop`, or when the connection caps
/// evict it, finishes in-flight requests (HTTP/1.1 closes after the current response, at once
/// between requests; HTTP/2 sends GOAWAY).
async fn serve_connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    stop: &mut watch::Receiver<bool>,
    slot: &Slot,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::proxy::ProxyBody>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let changed = stop.changed();
    let evicted = slot.evicted().notified();
    let either = async {
        tokio::select! {
            _ = changed => {}
            _ = evicted => {}
        }
    };
    tokio::pin!(either);
    // Polled only when a signal wakes the connection, not on each of its requests' wake-ups.
    let stopping = PollWhenWoken::new(either);
    tokio::select! {
        biased;
        r = conn.as_mut() => r,
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

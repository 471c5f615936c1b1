//! L4 listeners: `tcp` (every connection to one cluster) and `tls-passthrough` (the ClientHello's
//! server name picks the cluster; TLS is not terminated). Both balance with the cluster's balancer
//! plugin, connect with retries to other endpoints on connect failure, then copy bytes both ways
//! with half-close and an idle timeout, and write one access log line per connection.
//!
//! Balancers are written for requests, so an L4 connection is shown to them as a synthetic
//! `CONNECT` request: the client address is the real one (ip-hash works unchanged), the authority
//! and `Host` header are the SNI name when there is one (so hashing on `header:host` follows the
//! name), else the listener's address.

pub mod proxy_protocol;
pub mod sni;

use crate::access_log::ConnectionLine;
use crate::config::{ListenerConfig, Protocol, server_name_matches};
use crate::conn_limit::{ConnLimits, ListenerSlots};
use crate::metrics::L4Metrics;
use crate::plugin::{EndpointId, Failure, RequestHead};
use crate::proxy::Proxy;
use crate::upstream::Cluster;
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Tried endpoints remembered per connection.
const MAX_TRIED: usize = 16;

/// Copy buffer per direction.
const BUFFER: usize = 16 * 1024;

/// Accepts connections on an L4 listener until `stop`; each connection holds a `conns` sender.
/// Connections already open are not cut on shutdown: they end by themselves or with the process.
/// They count under the connection caps like HTTP ones, but are never evicted (an L4 connection
/// has no idle point between requests).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    config: ListenerConfig,
    proxy: Arc<Proxy>,
    (limits, slots): (Arc<ConnLimits>, ListenerSlots),
    mut stop: watch::Receiver<bool>,
    conns: mpsc::Sender<()>,
    accepted: prometheus_client::metrics::counter::Counter,
) {
    let config = Arc::new(config);
    while let Some((stream, peer)) = crate::accept::accept(&listener, &mut stop).await {
        accepted.inc();
        // At a cap, this loop accepts nothing more until the connection in hand has a slot.
        let slot = tokio::select! {
            slot = limits.admit(&slots) => slot,
            _ = stop.changed() => break,
        };
        let proxy = proxy.clone();
        let config = config.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let from = &config.proxy_protocol_from;
            match proxy_protocol::accept(from, config.header_read_timeout, &mut stream, peer).await
            {
                Ok(client) => {
                    proxy.metrics.open_connections.inc();
                    connection(&proxy, &config, stream, client).await;
                    proxy.metrics.open_connections.dec();
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "connection refused");
                    proxy.metrics.l4.refused(config.address, "proxy_protocol");
                }
            }
            drop(slot);
            drop(conns);
        });
    }
}

/// What one connection did, for the log line.
struct Report {
    sni: Option<String>,
    cluster: Option<Arc<Cluster>>,
    endpoint: Option<EndpointId>,
    tried: Vec<EndpointId>,
    from_client: u64,
    to_client: u64,
    connect: Option<Duration>,
    reason: Option<String>,
}

async fn connection(
    proxy: &Arc<Proxy>,
    listener: &ListenerConfig,
    client: TcpStream,
    peer: SocketAddr,
) {
    let start = Instant::now();
    let id = proxy.new_request_id();
    let mut report = Report {
        sni: None,
        cluster: None,
        endpoint: None,
        tried: Vec::new(),
        from_client: 0,
        to_client: 0,
        connect: None,
        reason: None,
    };
    serve(proxy, listener, client, peer, &id, &mut report).await;
    let log = proxy.access_log();
    if !log.enabled() {
        return;
    }
    let cluster = report.cluster.as_deref();
    let address = |id: EndpointId| {
        cluster
            .and_then(|c| c.endpoint(id))
            .map(|e| e.address.as_str())
    };
    let tried: Vec<&str> = if report.tried.len() > 1 {
        report.tried.iter().filter_map(|&i| address(i)).collect()
    } else {
        Vec::new()
    };
    log.connection(&ConnectionLine {
        connection_id: &id,
        protocol: listener.protocol.name(),
        listener: listener.address,
        client: peer,
        sni: report.sni.as_deref(),
        cluster: cluster.map(|c| c.config.name.as_str()),
        endpoint: report.endpoint.and_then(address),
        attempts: report.tried.len() as u32,
        tried: &tried,
        from_client: report.from_client,
        to_client: report.to_client,
        connect: report.connect,
        duration: start.elapsed(),
        reason: report.reason.as_deref(),
    });
}

/// Routes, connects and copies; fills `report` on the way.
async fn serve(
    proxy: &Arc<Proxy>,
    listener: &ListenerConfig,
    mut client: TcpStream,
    peer: SocketAddr,
    id: &str,
    report: &mut Report,
) {
    let l4 = &proxy.metrics.l4;
    let mut initial = Vec::new();
    if listener.protocol == Protocol::TlsPassthrough {
        match tokio::time::timeout(
            listener.header_read_timeout,
            read_client_hello(&mut client, &mut initial),
        )
        .await
        {
            Ok(Ok(name)) => report.sni = name,
            Ok(Err(e)) => {
                tracing::info!(client = %peer, listener = %listener.address, error = %e, "TLS passthrough: connection refused");
                l4.refused(listener.address, e.reason());
                report.reason = Some(e.to_string());
                return;
            }
            Err(_) => {
                l4.refused(listener.address, "client_hello_timeout");
                report.reason = Some("no complete ClientHello in time".into());
                return;
            }
        }
    }

    let gateway = proxy.gateway();
    // Routes follow config reloads; the listener itself changes only on restart.
    let current = gateway
        .config
        .listeners
        .iter()
        .find(|l| l.address == listener.address && l.protocol == listener.protocol)
        .unwrap_or(listener);
    let Some(name) = route(current, report.sni.as_deref()) else {
        l4.refused(listener.address, "no_route");
        report.reason = Some(match &report.sni {
            Some(n) => format!("no route for server name {n}"),
            None => "no server name and no default cluster".into(),
        });
        return;
    };
    let Some(cluster) = gateway.cluster(name).cloned() else {
        l4.refused(listener.address, "no_route");
        report.reason = Some(format!("unknown cluster {name}"));
        return;
    };
    report.cluster = Some(cluster.clone());

    let authority = match &report.sni {
        Some(n) => format!("{n}:{}", listener.address.port()),
        None => listener.address.to_string(),
    };
    let head = Arc::new(l4_request(peer, &authority, id));
    let Some((endpoint, mut upstream, connect)) = connect(proxy, &cluster, &head, report).await
    else {
        l4.refused(listener.address, "no_endpoint");
        report
            .reason
            .get_or_insert_with(|| "no healthy endpoint".into());
        return;
    };
    report.endpoint = Some(endpoint);
    report.connect = Some(connect);
    // Failed attempts before this one show in `tried`; the reason is for how the connection ends.
    report.reason = None;
    if let Some(version) = cluster.config.proxy_protocol {
        // The address the client connected to is the header's destination.
        let local = client.local_addr().unwrap_or(listener.address);
        let header = proxy_protocol::header(version, peer, local);
        if let Err(e) = upstream.write_all(&header).await {
            report.reason = Some(format!("sending the PROXY protocol header: {e}"));
            return;
        }
    }
    let _in_flight = cluster.facts.start(endpoint);
    if let Some(stats) = cluster.facts.get(endpoint) {
        // Connect time stands in for latency at L4.
        stats.record_latency_micros(connect.as_micros() as u64);
    }
    let address = &cluster.endpoints[endpoint as usize].address;
    let up = l4.bytes(&cluster.config.name, address, "client_to_upstream");
    let down = l4.bytes(&cluster.config.name, address, "upstream_to_client");
    l4.connections
        .get_or_create(&L4Metrics::labels(&cluster.config.name, address))
        .inc();
    let counts = Counts::default();
    let idle = listener.idle_timeout;
    let counters = [&up, &down];
    let result = match (&cluster.tls_client, &cluster.config.tls) {
        // `[clusters.tls]` on a tcp listener: TLS to the endpoint (after any PROXY header).
        (Some(config), Some(tls)) => {
            let Some(name) = crate::upstream::tls::server_name(tls, address) else {
                report.reason = Some(format!("no TLS server name for {address}"));
                return;
            };
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            match tokio::time::timeout(
                cluster.config.connect_timeout,
                connector.connect(name, upstream),
            )
            .await
            {
                Ok(Ok(tls)) => splice(client, tls, &initial, idle, &counts, counters).await,
                Ok(Err(e)) => {
                    report.reason = Some(format!("TLS to {address} failed: {e}"));
                    return;
                }
                Err(_) => {
                    report.reason = Some(format!("TLS to {address} timed out"));
                    return;
                }
            }
        }
        _ => splice(client, upstream, &initial, idle, &counts, counters).await,
    };
    report.from_client = counts.from_client.load(Ordering::Relaxed);
    report.to_client = counts.to_client.load(Ordering::Relaxed);
    if let Err(e) = result {
        tracing::debug!(client = %peer, endpoint = %address, error = %e, "L4 connection ended with an error");
        report.reason = Some(e.to_string());
    }
}

/// The cluster for a connection: the SNI routes (exact names, then the longest wildcard), else the
/// listener's `cluster`.
fn route<'a>(listener: &'a ListenerConfig, sni: Option<&str>) -> Option<&'a str> {
    if let Some(name) = sni {
        let exact = listener
            .sni_routes
            .iter()
            .find(|r| r.server_names.iter().any(|n| n == name));
        let wildcard = || {
            listener
                .sni_routes
                .iter()
                .flat_map(|r| r.server_names.iter().map(move |n| (n, r)))
                .filter(|(n, _)| n.starts_with('*') && server_name_matches(n, name))
                .max_by_key(|(n, _)| n.len())
                .map(|(_, r)| r)
        };
        if let Some(r) = exact.or_else(wildcard) {
            return Some(&r.cluster);
        }
    }
    listener.cluster.as_deref()
}

/// The synthetic request balancers see for an L4 connection (see the module docs).
fn l4_request(client: SocketAddr, authority: &str, id: &str) -> RequestHead {
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .header(http::header::HOST, authority)
        .body(())
        .unwrap_or_else(|_| {
            let mut r = http::Request::new(());
            *r.method_mut() = http::Method::CONNECT;
            r
        });
    RequestHead {
        parts: request.into_parts().0,
        client,
        request_id: id.into(),
    }
}

/// Picks and connects, retrying other endpoints on connect failure or timeout, up to the
/// cluster's `retry.attempts`.
async fn connect(
    proxy: &Proxy,
    cluster: &Cluster,
    head: &Arc<RequestHead>,
    report: &mut Report,
) -> Option<(EndpointId, TcpStream, Duration)> {
    let attempts = cluster.config.retry.attempts.max(1);
    for attempt in 1..=attempts {
        let mut id = cluster.pick(&proxy.metrics, head, attempt, &report.tried)?;
        // As the HTTP path does: ask again (a few times) when an endpoint already tried comes back.
        for _ in 0..3 {
            if !report.tried.contains(&id) || report.tried.len() >= cluster.endpoints.len() {
                break;
            }
            match cluster.pick(&proxy.metrics, head, attempt, &report.tried) {
                Some(other) => id = other,
                None => break,
            }
        }
        if report.tried.len() < MAX_TRIED {
            report.tried.push(id);
        }
        let endpoint = &cluster.endpoints[id as usize];
        let started = Instant::now();
        let failure = match tokio::time::timeout(
            cluster.config.connect_timeout,
            TcpStream::connect(endpoint.address.as_str()),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let took = started.elapsed();
                cluster.health.observe(id, None, None, took);
                return Some((id, stream, took));
            }
            Ok(Err(e)) => (
                Failure::Connect,
                format!("connect to {} failed: {e}", endpoint.address),
            ),
            Err(_) => (
                Failure::Timeout,
                format!("connect to {} timed out", endpoint.address),
            ),
        };
        let (kind, failure) = failure;
        // Passive health: connect failures count towards the cluster's outlier ejection.
        cluster
            .health
            .observe(id, None, Some(kind), started.elapsed());
        tracing::debug!(cluster = %cluster.config.name, %failure, attempt, "L4 connect failed");
        proxy
            .metrics
            .l4
            .connect_failures
            .get_or_create(&L4Metrics::labels(&cluster.config.name, &endpoint.address))
            .inc();
        report.reason = Some(failure);
    }
    None
}

/// Why a passthrough connection was refused before routing.
#[derive(Debug, thiserror::Error)]
enum HelloError {
    #[error("bad ClientHello: {0}")]
    Parse(#[from] sni::SniError),
    #[error("the client closed before a complete ClientHello")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
}

impl HelloError {
    fn reason(&self) -> &'static str {
        match self {
            HelloError::Parse(_) => "bad_client_hello",
            HelloError::Closed | HelloError::Io(_) => "client_closed",
        }
    }
}

/// Reads until `buf` holds a whole ClientHello (or it is refused); returns the server name. The
/// bytes stay in `buf`, to be sent to the endpoint first.
async fn read_client_hello(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, HelloError> {
    loop {
        if let sni::Hello::Complete(name) = sni::parse(buf)? {
            return Ok(name);
        }
        if buf.len() >= sni::MAX_READ {
            return Err(sni::SniError::TooLarge.into());
        }
        let room = (sni::MAX_READ - buf.len()).min(4096);
        let start = buf.len();
        buf.resize(start + room, 0);
        let n = client.read(&mut buf[start..]).await;
        buf.truncate(start + *n.as_ref().unwrap_or(&0));
        if n? == 0 {
            return Err(HelloError::Closed);
        }
    }
}

/// Bytes copied each way.
#[derive(Default)]
struct Counts {
    from_client: AtomicU64,
    to_client: AtomicU64,
}

/// Copies both ways until both sides have finished sending, either fails, or nothing moves for
/// `idle`. `initial` (bytes already read from the client) goes to the upstream first. When one
/// side ends its sending, the other side's write half is shut down (half-close) and the other
/// direction goes on.
async fn splice<U: AsyncRead + AsyncWrite>(
    client: TcpStream,
    upstream: U,
    initial: &[u8],
    idle: Duration,
    counts: &Counts,
    [up, down]: [&Counter; 2],
) -> std::io::Result<()> {
    let origin = Instant::now();
    let activity = AtomicU64::new(0);
    let (cr, cw) = client.into_split();
    let (ur, mut uw) = tokio::io::split(upstream);
    let copy = async {
        if !initial.is_empty() {
            uw.write_all(initial).await?;
            counts
                .from_client
                .fetch_add(initial.len() as u64, Ordering::Relaxed);
            up.inc_by(initial.len() as u64);
        }
        tokio::try_join!(
            pipe(cr, uw, &counts.from_client, up, &activity, origin),
            pipe(ur, cw, &counts.to_client, down, &activity, origin),
        )
    };
    tokio::select! {
        r = copy => r.map(|_| ()),
        _ = idle_watch(&activity, origin, idle) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("idle for {idle:?}"),
        )),
    }
}

/// One direction of [`splice`].
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: &AtomicU64,
    counter: &Counter,
    activity: &AtomicU64,
    origin: Instant,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUFFER];
    let touch = || activity.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    loop {
        let n = from.read(&mut buf).await?;
        touch();
        if n == 0 {
            // Half-close: pass the FIN on and keep the other direction going.
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        touch();
        count.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
    }
}

/// Completes once nothing has moved for `idle` (activity is in ms since `origin`).
async fn idle_watch(activity: &AtomicU64, origin: Instant, idle: Duration) {
    loop {
        let last = origin + Duration::from_millis(activity.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SniRoute;

    fn listener(routes: &[(&[&str], &str)], default: Option<&str>) -> ListenerConfig {
        ListenerConfig {
            address: "127.0.0.1:443".parse().unwrap(),
            protocol: Protocol::TlsPassthrough,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            certificates: Vec::new(),
            cluster: default.map(str::to_string),
            redirect_https: None,
            proxy_protocol_from: Vec::new(),
            limits: Default::default(),
            sni_routes: routes
                .iter()
                .map(|(names, cluster)| SniRoute {
                    server_names: names.iter().map(|n| n.to_string()).collect(),
                    cluster: cluster.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn sni_routes_prefer_exact_then_the_longest_wildcard_then_the_default() {
        let l = listener(
            &[
                (&["*.example.com"], "wild"),
                (&["*.deep.example.com"], "deeper"),
                (&["a.deep.example.com"], "exact"),
            ],
            Some("default"),
        );
        assert_eq!(route(&l, Some("a.deep.example.com")), Some("exact"));
        assert_eq!(route(&l, Some("b.deep.example.com")), Some("deeper"));
        assert_eq!(route(&l, Some("b.example.com")), Some("wild"));
        assert_eq!(route(&l, Some("example.com")), Some("default"));
        assert_eq!(route(&l, None), Some("default"));
        let l = listener(&[(&["a.example.com"], "a")], None);
        assert_eq!(route(&l, Some("b.example.com")), None);
    }

    #[test]
    fn the_synthetic_request_carries_the_client_and_the_name() {
        let head = l4_request(
            "192.0.2.1:5000".parse().unwrap(),
            "a.example.com:443",
            "id1",
        );
        assert_eq!(head.parts.method, http::Method::CONNECT);
        assert_eq!(head.parts.headers[http::header::HOST], "a.example.com:443");
        assert_eq!(
            head.parts.uri.authority().unwrap().as_str(),
            "a.example.com:443"
        );
        assert_eq!(head.client, "192.0.2.1:5000".parse().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_and_busy_ones_are_not() {
        let origin = Instant::now();
        let activity = AtomicU64::new(0);
        let watch = idle_watch(&activity, origin, Duration::from_secs(10));
        tokio::pin!(watch);
        for _ in 0..3 {
            tokio::select! {
                _ = &mut watch => panic!("closed while busy"),
                _ = tokio::time::sleep(Duration::from_secs(8)) => {}
            }
            activity.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        let before = Instant::now();
        watch.await;
        assert_eq!(before.elapsed(), Duration::from_secs(10));
    }
}

//! The HTTP proxy phases of one request: request filters -> routing -> the cluster's balancer ->
//! upstream (with retries inside the budget) -> response filters, then the access log and metrics
//! when the response body ends.

use crate::access_log::{AccessLog, RequestLine};
use crate::client_io::ClientInfo;
use crate::config::FilterFault;
use crate::gateway::{Destination, Gateway};
use crate::headers::{self, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::plugin::{
    EndpointId, Failure, HeaderOp, LocalResponse, PluginRuntime, RequestAction, RequestHead,
    RequestId, ResponseHead,
};
use crate::upstream::{
    ActiveRequest, BoxError, Cluster, InFlight, RequestBody, RequestBodyError, RetryPermit,
    UpstreamBody, UpstreamError, h1,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, Entry as HeaderEntry, HOST, HeaderMap, HeaderName, HeaderValue,
};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// At most this many tried endpoints are remembered per request (and passed to the balancer).
const MAX_TRIED: usize = 16;

/// How many times a retry asks the balancer again when it picks an endpoint already tried.
const MAX_REPICKS: usize = 3;

/// The proxy's shared state: the current gateway (swapped on reload), the plugin runtime, metrics
/// and the access log.
pub struct Proxy {
    gateway: ArcSwap<Gateway>,
    /// The plugin runtime.
    pub runtime: PluginRuntime,
    /// Metrics.
    pub metrics: Metrics,
    access_log: AccessLog,
    draining: AtomicBool,
    id_prefix: u32,
    id_counter: AtomicU64,
    reload: std::sync::Mutex<ReloadState>,
}

/// What happened to config reloads (for `/status`).
#[derive(Clone, Debug, Default)]
pub struct ReloadState {
    /// Reloads applied.
    pub reloads: u64,
    /// Why the last refused reload was refused (cleared by a good one).
    pub last_error: Option<String>,
}

impl Proxy {
    /// A proxy serving `gateway`.
    pub fn new(
        gateway: Gateway,
        runtime: PluginRuntime,
        metrics: Metrics,
        access_log: AccessLog,
    ) -> Arc<Self> {
        let id_prefix = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.finish() as u32
        };
        Arc::new(Proxy {
            gateway: ArcSwap::from_pointee(gateway),
            runtime,
            metrics,
            access_log,
            draining: AtomicBool::new(false),
            id_prefix,
            id_counter: AtomicU64::new(0),
            reload: std::sync::Mutex::new(ReloadState::default()),
        })
    }

    /// The gateway serving now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// Swaps in a new gateway; requests in flight finish on the old one, whose health checks stop
    /// (the new one's took over).
    pub fn swap(&self, gateway: Gateway) {
        let old = self.gateway.swap(Arc::new(gateway));
        old.stop_health_checks();
    }

    /// Reload outcomes so far.
    pub fn reload_state(&self) -> ReloadState {
        self.reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records a reload's outcome (a config reload, never the request path).
    pub fn record_reload(&self, result: Result<(), String>) {
        let mut state = self
            .reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => {
                state.reloads += 1;
                state.last_error = None;
            }
            Err(e) => state.last_error = Some(e),
        }
    }

    /// Forgets the last reload error: a reload found the config that serves.
    pub fn clear_reload_error(&self) {
        self.reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last_error = None;
    }

    /// The access log.
    pub fn access_log(&self) -> &AccessLog {
        &self.access_log
    }

    /// Marks the proxy as draining (`/ready` answers 503).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the proxy is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A new request (or L4 connection) id.
    pub(crate) fn new_request_id(&self) -> String {
        let id = self.request_id_bytes();
        std::str::from_utf8(&id).expect("hex digits").to_owned()
    }

    /// A new id as bytes, see [`request_id`].
    fn request_id_bytes(&self) -> [u8; 24] {
        request_id(
            self.id_prefix,
            self.id_counter.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// A new id for a request without a usable one: its header value and the id, sharing one buffer
    /// (the head, the upstream copies of the headers and the log all refer to it).
    fn fresh_request_id(&self) -> (HeaderValue, RequestId) {
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(self.request_id_bytes()))
            .expect("hex digits make a header value");
        (
            value.clone(),
            RequestId::new(value).expect("hex digits are text"),
        )
    }

    /// Serves one client request: the head is made ready when hyper hands it over, the returned future
    /// does the rest. Not `async fn`s (this, `forward`, the pool's `request`): an `async fn` keeps each
    /// parameter twice in its future, as captured and as moved into its local, and the request's future
    /// is moved into hyper's slot and polled from there for every request; the request alone is 264
    /// bytes.
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: Arc<ClientInfo>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
        let start = Instant::now();
        let (mut head, mut body, mut client_upgrade, refused) = self.request_head(req, &client);
        async move {
            let gateway = self.gateway();
            let mut done = Finish::new(self.clone(), client, head.clone(), start);
            if let Some((status, reason)) = refused {
                return done.local(status, reason.into());
            }

            // An `http` listener with `redirect_to_https` answers everything with a redirect.
            if let Some(r) = head.parts.extensions.get::<crate::tls::RedirectHttps>() {
                let location = crate::tls::https_location(&head.parts, r.port)
                    .and_then(|l| HeaderValue::from_str(&l).ok());
                return match location {
                    Some(location) => {
                        let mut resp =
                            done.local(StatusCode::PERMANENT_REDIRECT, "redirect to https".into());
                        resp.headers_mut().insert(http::header::LOCATION, location);
                        resp
                    }
                    None => done.local(StatusCode::BAD_REQUEST, "no host to redirect to".into()),
                };
            }

            // Request filters, in config order.
            for f in &gateway.filters {
                match f.handle.on_request(&head) {
                    Ok(RequestAction::Proceed(ops)) if ops.is_empty() => {}
                    Ok(RequestAction::Proceed(ops)) => {
                        drop(done.head.take());
                        match Arc::get_mut(&mut head) {
                            Some(h) => apply_ops(&mut h.parts.headers, ops),
                            None => tracing::warn!(
                                plugin = f.handle.plugin(),
                                "request head still shared: header changes skipped"
                            ),
                        }
                        done.head = Some(head.clone());
                    }
                    Ok(RequestAction::Respond(local)) => {
                        return done.plugin_response(
                            local,
                            format!("answered by filter {}", f.handle.plugin()).into(),
                        );
                    }
                    // The runtime logged the fault (at most a line a second per plugin).
                    Err(_) => {
                        self.metrics.fallback(f.handle.plugin(), "filter");
                        if f.on_fault == FilterFault::Reject {
                            return done.local(
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("filter {} faulted (on_fault = reject)", f.handle.plugin())
                                    .into(),
                            );
                        }
                    }
                }
            }

            // Routing (after the filters, which may have changed the host).
            let (cluster, route) = match gateway.route(&head, &self.metrics) {
                Destination::Cluster(c, route) => (c, route),
                Destination::Plugin(local, reason) => return done.plugin_response(local, reason),
                Destination::Local(status, reason) => return done.local(status, reason),
            };
            done.cluster = Some(cluster.clone());
            // The smallest of the listener's, the route's and the cluster's body limits; a declared
            // length over it is answered before any endpoint is picked or connected to.
            let limit = [
                done.client.limits.max_request_body,
                route.max_request_body,
                cluster.config.max_request_body,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(limit) = limit
                && body.limit(limit).is_err()
            {
                return done.local(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body over max_request_body".into(),
                );
            }
            if client_upgrade.is_some() && !route.upgrade {
                // The route does not switch protocols: the request goes on as a plain one.
                client_upgrade = None;
                drop(done.head.take());
                match Arc::get_mut(&mut head) {
                    Some(h) => headers::drop_upgrade(&mut h.parts.headers),
                    None => tracing::warn!("request head still shared: upgrade headers kept"),
                }
                done.head = Some(head.clone());
            }
            done.active = Some(cluster.budget.request());
            self.forward(done, &gateway, &cluster, head, body, client_upgrade)
                .await
        }
    }

    /// The request's head as the plugins and the upstream see it (hop-by-hop headers gone, `Host` set,
    /// forwarding headers and the request id added), its body, the client's side of an upgrade, and
    /// the answer it gets instead when its head is refused (see [`refuse_head`]).
    /// Not in `handle`'s future: a local that was ever borrowed there keeps its room in the future's
    /// state across every await, even after it is moved out (the request and its parts, ~500 bytes).
    #[expect(
        clippy::type_complexity,
        reason = "one use, destructured at once in `handle`"
    )]
    fn request_head(
        &self,
        mut req: Request<Incoming>,
        client: &ClientInfo,
    ) -> (
        Arc<RequestHead>,
        RequestBody,
        Option<hyper::upgrade::OnUpgrade>,
        Option<(StatusCode, &'static str)>,
    ) {
        client.phase.request_started(req.version());
        let refused = refuse_head(&req, client.limits.max_uri_length);
        let upgrade = refused.is_none()
            && req.version() == Version::HTTP_11
            && headers::is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        // HTTP/1.1 requests were checked to have one `Host`; h2 ones name their authority in the
        // URI, and an HTTP/1.0 one may (absolute form) without a `Host`.
        if parts.version != Version::HTTP_11
            && !parts.headers.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(HOST, v);
        }
        headers::add_forwarding(&mut parts.headers, client);
        // One lookup for the read and the write (the name is hashed byte by byte).
        let request_id = match parts.headers.entry(X_REQUEST_ID) {
            HeaderEntry::Occupied(mut e) => match RequestId::new(e.get().clone()) {
                Some(id) => id,
                None => {
                    let (value, id) = self.fresh_request_id();
                    e.insert(value);
                    id
                }
            },
            HeaderEntry::Vacant(e) => {
                let (value, id) = self.fresh_request_id();
                e.insert(value);
                id
            }
        };
        let head = Arc::new(RequestHead {
            parts,
            client: client.addr,
            request_id,
        });
        let body = RequestBody::new(body, client.limits.body_read_timeout);
        (head, body, client_upgrade, refused)
    }

    /// Tries endpoints of `cluster` until one answers, within the retry policy and budget.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its parameters twice in its future (see `handle`)"
    )]
    fn forward(
        &self,
        mut done: Box<Finish>,
        gateway: &Gateway,
        cluster: &Arc<Cluster>,
        head: Arc<RequestHead>,
        body: RequestBody,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        async move {
            let policy = &cluster.config.retry;
            let idempotent = is_idempotent(&head.parts.method);
            let mut failure: Option<(StatusCode, &'static str)> = None;
            // Retry permits are taken when a retry is decided, and all held until the request
            // ends: the budget bounds one request's retries as well as the cluster's.
            let mut permits: Option<RetryPermit> = None;
            if cluster.health.refusing() {
                return done.local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cluster in panic mode (too few healthy endpoints)".into(),
                );
            }
            for attempt in 1..=policy.attempts {
                if attempt > 1 {
                    cluster.metrics.retries.inc();
                }
                let Some(mut id) = cluster.pick(&self.metrics, &head, attempt, done.tried()) else {
                    if attempt == 1 {
                        return done.local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no healthy endpoint".into(),
                        );
                    }
                    break;
                };
                // Like Envoy's previous-hosts predicate: a retry that lands on an endpoint already tried
                // asks again (a few times) while untried endpoints remain.
                for _ in 0..MAX_REPICKS {
                    if !done.tried().contains(&id) || done.n_tried >= cluster.endpoints.len() {
                        break;
                    }
                    match cluster.pick(&self.metrics, &head, attempt, done.tried()) {
                        Some(other) => id = other,
                        None => break,
                    }
                }
                let endpoint = &cluster.endpoints[id as usize];
                done.attempts = attempt;
                done.push_tried(id);
                let in_flight = cluster.facts.start(id);
                let sent = Instant::now();
                // The exchange keeps its own timeouts (connect, write, response head), each
                // counted only while it waits on the endpoint: an upload may take as long as it
                // keeps moving.
                let result = cluster.pool.request(id, &head.parts, body.attempt()).await;
                let elapsed = sent.elapsed();
                done.upstream = Some(elapsed);
                // Safe to send again: an idempotent method whose body (if any) no attempt has read yet.
                let safe = idempotent && body.reusable();
                match result {
                    Err(e) if e.is_client_fault() => {
                        // The client's body failed (broken, too large, stalled, or the client
                        // left): not the endpoint's failure, so it is neither observed nor
                        // retried. The upstream connection was closed with the error (the
                        // endpoint got part of a request).
                        tracing::debug!(endpoint = %endpoint.address, error = %e, "request body failed (the client's fault)");
                        let (status, reason) = client_fault(&e);
                        return done.local(status, reason.into());
                    }
                    Err(e) if is_timeout(&e) => {
                        cluster
                            .health
                            .observe(id, None, Some(Failure::Timeout), elapsed);
                        tracing::debug!(endpoint = %endpoint.address, error = %e, "upstream attempt timed out");
                        // Timeouts are not retried: the endpoint may still be working on it.
                        failure = Some((StatusCode::GATEWAY_TIMEOUT, "upstream timeout"));
                        break;
                    }
                    Err(e) => {
                        let connect = e.is_connect();
                        let kind = if connect {
                            Failure::Connect
                        } else {
                            Failure::Reset
                        };
                        cluster.health.observe(id, None, Some(kind), elapsed);
                        tracing::debug!(endpoint = %endpoint.address, error = %e, connect, "upstream attempt failed");
                        failure = Some((
                            StatusCode::BAD_GATEWAY,
                            if connect {
                                "upstream connect failure"
                            } else {
                                "upstream reset"
                            },
                        ));
                        // A connect failure sent nothing; otherwise only safe requests go again.
                        let retry = (connect && body.reusable()) || safe;
                        if !retry || attempt == policy.attempts {
                            break;
                        }
                        match cluster.budget.try_retry() {
                            Some(p) => hold(&mut permits, p),
                            None => {
                                failure = Some((StatusCode::BAD_GATEWAY, "retry budget exhausted"));
                                break;
                            }
                        }
                    }
                    Ok(resp) => {
                        if let Some(stats) = cluster.facts.get(id) {
                            stats.record_latency_micros(elapsed.as_micros() as u64);
                        }
                        let status = resp.status().as_u16();
                        // A 5xx is judged before it is passed on (an ejection it causes is in
                        // place when the client has it). Any other answer is judged when its body
                        // has ended: one that stalls or breaks mid-way is a failure, not a success
                        // that would reset the endpoint's count of consecutive errors.
                        let judge_now = status >= 500;
                        if judge_now {
                            cluster.health.observe(id, Some(status), None, elapsed);
                        }
                        if attempt < policy.attempts
                            && safe
                            && policy.on_status.contains(&status)
                            && let Some(p) = cluster.budget.try_retry()
                        {
                            if !judge_now {
                                cluster.health.observe(id, Some(status), None, elapsed);
                            }
                            // Without a permit the response goes to the client as it is.
                            hold(&mut permits, p);
                            failure = Some((StatusCode::BAD_GATEWAY, "retried status"));
                            drop(resp);
                            continue;
                        }
                        done.endpoint = Some(id);
                        done.in_flight = Some(in_flight);
                        if !judge_now {
                            done.judge = Some((status, elapsed));
                        }
                        return self.respond(done, gateway, cluster, head, resp, client_upgrade);
                    }
                }
            }
            let (status, reason) =
                failure.unwrap_or((StatusCode::BAD_GATEWAY, "no endpoint reachable"));
            done.local(status, reason.into())
        }
    }

    /// Passes the upstream's response on: hop-by-hop headers out, response filters, upgrades.
    fn respond(
        &self,
        mut done: Box<Finish>,
        gateway: &Gateway,
        cluster: &Arc<Cluster>,
        head: Arc<RequestHead>,
        mut resp: Response<UpstreamBody>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<ProxyBody> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let upstream_upgrade = if switching && client_upgrade.is_some() {
            resp.body_mut().take_upgrade()
        } else {
            None
        };
        let (mut parts, body) = resp.into_parts();
        // The proxy answers in its own version (RFC 9110 §6.2), not the endpoint's: hyper sends
        // HTTP/1.1, or HTTP/1.0 to a client that asked in it (h2 ignores the field).
        parts.version = Version::HTTP_11;
        headers::strip_hop_by_hop(&mut parts.headers, upstream_upgrade.is_some());
        if !gateway.filters.is_empty() {
            parts.headers =
                self.response_filters(gateway, cluster, &head, &done, parts.status, parts.headers);
        }
        done.status = parts.status.as_u16();
        if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
            let in_flight = done.in_flight.take();
            tokio::spawn(tunnel(client, upstream, in_flight));
        }
        Response::from_parts(parts, ProxyBody::upstream(body, done))
    }

    fn response_filters(
        &self,
        gateway: &Gateway,
        cluster: &Arc<Cluster>,
        head: &Arc<RequestHead>,
        done: &Finish,
        status: StatusCode,
        headers: HeaderMap,
    ) -> HeaderMap {
        let mut rh = Arc::new(ResponseHead {
            status,
            headers,
            endpoint: done.endpoint,
            cluster: Some(cluster.config.name.clone()),
        });
        for f in gateway.filters.iter().rev() {
            let f = &f.handle;
            match f.on_response(head, &rh) {
                Ok(ops) if ops.is_empty() => {}
                Ok(ops) => match Arc::get_mut(&mut rh) {
                    Some(r) => apply_ops(&mut r.headers, ops),
                    None => tracing::warn!(
                        plugin = f.plugin(),
                        "response head still shared: header changes skipped"
                    ),
                },
                // The response goes on unchanged, whatever `on_fault` says: it is the backend's
                // answer, already given. The runtime logged the fault.
                Err(_) => self.metrics.fallback(f.plugin(), "filter"),
            }
        }
        match Arc::try_unwrap(rh) {
            Ok(r) => r.headers,
            Err(rh) => rh.headers.clone(),
        }
    }
}

/// The id `format!("{prefix:08x}{n:016x}")` would make (24 lowercase hex digits), built on the
/// stack: the request path makes both its header value and its `String` from these bytes.
fn request_id(prefix: u32, n: u64) -> [u8; 24] {
    let mut id = [0; 24];
    let (p, c) = id.split_at_mut(8);
    hex_into(p, u64::from(prefix));
    hex_into(c, n);
    id
}

/// Writes `v` into `out` as lowercase hex, zero-padded to `out.len()` digits (like `{:0Nx}`).
fn hex_into(out: &mut [u8], mut v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for d in out.iter_mut().rev() {
        *d = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Methods that can be sent twice without a different effect (RFC 9110 §9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Why an HTTP/1 request's head is refused before anything else: no `Host`, several, or one that
/// is not an authority (400, as haproxy and nginx; RFC 9112 §3.2), or a target longer than
/// `max_uri_length` (414). h2 requests carry their authority in the URI, which hyper checked. One
/// lookup of `Host` and a byte scan of its value: the checks cost next to nothing per request.
fn refuse_head<B>(req: &Request<B>, max_uri_length: usize) -> Option<(StatusCode, &'static str)> {
    if req.version() < Version::HTTP_2 {
        let mut hosts = req.headers().get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            // HTTP/1.0 did not have it (haproxy's `option httpchk` and old clients still send
            // none); the upstream request then names the endpoint.
            (None, _) if req.version() == Version::HTTP_10 => {}
            (None, _) => return Some((StatusCode::BAD_REQUEST, "no Host header")),
            (Some(_), Some(_)) => {
                return Some((StatusCode::BAD_REQUEST, "more than one Host header"));
            }
            (Some(h), None) if !headers::is_valid_host(h.as_bytes()) => {
                return Some((StatusCode::BAD_REQUEST, "invalid Host header"));
            }
            _ => {}
        }
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    (target > max_uri_length).then_some((
        StatusCode::URI_TOO_LONG,
        "request target over max_uri_length",
    ))
}

/// Keeps a new retry permit with those the request already holds.
fn hold(permits: &mut Option<RetryPermit>, p: RetryPermit) {
    match permits {
        Some(held) => held.absorb(p),
        None => *permits = Some(p),
    }
}

/// Whether an attempt failed on one of the endpoint's timeouts (write or response head).
fn is_timeout(e: &UpstreamError) -> bool {
    matches!(e.exchange_error(), Some(h1::Error::Timeout(_)))
}

/// The answer to a request whose body was the client's fault.
fn client_fault(e: &UpstreamError) -> (StatusCode, &'static str) {
    match e.exchange_error() {
        Some(h1::Error::RequestBody(RequestBodyError::TooLarge(_))) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body over max_request_body",
        ),
        Some(h1::Error::Timeout(_)) => (
            StatusCode::REQUEST_TIMEOUT,
            "no request body byte within body_read_timeout",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "malformed or incomplete request body",
        ),
    }
}

/// How a response body's failure is reported to passive health.
fn body_failure(e: &h1::Error) -> Failure {
    match e {
        h1::Error::Timeout(_) => Failure::Timeout,
        h1::Error::Parse(_) | h1::Error::Invalid(_) => Failure::Protocol,
        _ => Failure::Reset,
    }
}

/// Applies plugin header operations; invalid names or values are skipped and logged.
fn apply_ops(headers: &mut HeaderMap, ops: Vec<HeaderOp>) {
    for op in ops {
        let (name, value) = match &op {
            HeaderOp::Set(n, v) | HeaderOp::Append(n, v) => (n, Some(v)),
            HeaderOp::Remove(n) => (n, None),
        };
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            tracing::debug!(?op, "invalid header name from a plugin");
            continue;
        };
        let value = match value.map(|v| HeaderValue::from_str(v)) {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                tracing::debug!(?op, "invalid header value from a plugin");
                continue;
            }
            None => None,
        };
        match (op, value) {
            (HeaderOp::Set(..), Some(v)) => {
                headers.insert(name, v);
            }
            (HeaderOp::Append(..), Some(v)) => {
                headers.append(name, v);
            }
            _ => {
                headers.remove(name);
            }
        }
    }
}

/// Copies bytes both ways between an upgraded client and upstream connection.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    mut upstream: crate::upstream::h1::Upgraded,
    in_flight: Option<InFlight>,
) {
    match client.await {
        Ok(c) => {
            let mut c = TokioIo::new(c);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut upstream).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, "the client's upgrade failed"),
    }
    drop(in_flight);
}

/// What is known about a request when it ends: written to the access log and metrics on drop, which
/// is when its response body has been sent (or the client went away). Always boxed: it travels from
/// the handler's future through `forward` and `respond` into the response body, and the response
/// is moved about eight times on its way into hyper; inline, its 200 bytes made the response 392
/// and cost data-cache misses on every move (measured in `bench/LOG.md#round-10`).
struct Finish {
    proxy: Arc<Proxy>,
    /// The client's connection, told when the response has ended.
    client: Arc<ClientInfo>,
    head: Option<Arc<RequestHead>>,
    start: Instant,
    cluster: Option<Arc<Cluster>>,
    endpoint: Option<EndpointId>,
    tried: [EndpointId; MAX_TRIED],
    n_tried: usize,
    attempts: u32,
    status: u16,
    /// Response body bytes sent to the client.
    bytes_sent: u64,
    upstream: Option<Duration>,
    reason: Option<Cow<'static, str>>,
    in_flight: Option<InFlight>,
    active: Option<ActiveRequest>,
    /// The endpoint's answer (status, time to its head) still to be reported to passive health
    /// when the response body ends, unless the body fails first.
    judge: Option<(u16, Duration)>,
}

impl Finish {
    fn new(
        proxy: Arc<Proxy>,
        client: Arc<ClientInfo>,
        head: Arc<RequestHead>,
        start: Instant,
    ) -> Box<Self> {
        Box::new(Finish {
            proxy,
            client,
            head: Some(head),
            start,
            cluster: None,
            endpoint: None,
            tried: [0; MAX_TRIED],
            n_tried: 0,
            attempts: 0,
            status: 0,
            bytes_sent: 0,
            upstream: None,
            reason: None,
            in_flight: None,
            active: None,
            judge: None,
        })
    }

    /// The upstream response body failed mid-way: the endpoint's failure (observed by passive
    /// health, logged) unless it was the client's request body that failed.
    fn body_failed(&mut self, e: &h1::Error) {
        self.reason = Some(format!("response body failed: {e}").into());
        if e.is_client_fault() {
            return;
        }
        self.judge = None;
        if let (Some(cluster), Some(id)) = (&self.cluster, self.endpoint) {
            cluster
                .health
                .observe(id, None, Some(body_failure(e)), self.start.elapsed());
            let address = cluster.endpoint(id).map_or("", |e| e.address.as_str());
            tracing::info!(endpoint = address, error = %e, "upstream response body failed");
        }
    }

    fn tried(&self) -> &[EndpointId] {
        &self.tried[..self.n_tried]
    }

    fn push_tried(&mut self, id: EndpointId) {
        if self.n_tried < MAX_TRIED {
            self.tried[self.n_tried] = id;
            self.n_tried += 1;
        }
    }

    /// A response made by the proxy itself, with the reason for the log.
    fn local(
        mut self: Box<Self>,
        status: StatusCode,
        reason: Cow<'static, str>,
    ) -> Response<ProxyBody> {
        let body = Bytes::from(format!("{reason}\n"));
        self.status = status.as_u16();
        self.reason = Some(reason);
        let mut resp = Response::new(ProxyBody::full(body, self));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    /// A response a plugin asked for.
    fn plugin_response(
        mut self: Box<Self>,
        local: LocalResponse,
        reason: Cow<'static, str>,
    ) -> Response<ProxyBody> {
        let status =
            StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.status = status.as_u16();
        self.reason = Some(reason);
        let mut headers = HeaderMap::new();
        for (n, v) in &local.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.append(n, v);
            }
        }
        headers.remove(CONTENT_LENGTH);
        let mut resp = Response::new(ProxyBody::full(Bytes::from(local.body), self));
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let (Some((status, d)), Some(cluster), Some(id)) =
            (self.judge.take(), &self.cluster, self.endpoint)
        {
            cluster.health.observe(id, Some(status), None, d);
        }
        let total = self.start.elapsed();
        if self.status == 0 {
            // Dropped before any response: the client went away (nginx's 499).
            self.status = 499;
            self.reason
                .get_or_insert(Cow::Borrowed("client closed the request"));
        }
        self.client
            .phase
            .request_ended(self.status == StatusCode::SWITCHING_PROTOCOLS.as_u16());
        let cluster = self.cluster.as_deref();
        let endpoint = cluster
            .zip(self.endpoint)
            .and_then(|(c, id)| c.endpoint(id));
        match (cluster, endpoint) {
            (_, Some(e)) => e.metrics.count(self.status),
            (Some(c), None) => c.metrics.local.count(self.status),
            (None, None) => self.proxy.metrics.unrouted().count(self.status),
        }
        if let Some(c) = cluster {
            c.metrics.duration.observe(total);
        }
        let log = &self.proxy.access_log;
        if !log.enabled() {
            return;
        }
        let Some(head) = &self.head else { return };
        let mut tried = [""; MAX_TRIED];
        if let Some(c) = cluster
            && self.n_tried > 1
        {
            for (slot, id) in tried.iter_mut().zip(self.tried()) {
                *slot = c.endpoint(*id).map_or("", |e| e.address.as_str());
            }
        }
        let n_tried = if self.n_tried > 1 { self.n_tried } else { 0 };
        log.request(&RequestLine {
            head,
            status: self.status,
            bytes_sent: self.bytes_sent,
            cluster: cluster.map(|c| c.config.name.as_str()),
            endpoint: endpoint.map(|e| e.address.as_str()),
            attempts: self.attempts,
            tried: &tried[..n_tried],
            upstream: self.upstream,
            total,
            reason: self.reason.as_deref(),
        });
    }
}

/// The body of every response the proxy sends: the upstream's, streamed, or a local one. It
/// carries the request's [`Finish`], so the log line and metrics are written when the body ends.
pub struct ProxyBody {
    inner: Inner,
    finish: Option<Box<Finish>>,
}

enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ProxyBody {
    fn upstream(body: UpstreamBody, finish: Box<Finish>) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
            finish: Some(finish),
        }
    }

    fn full(body: Bytes, finish: Box<Finish>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(body)),
            finish: Some(finish),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    // Ends the response with an error: hyper closes an HTTP/1 client's
                    // connection before the end and resets an h2 client's stream.
                    if let Some(f) = this.finish.as_mut() {
                        f.body_failed(&e);
                    }
                    Poll::Ready(Some(Err(Box::new(e) as BoxError)))
                }
                other => other.map_err(|e| Box::new(e) as BoxError),
            },
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(f), Some(data)) = (this.finish.as_mut(), frame.data_ref()) {
                    f.bytes_sent += data.len() as u64;
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_24_lowercase_hex_digits_and_differ() {
        for (prefix, n) in [
            (0, 0),
            (0x1a2b_3c4d, 1),
            (u32::MAX, u64::MAX),
            (7, 0xdead_beef),
        ] {
            let id = request_id(prefix, n);
            assert!(
                id.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id:?}"
            );
            assert_eq!(id.as_slice(), format!("{prefix:08x}{n:016x}").as_bytes());
        }
        assert_ne!(request_id(0x1a2b_3c4d, 41), request_id(0x1a2b_3c4d, 42));
    }

    #[test]
    fn http1_heads_need_one_valid_host_and_a_short_enough_target() {
        let req = |version: Version, target: &str, hosts: &[&str]| {
            let mut b = Request::builder().version(version).uri(target);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            b.body(()).unwrap()
        };
        let refused = |r: &Request<()>| refuse_head(r, 16).map(|(s, _)| s.as_u16());
        let h11 = Version::HTTP_11;
        assert_eq!(refused(&req(h11, "/", &["example.com:80"])), None);
        assert_eq!(refused(&req(Version::HTTP_10, "/", &["a"])), None);
        for hosts in [&[][..], &["a", "a"], &["a b"], &[""]] {
            assert_eq!(refused(&req(h11, "/", hosts)), Some(400), "{hosts:?}");
        }
        assert_eq!(refused(&req(Version::HTTP_10, "/", &[])), None);
        for hosts in [&["a", "b"][..], &["a b"]] {
            assert_eq!(refused(&req(Version::HTTP_10, "/", hosts)), Some(400));
        }
        // h2 names its authority in the URI.
        assert_eq!(refused(&req(Version::HTTP_2, "http://a/", &[])), None);
        assert_eq!(refused(&req(h11, "/0123456789abcde", &["a"])), None);
        assert_eq!(refused(&req(h11, "/0123456789?abcde", &["a"])), Some(414));
        assert_eq!(
            refused(&req(Version::HTTP_2, "http://a/0123456789abcdef", &[])),
            Some(414)
        );
    }
}

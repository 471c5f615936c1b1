//! A cluster's upstream HTTP/1.1 connections: per worker thread and per endpoint, a list of idle
//! keep-alive connections ([`h1::Conn`]), most recently used first. A request's own task writes it
//! and reads the response on the connection it checked out; the connection goes back to its list
//! when the response body has been read to the end, so no task is spawned per request or per
//! connection and no lock is shared between workers.

use super::body::{AttemptBody, BoxError};
use super::h1::{self, Conn, Framing, Timeouts};
use super::tls::UpstreamConnector;
use crate::EndpointId;
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use thread_local::ThreadLocal;
use tokio::time::Instant;
use tower_service::Service;

/// Why an upstream attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (TCP connect, its timeout, or the TLS handshake): nothing was sent.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// What the connector said.
        source: BoxError,
    },
    /// The connection failed while the request was sent or its response awaited: part of the request
    /// may have reached the endpoint.
    #[error("connection to {endpoint} failed: {source}")]
    Exchange {
        /// The endpoint's `host:port`.
        endpoint: String,
        /// What went wrong.
        source: h1::Error,
    },
    /// The endpoint id is not one of the cluster's (a host bug, never a plugin's answer).
    #[error("no endpoint {0} in this cluster")]
    UnknownEndpoint(EndpointId),
}

impl UpstreamError {
    /// Whether the client, not the endpoint, made the attempt fail (see [`h1::Error::is_client_fault`]).
    pub fn is_client_fault(&self) -> bool {
        matches!(self, UpstreamError::Exchange { source, .. } if source.is_client_fault())
    }

    /// The exchange's error, if the attempt got as far as an exchange.
    pub fn exchange_error(&self) -> Option<&h1::Error> {
        match self {
            UpstreamError::Exchange { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether the attempt failed before anything was sent.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::UnknownEndpoint(_)
        )
    }
}

/// One endpoint as the pool connects to it.
struct Target {
    /// `host:port`, for errors and the `Host` of requests without one.
    authority: http::uri::Authority,
    /// `http://host:port/` or `https://...`: what the connector is given (it picks TLS by scheme).
    uri: http::Uri,
}

/// An idle connection and when it went idle.
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One thread's idle lists, one per endpoint.
type Lists = Mutex<Vec<VecDeque<Idle>>>;

/// The connection pool of one cluster.
pub struct Pool {
    targets: Vec<Target>,
    connector: UpstreamConnector,
    timeouts: Timeouts,
    idle_timeout: Duration,
    max_idle: usize,
    /// Per thread: the lock is only contended when the reaper sweeps (each worker has its own lists).
    threads: ThreadLocal<Lists>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.targets.len())
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `endpoints` (`host:port` each, by id), over `tls` (https) or clear text, whose
    /// exchanges time out as `timeouts` say. Idle connections close after `idle_timeout`; at most
    /// `max_idle` per endpoint and thread are kept.
    /// When called inside a Tokio runtime, a task closes expired idle connections until the pool is
    /// dropped.
    pub fn new(
        endpoints: &[http::uri::Authority],
        tls: bool,
        connector: UpstreamConnector,
        timeouts: Timeouts,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Pool> {
        let scheme = if tls { "https" } else { "http" };
        let targets = endpoints
            .iter()
            .map(|a| Target {
                authority: a.clone(),
                uri: http::Uri::builder()
                    .scheme(scheme)
                    .authority(a.clone())
                    .path_and_query("/")
                    .build()
                    .expect("a scheme, an authority and / make a URI"),
            })
            .collect();
        let pool = Arc::new(Pool {
            targets,
            connector,
            timeouts,
            idle_timeout,
            max_idle,
            threads: ThreadLocal::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&pool)));
        }
        pool
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, Vec<VecDeque<Idle>>> {
        self.threads
            .get_or(|| Mutex::new((0..self.targets.len()).map(|_| VecDeque::new()).collect()))
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the request `parts` with `body` to `endpoint` (origin form, HTTP/1.1; the endpoint's
    /// `host:port` as `Host` when there is none) on an idle connection of this thread, else a new
    /// one. An idle connection the endpoint closed is noticed before it is used.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its parameters twice in its future (see `Proxy::handle`)"
    )]
    pub fn request<'a>(
        self: &'a Arc<Self>,
        endpoint: EndpointId,
        parts: &'a http::request::Parts,
        body: AttemptBody,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'a {
        async move {
            let i = endpoint as usize;
            let Some(target) = self.targets.get(i) else {
                return Err(UpstreamError::UnknownEndpoint(endpoint));
            };
            let mut conn = match self.checkout(i) {
                Some(conn) => conn,
                // Boxed: the connect path is rare once connections are pooled, and inline it would
                // more than double the size of every request's future.
                None => Box::pin(self.connect(target)).await?,
            };
            conn.start(parts, &target.authority, body);
            let method = &parts.method;
            match std::future::poll_fn(|cx| conn.poll_exchange(cx, method)).await {
                Ok(head) => Ok(self.lend(i, conn, head)),
                Err(source) => Err(UpstreamError::Exchange {
                    endpoint: target.authority.to_string(),
                    source,
                }),
            }
        }
    }

    /// The most recently idle connection of endpoint `i` that is still open and not expired.
    fn checkout(&self, i: usize) -> Option<Box<Conn>> {
        let mut lists = self.lists();
        let list = &mut lists[i];
        let now = Instant::now();
        while let Some(mut idle) = list.pop_back() {
            if now.saturating_duration_since(idle.since) >= self.idle_timeout {
                // The rest went idle earlier: all expired. Dropping them closes them.
                list.clear();
                return None;
            }
            if idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    async fn connect(&self, target: &Target) -> Result<Box<Conn>, UpstreamError> {
        let failed = |source: BoxError| UpstreamError::Connect {
            endpoint: target.authority.to_string(),
            source,
        };
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(failed)?;
        // The TCP connector has its own connect timeout; this one bounds the TLS handshake too.
        let io = tokio::time::timeout(self.timeouts.connect, connector.call(target.uri.clone()))
            .await
            .map_err(|_| failed("connect timeout (TCP and TLS)".into()))?
            .map_err(failed)?;
        Ok(Conn::new(io.into(), self.timeouts))
    }

    /// The response, holding its connection until the body ends.
    fn lend(
        self: &Arc<Self>,
        i: usize,
        conn: Box<Conn>,
        head: h1::ResponseHead,
    ) -> Response<UpstreamBody> {
        let mut body = UpstreamBody {
            conn: Some(conn),
            framing: head.framing,
            back: head.keep_alive.then(|| (self.clone(), i)),
        };
        if body.framing == Framing::Done {
            body.finish();
        }
        Response::from_parts(head.parts, body)
    }

    /// Puts a connection whose exchange is over back on this thread's list of endpoint `i`.
    fn give_back(&self, i: usize, conn: Box<Conn>) {
        let mut lists = self.lists();
        let list = &mut lists[i];
        if list.len() < self.max_idle {
            list.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// Closes idle connections past the idle timeout, or that their endpoint closed, on every thread's
/// lists, until the pool is gone.
async fn reap(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        for lists in pool.threads.iter() {
            let mut lists = lists.lock().unwrap_or_else(PoisonError::into_inner);
            for list in lists.iter_mut() {
                list.retain_mut(|idle| {
                    now.saturating_duration_since(idle.since) < pool.idle_timeout
                        && idle.conn.is_usable()
                });
            }
        }
    }
}

/// An upstream response body, read from its connection as it is polled. When it has been read to
/// the end, a keep-alive connection goes back to the pool; dropped before that, the connection is
/// closed (its state in the middle of a message is unknown to the next request).
pub struct UpstreamBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    /// Where the connection goes when the body ends: `None` when it must close.
    back: Option<(Arc<Pool>, usize)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("framing", &self.framing)
            .field("pooled", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// The body is complete: the connection goes back if it is clean, else it closes.
    fn finish(&mut self) {
        if let (Some(conn), Some((pool, i))) = (self.conn.take(), self.back.take())
            && conn.is_clean()
        {
            pool.give_back(i, conn);
        }
    }

    /// The upstream's side of a `101 Switching Protocols` response, once.
    pub fn take_upgrade(&mut self) -> Option<h1::Upgraded> {
        if self.framing != Framing::Upgrade {
            return None;
        }
        self.back = None;
        self.conn.take().map(|c| (*c).into_upgraded())
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = h1::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(conn.poll_body(cx, &mut this.framing)) {
            Some(Ok(data)) => {
                if this.framing == Framing::Done {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                this.conn = None;
                this.back = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Upgrade) || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done | Framing::Upgrade => SizeHint::with_exact(0),
            Framing::Chunked(_) | Framing::Close => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestBody;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// A backend on loopback answering `body` to everything; counts the connections it accepted.
    async fn backend(body: &'static str) -> (http::uri::Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(body.as_bytes()),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    fn pool(endpoints: &[http::uri::Authority], max_idle: usize) -> Arc<Pool> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = crate::tls::connector("test", http, None).unwrap();
        Pool::new(
            endpoints,
            false,
            connector,
            crate::h1::tests::TIMEOUTS,
            Duration::from_secs(30),
            max_idle,
        )
    }

    fn get(authority: &http::uri::Authority) -> http::request::Parts {
        http::Request::builder()
            .uri("/")
            .header(http::header::HOST, authority.as_str())
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    /// `GET /` to endpoint `i`.
    async fn send(
        pool: &Arc<Pool>,
        i: EndpointId,
        authority: &http::uri::Authority,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        pool.request(i, &get(authority), RequestBody::Empty.attempt())
            .await
    }

    async fn read(resp: Response<UpstreamBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn idle(pool: &Pool, i: usize) -> usize {
        pool.lists()[i].len()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_body_is_read() {
        let (a, accepted) = backend("hello").await;
        let pool = pool(std::slice::from_ref(&a), 8);
        for _ in 0..3 {
            let resp = send(&pool, 0, &a).await.unwrap();
            assert_eq!(read(resp).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle(&pool, 0), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_closes_its_connection() {
        let (a, accepted) = backend("a body that nobody reads").await;
        let pool = pool(std::slice::from_ref(&a), 8);
        let resp = send(&pool, 0, &a).await.unwrap();
        assert!(!resp.body().is_end_stream());
        drop(resp);
        assert_eq!(idle(&pool, 0), 0);
        let resp = send(&pool, 0, &a).await.unwrap();
        assert_eq!(read(resp).await, "a body that nobody reads");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept_per_endpoint() {
        let (a, accepted) = backend("x").await;
        let (b, _) = backend("y").await;
        let pool = pool(&[a.clone(), b.clone()], 2);
        let (r1, r2, r3) = tokio::join!(send(&pool, 0, &a), send(&pool, 0, &a), send(&pool, 0, &a));
        for resp in [r1, r2, r3] {
            assert_eq!(read(resp.unwrap()).await, "x");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle(&pool, 0), 2, "the third connection was closed");
        assert_eq!(idle(&pool, 1), 0, "each endpoint has its own list");
        assert_eq!(read(send(&pool, 1, &b).await.unwrap()).await, "y");
        assert_eq!(idle(&pool, 1), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_after_the_idle_timeout() {
        let (a, accepted) = backend("x").await;
        let pool = pool(std::slice::from_ref(&a), 8);
        read(send(&pool, 0, &a).await.unwrap()).await;
        assert_eq!(idle(&pool, 0), 1);
        // The reaper closes it without any request coming.
        tokio::time::sleep(Duration::from_secs(46)).await;
        assert_eq!(idle(&pool, 0), 0);
        read(send(&pool, 0, &a).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_and_an_unknown_id_too() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let a: http::uri::Authority = format!("127.0.0.1:{port}").parse().unwrap();
        let pool = pool(std::slice::from_ref(&a), 8);
        let e = send(&pool, 0, &a).await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().contains(&a.to_string()), "{e}");
        let e = send(&pool, 7, &a).await.unwrap_err();
        assert!(
            e.is_connect() && e.to_string().contains("no endpoint 7"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_the_backend_closed_is_not_used_again() {
        // A backend that closes every connection after one response, without saying so.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a: http::uri::Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                drop(tcp);
            }
        });
        let pool = pool(std::slice::from_ref(&a), 8);
        assert_eq!(read(send(&pool, 0, &a).await.unwrap()).await, "ok");
        let closed = async {
            while !pool.lists()[0].iter_mut().all(|i| !i.conn.is_usable()) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the idle connection is seen closed");
        assert_eq!(read(send(&pool, 0, &a).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}

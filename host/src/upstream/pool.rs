//! A cluster's upstream HTTP/1.1 connections: per worker thread and per endpoint, a list of idle
//! keep-alive connections (hyper's `SendRequest`), most recently used first. A connection goes back
//! to its list when its response body has been read to the end, so no task is spawned per request and
//! no lock is shared between workers (hyper-util's pooled client did both, and hashed the URI's
//! authority on every checkout).

use super::body::{AttemptBody, BoxError};
use super::tls::UpstreamConnector;
use crate::plugin::EndpointId;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
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
        /// What hyper said.
        source: hyper::Error,
    },
    /// The endpoint id is not one of the cluster's (a host bug, never a plugin's answer).
    #[error("no endpoint {0} in this cluster")]
    UnknownEndpoint(EndpointId),
}

impl UpstreamError {
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
    /// `host:port`, for errors.
    address: String,
    /// `http://host:port/` or `https://...`: what the connector is given (it picks TLS by scheme).
    uri: http::Uri,
}

/// An idle connection and when it went idle.
struct Idle {
    send: SendRequest<AttemptBody>,
    since: Instant,
}

/// One thread's idle lists, one per endpoint.
type Lists = Mutex<Vec<VecDeque<Idle>>>;

/// The connection pool of one cluster.
pub struct Pool {
    targets: Vec<Target>,
    connector: UpstreamConnector,
    handshake: http1::Builder,
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
    /// A pool for `endpoints` (`host:port` each, by id), over `tls` (https) or clear text. Idle
    /// connections close after `idle_timeout`; at most `max_idle` per endpoint and thread are kept.
    /// When called inside a Tokio runtime, a task closes expired idle connections until the pool is
    /// dropped.
    pub fn new(
        endpoints: &[http::uri::Authority],
        tls: bool,
        connector: UpstreamConnector,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Pool> {
        let scheme = if tls { "https" } else { "http" };
        let targets = endpoints
            .iter()
            .map(|a| Target {
                address: a.to_string(),
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
            handshake: http1::Builder::new(),
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

    /// Sends `req` (origin-form URI, `Host` set) to `endpoint` on an idle connection of this thread,
    /// else a new one. A request that an idle connection could not send because it was closing goes
    /// to the next one (nothing of it was sent, so this is safe for any method).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its parameters twice in its future; the request is 272 bytes (see `Proxy::handle`)"
    )]
    pub fn request(
        self: &Arc<Self>,
        endpoint: EndpointId,
        mut req: Request<AttemptBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send {
        async move {
            let i = endpoint as usize;
            let Some(target) = self.targets.get(i) else {
                return Err(UpstreamError::UnknownEndpoint(endpoint));
            };
            while let Some(mut send) = self.checkout(i) {
                match send.try_send_request(req).await {
                    Ok(resp) => return Ok(self.lend(i, send, resp)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => {
                            return Err(UpstreamError::Exchange {
                                endpoint: target.address.clone(),
                                source: e.into_error(),
                            });
                        }
                    },
                }
            }
            // Boxed: the connect path is rare once connections are pooled, and inline it would
            // more than double the size of every request's future (which is moved, not just polled).
            let mut send = Box::pin(self.connect(target)).await?;
            match send.try_send_request(req).await {
                Ok(resp) => Ok(self.lend(i, send, resp)),
                Err(e) => Err(UpstreamError::Exchange {
                    endpoint: target.address.clone(),
                    source: e.into_error(),
                }),
            }
        }
    }

    /// The most recently idle connection of endpoint `i` that is still open and not expired.
    fn checkout(&self, i: usize) -> Option<SendRequest<AttemptBody>> {
        let mut lists = self.lists();
        let list = &mut lists[i];
        let now = Instant::now();
        while let Some(idle) = list.pop_back() {
            if now.saturating_duration_since(idle.since) >= self.idle_timeout {
                // The rest went idle earlier: all expired. Dropping them closes them.
                list.clear();
                return None;
            }
            if idle.send.is_ready() {
                return Some(idle.send);
            }
        }
        None
    }

    async fn connect(&self, target: &Target) -> Result<SendRequest<AttemptBody>, UpstreamError> {
        let failed = |source: BoxError| UpstreamError::Connect {
            endpoint: target.address.clone(),
            source,
        };
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(failed)?;
        let io = connector.call(target.uri.clone()).await.map_err(failed)?;
        let (send, conn) = self
            .handshake
            .handshake(io)
            .await
            .map_err(|e| failed(e.into()))?;
        let address = target.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(endpoint = %address, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(send)
    }

    /// The response, holding its connection until the body ends.
    fn lend(
        self: &Arc<Self>,
        i: usize,
        send: SendRequest<AttemptBody>,
        resp: Response<Incoming>,
    ) -> Response<UpstreamBody> {
        let (parts, body) = resp.into_parts();
        let mut wrapper = UpstreamBody {
            body,
            back: Some(Back {
                pool: self.clone(),
                endpoint: i,
                send,
            }),
        };
        if wrapper.is_end_stream() {
            wrapper.give_back();
        }
        Response::from_parts(parts, wrapper)
    }

    /// Puts a connection whose exchange is over back on this thread's list of endpoint `i`.
    fn give_back(self: Arc<Self>, i: usize, mut send: SendRequest<AttemptBody>) {
        if send.is_ready() {
            let mut lists = self.lists();
            let list = &mut lists[i];
            if list.len() < self.max_idle {
                list.push_back(Idle {
                    send,
                    since: Instant::now(),
                });
            }
        } else if !send.is_closed()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // The connection's task has not yet taken in the end of the exchange (rare: it runs
            // beside the request's). Wait for it off the request path.
            rt.spawn(async move {
                if send.ready().await.is_ok() {
                    self.give_back(i, send);
                }
            });
        }
    }
}

/// Closes idle connections past the idle timeout, on every thread's lists, until the pool is gone.
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
                list.retain(|idle| {
                    now.saturating_duration_since(idle.since) < pool.idle_timeout
                        && !idle.send.is_closed()
                });
            }
        }
    }
}

/// Where a response's connection goes when its body ends.
struct Back {
    pool: Arc<Pool>,
    endpoint: usize,
    send: SendRequest<AttemptBody>,
}

/// An upstream response body. When it has been read to the end, its connection goes back to the
/// pool; dropped before that, the connection is closed (hyper cannot reuse it mid-body).
pub struct UpstreamBody {
    body: Incoming,
    back: Option<Back>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(b) = self.back.take() {
            b.pool.give_back(b.endpoint, b.send);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            Some(Ok(_)) if this.is_end_stream() => this.give_back(),
            Some(Err(_)) => drop(this.back.take()),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A server that sends a body of known length stops polling after its last frame.
        if self.back.is_some() && self.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::RequestBody;
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
        let connector = super::super::tls::connector("test", http, None).unwrap();
        Pool::new(
            endpoints,
            false,
            connector,
            Duration::from_secs(30),
            max_idle,
        )
    }

    fn get(authority: &http::uri::Authority) -> Request<AttemptBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, authority.as_str())
            .body(RequestBody::Empty.attempt())
            .unwrap()
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
            let resp = pool.request(0, get(&a)).await.unwrap();
            assert_eq!(read(resp).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle(&pool, 0), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_closes_its_connection() {
        let (a, accepted) = backend("a body that nobody reads").await;
        let pool = pool(std::slice::from_ref(&a), 8);
        let resp = pool.request(0, get(&a)).await.unwrap();
        assert!(!resp.body().is_end_stream());
        drop(resp);
        assert_eq!(idle(&pool, 0), 0);
        let resp = pool.request(0, get(&a)).await.unwrap();
        assert_eq!(read(resp).await, "a body that nobody reads");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept_per_endpoint() {
        let (a, accepted) = backend("x").await;
        let (b, _) = backend("y").await;
        let pool = pool(&[a.clone(), b.clone()], 2);
        let (r1, r2, r3) = tokio::join!(
            pool.request(0, get(&a)),
            pool.request(0, get(&a)),
            pool.request(0, get(&a))
        );
        for resp in [r1, r2, r3] {
            assert_eq!(read(resp.unwrap()).await, "x");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle(&pool, 0), 2, "the third connection was closed");
        assert_eq!(idle(&pool, 1), 0, "each endpoint has its own list");
        assert_eq!(read(pool.request(1, get(&b)).await.unwrap()).await, "y");
        assert_eq!(idle(&pool, 1), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_expire_after_the_idle_timeout() {
        let (a, accepted) = backend("x").await;
        let pool = pool(std::slice::from_ref(&a), 8);
        read(pool.request(0, get(&a)).await.unwrap()).await;
        assert_eq!(idle(&pool, 0), 1);
        // The reaper closes it without any request coming.
        tokio::time::sleep(Duration::from_secs(46)).await;
        assert_eq!(idle(&pool, 0), 0);
        read(pool.request(0, get(&a)).await.unwrap()).await;
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
        let e = pool.request(0, get(&a)).await.unwrap_err();
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().contains(&a.to_string()), "{e}");
        let e = pool.request(7, get(&a)).await.unwrap_err();
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
        assert_eq!(read(pool.request(0, get(&a)).await.unwrap()).await, "ok");
        let closed = async {
            while !pool.lists()[0].iter().all(|i| i.send.is_closed()) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the connection task sees the close");
        assert_eq!(read(pool.request(0, get(&a)).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}

//! An upstream HTTP/1 connection driven by the task that uses it: hyper's `SendRequest` kept beside
//! its `Connection` future, which the request and then the response body poll inline. A spawned
//! connection task cost a poll of that task per step of an exchange (request written, response head,
//! body end) and a cross-task wake-up each time; inline, the exchange runs in the client connection's
//! own polls.
//!
//! The connection's wakers (socket readiness, the request channel, the body channel) are one
//! forwarding waker per connection, pointing at the task currently using it and at nothing while it is
//! idle in the pool: the request channel wakes whoever polled the connection last, which would
//! otherwise be the task of the previous request (another client connection).

use super::body::AttemptBody;
use super::tls::UpstreamConnector;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use tower_service::Service;

/// The connector's stream (TCP, or TLS over it).
pub type Io = <UpstreamConnector as Service<http::Uri>>::Response;

/// hyper's connection future for one upstream connection.
pub type Connection = http1::Connection<Io, AttemptBody>;

/// Wakes are dropped, not forwarded, while muted: set while the body is polled with a no-op waker,
/// whose channel then wakes the connection's side (a wake of our own task that would only cost a
/// spurious poll, since the connection is polled right after anyway).
const MUTED: u8 = 1;
/// A wake came while muted (from the body's own poll, or from another thread).
const MISSED: u8 = 2;

/// The waker the connection registers everywhere, forwarding to the task using the connection.
struct Forward {
    flags: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Wake for Forward {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.flags.fetch_or(MISSED, Ordering::AcqRel) & MUTED != 0 {
            return;
        }
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

impl Forward {
    fn mute(&self) {
        self.flags.store(MUTED, Ordering::Release);
    }

    /// Unmutes; whether a wake was dropped since `mute`.
    fn unmute(&self) -> bool {
        self.flags.swap(0, Ordering::AcqRel) & MISSED != 0
    }
}

/// One upstream connection: its sender and its connection future, polled by the user's task.
pub struct Link {
    send: SendRequest<AttemptBody>,
    /// `None` once the connection ended (closed, failed or upgraded).
    conn: Option<Connection>,
    forward: Arc<Forward>,
    /// A waker of `forward`, made once.
    waker: Waker,
    /// What `forward` forwards to, kept here to compare without its lock.
    task: Option<Waker>,
}

impl Link {
    /// A link over a connection fresh from the handshake.
    pub fn new(send: SendRequest<AttemptBody>, conn: Connection) -> Box<Link> {
        let forward = Arc::new(Forward {
            flags: AtomicU8::new(0),
            task: Mutex::new(None),
        });
        Box::new(Link {
            send,
            conn: Some(conn),
            waker: Waker::from(forward.clone()),
            forward,
            task: None,
        })
    }

    /// Forwards the connection's wakes to `task` (the task polling us now).
    fn attach(&mut self, task: &Waker) {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(task)) {
            self.task = Some(task.clone());
            *self
                .forward
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
        }
    }

    /// Stops forwarding: the connection goes idle and nobody polls it.
    pub fn detach(&mut self) {
        if self.task.take().is_some() {
            *self
                .forward
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// Polls the connection once; `Ready` when it has ended (it is then dropped, which closes it).
    fn poll_conn(&mut self) -> Poll<()> {
        let Some(conn) = &mut self.conn else {
            return Poll::Ready(());
        };
        match Pin::new(conn).poll(&mut Context::from_waker(&self.waker)) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                self.conn = None;
                Poll::Ready(())
            }
        }
    }

    /// Whether the connection has not ended.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Whether an idle connection is still worth keeping: polled once (nobody polls it while idle),
    /// it has not ended (the peer closed it, or sent something unexpected) and waits for a request.
    pub fn is_usable(&mut self) -> bool {
        self.poll_conn().is_pending() && self.send.is_ready()
    }

    /// Whether the exchange is over and the connection waits for the next request. Polls it once
    /// first if not, without waking anyone (the caller has what it came for).
    pub fn settle(&mut self) -> bool {
        if self.send.is_ready() {
            return true;
        }
        self.forward.mute();
        let open = self.poll_conn().is_pending();
        open && self.send.is_ready()
    }

    /// Drives the connection until it waits for the next request (`true`) or ends (`false`): for an
    /// exchange whose response ended before its request was sent in full, off the request path.
    pub async fn idle(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.attach(cx.waker());
            self.forward.unmute();
            if self.poll_conn().is_ready() {
                return Poll::Ready(false);
            }
            if self.send.is_ready() {
                Poll::Ready(true)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Sends `req` and drives the connection until its response head arrives. An error with the
    /// request in it means nothing of it was sent (the connection was closing).
    pub async fn exchange(
        &mut self,
        req: Request<AttemptBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<AttemptBody>>> {
        let mut response = std::pin::pin!(self.send.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.attach(cx.waker());
            self.forward.unmute();
            // The connection first: it is what writes the request and reads the response.
            let ended = self.poll_conn().is_ready();
            // The response only completes in a connection poll we drive (or when the connection is
            // dropped), so it needs no waker of ours: registering one would make the connection
            // wake this task for what it just did.
            match response
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(r) => Poll::Ready(r),
                Poll::Pending => {
                    // Out of Tokio's cooperative budget, the response channel said Pending to the
                    // no-op waker it was given: ask for the poll it would have asked for.
                    if ended || !tokio::task::coop::has_budget_remaining() {
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Polls the response `body` of the current exchange, driving the connection when the body has
    /// nothing yet.
    pub fn poll_body(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.attach(cx.waker());
        let mut drove = false;
        loop {
            // A no-op waker: the body's channel is filled by the connection, which we poll. Taking
            // a frame wakes the connection's side; muted, that wake is not forwarded to our task.
            self.forward.mute();
            let frame = Pin::new(&mut *body).poll_frame(&mut Context::from_waker(Waker::noop()));
            if frame.is_ready() {
                // Left muted: until our next poll, the connection's wakes are not needed (our next
                // poll drives it whatever happened).
                return frame;
            }
            let missed = self.forward.unmute();
            if self.conn.is_none() {
                // Ended: its body channel has its end or error (dropping the connection sees to it).
                return Pin::new(body).poll_frame(cx);
            }
            // Pending after a connection poll, with no wake since: the connection has registered
            // its wakers (forwarded to the task) for whatever it waits on.
            if drove && !missed {
                return Poll::Pending;
            }
            drove = true;
            let _ = self.poll_conn();
        }
    }
}

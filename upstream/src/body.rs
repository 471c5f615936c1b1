//! The request body as handed to one upstream attempt: streamed, never buffered, and still reusable
//! by a retry as long as the attempt never started reading it (a connect failure). It also carries
//! what bounds the client's side of it (its size limit and how long it may stay silent), so that a
//! body's faults are told apart from the endpoint's: they are the client's, never a backend's.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// Errors of bodies crossing the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the client's request body could not be forwarded: the client's doing (or over the proxy's
/// limit), never the endpoint's.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// hyper reported the client's body broken: malformed framing, cut short, the client gone.
    #[error("the client's request body failed: {0}")]
    Client(#[source] hyper::Error),
    /// The body went past the effective `max_request_body`.
    #[error("request body over the limit of {0} bytes")]
    TooLarge(u64),
    /// An earlier attempt already read part of the body (a host bug: retries check
    /// [`RequestBody::reusable`] first).
    #[error("the request body was already consumed by an earlier attempt")]
    Consumed,
}

/// What the attempts of one request share.
#[derive(Debug)]
pub struct Shared {
    body: Mutex<Option<Incoming>>,
    /// The most bytes the body may have (`u64::MAX`: no limit).
    limit: u64,
    /// The length the client declared (`Content-Length`), or 0.
    declared: u64,
    /// How long the client may send nothing while the proxy waits for its body.
    idle_timeout: Duration,
}

/// The client's request body, shared by the attempts of one request.
#[derive(Clone, Debug)]
pub enum RequestBody {
    /// No body (or an empty one): any attempt can send it.
    Empty,
    /// A body not yet taken by an attempt. The lock is per request and only taken on the first poll.
    Pending(Arc<Shared>),
}

impl RequestBody {
    /// Wraps a client's body, which may stay silent for `idle_timeout` while the proxy waits for
    /// it; an already finished body becomes `Empty`.
    pub fn new(body: Incoming, idle_timeout: Duration) -> Self {
        if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Pending(Arc::new(Shared {
                declared: body.size_hint().lower(),
                body: Mutex::new(Some(body)),
                limit: u64::MAX,
                idle_timeout,
            }))
        }
    }

    /// Bounds the body to `limit` bytes, before any attempt shares it (no lock is taken). A declared
    /// length over it is refused here, before anything is sent: `Err(limit)`. A body of unknown
    /// length (chunked; hyper accepts chunk sizes up to `FFFFFFFFFFFFFFFF`) is counted as it is
    /// read, and the attempt reading past the limit fails with [`RequestBodyError::TooLarge`].
    pub fn limit(&mut self, limit: u64) -> Result<(), u64> {
        let RequestBody::Pending(shared) = self else {
            return Ok(());
        };
        if shared.declared > limit {
            return Err(limit);
        }
        if let Some(s) = Arc::get_mut(shared) {
            s.limit = limit;
        }
        Ok(())
    }

    /// Whether another attempt can still send the whole body (nothing of it was read yet).
    pub fn reusable(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Pending(shared) => shared
                .body
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some(),
        }
    }

    /// Whether the request has a body at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, RequestBody::Empty)
    }

    /// The body for one attempt.
    pub fn attempt(&self) -> AttemptBody {
        AttemptBody {
            shared: self.clone(),
            body: None,
            read: 0,
        }
    }
}

/// The body of one upstream attempt: it takes the client's body only when first polled.
#[derive(Debug)]
pub struct AttemptBody {
    shared: RequestBody,
    body: Option<Incoming>,
    /// Bytes taken from the body so far, against the limit.
    read: u64,
}

impl AttemptBody {
    fn with_body<R>(&self, f: impl FnOnce(Option<&Incoming>) -> R) -> R {
        match (&self.body, &self.shared) {
            (Some(b), _) => f(Some(b)),
            (None, RequestBody::Empty) => f(None),
            (None, RequestBody::Pending(shared)) => f(shared
                .body
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()),
        }
    }

    /// How long the client may send nothing while this attempt waits for its body.
    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        match &self.shared {
            RequestBody::Empty => None,
            RequestBody::Pending(shared) => Some(shared.idle_timeout),
        }
    }
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        let limit = match &this.shared {
            RequestBody::Empty => return Poll::Ready(None),
            RequestBody::Pending(shared) => {
                if this.body.is_none() {
                    this.body = shared
                        .body
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    if this.body.is_none() {
                        return Poll::Ready(Some(Err(RequestBodyError::Consumed)));
                    }
                }
                shared.limit
            }
        };
        let body = this.body.as_mut().expect("taken above");
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.read > limit {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_body(|b| b.is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_body(|b| b.map_or_else(|| SizeHint::with_exact(0), Body::size_hint))
    }
}

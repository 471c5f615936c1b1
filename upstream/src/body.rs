//! The request body as handed to one upstream attempt: streamed, never buffered, and still reusable
//! by a retry as long as the attempt never started reading it (a connect failure).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// Errors of bodies crossing the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's request body, shared by the attempts of one request.
#[derive(Clone, Debug)]
pub enum RequestBody {
    /// No body (or an empty one): any attempt can send it.
    Empty,
    /// A body not yet taken by an attempt. The lock is per request and only taken on the first poll.
    Pending(Arc<Mutex<Option<Incoming>>>),
}

impl RequestBody {
    /// Wraps a client's body; an already finished body becomes `Empty`.
    pub fn new(body: Incoming) -> Self {
        if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Pending(Arc::new(Mutex::new(Some(body))))
        }
    }

    /// Whether another attempt can still send the whole body (nothing of it was read yet).
    pub fn reusable(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Pending(slot) => slot
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
        }
    }
}

/// The body of one upstream attempt: it takes the client's body only when first polled.
#[derive(Debug)]
pub struct AttemptBody {
    shared: RequestBody,
    body: Option<Incoming>,
}

impl AttemptBody {
    fn with_body<R>(&self, f: impl FnOnce(Option<&Incoming>) -> R) -> R {
        match (&self.body, &self.shared) {
            (Some(b), _) => f(Some(b)),
            (None, RequestBody::Empty) => f(None),
            (None, RequestBody::Pending(slot)) => {
                f(slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref())
            }
        }
    }
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            match &this.shared {
                RequestBody::Empty => return Poll::Ready(None),
                RequestBody::Pending(slot) => {
                    this.body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                    if this.body.is_none() {
                        return Poll::Ready(Some(Err(
                            "the request body was already consumed by an earlier attempt".into(),
                        )));
                    }
                }
            }
        }
        let body = this.body.as_mut().expect("taken above");
        Pin::new(body)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.with_body(|b| b.is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_body(|b| b.map_or_else(|| SizeHint::with_exact(0), Body::size_hint))
    }
}

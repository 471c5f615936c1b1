//! A client connection's deadlines, kept by its I/O: the idle timeout (no byte either way) and the
//! header read timeout (a request's head must arrive in time), with one timer per connection.
//!
//! hyper's own header read timer is not used: it makes, registers and drops a timer for every
//! request and polls the connection once more after each head (about 3% of a proxied request's
//! instructions), and it also cut idle keep-alive connections at the header timeout instead of the
//! idle timeout. Here the deadline of a head starts at the connection's start (the first request) or
//! at the first byte of the next request, and the requests tell the I/O where they are through
//! [`ConnPhase`]: a request's head has arrived when the proxy is handed it, and the connection reads
//! the next head once that request's response has ended. The I/O does not see where hyper's buffer
//! splits requests, so the start of a head that came pipelined, read with the request before it, and
//! then stalls, goes unseen: the idle timeout closes that connection, as any silent one.

use crate::config::ListenerLimits;
use http::HeaderValue;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// One client connection: what the forwarding headers say about it, made once per connection (a
/// request without forwarding headers of its own then costs reference counts, not formatting), and
/// where it is between its requests.
#[derive(Debug)]
pub struct ClientInfo {
    /// The client's address (the one its PROXY header names, behind a front load balancer).
    pub addr: SocketAddr,
    /// The scheme the client came in over: `http` or `https`.
    pub proto: &'static str,
    /// The client's IP as `X-Forwarded-For` lists it.
    pub(crate) xff: HeaderValue,
    /// `for=<node>;proto=<proto>`: the client's `Forwarded` element before any `host`.
    pub(crate) forwarded: HeaderValue,
    /// The first `Host` this client asked for, and its whole `Forwarded` element: the requests of
    /// one connection nearly always name the same host, so they share one value.
    pub(crate) forwarded_host: OnceLock<(HeaderValue, HeaderValue)>,
    /// Where the connection is between its requests, for the header read deadline its I/O keeps.
    pub phase: ConnPhase,
    /// What the listener bounds per connection and per request.
    pub limits: Arc<ListenerLimits>,
}

impl ClientInfo {
    /// The forwarding values for a client at `addr` that connected over `proto` to a listener
    /// with `limits`.
    pub fn new(addr: SocketAddr, proto: &'static str, limits: Arc<ListenerLimits>) -> Self {
        let ip = addr.ip();
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let value = |s: String| HeaderValue::try_from(s).expect("IP addresses are header text");
        ClientInfo {
            addr,
            proto,
            xff: value(ip.to_string()),
            forwarded: value(format!("for={node};proto={proto}")),
            forwarded_host: OnceLock::new(),
            phase: ConnPhase::default(),
            limits,
        }
    }
}

/// Where a client connection is between its requests, and how many heads it has had; shared by
/// the connection's I/O and its requests. The count tells the I/O that a head it saw start has
/// arrived even when its response has already ended by the time the I/O looks. Plain loads and
/// stores, no read-modify-write: HTTP/1 requests run one after another in the connection's task,
/// and HTTP/2 ones, which may run at once, only ever set `NO_HEADS`.
#[derive(Debug, Default)]
pub struct ConnPhase(AtomicU32);

/// The state, in the low two bits: the bytes read next start a request's head (the start state).
const BETWEEN: u32 = 0;
/// A request's head has arrived and its response has not ended: bytes read are its body.
const IN_REQUEST: u32 = 1;
/// HTTP/2, or an upgraded (tunnelled) connection: no head deadline, only the idle timeout.
const NO_HEADS: u32 = 2;
const STATE: u32 = 3;
/// One head, in the count above the state bits.
const HEAD: u32 = 4;

impl ConnPhase {
    /// A request's head has arrived. An HTTP/2 connection reads frames of many requests at
    /// once, so it has no head deadline from then on.
    pub fn request_started(&self, version: http::Version) {
        let v = self.0.load(Ordering::Relaxed);
        if v & STATE == NO_HEADS {
            return;
        }
        let state = if version >= http::Version::HTTP_2 {
            NO_HEADS
        } else {
            IN_REQUEST
        };
        self.0
            .store((v & !STATE).wrapping_add(HEAD) | state, Ordering::Relaxed);
    }

    /// A request's response has ended (or the client went away). `upgraded`: it switched
    /// protocols, so what follows is a tunnel, not heads.
    pub fn request_ended(&self, upgraded: bool) {
        let v = self.0.load(Ordering::Relaxed);
        if v & STATE == IN_REQUEST {
            let next = if upgraded { NO_HEADS } else { BETWEEN };
            self.0.store(v & !STATE | next, Ordering::Relaxed);
        }
    }

    /// `Some(heads so far)` while the connection waits for a head.
    fn waiting_head(&self) -> Option<u32> {
        let v = self.0.load(Ordering::Relaxed);
        (v & STATE == BETWEEN).then_some(v & !STATE)
    }
}

/// A client connection that fails with `TimedOut` after `idle` without a byte read or written, or
/// when a request's head has not arrived within `header` of its start.
///
/// The clock is read and the timer looked at only when an operation would block, which is when the
/// connection may start to idle: a read or write that makes progress just marks the connection busy.
/// The timer is moved when it fires early, never reset per operation (that re-registered it in the
/// runtime's timer wheel several times a request), and not polled again while it already holds the
/// waker of the task that polls the connection and has not fired. A head's deadline is taken when
/// an operation blocks after its first bytes and dropped at the first block after the head arrived;
/// a head that arrives in one read costs no timer work.
pub struct ClientIo {
    inner: TcpStream,
    idle: Duration,
    header: Duration,
    /// The client, whose [`ConnPhase`] its requests keep.
    client: Arc<ClientInfo>,
    /// When the connection was last seen making progress (precisely: the first operation that
    /// blocked after one that made progress).
    last: Instant,
    /// Whether an operation made progress since `last` was taken.
    busy: bool,
    /// When the head being read must be complete, and the connection's head count while it is
    /// awaited; `None` while no head is being read.
    head_due: Option<(Instant, u32)>,
    /// Bytes were read while the connection awaited head number `n` (since the last block).
    head_seen: Option<u32>,
    sleep: Pin<Box<Sleep>>,
    /// The waker `sleep` was last polled with.
    armed: Option<Waker>,
}

/// Why a client connection timed out.
enum Expired {
    Idle,
    Header,
}

impl ClientIo {
    /// `client`'s connection over `inner`, whose first head is due within `header` from now.
    pub fn new(
        inner: TcpStream,
        client: Arc<ClientInfo>,
        idle: Duration,
        header: Duration,
    ) -> Self {
        let now = Instant::now();
        let head_due = now + header;
        ClientIo {
            inner,
            idle,
            header,
            client,
            last: now,
            busy: false,
            head_due: Some((head_due, 0)),
            head_seen: None,
            sleep: Box::pin(tokio::time::sleep_until(head_due.min(now + idle))),
            armed: None,
        }
    }

    fn phase(&self) -> &ConnPhase {
        &self.client.phase
    }

    /// After an operation returned `Pending`: whether a deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Expired> {
        if self.busy {
            self.busy = false;
            self.last = Instant::now();
        }
        if let Some((_, heads)) = self.head_due {
            if self.phase().waiting_head() != Some(heads) {
                // The head arrived; the timer, if it was set for the head, fires early and moves.
                self.head_due = None;
            }
        } else if let Some(heads) = self.head_seen.take()
            && self.phase().waiting_head() == Some(heads)
        {
            let due = self.last + self.header;
            self.head_due = Some((due, heads));
            if self.sleep.deadline() > due {
                self.sleep.as_mut().reset(due);
                self.armed = None;
            }
        }
        if let Some(w) = &self.armed
            && w.will_wake(cx.waker())
            && !self.sleep.is_elapsed()
        {
            return None;
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let idle_due = self.last + self.idle;
            if idle_due <= now {
                return Some(Expired::Idle);
            }
            let due = match self.head_due {
                Some((head_due, _)) if head_due <= now => return Some(Expired::Header),
                Some((head_due, _)) => head_due.min(idle_due),
                None => idle_due,
            };
            self.sleep.as_mut().reset(due);
        }
        self.armed = Some(cx.waker().clone());
        None
    }

    /// What a blocked operation returns: `Pending`, or the error of a passed deadline.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        match self.expired(cx) {
            None => Poll::Pending,
            Some(Expired::Idle) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client connection idle timeout",
            ))),
            Some(Expired::Header) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client request header read timeout",
            ))),
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.busy = true;
                if this.head_due.is_none()
                    && this.head_seen.is_none()
                    && buf.filled().len() > before
                {
                    this.head_seen = this.phase().waiting_head();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.blocked(cx),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.busy = true;
                Poll::Ready(r)
            }
            Poll::Pending => this.blocked(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.busy = true;
                Poll::Ready(r)
            }
            Poll::Pending => this.blocked(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A loopback client and the server side of its connection, with the `idle` and `header`
    /// timeouts, and the client's phase as its requests would keep it.
    async fn connected(idle: Duration, header: Duration) -> (TcpStream, ClientIo, Arc<ClientInfo>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let info = Arc::new(ClientInfo::new(peer, "http", Default::default()));
        (
            client,
            ClientIo::new(server, info.clone(), idle, header),
            info,
        )
    }

    /// Reads until the client's next bytes or an error; the error's text.
    async fn read_error(io: &mut ClientIo) -> String {
        let mut buf = [0u8; 64];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        err.to_string()
    }

    /// A request's head arrives and its response ends, as the proxy reports them.
    async fn one_request(client: &mut TcpStream, io: &mut ClientIo, info: &ClientInfo) {
        client.write_all(b"head").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        info.phase.request_started(Version::HTTP_11);
        info.phase.request_ended(false);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_time_out_and_busy_ones_do_not() {
        let (mut client, mut io, _) = connected(Duration::from_secs(10), HOUR).await;
        let mut buf = [0u8; 4];
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(8)).await;
            client.write_all(b"ping").await.unwrap();
            io.read_exact(&mut buf).await.unwrap();
        }
        assert!(read_error(&mut io).await.contains("idle"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_the_last_progress() {
        let (mut client, mut io, _) = connected(Duration::from_secs(10), HOUR).await;
        let mut buf = [0u8; 4];
        tokio::time::advance(Duration::from_secs(6)).await;
        client.write_all(b"ping").await.unwrap();
        io.read_exact(&mut buf).await.unwrap();
        // The first timer (due at 10 s) fires while the connection waits; it moves to 6 s + 10 s.
        let waited = tokio::time::timeout(Duration::from_secs(9), io.read(&mut buf)).await;
        assert!(waited.is_err(), "still open 9 s after the last read");
        let started = Instant::now();
        assert!(read_error(&mut io).await.contains("idle"));
        assert!(
            started.elapsed() <= Duration::from_secs(1),
            "closed 10 s after the last read"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_head_is_due_from_the_connection_start_however_bytes_trickle() {
        let (mut client, mut io, _) = connected(HOUR, Duration::from_secs(10)).await;
        let started = Instant::now();
        let mut buf = [0u8; 1];
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(4)).await;
            client.write_all(b"G").await.unwrap();
            io.read_exact(&mut buf).await.unwrap();
        }
        assert!(read_error(&mut io).await.contains("header"));
        assert_eq!(started.elapsed().as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_timeout_applies_and_a_started_head_is_due_in_time() {
        let (idle, header) = (Duration::from_secs(60), Duration::from_secs(10));
        let (mut client, mut io, info) = connected(idle, header).await;
        one_request(&mut client, &mut io, &info).await;
        // Keep-alive: 30 s without a byte is within the idle timeout, not a slow head.
        let mut buf = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
        assert!(waited.is_err(), "still open 30 s into a keep-alive wait");
        // The next head starts with this byte and stalls: due 10 s later.
        client.write_all(b"G").await.unwrap();
        io.read_exact(&mut buf).await.unwrap();
        let started = Instant::now();
        assert!(read_error(&mut io).await.contains("header"));
        assert_eq!(started.elapsed().as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_whose_response_ended_before_the_io_looked_leaves_no_deadline() {
        let (idle, header) = (Duration::from_secs(60), Duration::from_secs(10));
        let (mut client, mut io, info) = connected(idle, header).await;
        one_request(&mut client, &mut io, &info).await;
        // The second head is read between requests, then answered at once: the I/O blocks
        // only after its response ended, when the connection waits again.
        one_request(&mut client, &mut io, &info).await;
        let mut buf = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_secs(50), io.read(&mut buf)).await;
        assert!(waited.is_err(), "a keep-alive wait is not a slow head");
        assert!(read_error(&mut io).await.contains("idle"));
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_http2_and_tunnels_are_bound_by_the_idle_timeout_only() {
        let (idle, header) = (Duration::from_secs(20), Duration::from_secs(10));
        for (version, ended, upgraded) in [
            (Version::HTTP_11, false, false), // a request body, while the request lasts
            (Version::HTTP_2, true, false),
            (Version::HTTP_11, true, true),
        ] {
            let (mut client, mut io, info) = connected(idle, header).await;
            client.write_all(b"head").await.unwrap();
            let mut buf = [0u8; 4];
            io.read_exact(&mut buf).await.unwrap();
            info.phase.request_started(version);
            if ended {
                info.phase.request_ended(upgraded);
            }
            let mut byte = [0u8; 1];
            for _ in 0..6 {
                tokio::time::advance(Duration::from_secs(8)).await;
                client.write_all(b"x").await.unwrap();
                io.read_exact(&mut byte).await.unwrap();
            }
            let started = Instant::now();
            assert!(read_error(&mut io).await.contains("idle"), "{version:?}");
            assert_eq!(started.elapsed().as_secs(), 20);
        }
    }
}

//! A client connection's deadlines, kept by its I/O: the idle timeout (no byte either way; for
//! HTTP/2, no open stream, whatever control frames the client sends), the header read timeout (a
//! request's head must arrive in time) and the send timeout (the client must take our bytes), with
//! one timer per connection.
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
//!
//! HTTP/2 keeps its count of open streams in [`ConnPhase`] too: a client that PINGs (or sends
//! SETTINGS, or WINDOW_UPDATEs) with no stream open is idle, as nginx and haproxy count it, so its
//! bytes do not move the idle deadline. A timed-out HTTP/2 connection is closed without a GOAWAY:
//! the deadline is seen by the I/O under hyper, which can only fail the connection.

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
/// stores, no read-modify-write, for HTTP/1: its requests run one after another in the
/// connection's task. HTTP/2 requests, which may run at once, set `H2` and count their streams
/// with atomic adds (the second word), for the idle timeout and to tell an idle connection that
/// may be closed to make room for a new one.
#[derive(Debug, Default)]
pub struct ConnPhase(AtomicU32, AtomicU32);

/// The state, in the low two bits: the bytes read next start a request's head (the start state).
const BETWEEN: u32 = 0;
/// A request's head has arrived and its response has not ended: bytes read are its body.
const IN_REQUEST: u32 = 1;
/// An upgraded (tunnelled) connection: no head deadline, only the idle timeout.
const NO_HEADS: u32 = 2;
/// HTTP/2: no head deadline; idle while no stream is open.
const H2: u32 = 3;
const STATE: u32 = 3;
/// One head, in the count above the state bits.
const HEAD: u32 = 4;

impl ConnPhase {
    /// A request's head has arrived. An HTTP/2 connection reads frames of many requests at
    /// once, so it has no head deadline from then on.
    pub fn request_started(&self, version: http::Version) {
        let v = self.0.load(Ordering::Relaxed);
        if version >= http::Version::HTTP_2 {
            self.1.fetch_add(1, Ordering::Relaxed);
            if v & STATE != H2 {
                self.0
                    .store((v & !STATE).wrapping_add(HEAD) | H2, Ordering::Relaxed);
            }
            return;
        }
        if v & STATE >= NO_HEADS {
            return;
        }
        self.0.store(
            (v & !STATE).wrapping_add(HEAD) | IN_REQUEST,
            Ordering::Relaxed,
        );
    }

    /// A request's response has ended (or the client went away). `upgraded`: it switched
    /// protocols, so what follows is a tunnel, not heads.
    pub fn request_ended(&self, upgraded: bool) {
        let v = self.0.load(Ordering::Relaxed);
        match v & STATE {
            IN_REQUEST => {
                let next = if upgraded { NO_HEADS } else { BETWEEN };
                self.0.store(v & !STATE | next, Ordering::Relaxed);
            }
            H2 => {
                // Never below zero, whatever the order of a stream's start and end.
                let _ = self
                    .1
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            _ => {}
        }
    }

    /// Whether the connection is an idle keep-alive one, which may be closed to make room for a
    /// new client without losing a request: HTTP/1.1 between requests after at least one (not a
    /// fresh connection, whose first head the header timeout bounds), or HTTP/2 with no open stream.
    pub(crate) fn idle_keep_alive(&self) -> bool {
        let v = self.0.load(Ordering::Relaxed);
        match v & STATE {
            BETWEEN => v >= HEAD,
            H2 => self.1.load(Ordering::Relaxed) == 0,
            _ => false,
        }
    }

    /// HTTP/2 with no open stream: the client's bytes (PINGs) do not keep it alive.
    fn h2_without_streams(&self) -> bool {
        self.0.load(Ordering::Relaxed) & STATE == H2 && self.1.load(Ordering::Relaxed) == 0
    }

    /// `Some(heads so far)` while the connection waits for a head.
    fn waiting_head(&self) -> Option<u32> {
        let v = self.0.load(Ordering::Relaxed);
        (v & STATE == BETWEEN).then_some(v & !STATE)
    }
}

/// A client connection that fails with `TimedOut` after `idle` without a byte read or written (for
/// HTTP/2: without an open stream), when a request's head has not arrived within `header` of its
/// start, or when its writes stay blocked (the client takes none of our bytes) for the listener's
/// `send_timeout`, however much it sends meanwhile.
///
/// The clock is read and the timer looked at only when an operation would block, which is when the
/// connection may start to idle: a read or write that makes progress just marks the connection busy.
/// The timer is moved when it fires early, never reset per operation (that re-registered it in the
/// runtime's timer wheel several times a request), and not polled again while it already holds the
/// waker of the task that polls the connection and has not fired. A head's deadline is taken when
/// an operation blocks after its first bytes and dropped at the first block after the head arrived;
/// a head that arrives in one read costs no timer work. The send deadline is taken when a write
/// blocks after one that made progress (a response larger than the socket's buffer), and dropped
/// by the next write that makes progress: one store per write.
pub struct ClientIo {
    inner: TcpStream,
    idle: Duration,
    header: Duration,
    send: Duration,
    /// Since when writes have been blocked without a byte taken; `None` while they make progress.
    write_blocked: Option<Instant>,
    /// Whether an HTTP/2 stream was open when `last` was taken: the first block after the last
    /// stream ends still counts as progress (the stream's end), later ones not.
    streams_open: bool,
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
    Send,
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
        let send = client.limits.send_timeout;
        ClientIo {
            inner,
            idle,
            header,
            send,
            write_blocked: None,
            streams_open: false,
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

    /// After an operation returned `Pending` (a write when `writing`): whether a deadline has
    /// passed.
    fn expired(&mut self, cx: &mut Context<'_>, writing: bool) -> Option<Expired> {
        if self.busy {
            self.busy = false;
            // An HTTP/2 connection without streams idles whatever it reads or writes (PINGs and
            // their acks); the block right after its last stream ended starts that idle time.
            let streams_open = !self.phase().h2_without_streams();
            if streams_open || self.streams_open {
                self.last = Instant::now();
            }
            self.streams_open = streams_open;
        }
        if writing && self.write_blocked.is_none() {
            let now = Instant::now();
            self.write_blocked = Some(now);
            let due = now + self.send;
            if self.sleep.deadline() > due {
                self.sleep.as_mut().reset(due);
                self.armed = None;
            }
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
            let mut due = match self.head_due {
                Some((head_due, _)) if head_due <= now => return Some(Expired::Header),
                Some((head_due, _)) => head_due.min(idle_due),
                None => idle_due,
            };
            if let Some(since) = self.write_blocked {
                let send_due = since + self.send;
                if send_due <= now {
                    return Some(Expired::Send);
                }
                due = due.min(send_due);
            }
            self.sleep.as_mut().reset(due);
        }
        self.armed = Some(cx.waker().clone());
        None
    }

    /// What a blocked operation returns: `Pending`, or the error of a passed deadline.
    fn blocked<T>(&mut self, cx: &mut Context<'_>, writing: bool) -> Poll<std::io::Result<T>> {
        match self.expired(cx, writing) {
            None => Poll::Pending,
            Some(Expired::Idle) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client connection idle timeout",
            ))),
            Some(Expired::Header) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client request header read timeout",
            ))),
            Some(Expired::Send) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client send timeout: the client takes none of the response",
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
            Poll::Pending => this.blocked(cx, false),
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
                this.write_blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.blocked(cx, true),
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
                this.write_blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => this.blocked(cx, true),
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

    /// The client of a listener whose send timeout is `send`, with the server side's I/O.
    async fn connected_send(send: Duration) -> (TcpStream, ClientIo) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let limits = ListenerLimits {
            send_timeout: send,
            ..Default::default()
        };
        let info = Arc::new(ClientInfo::new(peer, "http", Arc::new(limits)));
        (client, ClientIo::new(server, info, HOUR, HOUR))
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_none_of_our_bytes_is_closed_at_the_send_timeout() {
        let (mut client, mut io) = connected_send(Duration::from_secs(5)).await;
        let chunk = vec![0u8; 256 * 1024];
        // Fill the socket buffers until a write blocks, while the client keeps sending.
        let started = Instant::now();
        let err = loop {
            client.write_all(b"x").await.unwrap();
            if let Err(e) = io.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("send"), "{err}");
        assert_eq!(started.elapsed().as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_takes_bytes_in_time_is_not_closed() {
        let (mut client, mut io) = connected_send(Duration::from_secs(5)).await;
        let reader = tokio::spawn(async move {
            // 1 MB a second. The kernel lets our writes go on only once a good part of its send
            // buffer (megabytes on loopback) has drained, so the client must take that much
            // within the send timeout, as with nginx's `send_timeout`.
            let mut buf = vec![0u8; 1024 * 1024];
            let mut total = 0;
            while total < 32 * 1024 * 1024 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.read_exact(&mut buf).await.unwrap();
                total += buf.len();
            }
        });
        let chunk = vec![0u8; 1024 * 1024];
        for _ in 0..32 {
            io.write_all(&chunk).await.unwrap();
        }
        drop(io);
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn http2_pings_without_a_stream_do_not_keep_a_connection_alive() {
        let (idle, header) = (Duration::from_secs(20), Duration::from_secs(10));
        let (mut client, mut io, info) = connected(idle, header).await;
        let mut buf = [0u8; 4];
        client.write_all(b"head").await.unwrap();
        io.read_exact(&mut buf).await.unwrap();
        info.phase.request_started(Version::HTTP_2);
        assert!(!info.phase.idle_keep_alive());
        // A stream open 30 s with bytes moving: not idle.
        for _ in 0..6 {
            tokio::time::advance(Duration::from_secs(5)).await;
            client.write_all(b"data").await.unwrap();
            io.read_exact(&mut buf).await.unwrap();
        }
        info.phase.request_ended(false);
        assert!(info.phase.idle_keep_alive());
        client.write_all(b"last").await.unwrap();
        io.read_exact(&mut buf).await.unwrap();
        let ended = Instant::now();
        // PINGs every 5 s from then on move nothing: closed 20 s after the stream ended.
        let err = loop {
            tokio::time::advance(Duration::from_secs(5)).await;
            if ended.elapsed() < Duration::from_secs(20) {
                client.write_all(b"ping").await.unwrap();
            }
            match tokio::time::timeout(Duration::from_millis(1), io.read_exact(&mut buf)).await {
                Ok(Ok(_)) | Err(_) => continue,
                Ok(Err(e)) => break e,
            }
        };
        assert!(err.to_string().contains("idle"), "{err}");
        assert!(
            ended.elapsed() <= Duration::from_secs(21),
            "{:?}",
            ended.elapsed()
        );
    }

    #[test]
    fn idle_keep_alive_is_between_requests_or_without_streams() {
        let p = ConnPhase::default();
        assert!(!p.idle_keep_alive(), "a fresh connection is not keep-alive");
        p.request_started(Version::HTTP_11);
        assert!(!p.idle_keep_alive());
        p.request_ended(false);
        assert!(p.idle_keep_alive());
        let h2 = ConnPhase::default();
        h2.request_started(Version::HTTP_2);
        h2.request_started(Version::HTTP_2);
        h2.request_ended(false);
        assert!(!h2.idle_keep_alive());
        h2.request_ended(false);
        h2.request_ended(false);
        assert!(h2.idle_keep_alive());
        h2.request_started(Version::HTTP_2);
        assert!(!h2.idle_keep_alive(), "never counted below zero");
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
            (Version::HTTP_2, false, false),  // with a stream open
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

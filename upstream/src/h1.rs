//! HTTP/1.1 to the endpoints, spoken by the request's own task. The request head is written
//! straight from the client's parsed head (no copy of its header map per attempt), the response
//! head is parsed into the response the proxy passes on, and the response body is read from the
//! connection when the client's side asks for it. hyper's client ran every connection as a task of
//! its own, fed through a channel and answering through a oneshot: about a third of a proxied
//! request's instructions (measured in `bench/LOG.md#round-15`).
//!
//! A connection carries one exchange at a time (no pipelining) and goes back to its pool only when
//! both the request and the response were complete, the response allowed keep-alive and nothing
//! arrived beyond it.

use super::body::{AttemptBody, RequestBodyError};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::Body;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The longest response head accepted (nginx's and haproxy's defaults are 8 and 16 KB).
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines a response head may have (hyper's default).
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The read buffer a connection starts with; a read is given at least `MIN_READ` bytes of room.
const READ_SIZE: usize = 8 * 1024;
const MIN_READ: usize = 2 * 1024;
/// The most a single read of a long body asks for.
const MAX_READ: usize = 64 * 1024;
/// Body pieces shorter than this are copied out of the read buffer, which then stays the
/// connection's own (and warm) instead of being shared and replaced at the next read.
const COPY_BELOW: usize = 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket (or TLS) failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The endpoint closed the connection before the response (or its body) was complete.
    #[error("connection closed before the response was complete")]
    Closed,
    /// The response head does not parse.
    #[error("invalid response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response breaks HTTP/1.1 in another way.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The client's request body failed while it was forwarded (the client's fault).
    #[error("request body: {0}")]
    RequestBody(#[from] RequestBodyError),
    /// Nothing happened for as long as the [`Wait`] allows.
    #[error("{}", .0.describe())]
    Timeout(Wait),
}

impl Error {
    /// Whether the client, not the endpoint, made the exchange fail: its request body was broken,
    /// too large or stalled. Such a failure never counts against the endpoint and is not retried.
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            Error::RequestBody(_) | Error::Timeout(Wait::ClientBody)
        )
    }
}

/// What an exchange is waiting for, each with its own timeout: only one at a time is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The endpoint to take request bytes (`write_timeout`).
    Write,
    /// The client to send more of its request body (the listener's `body_read_timeout`).
    ClientBody,
    /// The response head, once the request was sent whole (`response_timeout`).
    Response,
    /// The next bytes of the response body, while the proxy asks for them (`read_timeout`).
    Read,
}

impl Wait {
    fn describe(self) -> &'static str {
        match self {
            Wait::Write => "the endpoint took no request byte within write_timeout",
            Wait::ClientBody => "the client sent no request body byte within body_read_timeout",
            Wait::Response => "no response head within response_timeout of the request",
            Wait::Read => "the endpoint sent no response body byte within read_timeout",
        }
    }
}

/// The endpoint's timeouts of a cluster (the client's body timeout comes with each request body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For the TCP connection and the TLS handshake together.
    pub connect: Duration,
    /// From the request written whole (body included) to the response head.
    pub response: Duration,
    /// The longest silence within a response body while the proxy waits for it.
    pub read: Duration,
    /// The longest the endpoint may take no request byte while some wait to be written.
    pub write: Duration,
}

/// TLS to an endpoint, as the cluster's connector makes it.
type TlsIo = tokio_rustls::client::TlsStream<TokioIo<TokioIo<TcpStream>>>;

/// The transport of an upstream connection.
pub enum Io {
    /// Clear text.
    Plain(TcpStream),
    /// TLS (boxed: rustls' state is large and rare on the benchmark's path).
    Tls(Box<TlsIo>),
}

impl From<hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>> for Io {
    fn from(stream: hyper_rustls::MaybeHttpsStream<TokioIo<TcpStream>>) -> Io {
        match stream {
            hyper_rustls::MaybeHttpsStream::Http(tcp) => Io::Plain(tcp.into_inner()),
            hyper_rustls::MaybeHttpsStream::Https(tls) => Io::Tls(Box::new(tls.into_inner())),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a request's body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestFraming {
    /// No body is sent.
    Empty,
    /// The body as it comes (a `Content-Length` says how long it is).
    Length,
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The request side of an exchange still to be written.
struct Writer {
    /// How much of the connection's head buffer was written.
    head_written: usize,
    body: Option<AttemptBody>,
    chunked: bool,
    /// Body bytes (and chunk framing) taken from the body, not yet written.
    queue: VecDeque<Bytes>,
    /// Everything is written and flushed.
    done: bool,
    /// The last `Pending` came from the client's body, not the socket.
    waiting_client: bool,
    /// Bytes were written or taken from the body since the last `Pending`.
    progressed: bool,
}

/// One HTTP/1.1 connection to an endpoint.
pub struct Conn {
    io: Io,
    read: BytesMut,
    /// The request head being written (kept for the next request's head).
    head: Vec<u8>,
    writer: Writer,
    timeouts: Timeouts,
    /// What the exchange waits for since its last progress, and until when; `None` while it makes
    /// progress. Taken when an operation blocks, never per byte or body piece.
    wait: Option<(Wait, Instant)>,
    /// The connection's one timer, made at its first block. It is moved when it fires early, not
    /// reset per request or per wait (that registers it again in the timer wheel every time).
    sleep: Option<Pin<Box<Sleep>>>,
}

/// A parsed response head and how its body is framed.
pub struct ResponseHead {
    /// Status, version and headers, with the body framing's own headers left out (see [`parse_head`]).
    pub parts: http::response::Parts,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// How a response body is delimited, and how much of it is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of the chunk grammar.
    Chunked(Chunk),
    /// Until the endpoint closes the connection.
    Close,
    /// `101 Switching Protocols`: no body; the connection is the upgrade's.
    Upgrade,
    /// The body is complete.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line (trailers are not passed on).
    Trailers,
}

impl Conn {
    /// A connection over `io`, whose endpoint gets `timeouts`.
    pub fn new(io: Io, timeouts: Timeouts) -> Box<Conn> {
        Box::new(Conn {
            io,
            read: BytesMut::with_capacity(READ_SIZE),
            head: Vec::with_capacity(512),
            writer: Writer {
                head_written: 0,
                body: None,
                chunked: false,
                queue: VecDeque::new(),
                done: true,
                waiting_client: false,
                progressed: false,
            },
            timeouts,
            wait: None,
            sleep: None,
        })
    }

    /// After an operation blocked on `what`: the timeout error if its deadline has passed, else
    /// `Pending` with the timer holding the task's waker. The deadline is taken at the first block
    /// after progress, so time spent while the proxy does not ask (a client that does not read the
    /// response) is not counted against the endpoint.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, what: Wait) -> Poll<Error> {
        let due = match self.wait {
            Some((w, due)) if w == what => due,
            _ => {
                let timeout = match what {
                    Wait::Write => self.timeouts.write,
                    Wait::Response => self.timeouts.response,
                    Wait::Read => self.timeouts.read,
                    Wait::ClientBody => match self.writer.body.as_ref() {
                        Some(b) => b.idle_timeout().unwrap_or(self.timeouts.write),
                        None => self.timeouts.write,
                    },
                };
                let due = Instant::now() + timeout;
                self.wait = Some((what, due));
                due
            }
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if sleep.deadline() > due {
            sleep.as_mut().reset(due);
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= due {
                self.wait = None;
                return Poll::Ready(Error::Timeout(what));
            }
            sleep.as_mut().reset(due);
        }
        Poll::Pending
    }

    /// What the request's writing waits for after it blocked.
    fn writer_wait(&self) -> Wait {
        if self.writer.waiting_client {
            Wait::ClientBody
        } else {
            Wait::Write
        }
    }

    /// The request's writing progressed: a timed wait of the writer starts again at its next block.
    fn note_write_progress(&mut self) {
        if std::mem::take(&mut self.writer.progressed)
            && matches!(self.wait, Some((Wait::Write | Wait::ClientBody, _)))
        {
            self.wait = None;
        }
    }

    /// Whether an idle connection can carry another request: the endpoint has not closed it and
    /// sent nothing unasked. Costs no system call while the socket has not become readable.
    pub fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match &mut self.io {
            Io::Plain(tcp) => {
                matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Io::Tls(tls) => {
                // rustls takes in session tickets and the like here; application data or the
                // end of the stream means the connection is not idle any more.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut byte);
                Pin::new(tls.as_mut())
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }

    /// Prepares the request: `parts` (origin form; authority form for CONNECT; `authority` as the
    /// `Host` when there is none) and `body`, framed as hyper's client would.
    pub fn start(
        &mut self,
        parts: &http::request::Parts,
        authority: &http::uri::Authority,
        body: AttemptBody,
    ) {
        let has_length = parts.headers.contains_key(CONTENT_LENGTH);
        let mut length_header = None;
        let framing = if body.is_end_stream() {
            RequestFraming::Empty
        } else if has_length {
            RequestFraming::Length
        } else if let Some(n) = body.size_hint().exact() {
            length_header = Some(n);
            RequestFraming::Length
        } else if parts.method == Method::CONNECT {
            // A CONNECT's bytes after its head are the tunnel's, never a body.
            RequestFraming::Empty
        } else {
            RequestFraming::Chunked
        };
        encode_head(&mut self.head, parts, authority, framing, length_header);
        self.writer = Writer {
            head_written: 0,
            body: (framing != RequestFraming::Empty).then_some(body),
            chunked: framing == RequestFraming::Chunked,
            queue: VecDeque::new(),
            done: false,
            waiting_client: false,
            progressed: false,
        };
        self.wait = None;
    }

    /// Writes what it can of the request; ready when all of it is written and flushed.
    fn poll_write_request(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let w = &mut self.writer;
        if w.done {
            return Poll::Ready(Ok(()));
        }
        w.waiting_client = false;
        while w.head_written < self.head.len() {
            w.head_written += ready!(poll_write_some(
                &mut self.io,
                cx,
                &self.head[w.head_written..]
            ))?;
            w.progressed = true;
        }
        loop {
            while let Some(front) = w.queue.front_mut() {
                let n = ready!(poll_write_some(&mut self.io, cx, front))?;
                w.progressed = true;
                front.advance(n);
                if front.is_empty() {
                    w.queue.pop_front();
                }
            }
            let Some(body) = w.body.as_mut() else { break };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    // Waiting for the client: what was written must reach the endpoint meanwhile
                    // (TLS may hold it).
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    w.waiting_client = true;
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    w.body = None;
                    if w.chunked {
                        w.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::RequestBody(e))),

                Poll::Ready(Some(Ok(frame))) => {
                    w.progressed = true;
                    // Trailers are not forwarded (hyper's client sent them only when the
                    // request's `Trailer` header named them, and that header is hop-by-hop here).
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if w.chunked {
                            w.queue
                                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                            w.queue.push_back(data);
                            w.queue.push_back(Bytes::from_static(b"\r\n"));
                        } else {
                            w.queue.push_back(data);
                        }
                    }
                }
            }
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        w.done = true;
        Poll::Ready(Ok(()))
    }

    /// Reads more into the read buffer, with room for `want` bytes; 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let room = self.read.capacity() - self.read.len();
        // An empty buffer with little room left (the rest went out with a body piece) is
        // replaced whole, so that a long body is read in few large reads.
        if room < MIN_READ.min(want) || (self.read.is_empty() && room < want / 2) {
            self.read.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Reads more into the read buffer, where the end of the stream means the message was cut short.
    fn poll_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<(), Error>> {
        match ready!(self.poll_fill(cx, want))? {
            0 => Poll::Ready(Err(Error::Closed)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Sends the prepared request and reads the response head (`100 Continue` and other interim
    /// responses skipped), writing the request body alongside as the endpoint takes it. Times
    /// out on the writer's wait (the endpoint's `write_timeout` or the client's body timeout) while
    /// the request is being written, then on `response_timeout`.
    pub fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, Error>> {
        match self.poll_exchange_inner(cx, method) {
            Poll::Pending => {
                self.note_write_progress();
                let what = if self.writer.done {
                    Wait::Response
                } else {
                    self.writer_wait()
                };
                self.poll_deadline(cx, what).map(Err)
            }
            Poll::Ready(r) => {
                self.wait = None;
                Poll::Ready(r)
            }
        }
    }

    fn poll_exchange_inner(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, Error>> {
        loop {
            if !self.writer.done {
                match self.poll_write_request(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
            }
            if !self.read.is_empty()
                && let Some(head) = parse_head(&mut self.read, method)?
            {
                if head.parts.status.is_informational()
                    && head.parts.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            if self.read.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Invalid("response head over 64 KB")));
            }
            ready!(self.poll_more(cx, READ_SIZE / 2))?;
        }
    }

    /// Takes `n` bytes (at most what is buffered) off the read buffer.
    fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.read.len());
        if n < COPY_BELOW {
            let piece = Bytes::copy_from_slice(&self.read[..n]);
            self.read.advance(n);
            piece
        } else {
            self.read.split_to(n).freeze()
        }
    }

    /// The next piece of the response body framed by `framing` (updated); `None` at its end.
    /// Keeps writing an unfinished request body alongside. Times out when the endpoint sends
    /// nothing for `read_timeout` while it is asked for more (or, while the request body is still
    /// being sent and the client holds it back, on the client's body timeout).
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        match self.poll_body_inner(cx, framing) {
            Poll::Pending => {
                self.note_write_progress();
                let what = if !self.writer.done && self.writer.waiting_client {
                    Wait::ClientBody
                } else {
                    Wait::Read
                };
                self.poll_deadline(cx, what).map(|e| Some(Err(e)))
            }
            Poll::Ready(r) => {
                // Progress: the next block starts a new wait (no clock read here).
                self.wait = None;
                Poll::Ready(r)
            }
        }
    }

    fn poll_body_inner(
        &mut self,
        cx: &mut Context<'_>,
        framing: &mut Framing,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        if !self.writer.done
            && let Poll::Ready(Err(e)) = self.poll_write_request(cx)
        {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match framing {
                Framing::Done | Framing::Upgrade => return Poll::Ready(None),
                Framing::Length(0) => *framing = Framing::Done,
                Framing::Length(left) => {
                    if !self.read.is_empty() {
                        let piece = self.take(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= piece.len() as u64;
                        if *left == 0 {
                            *framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(piece)));
                    }
                    let want = usize::try_from(*left).unwrap_or(MAX_READ);
                    if let Err(e) = ready!(self.poll_more(cx, want.clamp(READ_SIZE, MAX_READ))) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Framing::Close => {
                    if !self.read.is_empty() {
                        let n = self.read.len();
                        return Poll::Ready(Some(Ok(self.take(n))));
                    }
                    match ready!(self.poll_fill(cx, 2 * READ_SIZE)) {
                        Ok(0) => *framing = Framing::Done,
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
                Framing::Chunked(chunk) => match decode_chunked(&mut self.read, chunk) {
                    Err(e) => return Poll::Ready(Some(Err(e))),
                    Ok(Decoded::Done) => *framing = Framing::Done,
                    Ok(Decoded::Data(n)) => {
                        let piece = self.take(n);
                        return Poll::Ready(Some(Ok(piece)));
                    }
                    Ok(Decoded::NeedMore) => {
                        if let Err(e) = ready!(self.poll_more(cx, 2 * READ_SIZE)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                },
            }
        }
    }

    /// Whether the request went out whole and nothing beyond the response arrived: with a
    /// complete, keep-alive response, the connection can carry another request.
    pub fn is_clean(&self) -> bool {
        self.writer.done && self.read.is_empty()
    }

    /// The connection, for an upgrade (`101 Switching Protocols`): its transport and the bytes
    /// the endpoint sent after the response head.
    pub fn into_upgraded(self) -> Upgraded {
        Upgraded {
            io: self.io,
            leftover: self.read.freeze(),
        }
    }
}

/// Writes some of `buf` (not empty); a write that takes nothing is an error, not progress.
fn poll_write_some(
    stream: &mut Io,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<Result<usize, Error>> {
    match ready!(Pin::new(stream).poll_write(cx, buf))? {
        0 => Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into())),
        n => Poll::Ready(Ok(n)),
    }
}

/// Writes the request head into `out`.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    authority: &http::uri::Authority,
    framing: RequestFraming,
    length_header: Option<u64>,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    if parts.method == Method::CONNECT {
        out.extend_from_slice(authority.as_str().as_bytes());
    } else {
        match parts.uri.path_and_query() {
            Some(pq) if !pq.as_str().is_empty() => out.extend_from_slice(pq.as_str().as_bytes()),
            _ => out.push(b'/'),
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = length_header {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a complete response head at the start of `buf` and takes it off; `None` while it is
/// incomplete. The headers that frame the message on this connection (`Transfer-Encoding`,
/// `Keep-Alive`, and `Connection` when it names nothing but `close` or `keep-alive`) are read here
/// and left out of the map: they are hop-by-hop, so the proxy would remove them again.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, Error> {
    let mut lines: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut lines)?
    {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let code = resp.code.ok_or(Error::Invalid("no status code"))?;
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status code"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The values share one copy of the head: one allocation, and the read buffer stays ours.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    let (mut length, mut chunked, mut other_coding) = (None::<u64>, false, false);
    let (mut close, mut keep_alive_token) = (false, false);
    for line in resp.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes())
            .map_err(|_| Error::Invalid("bad header name"))?;
        let start = line.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + line.value.len()))
            .map_err(|_| Error::Invalid("bad header value"))?;
        if name == TRANSFER_ENCODING {
            // The last coding decides: chunked, or the body runs to the end of the connection.
            for coding in tokens(line.value) {
                chunked = coding.eq_ignore_ascii_case(b"chunked");
                other_coding |= !chunked;
            }
            continue;
        }
        if name == CONTENT_LENGTH {
            let n = parse_length(line.value).ok_or(Error::Invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Invalid("differing content-length values"));
            }
            length = Some(n);
        } else if name == CONNECTION {
            let mut others = false;
            for t in tokens(line.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else {
                    others = true;
                }
            }
            if !others {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue;
        }
        headers.append(name, value);
    }
    buf.advance(len);

    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        keep_alive = false;
        Framing::Upgrade
    } else if status.is_informational()
        || *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if *method == Method::CONNECT && status.is_success() {
        // A tunnel, which this client does not carry: the connection ends with the response.
        keep_alive = false;
        Framing::Done
    } else if chunked {
        // A Content-Length beside Transfer-Encoding is ignored (RFC 9112 §6.3), and such a
        // message is not trusted to leave the connection in a known state.
        if length.is_some() {
            keep_alive = false;
            headers.remove(CONTENT_LENGTH);
        }
        Framing::Chunked(Chunk::Size)
    } else if other_coding {
        keep_alive = false;
        headers.remove(CONTENT_LENGTH);
        Framing::Close
    } else if let Some(n) = length {
        // An empty body is complete at once: the client's side need not poll it.
        if n == 0 {
            Framing::Done
        } else {
            Framing::Length(n)
        }
    } else {
        keep_alive = false;
        Framing::Close
    };
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(ResponseHead {
        parts,
        framing,
        keep_alive,
    }))
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value: digits only (a list of equal values is accepted, as RFC 9110 §8.6).
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if t.is_empty() || !t.iter().all(u8::is_ascii_digit) || t.len() > 19 {
            return None;
        }
        let n: u64 = std::str::from_utf8(t).ok()?.parse().ok()?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// This many data bytes are at the start of the buffer.
    Data(usize),
    /// The body is complete (trailers consumed).
    Done,
    /// More bytes are needed.
    NeedMore,
}

/// Advances the chunked decoder over `buf`, consuming the framing (not the data it reports).
fn decode_chunked(buf: &mut BytesMut, chunk: &mut Chunk) -> Result<Decoded, Error> {
    loop {
        match *chunk {
            Chunk::Size => {
                let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(Error::Invalid("chunk-size line too long"))
                    } else {
                        Ok(Decoded::NeedMore)
                    };
                };
                let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
                let digits = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if digits.is_empty() || digits.len() > 15 {
                    return Err(Error::Invalid("bad chunk size"));
                }
                let size = u64::from_str_radix(
                    std::str::from_utf8(digits).map_err(|_| Error::Invalid("bad chunk size"))?,
                    16,
                )
                .map_err(|_| Error::Invalid("bad chunk size"))?;
                buf.advance(end + 1);
                *chunk = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let rest = left - n as u64;
                *chunk = if rest == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest)
                };
                return Ok(Decoded::Data(n));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    if buf.first().is_some_and(|b| *b != b'\r' && *b != b'\n') {
                        return Err(Error::Invalid("no CRLF after chunk data"));
                    }
                    if buf.first() == Some(&b'\n') {
                        buf.advance(1);
                        *chunk = Chunk::Size;
                        continue;
                    }
                    return Ok(Decoded::NeedMore);
                }
                match &buf[..2] {
                    b"\r\n" => buf.advance(2),
                    [b'\n', _] => buf.advance(1),
                    _ => return Err(Error::Invalid("no CRLF after chunk data")),
                }
                *chunk = Chunk::Size;
            }
            Chunk::Trailers => {
                let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(Error::Invalid("trailer line too long"))
                    } else {
                        Ok(Decoded::NeedMore)
                    };
                };
                let empty = end == 0 || (end == 1 && buf[0] == b'\r');
                buf.advance(end + 1);
                if empty {
                    return Ok(Decoded::Done);
                }
            }
        }
    }
}

/// An upgraded upstream connection: the bytes the endpoint sent after its `101` first, then the
/// transport itself.
pub struct Upgraded {
    io: Io,
    leftover: Bytes,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::RequestBody;

    /// Timeouts no test reaches unless it means to.
    pub(crate) const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_secs(30),
        response: Duration::from_secs(30),
        read: Duration::from_secs(30),
        write: Duration::from_secs(30),
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn head(p: &http::request::Parts, framing: RequestFraming, length: Option<u64>) -> String {
        let mut out = Vec::new();
        encode_head(
            &mut out,
            p,
            &"10.0.0.1:8080".parse().unwrap(),
            framing,
            length,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_heads_are_origin_form_with_the_endpoint_as_the_missing_host() {
        let p = parts(Method::GET, "http://example.com/a/b?c=d", &[("x-one", "1")]);
        assert_eq!(
            head(&p, RequestFraming::Empty, None),
            "GET /a/b?c=d HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-one: 1\r\n\r\n"
        );
        let p = parts(
            Method::POST,
            "/up",
            &[("host", "example.com"), ("x-two", "a"), ("x-two", "b")],
        );
        assert_eq!(
            head(&p, RequestFraming::Chunked, None),
            "POST /up HTTP/1.1\r\nhost: example.com\r\nx-two: a\r\nx-two: b\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            head(&p, RequestFraming::Length, Some(12)),
            "POST /up HTTP/1.1\r\nhost: example.com\r\nx-two: a\r\nx-two: b\r\n\
             content-length: 12\r\n\r\n"
        );
        let p = parts(
            Method::CONNECT,
            "example.com:443",
            &[("host", "example.com:443")],
        );
        assert_eq!(
            head(&p, RequestFraming::Empty, None),
            "CONNECT 10.0.0.1:8080 HTTP/1.1\r\nhost: example.com:443\r\n\r\n"
        );
    }

    fn parse(text: &str, method: Method) -> Result<Option<ResponseHead>, Error> {
        parse_head(&mut BytesMut::from(text.as_bytes()), &method)
    }

    fn framing(text: &str, method: Method) -> (Framing, bool) {
        let h = parse(text, method).unwrap().expect("a complete head");
        (h.framing, h.keep_alive)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let g = || Method::GET;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", g()),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                g()
            ),
            (Framing::Chunked(Chunk::Size), true)
        );
        // Content-Length beside chunked is ignored, and the connection not trusted afterwards.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
                g()
            ),
            (Framing::Chunked(Chunk::Size), false)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                g()
            ),
            (Framing::Close, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", g()),
            (Framing::Close, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD),
            (Framing::Done, true)
        );
        for status in ["204 No Content", "304 Not Modified"] {
            assert_eq!(
                framing(&format!("HTTP/1.1 {status}\r\n\r\n"), g()),
                (Framing::Done, true)
            );
        }
        assert_eq!(
            framing(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\n\r\n",
                g()
            ),
            (Framing::Upgrade, false)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
                g()
            ),
            (Framing::Done, false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", g()),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing(
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n",
                g()
            ),
            (Framing::Length(1), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", g()),
            (Framing::Length(7), true)
        );
    }

    #[test]
    fn framing_headers_stay_out_of_the_map_unless_connection_names_another() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        let names: Vec<_> = h
            .parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(names, [("server", "x"), ("x-a", "1"), ("x-a", "2")]);
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.parts.headers["connection"], "close, X-Hop");
    }

    #[test]
    fn incomplete_and_broken_heads() {
        assert!(
            parse("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
                .unwrap()
                .is_none()
        );
        for (text, why) in [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                "differing",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
                "content-length",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
                "content-length",
            ),
            ("HTTP/1.1 2000 OK\r\n\r\n", "status"),
            ("HTTX/1.1 200 OK\r\n\r\n", "version"),
        ] {
            let e = parse(text, Method::GET).err().expect(text).to_string();
            assert!(e.contains(why) || e.contains("invalid"), "{text}: {e}");
        }
        // Exactly the head is taken off the buffer.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"[..]);
        parse_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(&buf[..], b"hi");
    }

    /// Decodes `wire` fed in pieces of `step` bytes; the data and what is left after the body.
    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let mut buf = BytesMut::new();
        let mut chunk = Chunk::Size;
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match decode_chunked(&mut buf, &mut chunk)? {
                Decoded::Data(n) => data.extend_from_slice(&buf.split_to(n)),
                Decoded::Done => return Ok((data, buf.to_vec())),
                Decoded::NeedMore => {
                    assert!(fed < wire.len(), "ran out of input");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let wire =
            b"5\r\nhello\r\n6;ext=1\r\n world\r\nA \r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (data, rest) = dechunk(wire, step).unwrap();
            assert_eq!(data, b"hello world0123456789", "step {step}");
            // Bytes after the body are left for the connection to judge.
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
        assert_eq!(dechunk(b"0\r\n\r\n", 100).unwrap().0, b"");
        assert_eq!(dechunk(b"3\nabc\n0\n\n", 100).unwrap().0, b"abc");
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffff1\r\n",
            b"\r\n",
        ] {
            assert!(dechunk(bad, 100).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(dechunk(&long, 100).is_err());
    }

    /// A connection to a one-shot server on loopback that reads one request head, checks it with
    /// `expect_request`, then writes `answer` and keeps the socket open until the client closes.
    async fn conn_to(answer: &'static [u8]) -> (Box<Conn>, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its head");
                seen.extend_from_slice(&buf[..n]);
            }
            for piece in answer.chunks(7) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            // Whatever else the client sends until it closes (a request body).
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            seen
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        (Conn::new(Io::Plain(tcp), TIMEOUTS), server)
    }

    async fn exchange(conn: &mut Conn, method: Method) -> Result<ResponseHead, Error> {
        let p = parts(method.clone(), "/x", &[("host", "h")]);
        conn.start(&p, &"h:1".parse().unwrap(), RequestBody::Empty.attempt());
        std::future::poll_fn(|cx| conn.poll_exchange(cx, &method)).await
    }

    async fn body(conn: &mut Conn, mut framing: Framing) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        while let Some(piece) = std::future::poll_fn(|cx| conn.poll_body(cx, &mut framing)).await {
            out.extend_from_slice(&piece?);
        }
        assert_eq!(framing, Framing::Done);
        Ok(out)
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_bodies_read_across_small_segments() {
        let (mut conn, server) = conn_to(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
        )
        .await;
        let head = exchange(&mut conn, Method::GET).await.unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert!(head.parts.headers.get("link").is_none());
        assert_eq!(body(&mut conn, head.framing).await.unwrap(), b"wikipedia");
        assert!(conn.is_clean() && head.keep_alive);
        drop(conn);
        let seen = server.await.unwrap();
        assert!(
            seen.starts_with(b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n"),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_bytes_past_the_response_make_it_unclean() {
        let (mut conn, _server) =
            conn_to(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcEXTRA").await;
        let head = exchange(&mut conn, Method::GET).await.unwrap();
        assert_eq!(body(&mut conn, head.framing).await.unwrap(), b"abc");
        // Give the extra bytes time to arrive, then the connection is no use for another request.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while conn.is_usable() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the stray bytes are seen");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .unwrap();
        });
        let mut conn = Conn::new(Io::Plain(TcpStream::connect(addr).await.unwrap()), TIMEOUTS);
        let head = exchange(&mut conn, Method::GET).await.unwrap();
        assert!(matches!(
            body(&mut conn, head.framing).await,
            Err(Error::Closed)
        ));
    }

    /// A connection with `timeouts` to a server that reads one request head, writes `first`,
    /// then waits for a word on the channel and writes `rest` (or holds the socket open).
    async fn stalling(
        first: &'static [u8],
        rest: &'static [u8],
        timeouts: Timeouts,
    ) -> (Box<Conn>, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its head");
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(first).await.unwrap();
            if wait.await.is_ok() {
                s.write_all(rest).await.unwrap();
            }
            // Hold the socket until the client closes it.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        (Conn::new(Io::Plain(tcp), timeouts), go)
    }

    const SHORT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn a_response_head_that_never_comes_times_out_on_response_timeout() {
        let timeouts = Timeouts {
            response: SHORT,
            ..TIMEOUTS
        };
        let (mut conn, _go) = stalling(b"", b"", timeouts).await;
        let e = tokio::time::timeout(Duration::from_secs(10), exchange(&mut conn, Method::GET))
            .await
            .expect("the exchange ends well within 10 s")
            .err()
            .expect("no head, no response");
        assert!(matches!(e, Error::Timeout(Wait::Response)), "{e}");
        assert!(!e.is_client_fault());
    }

    #[tokio::test]
    async fn a_body_that_stalls_times_out_on_read_timeout() {
        let timeouts = Timeouts {
            read: SHORT,
            ..TIMEOUTS
        };
        let (mut conn, _go) = stalling(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789",
            b"",
            timeouts,
        )
        .await;
        let head = exchange(&mut conn, Method::GET).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), body(&mut conn, head.framing))
            .await
            .expect("the body ends well within 10 s");
        assert!(matches!(got, Err(Error::Timeout(Wait::Read))), "{got:?}");
    }

    #[tokio::test]
    async fn time_the_proxy_does_not_ask_for_the_body_is_not_the_endpoints() {
        let timeouts = Timeouts {
            read: Duration::from_secs(2),
            ..TIMEOUTS
        };
        let (mut conn, go) = stalling(
            b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n0123456789",
            b"abcdefghij",
            timeouts,
        )
        .await;
        let head = exchange(&mut conn, Method::GET).await.unwrap();
        let mut framing = head.framing;
        let mut got = Vec::new();
        while got.len() < 10 {
            let piece = std::future::poll_fn(|cx| conn.poll_body(cx, &mut framing))
                .await
                .unwrap()
                .unwrap();
            got.extend_from_slice(&piece);
        }
        // A client that reads nothing for longer than read_timeout (backpressure).
        tokio::time::sleep(Duration::from_secs(3)).await;
        go.send(()).unwrap();
        while let Some(piece) = std::future::poll_fn(|cx| conn.poll_body(cx, &mut framing)).await {
            got.extend_from_slice(&piece.expect("the endpoint answered as soon as it was asked"));
        }
        assert_eq!(got, b"0123456789abcdefghij");
    }

    #[tokio::test]
    async fn an_upgrade_keeps_the_bytes_sent_after_the_switch() {
        let (mut conn, _server) =
            conn_to(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nearly").await;
        let head = exchange(&mut conn, Method::GET).await.unwrap();
        assert_eq!(head.framing, Framing::Upgrade);
        let mut up = (*conn).into_upgraded();
        let mut got = vec![0u8; 5];
        up.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"early");
    }
}

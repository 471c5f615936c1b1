//! Edge robustness (issue 26, item 7): what a hostile or broken peer does to the proxy. Malformed and
//! smuggling requests are sent on raw sockets and what the backend receives is checked byte for byte
//! (RFC 9112 §2.2, §3.2, §5, §6.1, §6.3); slow clients, HTTP/2 abuse (rapid reset, CONTINUATION
//! flood, a reader that never reads) and backend faults each end within a bound while a
//! well-behaved client beside them is still served. The heavy floods with figures are
//! `bench/edge.sh`; these are the bounded, CI-sized versions.

use crate::common::{Proxy, WAIT};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// What every forwarded exchange carries after the client's own headers, in the proxy's order: the
/// forwarding headers of `headers::add_forwarding` for a loopback client over plain HTTP, and the
/// request id (its value is the proxy's; [`normalized`] masks it).
fn forwarding(host: &str) -> String {
    format!(
        "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
         forwarded: for=127.0.0.1;proto=http;host={host}\r\nx-request-id: <id>\r\n"
    )
}

/// The exact head the backend should receive for a request line and the client's headers (names
/// lower-cased by the proxy, values and order untouched, `content-length` among them), followed by
/// the forwarding headers and, for a chunked body, the upstream client's `transfer-encoding`.
fn expected_head(line: &str, headers: &[(&str, &str)], chunked: bool) -> String {
    let host = headers
        .iter()
        .find(|(k, _)| *k == "host")
        .map_or("", |(_, v)| v);
    let mut out = format!("{line}\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&forwarding(host));
    if chunked {
        out.push_str("transfer-encoding: chunked\r\n");
    }
    out.push_str("\r\n");
    out
}

/// A forwarded head as text with its request id (24 hex digits, made per connection and request)
/// replaced by `<id>`: every other byte is compared as received. An id of another form is left
/// as it is, so the comparison shows it.
fn normalized(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head).into_owned();
    const NAME: &str = "\r\nx-request-id: ";
    let Some(at) = text.find(NAME) else {
        return text;
    };
    let start = at + NAME.len();
    let end = text[start..].find("\r\n").map_or(text.len(), |i| start + i);
    let id = &text[start..end];
    if id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{}<id>{}", &text[..start], &text[end..])
    } else {
        text
    }
}

/// One request as the raw backend parsed it: its head bytes exactly, and its body decoded (a chunked
/// body's chunk sizes are the proxy's choice, so the bytes compared are the payload's).
#[derive(Clone, Debug, PartialEq)]
struct Received {
    head: Bytes,
    body: Bytes,
    chunked: bool,
}

impl Received {
    fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// How a message (request to the backend, response to the client) is framed.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The framing named by a parsed head; `Err` when the head frames its message ambiguously.
fn framing_of(headers: &[httparse::Header<'_>], request: bool) -> Result<Framing, String> {
    let mut te = Vec::new();
    let mut cl = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te.push(String::from_utf8_lossy(h.value).to_ascii_lowercase());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl.push(String::from_utf8_lossy(h.value).trim().to_string());
        }
    }
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Transfer-Encoding and Content-Length".into());
    }
    if !te.is_empty() {
        let joined = te.join(",");
        let last = joined.rsplit(',').next().unwrap_or("").trim().to_string();
        if last != "chunked" {
            return Err(format!(
                "Transfer-Encoding {joined:?} does not end in chunked"
            ));
        }
        return Ok(Framing::Chunked);
    }
    match cl.as_slice() {
        [] if request => Ok(Framing::Length(0)),
        [] => Ok(Framing::UntilClose),
        [one] => one
            .parse()
            .map(Framing::Length)
            .map_err(|_| format!("bad Content-Length {one:?}")),
        more => Err(format!("several Content-Length: {more:?}")),
    }
}

/// Decodes a chunked body at the start of `buf`: `Ok(Some((payload, bytes used)))` when complete
/// (trailers skipped), `Ok(None)` while incomplete, `Err` when malformed.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut at = 0;
    let mut payload = Vec::new();
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[at..at + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        at += eol + 2;
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let Some(eol) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((payload, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        payload.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete request at the start of `buf`: `Ok(None)` while incomplete.
fn parse_request(buf: &[u8]) -> Result<Option<(Received, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf).map_err(|e| format!("{e}"))? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let head = Bytes::copy_from_slice(&buf[..head_len]);
    match framing_of(req.headers, true)? {
        Framing::Length(n) => {
            if buf.len() < head_len + n {
                return Ok(None);
            }
            let body = Bytes::copy_from_slice(&buf[head_len..head_len + n]);
            Ok(Some((
                Received {
                    head,
                    body,
                    chunked: false,
                },
                head_len + n,
            )))
        }
        Framing::Chunked => Ok(dechunk(&buf[head_len..])?.map(|(payload, used)| {
            (
                Received {
                    head,
                    body: payload.into(),
                    chunked: true,
                },
                head_len + used,
            )
        })),
        Framing::UntilClose => unreachable!("requests are never framed by close"),
    }
}

/// A fixed answer to every request.
const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A TCP backend that records every byte it receives, parses requests strictly (a request it cannot
/// frame, such as one with both Content-Length and Transfer-Encoding, is recorded as an error) and
/// answers each with `answer`; with `close_after_answer` it closes after the first.
struct RawBackend {
    addr: SocketAddr,
    /// Every byte received, per connection in accept order.
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Every request parsed, over all connections in the order they completed.
    requests: Arc<Mutex<Vec<Received>>>,
    /// What the strict parser refused.
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    async fn start(answer: Vec<u8>, close_after_answer: bool) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (raw2, requests2, errors2) = (raw.clone(), requests.clone(), errors.clone());
        let answer: Arc<[u8]> = answer.into();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = {
                    let mut raw = raw2.lock().unwrap();
                    raw.push(Vec::new());
                    raw.len() - 1
                };
                let (raw, requests, errors, answer) = (
                    raw2.clone(),
                    requests2.clone(),
                    errors2.clone(),
                    answer.clone(),
                );
                conns.spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        raw.lock().unwrap()[index].extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        loop {
                            match parse_request(&pending) {
                                Ok(None) => break,
                                Ok(Some((req, used))) => {
                                    pending.drain(..used);
                                    requests.lock().unwrap().push(req);
                                    if stream.write_all(&answer).await.is_err() {
                                        return;
                                    }
                                    if close_after_answer {
                                        let _ = stream.shutdown().await;
                                        return;
                                    }
                                }
                                Err(e) => {
                                    errors.lock().unwrap().push(e);
                                    return;
                                }
                            }
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        RawBackend {
            addr,
            raw,
            requests,
            errors,
            task,
        }
    }

    async fn ok() -> RawBackend {
        RawBackend::start(OK_RESPONSE.to_vec(), false).await
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Everything received on every connection, concatenated.
    fn all_bytes(&self) -> Vec<u8> {
        self.raw.lock().unwrap().concat()
    }
}

/// A config: one listener (with `listener_extra` keys), the cluster `web` of `web` routed from `/`,
/// and, when given, the cluster `good` routed from `/good` (to show the proxy still serves while `web`
/// misbehaves).
fn config(listener_extra: &str, web: SocketAddr, good: Option<SocketAddr>) -> String {
    config_with(listener_extra, "", web, good)
}

/// [`config`] with `cluster_extra` keys (and tables) in the cluster `web`.
fn config_with(
    listener_extra: &str,
    cluster_extra: &str,
    web: SocketAddr,
    good: Option<SocketAddr>,
) -> String {
    let mut text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n{listener_extra}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [access_log]\nenabled = false\n\n"
    );
    if good.is_some() {
        text.push_str("[[routes]]\npath_prefix = \"/good\"\ncluster = \"good\"\n\n");
    }
    text.push_str(&format!(
        "[[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\n{cluster_extra}\n[[clusters.endpoints]]\naddress = \"{web}\"\n\n"
    ));
    if let Some(good) = good {
        text.push_str(&format!(
            "[[clusters]]\nname = \"good\"\n[[clusters.endpoints]]\naddress = \"{good}\"\n"
        ));
    }
    text
}

/// A response as the raw client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

/// What the client saw on one connection: the complete responses in order, whether the proxy
/// closed the connection, and the bytes after the last complete response (a response cut short).
#[derive(Debug, Default)]
struct Seen {
    responses: Vec<Resp>,
    closed: bool,
    unparsed: Vec<u8>,
}

impl Seen {
    fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }
}

/// Parses complete responses out of `buf` (taking them off), appending to `seen`; `Err` on bytes
/// that are not a response.
fn take_responses(buf: &mut Vec<u8>, seen: &mut Seen) -> Result<(), String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(buf).map_err(|e| format!("{e}"))? {
            httparse::Status::Partial => return Ok(()),
            httparse::Status::Complete(n) => n,
        };
        let status = resp.code.unwrap_or(0);
        let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Length(0)
        } else {
            framing_of(resp.headers, false)?
        };
        let (body, used) = match framing {
            Framing::Length(n) if buf.len() >= head_len + n => {
                (buf[head_len..head_len + n].to_vec(), head_len + n)
            }
            Framing::Chunked => match dechunk(&buf[head_len..])? {
                Some((payload, used)) => (payload, head_len + used),
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        buf.drain(..used);
        seen.responses.push(Resp { status, body });
    }
}

/// Writes `request` on a new connection to `addr`, then reads until `want` responses arrived, or the
/// proxy closed the connection, or [`WAIT`] passed (which fails the test: the proxy neither
/// answered nor closed). With `want` reached, it goes on reading for a moment to see whether the
/// proxy closes the connection (that part is only informative: `closed` may stay false).
async fn exchange(addr: SocketAddr, request: &[u8], want: usize) -> Seen {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A proxy that refuses early may close before taking everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    read_responses(&mut stream, want, WAIT).await
}

async fn read_responses(stream: &mut TcpStream, want: usize, limit: Duration) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + limit;
    loop {
        // Once the wanted responses are in, a short look for a close (never asserted as absent).
        let until = if seen.responses.len() >= want {
            (Instant::now() + Duration::from_millis(300)).min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, stream.read(&mut chunk)).await {
            Err(_) if seen.responses.len() >= want => return seen,
            Err(_) => panic!(
                "no response nor close within {limit:?}; so far {seen:?}, unparsed {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                seen.unparsed = buf;
                return seen;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Err(e) = take_responses(&mut buf, &mut seen) {
                    panic!(
                        "the proxy sent something that is not a response ({e}): {:?}",
                        String::from_utf8_lossy(&buf)
                    );
                }
            }
        }
    }
}

/// Asserts a plain GET to `path` on a new connection is answered 200: the proxy still serves.
async fn still_serves(proxy: &Proxy, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    let seen = exchange(proxy.addr, req.as_bytes(), 1).await;
    assert_eq!(seen.statuses(), [200], "{seen:?}");
    assert_eq!(seen.responses[0].body, b"ok");
}

/// Starts a proxy in front of a fresh [`RawBackend`] answering 200.
async fn start_ok(listener_extra: &str) -> (Proxy, RawBackend, tempfile::TempDir) {
    let backend = RawBackend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(listener_extra, backend.addr, None), dir.path()).await;
    (proxy, backend, dir)
}

/// Sends each of `cases` (name, bytes) on its own connection and asserts the answer is 400 (with a
/// close), and that the backend received not one byte.
async fn assert_refused(cases: &[(&str, Vec<u8>)], allowed: &[u16]) {
    let (proxy, backend, _dir) = start_ok("").await;
    let mut failures = Vec::new();
    for (name, bytes) in cases {
        let seen = exchange(proxy.addr, bytes, 1).await;
        if !allowed.contains(&seen.statuses().first().copied().unwrap_or(0)) {
            failures.push(format!(
                "{name}: answered {:?} (want one of {allowed:?})",
                seen.statuses()
            ));
        }
    }
    // A refusal is answered before anything is forwarded: the backend saw no byte of any case.
    let got = backend.all_bytes();
    if !got.is_empty() {
        failures.push(format!(
            "the backend received {:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    still_serves(&proxy, "/after").await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_second_request() {
    let (proxy, backend, _dir) = start_ok("").await;
    // Content-Length: 4 would end the body inside the chunk; chunked framing ends it at `0\r\n\r\n`,
    // where a front end reading by length would see `GET /smuggled` as the next request.
    let req = b"POST /cl-te HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
                5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let seen = exchange(proxy.addr, req, 1).await;
    let status = seen.statuses().first().copied();
    let requests = backend.requests();
    assert!(
        backend.errors().is_empty(),
        "forwarded with ambiguous framing: {:?}",
        backend.errors()
    );
    assert!(
        requests
            .iter()
            .all(|r| !r.head_text().starts_with("GET /smuggled")),
        "a request rode in the body: {requests:?}"
    );
    match status {
        Some(400) => assert!(requests.is_empty(), "{requests:?}"),
        Some(200) => {
            // Forwarded with the one framing that wins (chunked, RFC 9112 §6.3), and the client
            // connection closed after the answer (§6.1), so nothing behind the body is read.
            assert_eq!(requests.len(), 1, "{requests:?}");
            assert_eq!(
                normalized(&requests[0].head),
                expected_head("POST /cl-te HTTP/1.1", &[("host", "x")], true)
            );
            assert_eq!(requests[0].body, "hello");
            // Waits (bounded) for the close rather than the short look of `exchange`.
            let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
            stream.write_all(req).await.unwrap();
            let seen = read_responses(&mut stream, 2, WAIT).await;
            assert!(
                seen.closed && seen.responses.len() == 1,
                "the connection stayed open after a request with both framings: {seen:?}"
            );
        }
        other => panic!("answered {other:?}: {seen:?}"),
    }
}

#[tokio::test]
async fn ambiguous_or_invalid_framing_is_refused_with_400() {
    let head = |extra: &str, body: &str| -> Vec<u8> {
        format!("POST /f HTTP/1.1\r\nhost: x\r\n{extra}\r\n{body}").into_bytes()
    };
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    let cases = vec![
        (
            "two different Content-Length",
            head("content-length: 4\r\ncontent-length: 5\r\n", "hello"),
        ),
        (
            "Content-Length list of two values",
            head("content-length: 4, 5\r\n", "hello"),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            head("transfer-encoding: chunked, identity\r\n", chunked_body),
        ),
        (
            "Transfer-Encoding: xchunked",
            head("transfer-encoding: xchunked\r\n", chunked_body),
        ),
        (
            "chunked not last over two lines",
            head(
                "transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n",
                chunked_body,
            ),
        ),
        (
            "space before the colon",
            b"GET /f HTTP/1.1\r\nhost: x\r\nx-a : 1\r\n\r\n".to_vec(),
        ),
        (
            "space before the colon of Transfer-Encoding",
            head("transfer-encoding : chunked\r\n", chunked_body),
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!(
                "POST /f HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{chunked_body}"
            )
            .into_bytes(),
        ),
    ];
    assert_refused(&cases, &[400]).await;
}

#[tokio::test]
async fn host_duplicated_invalid_or_missing_is_refused_with_400() {
    let cases = vec![
        (
            "Host twice",
            b"GET /h HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".to_vec(),
        ),
        (
            "Host `a b`",
            b"GET /h HTTP/1.1\r\nhost: a b\r\n\r\n".to_vec(),
        ),
        ("no Host on HTTP/1.1", b"GET /h HTTP/1.1\r\n\r\n".to_vec()),
    ];
    assert_refused(&cases, &[400]).await;
}

#[tokio::test]
async fn a_64k_header_is_refused_and_a_4k_one_passes_byte_for_byte() {
    let big = "a".repeat(64 * 1024);
    let cases = vec![(
        "a 64 KB header",
        format!("GET /big HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").into_bytes(),
    )];
    assert_refused(&cases, &[431, 400]).await;

    let (proxy, backend, _dir) = start_ok("").await;
    let value = "b".repeat(4 * 1024);
    let req = format!("GET /4k HTTP/1.1\r\nhost: x\r\nx-big: {value}\r\n\r\n");
    let seen = exchange(proxy.addr, req.as_bytes(), 1).await;
    assert_eq!(seen.statuses(), [200], "{seen:?}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        normalized(&requests[0].head),
        expected_head(
            "GET /4k HTTP/1.1",
            &[("host", "x"), ("x-big", &value)],
            false
        )
    );
}

/// Characters a header value may not carry (RFC 9110 §5.5, RFC 9112 §2.2, §5.2): the proxy refuses the
/// request with 400, or forwards it with each replaced by spaces; never forwards them as they are.
#[tokio::test]
async fn obs_fold_bare_cr_lf_and_nul_are_refused_or_cleaned() {
    let (proxy, backend, _dir) = start_ok("").await;
    let cases: [(&str, &[u8]); 4] = [
        (
            "obs-fold",
            b"GET /fold HTTP/1.1\r\nhost: x\r\nx-a: a\r\n b\r\n\r\n",
        ),
        (
            "bare LF ending a header line",
            b"GET /lf HTTP/1.1\r\nhost: x\nx-a: 1\r\n\r\n",
        ),
        (
            "bare CR in a value",
            b"GET /cr HTTP/1.1\r\nhost: x\r\nx-a: a\rb\r\n\r\n",
        ),
        (
            "NUL in a value",
            b"GET /nul HTTP/1.1\r\nhost: x\r\nx-a: a\0b\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in cases {
        let before = backend.requests().len();
        let seen = exchange(proxy.addr, bytes, 1).await;
        match seen.statuses().first() {
            Some(400) => {
                if backend.requests().len() != before {
                    failures.push(format!("{name}: answered 400 but forwarded"));
                }
            }
            Some(200) => {
                let req = backend.requests()[before].clone();
                // Every line of the forwarded head ends in CRLF, none starts with white space (a
                // fold), and no NUL or bare CR is left.
                let head = &req.head[..req.head.len() - 2];
                let lines: Vec<&[u8]> = head
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .collect();
                let clean = lines.iter().all(|l| {
                    l.ends_with(b"\r")
                        && !l.starts_with(b" ")
                        && !l.starts_with(b"\t")
                        && !l[..l.len() - 1].contains(&b'\r')
                        && !l.contains(&0)
                });
                if !clean {
                    failures.push(format!("{name}: forwarded as {:?}", req.head_text()));
                }
            }
            other => failures.push(format!("{name}: answered {other:?}: {seen:?}")),
        }
    }
    assert!(backend.errors().is_empty(), "{:?}", backend.errors());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn pipelined_requests_after_bodies_are_forwarded_each_byte_for_byte() {
    let (proxy, backend, _dir) = start_ok("").await;
    let req = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
                GET /b HTTP/1.1\r\nhost: x\r\n\r\n\
                POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                PUT /d HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nxyz";
    let seen = exchange(proxy.addr, req, 4).await;
    assert_eq!(seen.statuses(), [200, 200, 200, 200], "{seen:?}");
    let requests = backend.requests();
    let want = [
        (
            expected_head(
                "POST /a HTTP/1.1",
                &[("host", "x"), ("content-length", "5")],
                false,
            ),
            "hello",
            false,
        ),
        (
            expected_head("GET /b HTTP/1.1", &[("host", "x")], false),
            "",
            false,
        ),
        (
            expected_head("POST /c HTTP/1.1", &[("host", "x")], true),
            "abc",
            true,
        ),
        (
            expected_head(
                "PUT /d HTTP/1.1",
                &[("host", "x"), ("content-length", "3")],
                false,
            ),
            "xyz",
            false,
        ),
    ];
    assert_eq!(requests.len(), want.len(), "{requests:?}");
    for (got, (head, body, chunked)) in requests.iter().zip(want) {
        assert_eq!(normalized(&got.head), head, "{requests:?}");
        assert_eq!(got.body, body);
        assert_eq!(got.chunked, chunked);
    }
}

#[tokio::test]
async fn chunk_extensions_and_trailers_are_decoded_and_the_body_forwarded_exactly() {
    let (proxy, backend, _dir) = start_ok("").await;
    let req = b"POST /ext HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
                5;name=value\r\nhello\r\n6;a;b=\"c d\"\r\n world\r\n0\r\nx-trailer: t\r\n\r\n\
                GET /next HTTP/1.1\r\nhost: x\r\n\r\n";
    let seen = exchange(proxy.addr, req, 2).await;
    assert_eq!(seen.statuses(), [200, 200], "{seen:?}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        normalized(&requests[0].head),
        expected_head("POST /ext HTTP/1.1", &[("host", "x")], true)
    );
    assert_eq!(requests[0].body, "hello world");
    assert_eq!(
        normalized(&requests[1].head),
        expected_head("GET /next HTTP/1.1", &[("host", "x")], false)
    );
}

#[tokio::test]
async fn a_get_with_a_chunked_body_forwards_the_body() {
    let (proxy, backend, _dir) = start_ok("").await;
    let req =
        b"GET /g HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
                GET /next HTTP/1.1\r\nhost: x\r\n\r\n";
    let seen = exchange(proxy.addr, req, 2).await;
    assert_eq!(seen.statuses(), [200, 200], "{seen:?}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[0].head_text().starts_with("GET /g HTTP/1.1\r\n"),
        "{requests:?}"
    );
    assert_eq!(requests[0].body, "hello", "{requests:?}");
    assert!(
        requests[1]
            .head_text()
            .starts_with("GET /next HTTP/1.1\r\n"),
        "{requests:?}"
    );
}

#[tokio::test]
async fn an_absolute_form_target_is_forwarded_in_origin_form() {
    let (proxy, backend, _dir) = start_ok("").await;
    let req = b"GET http://example.com/p?q=1 HTTP/1.1\r\nhost: example.com\r\n\r\n";
    let seen = exchange(proxy.addr, req, 1).await;
    assert_eq!(seen.statuses(), [200], "{seen:?}");
    let requests = backend.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        normalized(&requests[0].head),
        expected_head("GET /p?q=1 HTTP/1.1", &[("host", "example.com")], false)
    );
}

/// hyper's decoder takes chunk sizes up to `u64::MAX` and does not tell the proxy the size it
/// read, so such a chunk ends where the body's bytes pass the limit (413), or, when the client
/// sends no more, at the body idle timeout (408); never a wait for 2^64 bytes.
#[tokio::test]
async fn a_huge_chunk_size_ends_at_the_body_limit_or_the_body_idle_timeout() {
    let (proxy, _backend, _dir) =
        start_ok("max_request_body = \"1KB\"\nbody_read_timeout = \"1s\"").await;
    let head =
        b"POST /huge HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n";
    let mut over = head.to_vec();
    over.extend_from_slice(&[b'a'; 2048]);
    let seen = exchange(proxy.addr, &over, 1).await;
    assert_eq!(seen.statuses(), [413], "{seen:?}");
    let mut stalled = head.to_vec();
    stalled.extend_from_slice(b"hello");
    let seen = exchange(proxy.addr, &stalled, 1).await;
    assert_eq!(seen.statuses(), [408], "{seen:?}");
    still_serves(&proxy, "/after").await;
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_and_does_not_eject_the_backend() {
    let backend = RawBackend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    // One failure counted against the endpoint ejects it (for a minute), and a cluster with no
    // endpoint left refuses (no panic-mode spreading): a client's broken body taken for the
    // backend's fault would leave nothing to serve the requests after it.
    let outlier = "panic_action = \"refuse\"\n[clusters.outlier]\nconsecutive_5xx = 1\nconsecutive_gateway_errors = 1\n\
                   base_ejection_time = \"60s\"\n";
    let proxy = Proxy::start(&config_with("", outlier, backend.addr, None), dir.path()).await;
    let cases: [&[u8]; 3] = [
        b"POST /bad HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /bad HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"POST /bad HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n",
    ];
    let mut statuses = Vec::new();
    for req in cases {
        let seen = exchange(proxy.addr, req, 1).await;
        statuses.push(seen.statuses().first().copied());
    }
    // The client's fault is not the backend's: every request after is served by the one backend.
    for _ in 0..5 {
        still_serves(&proxy, "/after").await;
    }
    assert!(backend.errors().is_empty(), "{:?}", backend.errors());
    assert_eq!(statuses, [Some(400); 3]);
}

/// Writes `bytes` one byte per 100 ms while reading, and returns what the proxy answered and when
/// the exchange ended (a response or a close), or `None` if it was still open once every byte was
/// written and [`WAIT`] more passed.
async fn trickle(addr: SocketAddr, bytes: &[u8]) -> Option<(Seen, Duration)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let start = Instant::now();
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Holds the write side open: the proxy is the one to end the exchange.
        tokio::time::sleep(WAIT).await;
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut seen = Seen::default();
    let result = timeout(WAIT + Duration::from_secs(30), async {
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    seen.closed = true;
                    return;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    let _ = take_responses(&mut buf, &mut seen);
                    if !seen.responses.is_empty() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    writer.abort();
    result.ok().map(|()| (seen, start.elapsed()))
}

#[tokio::test]
async fn a_head_sent_one_byte_per_100ms_is_cut_after_header_read_timeout() {
    let (proxy, backend, _dir) = start_ok("header_read_timeout = \"1s\"").await;
    // 300 bytes of an endless header: 30 s of trickle, far past the 1 s timeout.
    let mut head = b"GET /slow HTTP/1.1\r\nhost: x\r\nx-slow: ".to_vec();
    head.resize(300, b'a');
    let (seen, took) = trickle(proxy.addr, &head)
        .await
        .expect("the proxy kept a trickling head open");
    assert!(
        seen.closed || seen.statuses() == [408],
        "ended with {seen:?}"
    );
    // Generous: the timeout is 1 s, the whole trickle 30 s; a proxy that waits for the head to end
    // (or resets its clock on each byte) never ends it by itself.
    assert!(took < Duration::from_secs(15), "cut only after {took:?}");
    assert!(backend.requests().is_empty());
    still_serves(&proxy, "/after").await;
}

#[tokio::test]
async fn a_body_that_stops_past_body_read_timeout_is_408() {
    let (proxy, _backend, _dir) = start_ok("body_read_timeout = \"1s\"").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    // Then nothing: the body stalls with 97 bytes to go, the write side left open.
    let seen = read_responses(&mut stream, 1, WAIT).await;
    assert_eq!(seen.statuses(), [408], "{seen:?}");
    still_serves(&proxy, "/after").await;
}

#[tokio::test]
async fn a_flood_of_idle_half_sent_heads_is_cut_and_a_client_beside_it_is_served() {
    let (proxy, backend, _dir) = start_ok("header_read_timeout = \"1s\"").await;
    // 200 connections, each with a head begun and never ended (a slowloris flood, CI-sized; the
    // heavy one is bench/edge.sh).
    const FLOOD: usize = 200;
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /flood HTTP/1.1\r\nhost: x\r\nx-a: ")
            .await
            .unwrap();
        flood.push(s);
    }
    // Beside the flood, a client is served.
    for _ in 0..5 {
        still_serves(&proxy, "/beside").await;
    }
    // And every flood connection is ended by the proxy, none forwarded.
    let ended = timeout(WAIT, async {
        for s in &mut flood {
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "flood connections still open after {WAIT:?}");
    assert!(
        backend
            .requests()
            .iter()
            .all(|r| !r.head_text().starts_with("GET /flood")),
        "{:?}",
        backend.requests()
    );
}

/// An HTTP/2 client with prior knowledge on a new connection to `addr`; its connection task's end
/// (the server's GOAWAY or close) is reported by the returned handle.
async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

/// Sends `n` GETs one after another on one h2 connection and asserts each is answered 200.
async fn h2_well_behaved(addr: SocketAddr, path: &str, n: usize) {
    let (mut send, conn) = h2_client(addr).await;
    for _ in 0..n {
        let req = http::Request::get(format!("http://x{path}"))
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = timeout(WAIT, resp)
            .await
            .expect("the well-behaved client waited too long")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        while let Some(data) = timeout(WAIT, body.data()).await.unwrap() {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
        }
    }
    drop(send);
    conn.abort();
}

#[tokio::test]
async fn h2_rapid_reset_is_stopped_and_another_client_is_served() {
    let (proxy, backend, _dir) = start_ok("").await;
    let (mut send, conn) = h2_client(proxy.addr).await;
    const STREAMS: usize = 2000;
    let mut opened = 0;
    let attack = timeout(WAIT, async {
        for _ in 0..STREAMS {
            let req = http::Request::get("http://x/reset").body(()).unwrap();
            let Ok(ready) = send.clone().ready().await else {
                return;
            };
            send = ready;
            let Ok((_, mut stream)) = send.send_request(req, false) else {
                return;
            };
            stream.send_reset(h2::Reason::CANCEL);
            opened += 1;
        }
    })
    .await;
    assert!(attack.is_ok(), "opening and resetting streams stalled");
    // Meanwhile (the attacking connection still open or not), another client is served.
    h2_well_behaved(proxy.addr, "/other", 5).await;
    // The proxy ends the attacking connection (GOAWAY, ENHANCE_YOUR_CALM in hyper's h2) rather than
    // taking thousands of streams it is told to drop.
    let ended = timeout(Duration::from_secs(10), conn).await.is_ok();
    let forwarded = backend
        .requests()
        .iter()
        .filter(|r| r.head_text().starts_with("GET /reset"))
        .count();
    // Shown with --nocapture: which defence held (the figures of bench/edge.sh are the real ones).
    eprintln!(
        "rapid reset: {opened} streams opened and reset, connection ended: {ended}, forwarded: {forwarded}"
    );
    assert!(
        ended || forwarded < STREAMS / 2,
        "{opened} streams opened and reset, the connection still open, {forwarded} forwarded"
    );
}

/// One HTTP/2 frame: 9-byte header and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn h2_continuation_flood_is_closed_and_another_client_is_served() {
    let (proxy, backend, _dir) = start_ok("").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS, empty
    // HEADERS (END_STREAM, no END_HEADERS) with :method GET, :scheme http, :path /, from the static
    // table (indexed 2, 6, 4).
    start.extend(h2_frame(0x1, 0x1, 1, &[0x82, 0x86, 0x84]));
    stream.write_all(&start).await.unwrap();
    // Each CONTINUATION holds one literal header `x-aaa: <1000 bytes>` (literal without indexing,
    // new name; the value length 1000 as an HPACK integer with a 7-bit prefix: 127 + 873).
    let mut literal = vec![0x00, 0x05];
    literal.extend_from_slice(b"x-aaa");
    literal.extend_from_slice(&[0x7f, 0xe9, 0x06]);
    literal.extend(std::iter::repeat_n(b'a', 1000));
    let continuation = h2_frame(0x9, 0, 1, &literal);
    let (mut read, mut write) = stream.into_split();
    // At most 20,000 frames (20 MB): a proxy that buffers them all has no bound on the header block.
    let writer = tokio::spawn(async move {
        for sent in 0..20_000usize {
            if write.write_all(&continuation).await.is_err() {
                return sent;
            }
        }
        20_000
    });
    // The proxy answers with GOAWAY (or nothing) and closes: reads until the close.
    let closed = timeout(WAIT + Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        closed.is_ok(),
        "the connection under a CONTINUATION flood stayed open"
    );
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    h2_well_behaved(proxy.addr, "/other", 3).await;
    still_serves(&proxy, "/after").await;
}

#[tokio::test]
async fn an_h2_client_that_never_reads_a_large_response_does_not_stall_another() {
    // An 8 MB response: far past the connection and stream windows (64 KB by default) the silent
    // reader never opens.
    let body = vec![b'z'; 8 << 20];
    let mut answer =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    answer.extend_from_slice(&body);
    let big = RawBackend::start(answer, false).await;
    let good = RawBackend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config("send_timeout = \"2s\"", big.addr, Some(good.addr)),
        dir.path(),
    )
    .await;
    let (send, conn) = h2_client(proxy.addr).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        let req = http::Request::get("http://x/big").body(()).unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        // The head is taken; the body never read, its window never released.
        let resp = timeout(WAIT, resp).await.expect("no head").unwrap();
        assert_eq!(resp.status(), 200);
        silent.push(resp);
    }
    // Beside it, on its own connection, a client is served, over HTTP/2 and HTTP/1.1.
    h2_well_behaved(proxy.addr, "/good", 10).await;
    for _ in 0..3 {
        still_serves(&proxy, "/good").await;
    }
    drop(silent);
    drop(send);
    conn.abort();
}

/// Starts a proxy whose `web` cluster is a backend answering `answer` (then closing) and whose
/// `good` cluster answers 200; returns what a GET to `web` saw.
async fn backend_fault(answer: &[u8]) -> Seen {
    let bad = RawBackend::start(answer.to_vec(), true).await;
    let good = RawBackend::ok().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config("", bad.addr, Some(good.addr)), dir.path()).await;
    let seen = exchange(proxy.addr, b"GET /fault HTTP/1.1\r\nhost: x\r\n\r\n", 1).await;
    // The proxy keeps serving, on a new connection and more than once.
    for _ in 0..3 {
        still_serves(&proxy, "/good").await;
    }
    seen
}

/// A 502, or a response the proxy cut short by closing before it was complete: after its head, or
/// before any byte of it (hyper writes a head with the body's first bytes, so a body that fails at
/// once takes the head with it). Never a complete response framed as if nothing went wrong.
fn is_502_or_cut(seen: &Seen) -> bool {
    seen.statuses().first() == Some(&502) || (seen.responses.is_empty() && seen.closed)
}

#[tokio::test]
async fn backend_faults_give_502_or_a_cut_response_and_the_proxy_keeps_serving() {
    let big_head = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    );
    let cases: [(&str, &[u8]); 5] = [
        (
            "closes mid-body",
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf",
        ),
        (
            "an invalid status line",
            b"HTTP/1.1 abc OK\r\ncontent-length: 2\r\n\r\nok",
        ),
        ("not HTTP at all", b"garbage\r\n\r\n"),
        ("a head over 64 KB", big_head.as_bytes()),
        (
            "a bad chunk size",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (name, answer) in cases {
        let seen = backend_fault(answer).await;
        if !is_502_or_cut(&seen) {
            failures.push(format!(
                "{name}: {:?}, closed: {}, then {:?}",
                seen.statuses(),
                seen.closed,
                String::from_utf8_lossy(&seen.unparsed)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

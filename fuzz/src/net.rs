//! The network targets: an in-process proxy on loopback (one `http`, one `tcp` listener taking PROXY
//! headers from loopback, one `tls-passthrough` listener) in front of backends of this module, fed
//! mutated bytes on raw sockets. Each input must end within [`HANG`] (an answer and a close, or a
//! close) without a panic anywhere in the process, and a well-formed exchange right after it must be
//! served: that is what "the proxy keeps serving" means here.

use crate::Target;
use sluicegate::config::Config;
use sluicegate::plugin::PluginRuntime;
use sluicegate::server::{Listeners, Server, runtime_options};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// How long one exchange may take before it counts as a hang: the listeners' own timeouts are 2 s,
/// so a proxy that honours them ends every exchange well within this, even on a loaded machine.
pub const HANG: Duration = Duration::from_secs(15);

/// The most bytes read back from one exchange (a runaway answer is a finding, not a memory test).
const MAX_READ: usize = 8 << 20;

/// The names of the threads that panicked: a panic in a proxy task is caught by tokio and only
/// closes a connection, which a client cannot tell from a deliberate close. Each harness names its
/// runtime's threads after its target, so that the tests running side by side in one process (one
/// of which may fail an assertion, a panic too) count only their own proxy's panics.
static PANICKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_string();
            if let Ok(mut p) = PANICKED.lock() {
                p.push(name);
            }
            previous(info);
        }));
    });
}

/// Panics so far on threads named `name`.
fn panics_on(name: &str) -> usize {
    PANICKED
        .lock()
        .map_or(0, |p| p.iter().filter(|n| *n == name).count())
}

/// A minimal TLS ClientHello record naming `server_name` (SNI), as a browser's first bytes.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let name = server_name.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes()); // server name list
    sni.push(0); // host_name
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut extensions = vec![0, 0]; // server_name
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);
    let mut body = vec![3, 3]; // TLS 1.2 in the legacy version field
    body.extend_from_slice(&[7; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![1]; // ClientHello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 1];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Reads until the peer closes, at most [`MAX_READ`] bytes; `Err` past [`HANG`].
async fn read_to_close(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > MAX_READ {
                        return;
                    }
                }
            }
        }
    };
    tokio::time::timeout(HANG, read)
        .await
        .map_err(|_| format!("neither answered nor closed within {HANG:?}"))?;
    Ok(out)
}

/// Connects to `addr`, writes `input`, ends the client's side (half-close) and reads to the close.
async fn one_shot(addr: SocketAddr, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = tokio::time::timeout(HANG, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    // The proxy may refuse before taking every byte: a failed write is one of its answers.
    let _ = stream.write_all(input).await;
    let _ = stream.shutdown().await;
    read_to_close(&mut stream).await
}

/// Connects to `addr` and writes `input`; ends the client's side (half-close) only once the proxy
/// has gone quiet (15 ms after its last byte, or 60 ms without any), then reads to the close. An
/// HTTP/1.1 server that reads the end of its client's input drops the request in flight (hyper
/// without half-close), so ending at once would hide every answer.
async fn http_shot(addr: SocketAddr, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = tokio::time::timeout(HANG, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.write_all(input).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let start = tokio::time::Instant::now();
    loop {
        // Only the signature depends on these: an answer slower than them is cut by the
        // half-close (a different behaviour recorded), never a false finding.
        let quiet = if out.is_empty() {
            Duration::from_millis(60)
        } else {
            Duration::from_millis(15)
        };
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > MAX_READ || start.elapsed() > HANG {
                    return Err(format!("still answering after {HANG:?}"));
                }
            }
        }
    }
    let _ = stream.shutdown().await;
    out.extend(read_to_close(&mut stream).await?);
    Ok(out)
}

/// Connects to `addr`, writes a request that asks for `connection: close` and reads to the close:
/// no half-close, so a proxy slow to answer (a loaded machine) is waited for, up to [`HANG`].
async fn http_close_shot(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = tokio::time::timeout(HANG, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("writing a well-formed request: {e}"))?;
    read_to_close(&mut stream).await
}

/// The status code of the first response in `bytes`, or what they are instead.
fn status_of(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "closed".into();
    }
    match bytes.strip_prefix(b"HTTP/1.1 ") {
        Some(rest) if rest.len() >= 3 => String::from_utf8_lossy(&rest[..3]).into_owned(),
        _ => "other".into(),
    }
}

/// What is wrong with a request head the proxy forwarded, if anything: the smuggling oracle of the
/// `request` target. Whatever a client sends, what reaches a backend is one unambiguous HTTP/1.1
/// message: a request line of three parts, CRLF line ends only (no bare CR or LF), no NUL, no
/// folded line, header names without white space, one Host at most, and one framing (a single
/// Content-Length of digits, or `Transfer-Encoding: chunked` alone).
pub fn forwarded_head_problem(head: &[u8]) -> Option<String> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 2;
    let mut lengths = 0;
    let mut hosts = 0;
    let mut codings = Vec::new();
    for (i, line) in head[..end].split(|b| *b == b'\n').enumerate() {
        let Some(line) = line.strip_suffix(b"\r") else {
            if line.is_empty() {
                continue; // after the last CRLF
            }
            return Some(format!(
                "a bare LF after {:?}",
                String::from_utf8_lossy(line)
            ));
        };
        let text = String::from_utf8_lossy(line);
        if line.contains(&b'\r') || line.contains(&0) {
            return Some(format!("a bare CR or a NUL in {text:?}"));
        }
        if i == 0 {
            let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            if parts.len() != 3 || parts[2] != b"HTTP/1.1" || parts.iter().any(|p| p.is_empty()) {
                return Some(format!("a request line {text:?}"));
            }
            continue;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Some(format!("a folded line {text:?}"));
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Some(format!("a header line without a colon {text:?}"));
        };
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Some(format!("a header name {text:?}"));
        }
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_string();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Some(format!("a Content-Length {value:?}"));
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.push(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if lengths > 1 {
        return Some(format!("{lengths} Content-Length headers"));
    }
    if hosts > 1 {
        return Some(format!("{hosts} Host headers"));
    }
    if lengths > 0 && !codings.is_empty() {
        return Some("Content-Length and Transfer-Encoding together".into());
    }
    if !codings.is_empty() && (codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked")) {
        return Some(format!("Transfer-Encoding {codings:?}"));
    }
    None
}

/// What one backend connection does after reading the request head.
#[derive(Clone)]
enum Behaviour {
    /// Answers these bytes (shared, so the response target changes them per input), then closes.
    Answer(Arc<Mutex<Vec<u8>>>),
    /// Reads to the end of the client's input, sends it back, closes (for the L4 listeners).
    Echo,
}

/// A backend on loopback; its task ends with the harness's runtime.
async fn backend(behaviour: Behaviour, problems: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let behaviour = behaviour.clone();
            let problems = problems.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                let work = async {
                    match behaviour {
                        Behaviour::Answer(answer) => {
                            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                                match stream.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => got.extend_from_slice(&buf[..n]),
                                }
                            }
                            // Recorded before answering: by the time the client has the answer,
                            // the problem is there to be seen.
                            if let Some(p) = forwarded_head_problem(&got) {
                                problems.lock().unwrap().push(format!(
                                    "the backend received {p}: {:?}",
                                    String::from_utf8_lossy(&got[..got.len().min(2000)])
                                ));
                            }
                            let answer = answer.lock().unwrap().clone();
                            let _ = stream.write_all(&answer).await;
                            let _ = stream.shutdown().await;
                            // Takes what is left of a request body before closing, so that the
                            // close is a FIN and not a reset of unread data.
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        Behaviour::Echo => {
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 || got.len() > MAX_READ {
                                    break;
                                }
                                got.extend_from_slice(&buf[..n]);
                            }
                            let _ = stream.write_all(&got).await;
                            let _ = stream.shutdown().await;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), work).await;
            });
        }
    });
    addr
}

/// A well-formed answer of a backend.
const OK_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// The proxy in process with its backends, on a runtime of its own.
pub struct Harness {
    rt: Runtime,
    /// The name of the runtime's threads (the proxy's tasks run there).
    threads: String,
    http: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
    /// What the backends found wrong in the requests the proxy forwarded.
    problems: Arc<Mutex<Vec<String>>>,
    /// What the `web` backend answers (the response target mutates it).
    answer: Arc<Mutex<Vec<u8>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Harness {
    /// Starts the proxy; compiled plugins are cached in `cache_dir`.
    pub fn start(target: &str, cache_dir: &Path) -> Harness {
        count_panics();
        let threads = format!("sluicegate-fuzz-{target}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(threads.clone())
            .enable_all()
            .build()
            .unwrap();
        let answer = Arc::new(Mutex::new(OK_ANSWER.to_vec()));
        let cache_dir = cache_dir.to_path_buf();
        let answer2 = answer.clone();
        let problems = Arc::new(Mutex::new(Vec::new()));
        let problems2 = problems.clone();
        let (http, tcp, tls, stop) = rt.block_on(async move {
            let web = backend(Behaviour::Answer(answer2), problems2.clone()).await;
            let good = backend(
                Behaviour::Answer(Arc::new(Mutex::new(OK_ANSWER.to_vec()))),
                problems2.clone(),
            )
            .await;
            let echo = backend(Behaviour::Echo, problems2).await;
            // Three listeners on port 0 need three addresses: 127.0.0.1-3, all loopback.
            // Short timeouts of the listeners: each input ends fast; no retries, no ejection, so
            // one input's fault does not change how the next is treated.
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\nheader_read_timeout = \"2s\"\n\
                 idle_timeout = \"2s\"\nbody_read_timeout = \"2s\"\nsend_timeout = \"2s\"\n\
                 max_request_body = \"1MB\"\n\n\
                 [[listeners]]\naddress = \"127.0.0.2:0\"\nprotocol = \"tcp\"\ncluster = \"echo\"\n\
                 header_read_timeout = \"2s\"\nidle_timeout = \"2s\"\n\
                 proxy_protocol_from = [\"127.0.0.0/8\"]\n\n\
                 [[listeners]]\naddress = \"127.0.0.3:0\"\nprotocol = \"tls-passthrough\"\n\
                 header_read_timeout = \"2s\"\nidle_timeout = \"2s\"\n\
                 [[listeners.sni_routes]]\nserver_names = [\"a.example.com\"]\ncluster = \"echo\"\n\n\
                 [admin]\nenabled = false\n\n[access_log]\nenabled = false\n\n\
                 [[routes]]\npath_prefix = \"/good\"\ncluster = \"good\"\n\n\
                 [[routes]]\ncluster = \"web\"\n\n\
                 [[clusters]]\nname = \"web\"\nresponse_timeout = \"5s\"\nread_timeout = \"5s\"\n\
                 [[clusters.endpoints]]\naddress = \"{web}\"\n\n\
                 [[clusters]]\nname = \"good\"\n[[clusters.endpoints]]\naddress = \"{good}\"\n\n\
                 [[clusters]]\nname = \"echo\"\n[[clusters.endpoints]]\naddress = \"{echo}\"\n"
            );
            let config = Config::parse(&text, "fuzz-harness.toml", Path::new("."))
                .unwrap_or_else(|e| panic!("the harness config: {e}"));
            let listeners = Listeners::bind(&config).await.unwrap();
            let addrs = listeners.proxy_addrs();
            let mut options = runtime_options(&config);
            options.cache_dir.get_or_insert(cache_dir);
            let server = Server::with_runtime(config, PluginRuntime::new(options).unwrap())
                .unwrap_or_else(|e| panic!("the harness proxy: {e}"));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(server.run(listeners, async move {
                let _ = rx.await;
            }));
            (addrs[0], addrs[1], addrs[2], tx)
        });
        Harness {
            rt,
            threads,
            problems,
            http,
            tcp,
            tls,
            answer,
            stop: Some(stop),
        }
    }

    /// Runs `exchange`, then `healthy`, failing on a hang, a panic, or a proxy that no longer
    /// serves; the signature is the exchange's.
    fn check(
        &self,
        exchange: impl Future<Output = Result<String, String>>,
        healthy: impl Future<Output = Result<(), String>>,
    ) -> Result<String, String> {
        let before = panics_on(&self.threads);
        let signature = self.rt.block_on(exchange)?;
        self.rt
            .block_on(healthy)
            .map_err(|e| format!("the proxy stopped serving after this input: {e}"))?;
        let panics = panics_on(&self.threads) - before;
        if panics > 0 {
            return Err(format!(
                "{panics} panic(s) in the process during this input"
            ));
        }
        let problems: Vec<String> = std::mem::take(&mut *self.problems.lock().unwrap());
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(signature)
    }

    /// A plain GET on the HTTP listener, routed to the `good` backend, answered 200.
    async fn http_serves(addr: SocketAddr) -> Result<(), String> {
        let got = http_close_shot(
            addr,
            b"GET /good HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await?;
        match status_of(&got).as_str() {
            "200" => Ok(()),
            other => Err(format!(
                "a plain GET got {other}: {:?}",
                String::from_utf8_lossy(&got)
            )),
        }
    }
}

/// The listeners' HTTP/1.1 request parsing and framing, with a backend that answers 200.
pub struct RequestTarget(Harness);

impl RequestTarget {
    /// The target, with its proxy.
    pub fn new(cache_dir: &Path) -> Self {
        RequestTarget(Harness::start("request", cache_dir))
    }
}

const HTTP_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b": ",
    b" :",
    b"\r\n ",
    b"\r\n\t",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"GET ",
    b"POST ",
    b"CONNECT ",
    b"OPTIONS * ",
    b"http://a.example/",
    b"Host: x\r\n",
    b"Content-Length: ",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: ",
    b"chunked",
    b"identity",
    b"gzip, ",
    b"Connection: close\r\n",
    b"Connection: keep-alive, Upgrade\r\n",
    b"Upgrade: websocket\r\n",
    b"Expect: 100-continue\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b";ext=1",
    b"X-Forwarded-For: ",
    b"Forwarded: for=",
    b"\0",
    b"%00",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
];

impl Target for RequestTarget {
    fn name(&self) -> &'static str {
        "request"
    }

    fn dict(&self) -> &'static [&'static [u8]] {
        HTTP_DICT
    }

    fn max_len(&self) -> usize {
        96 * 1024
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let addr = self.0.http;
        self.0.check(
            async move {
                let got = http_shot(addr, input).await?;
                // The first status and how many responses came back (pipelined requests).
                let responses = got.windows(9).filter(|w| w == b"HTTP/1.1 ").count().min(4);
                Ok(format!("{} x{responses}", status_of(&got)))
            },
            Harness::http_serves(addr),
        )
    }
}

/// The upstream client's response parsing: the `web` backend answers the mutated bytes.
pub struct ResponseTarget {
    harness: Harness,
    /// Also checks what is open in the proxy (see [`ResponseTarget::strict`]).
    strict: bool,
}

impl ResponseTarget {
    /// The target, with its proxy: the client gets a response (HTTP/1.x) or a close, never other
    /// bytes, within the bound, and the proxy keeps serving.
    pub fn new(cache_dir: &Path) -> Self {
        ResponseTarget {
            harness: Harness::start("response", cache_dir),
            strict: false,
        }
    }

    /// The target with the checks the proxy does not pass yet (the known findings of
    /// `fuzz/crashes/response/`): a response forwarded to an HTTP/1.1 client says `HTTP/1.1`
    /// whatever the backend's version (RFC 9110 §6.2: an intermediary sends its own version).
    pub fn strict(cache_dir: &Path) -> Self {
        ResponseTarget {
            harness: Harness::start("response-strict", cache_dir),
            strict: true,
        }
    }
}

const RESPONSE_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b": ",
    b"\r\n ",
    b"HTTP/1.1 ",
    b"HTTP/1.0 ",
    b"200 OK",
    b"100 Continue\r\n\r\n",
    b"101 Switching Protocols",
    b"204 No Content",
    b"304 Not Modified",
    b"Content-Length: ",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"chunked",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Keep-Alive: timeout=5\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b";ext=1",
    b"Trailer: x\r\n",
    b"\0",
];

impl Target for ResponseTarget {
    fn name(&self) -> &'static str {
        "response"
    }

    fn dict(&self) -> &'static [&'static [u8]] {
        RESPONSE_DICT
    }

    fn max_len(&self) -> usize {
        96 * 1024
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        *self.harness.answer.lock().unwrap() = input.to_vec();
        let addr = self.harness.http;
        let version: &[u8] = if self.strict {
            b"HTTP/1.1 "
        } else {
            b"HTTP/1."
        };
        self.harness.check(
            async move {
                let got = http_close_shot(
                    addr,
                    b"GET /fuzz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                )
                .await?;
                // Whatever came back must be a response: the proxy never passes garbage on.
                if !got.is_empty() && !got.starts_with(version) {
                    return Err(format!(
                        "the client got something that is not a response: {:?}",
                        String::from_utf8_lossy(&got[..got.len().min(200)])
                    ));
                }
                Ok(status_of(&got))
            },
            Harness::http_serves(addr),
        )
    }
}

/// The echo through a `tcp` listener of a well-formed PROXY v1 header and `ping`.
async fn tcp_serves(addr: SocketAddr) -> Result<(), String> {
    let got = one_shot(addr, b"PROXY TCP4 192.0.2.1 192.0.2.2 1111 2222\r\nping").await?;
    if got == b"ping" {
        Ok(())
    } else {
        Err(format!(
            "a PROXY v1 header and `ping` came back as {:?}",
            String::from_utf8_lossy(&got)
        ))
    }
}

/// The PROXY protocol (v1 text, v2 binary) header read by a `tcp` listener from a trusted peer.
pub struct ProxyProtocolTarget(Harness);

impl ProxyProtocolTarget {
    /// The target, with its proxy.
    pub fn new(cache_dir: &Path) -> Self {
        ProxyProtocolTarget(Harness::start("proxy-protocol", cache_dir))
    }
}

const PROXY_DICT: &[&[u8]] = &[
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n",
    b" ",
    b"255.255.255.255",
    b"::1",
    b"65535",
    b"65536",
    b"\r\n\r\n\0\r\nQUIT\n",
    b"\x21",
    b"\x20",
    b"\x11",
    b"\x21\x00",
    b"\x00\x0c",
    b"\xff\xff",
];

impl Target for ProxyProtocolTarget {
    fn name(&self) -> &'static str {
        "proxy-protocol"
    }

    fn dict(&self) -> &'static [&'static [u8]] {
        PROXY_DICT
    }

    fn max_len(&self) -> usize {
        4 * 1024
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let addr = self.0.tcp;
        self.0.check(
            async move {
                let got = one_shot(addr, input).await?;
                // Echoed (accepted, forwarded) or closed (refused), and nothing else can happen.
                Ok(if got.is_empty() { "closed" } else { "echoed" }.into())
            },
            tcp_serves(addr),
        )
    }
}

/// The echo through the `tls-passthrough` listener of a ClientHello naming the routed name.
async fn tls_serves(addr: SocketAddr) -> Result<(), String> {
    let hello = client_hello("a.example.com");
    let got = one_shot(addr, &hello).await?;
    if got == hello {
        Ok(())
    } else {
        Err(format!(
            "a ClientHello for a.example.com came back as {got:?}"
        ))
    }
}

/// The ClientHello peek (SNI) of a `tls-passthrough` listener.
pub struct SniTarget(Harness);

impl SniTarget {
    /// The target, with its proxy.
    pub fn new(cache_dir: &Path) -> Self {
        SniTarget(Harness::start("sni", cache_dir))
    }
}

const TLS_DICT: &[&[u8]] = &[
    b"\x16\x03\x01",
    b"\x16\x03\x03",
    b"\x00\x00",
    b"\xff\xff",
    b"\x00",
    b"\x01\x00\x00",
    b"a.example.com",
    b"A.EXAMPLE.COM",
    b"a.example.com.",
    b"\x00\x10\x00\x0e\x00\x0c\x02h2\x08http/1.1",
    b"\x00\x2b\x00\x03\x02\x03\x04",
];

impl Target for SniTarget {
    fn name(&self) -> &'static str {
        "sni"
    }

    fn dict(&self) -> &'static [&'static [u8]] {
        TLS_DICT
    }

    fn max_len(&self) -> usize {
        20 * 1024
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        let addr = self.0.tls;
        let input = input.to_vec();
        self.0.check(
            async move {
                let got = one_shot(addr, &input).await?;
                // Routed (the echo sends the input back untouched) or refused (closed).
                if !got.is_empty() && got != input {
                    return Err(format!("passthrough changed the bytes: {got:?}"));
                }
                Ok(if got.is_empty() { "closed" } else { "routed" }.into())
            },
            tls_serves(addr),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smuggling_oracle_accepts_one_framing_and_names_the_rest() {
        let ok = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(forwarded_head_problem(ok), None);
        let chunked = b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(forwarded_head_problem(chunked), None);
        for bad in [
            &b"POST /a HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            b"GET /a HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            b"GET /a HTTP/1.1\r\nx: a\r\n b\r\n\r\n",
            b"GET /a HTTP/1.1\r\nx: a\nb: c\r\n\r\n",
            b"GET /a HTTP/1.1\r\nx: a\rb\r\n\r\n",
            b"GET /a HTTP/1.1\r\nx : a\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                forwarded_head_problem(bad).is_some(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_client_hello_frames_its_lengths() {
        let hello = client_hello("a.example.com");
        assert_eq!(&hello[..3], &[0x16, 3, 1]);
        let record = u16::from_be_bytes([hello[3], hello[4]]) as usize;
        assert_eq!(record, hello.len() - 5);
        let handshake = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize;
        assert_eq!(handshake, hello.len() - 9);
        assert!(hello.ends_with(b"a.example.com"));
    }
}

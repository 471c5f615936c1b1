//! Helpers shared by the proxy's integration tests: real backends on loopback port 0, HTTP clients,
//! an in-process proxy, and a strict parser of the Prometheus text format.
#![allow(dead_code)]

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluicegate::config::Config;
use sluicegate::plugin::PluginRuntime;
use sluicegate::server::{Listeners, Server, runtime_options};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A test backend. Paths:
/// - `/slow?ms=N`: waits N ms, then answers like `/`;
/// - `/echo-headers`: answers the request headers, one `name: value` per line;
/// - `/download?bytes=N`: streams N bytes;
/// - `/download-chunked?bytes=N`: the same without a length (sent chunked to HTTP/1.1 clients);
/// - `/upload`: reads the body and answers its length;
/// - `/die-after-body`: reads the body, then drops the connection without answering;
/// - `/upgrade`: switches protocols and echoes bytes;
/// - `/fail-on?name=N`: 503 from backend N, 200 from the others;
/// - anything else: `hello from {name}`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests seen, by path.
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
    kill: Arc<tokio::sync::Notify>,
    /// Turns true when the listener and every connection task are gone after `kill`.
    killed: tokio::sync::watch::Receiver<bool>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let name_owned = name.to_string();
        let hits2 = hits.clone();
        let kill = Arc::new(tokio::sync::Notify::new());
        let (killed_tx, killed) = tokio::sync::watch::channel(false);
        let kill_signal = kill.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set: killing the backend aborts them (connections reset).
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = kill_signal.notified() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let name = name_owned.clone();
                let hits = hits2.clone();
                conns.spawn(async move {
                    let service =
                        service_fn(move |req| backend_handle(name.clone(), hits.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
            drop(listener);
            // Aborts every connection task and waits until they are gone, their sockets closed.
            conns.shutdown().await;
            let _ = killed_tx.send(true);
        });
        Backend {
            addr,
            name: name.to_string(),
            hits,
            task,
            kill,
            killed,
        }
    }

    /// Stops accepting and resets every open connection; returns when they are closed (an abort
    /// alone takes effect later, and a pooled connection could still answer a request sent at once).
    pub async fn kill(&self) {
        self.kill.notify_one();
        let mut killed = self.killed.clone();
        let _ = killed.wait_for(|k| *k).await;
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

type BackendBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(text: impl Into<Bytes>) -> BackendBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn backend_handle(
    name: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    mut req: Request<Incoming>,
) -> Result<Response<BackendBody>, BoxError> {
    let path = req.uri().path().to_string();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_u64(&req, "ms"))).await;
            Ok(Response::new(full(format!("hello from {name}"))))
        }
        "/fail-on" => {
            // 503 from the backend named in `name`, 200 from the others.
            let target = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("name="))
                .unwrap_or("");
            let mut resp = Response::new(full(format!("hello from {name}")));
            if target == name {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok(resp)
        }
        "/echo-headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Ok(Response::new(full(text)))
        }
        "/download" => Ok(Response::new(
            Zeros::new(query_u64(&req, "bytes"))
                .map_err(|e| match e {})
                .boxed(),
        )),
        "/download-chunked" => Ok(Response::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(
                Zeros::pieces(query_u64(&req, "bytes")).map(|b| Ok::<_, BoxError>(Frame::data(b))),
            ))
            .boxed(),
        )),
        "/upload" => {
            let mut n = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    n += data.len() as u64;
                }
            }
            Ok(Response::new(full(n.to_string())))
        }
        "/die-after-body" => {
            let _ = req.into_body().collect().await;
            Err("dropping the connection on purpose".into())
        }
        "/upgrade" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut resp = Response::new(full(Bytes::new()));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            resp.headers_mut()
                .insert("upgrade", "echo".parse().unwrap());
            resp.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            Ok(resp)
        }
        _ => Ok(Response::new(full(format!("hello from {name}")))),
    }
}

static ZEROS: [u8; 64 * 1024] = [b'z'; 64 * 1024];

/// A body of `n` bytes made on the fly, 64 KiB at a time, never held in memory.
pub struct Zeros {
    left: u64,
}

impl Zeros {
    pub fn new(n: u64) -> Self {
        Zeros { left: n }
    }

    /// The same bytes as pieces of 1,000 (so that they do not line up with reads).
    pub fn pieces(n: u64) -> impl Iterator<Item = Bytes> {
        (0..n.div_ceil(1000))
            .map(move |i| Bytes::from_static(&ZEROS[..(n - i * 1000).min(1000) as usize]))
    }
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(ZEROS.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A pooled HTTP/1.1 client.
pub fn http1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GETs `url`, returning the status and the body as text.
pub async fn get(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> (StatusCode, String) {
    send(
        client,
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, String) {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("reading the body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A proxy running in-process.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proxy: Arc<sluicegate::proxy::Proxy>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy with `config` text whose listener and admin addresses are `127.0.0.1:0`.
    pub async fn start(config: &str, dir: &std::path::Path) -> Proxy {
        let config = Config::parse(config, "test.toml", dir).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.proxy_addrs()[0];
        let admin = listeners.admin_addr().unwrap();
        // Every in-process proxy of the suite shares one disk cache of compiled plugins (keyed by
        // their bytes and the engine), so each plugin compiles once per run instead of once per
        // test: a debug build's compiler takes seconds per plugin. A config's own cache_dir wins.
        let mut options = runtime_options(&config);
        options
            .cache_dir
            .get_or_insert_with(|| concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-cache").into());
        let server = Server::with_runtime(config, PluginRuntime::new(options).unwrap()).unwrap();
        let proxy = server.proxy.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listeners, async move {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            admin,
            proxy,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Signals shutdown and waits for the drain.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task.take().unwrap())
            .await
            .expect("the proxy did not stop")
            .unwrap();
    }
}

/// The proxy's `/status`.
pub async fn status(proxy: &Proxy) -> serde_json::Value {
    let (code, body) = get(&http1_client(), &proxy.admin_url("/status")).await;
    assert_eq!(code, StatusCode::OK);
    serde_json::from_str(&body).unwrap()
}

/// The `/status` entry of the endpoint at `addr` in the first cluster.
pub async fn endpoint(proxy: &Proxy, addr: SocketAddr) -> serde_json::Value {
    let s = status(proxy).await;
    s["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .expect("endpoint in /status")
}

/// A config with the listener and admin on port 0, one cluster `web` of `backends`, routed from `/`.
/// The access log is off unless `top_extra` configures it.
pub fn config_for(backends: &[SocketAddr], cluster_extra: &str, top_extra: &str) -> String {
    let top_extra = if top_extra.contains("[access_log]") {
        top_extra.to_string()
    } else {
        format!("[access_log]\nenabled = false\n\n{top_extra}")
    };
    let mut text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{top_extra}\n\n[[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\n{cluster_extra}\n"
    );
    for b in backends {
        text.push_str(&format!("[[clusters.endpoints]]\naddress = \"{b}\"\n"));
    }
    text
}

/// Counts in `bodies` how many say `hello from {name}`, per name.
pub fn tally<'a>(bodies: impl IntoIterator<Item = &'a String>) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for b in bodies {
        *t.entry(b.trim().trim_start_matches("hello from ").to_string())
            .or_default() += 1;
    }
    t
}

/// One sample of a Prometheus exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the Prometheus / OpenMetrics text format strictly: every line is a `# HELP`, `# TYPE`,
/// `# UNIT`, `# EOF` (last) or a sample of a declared family with well-formed labels and value.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut saw_eof = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if saw_eof {
            return Err(format!("line {n}: content after # EOF"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts.next().ok_or(format!("line {n}: no metric name"))?;
            if !valid_metric_name(name) {
                return Err(format!("line {n}: bad metric name {name:?}"));
            }
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let t = parts.next().ok_or(format!("line {n}: no type"))?;
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ]
                    .contains(&t)
                    {
                        return Err(format!("line {n}: unknown type {t}"));
                    }
                    families.insert(name.to_string(), t.to_string());
                }
                other => return Err(format!("line {n}: unknown comment {other}")),
            }
            continue;
        }
        if line.is_empty() {
            return Err(format!("line {n}: empty line"));
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("line {n}: no value"))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(format!("line {n}: bad sample name {name:?}"));
        }
        let family = [
            "_total", "_bucket", "_sum", "_count", "_created", "_info", "",
        ]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|f| families.contains_key(*f))
        })
        .ok_or(format!("line {n}: sample {name} of no declared family"))?;
        let _ = family;
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or(format!("line {n}: label without ="))?;
                let key = &rest[..eq];
                if !valid_metric_name(key) || key.contains(':') {
                    return Err(format!("line {n}: bad label name {key:?}"));
                }
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .ok_or(format!("line {n}: unquoted label value"))?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => return Err(format!("line {n}: bad escape")),
                        },
                        Some((j, '"')) => break j,
                        Some((_, c)) => value.push(c),
                        None => return Err(format!("line {n}: unterminated label value")),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &rest[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                }
            }
        }
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value_text = fields.next().ok_or(format!("line {n}: no value"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .map_err(|_| format!("line {n}: bad value {v:?}"))?,
        };
        if let Some(ts) = fields.next()
            && ts.parse::<f64>().is_err()
        {
            return Err(format!("line {n}: bad timestamp {ts:?}"));
        }
        if fields.next().is_some() {
            return Err(format!("line {n}: trailing fields"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if !saw_eof {
        return Err("no # EOF at the end".into());
    }
    Ok(samples)
}

/// How long a test waits for what another task, thread or process does (a counter, a log line,
/// a health state, a file): generous, as CI is a loaded 2-core machine. Every wait returns as soon
/// as its condition holds.
pub const WAIT: Duration = Duration::from_secs(20);

/// Reads with `read` every 20 ms until `done` holds for the value read, for at most `limit`, and
/// returns that value; past the limit, panics naming `what` and showing the last value read.
pub async fn wait_for<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut read: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {limit:?} for {what}; last seen: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_for`] for tests without a runtime: reads with `read` until `done` (bounded).
pub fn wait_for_sync<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let value = read();
        if done(&value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {limit:?} for {what}; last seen: {value:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The samples of `/metrics` on the admin listener at `admin` (parsed strictly).
pub async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (status, text) = get(&http1_client(), &format!("http://{admin}/metrics")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The sum of the samples named `name` that carry every label of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

/// Waits (bounded by [`WAIT`]) until the sum of the samples `name` with `labels` on the admin
/// listener at `admin` is at least `want`, and returns it: a counter another task increments after
/// the client has its answer. The caller asserts the exact value.
pub async fn wait_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    wait_for(
        &format!("{name}{labels:?} >= {want}"),
        WAIT,
        async || sum(&scrape(admin).await, name, labels),
        |v| *v >= want,
    )
    .await
}

/// Polls `f` every 20 ms until it returns true, for at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Counts hits across backends for `path`.
pub fn total_hits(backends: &[Backend], path: &str) -> usize {
    backends.iter().map(|b| b.hits(path)).sum()
}

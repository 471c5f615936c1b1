//! L4 listeners in-process on loopback: `tcp` balancing over echo backends, connect retries,
//! half-close, and `tls-passthrough` routing by SNI to backends that terminate TLS themselves.

use crate::common;
use crate::tls_support;

use common::{Proxy, WAIT, wait_for};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tls_support::{TestCa, TlsBackend, peer_leaf, tls_connect, tls_exchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP backend: reads until the client ends its input (half-close), then answers what it read
/// followed by ` from {name}`, after `delay`, and closes.
struct EchoBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoBackend {
    async fn start(name: &str, delay: Duration) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                conns.spawn(async move {
                    let mut input = Vec::new();
                    if stream.read_to_end(&mut input).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    input.extend_from_slice(format!(" from {name}").as_bytes());
                    let _ = stream.write_all(&input).await;
                    let _ = stream.shutdown().await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        EchoBackend { addr, task }
    }
}

/// A loopback address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn l4_config(listener: &str, clusters: &[(&str, &[SocketAddr])], dir_log: bool) -> String {
    let log = if dir_log {
        "[access_log]\npath = \"access.log\"\n"
    } else {
        "[access_log]\nenabled = false\n"
    };
    let mut text = format!("{listener}\n[admin]\naddress = \"127.0.0.1:0\"\n\n{log}\n");
    for (name, addrs) in clusters {
        text.push_str(&format!(
            "[[clusters]]\nname = \"{name}\"\nconnect_timeout = \"2s\"\n"
        ));
        for a in *addrs {
            text.push_str(&format!("[[clusters.endpoints]]\naddress = \"{a}\"\n"));
        }
    }
    text
}

/// Sends `msg`, ends the input, and reads the whole answer.
async fn exchange(addr: SocketAddr, msg: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg.as_bytes()).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn metrics(proxy: &Proxy) -> Vec<common::Sample> {
    common::scrape(proxy.admin).await
}

fn read_log(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each access log line is JSON"))
        .collect()
}

/// Waits (bounded) until the access log has at least `n` lines, and returns them: a connection's
/// line is written after both its sides are closed, which may be after the client saw the end.
async fn wait_log(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    wait_for(
        &format!("{n} access log lines"),
        WAIT,
        async || read_log(dir),
        |log| log.len() >= n,
    )
    .await
}

const TCP_LISTENER: &str =
    "[[listeners]]\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"echo\"\n";

// Balancer instances are per worker thread: one thread makes round-robin exact.
#[tokio::test(flavor = "current_thread")]
async fn tcp_connections_are_spread_round_robin_over_three_echo_backends() {
    let backends = [
        EchoBackend::start("1", Duration::ZERO).await,
        EchoBackend::start("2", Duration::ZERO).await,
        EchoBackend::start("3", Duration::ZERO).await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &l4_config(TCP_LISTENER, &[("echo", &addrs)], true),
        dir.path(),
    )
    .await;

    let mut tally: HashMap<String, usize> = HashMap::new();
    for i in 0..30 {
        let answer = exchange(proxy.addr, &format!("ping {i}")).await.unwrap();
        let (echo, name) = answer.rsplit_once(" from ").expect("an echo");
        assert_eq!(echo, format!("ping {i}"));
        *tally.entry(name.to_string()).or_default() += 1;
    }
    assert_eq!(
        (tally["1"], tally["2"], tally["3"]),
        (10, 10, 10),
        "{tally:?}"
    );

    // Read once: the connection is counted before the copy starts, and each direction's bytes as
    // they are written on, before the FIN that ends the client's read is passed on.
    let samples = metrics(&proxy).await;
    let count = |name: &str, endpoint: SocketAddr, direction: Option<&str>| {
        samples
            .iter()
            .filter(|s| s.name == name && s.label("endpoint") == Some(&endpoint.to_string()))
            .filter(|s| direction.is_none() || s.label("direction") == direction)
            .map(|s| s.value)
            .sum::<f64>()
    };
    for a in &addrs {
        assert_eq!(count("sluicegate_tcp_connections_total", *a, None), 10.0);
    }
    // "ping 0".."ping 29": 10 + 20 * 7 bytes sent; each answer adds " from N" (7 bytes).
    let up: f64 = addrs
        .iter()
        .map(|a| count("sluicegate_tcp_bytes_total", *a, Some("client_to_upstream")))
        .sum();
    let down: f64 = addrs
        .iter()
        .map(|a| count("sluicegate_tcp_bytes_total", *a, Some("upstream_to_client")))
        .sum();
    assert_eq!(up, (10 * 6 + 20 * 7) as f64);
    assert_eq!(down, up + 30.0 * 7.0);

    let log = wait_log(dir.path(), 30).await;
    assert_eq!(log.len(), 30, "one log line per connection");
    let first = &log[0];
    assert_eq!(first["protocol"], "tcp");
    assert_eq!(first["cluster"], "echo");
    assert_eq!(first["bytes_from_client"], 6);
    assert_eq!(first["bytes_to_client"], 13);
    assert_eq!(first["attempts"], 1);
    assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(first["reason"].is_null(), "{first}");
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_backend_is_skipped_by_connect_retries() {
    let live = [
        EchoBackend::start("1", Duration::ZERO).await,
        EchoBackend::start("3", Duration::ZERO).await,
    ];
    let dead = dead_addr().await;
    let addrs = [live[0].addr, dead, live[1].addr];
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &l4_config(TCP_LISTENER, &[("echo", &addrs)], true),
        dir.path(),
    )
    .await;

    let mut tally: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let answer = exchange(proxy.addr, "x")
            .await
            .expect("no connection fails");
        let name = answer.rsplit_once(" from ").expect("an echo").1.to_string();
        *tally.entry(name).or_default() += 1;
    }
    assert_eq!(tally.values().sum::<usize>(), 30);
    assert!(tally["1"] >= 10 && tally["3"] >= 10, "{tally:?}");

    // Read once: a failed connect is counted before the next attempt, whose answer the client read.
    let failures: f64 = metrics(&proxy)
        .await
        .iter()
        .filter(|s| {
            s.name == "sluicegate_tcp_connect_failures_total"
                && s.label("endpoint") == Some(&dead.to_string())
        })
        .map(|s| s.value)
        .sum();
    assert!(
        failures >= 10.0,
        "the dead endpoint was tried and failed: {failures}"
    );
    let log = wait_log(dir.path(), 30).await;
    assert_eq!(log.len(), 30, "one log line per connection");
    let retried = log
        .into_iter()
        .find(|e| e["attempts"] == 2)
        .expect("a connection that was retried");
    assert_eq!(retried["tried"][0], dead.to_string());
    assert!(retried["reason"].is_null(), "{retried}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_the_fin_and_the_reply_still_comes() {
    // The backend answers only after the client's end of input, and slowly.
    let backend = EchoBackend::start("slow", Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &l4_config(TCP_LISTENER, &[("echo", &[backend.addr])], false),
        dir.path(),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"half").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, b"half from slow");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed() {
    // A backend that accepts and never says anything.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let listener_cfg = "[[listeners]]\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"echo\"\nidle_timeout = \"300ms\"\n";
    let proxy = Proxy::start(
        &l4_config(listener_cfg, &[("echo", &[addr])], false),
        dir.path(),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the proxy closes an idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    proxy.stop().await;
}

const PASSTHROUGH_LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\nprotocol = \"tls-passthrough\"\n\
    [[listeners.sni_routes]]\nserver_names = [\"a.example.com\"]\ncluster = \"a\"\n\
    [[listeners.sni_routes]]\nserver_names = [\"*.b.example.com\", \"b.example.com\"]\ncluster = \"b\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_routes_two_names_to_two_tls_backends_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a_leaf = ca.leaf(dir.path(), "a", &["a.example.com"]);
    let b_leaf = ca.leaf(dir.path(), "b", &["b.example.com", "x.b.example.com"]);
    let a = TlsBackend::start("backend-a", &a_leaf).await;
    let b = TlsBackend::start("backend-b", &b_leaf).await;
    let proxy = Proxy::start(
        &l4_config(
            PASSTHROUGH_LISTENER,
            &[("a", &[a.addr]), ("b", &[b.addr])],
            true,
        ),
        dir.path(),
    )
    .await;

    let config = ca.client_config(&[]);
    for (sni, leaf, answer) in [
        ("a.example.com", &a_leaf, "backend-a: hi\n"),
        ("b.example.com", &b_leaf, "backend-b: hi\n"),
        ("x.b.example.com", &b_leaf, "backend-b: hi\n"),
    ] {
        // The handshake is with the backend itself: its certificate, verified by the client.
        let mut tls = tls_connect(config.clone(), proxy.addr, sni).await.unwrap();
        assert_eq!(peer_leaf(&tls), leaf.der, "{sni}");
        assert_eq!(tls_exchange(&mut tls, "hi").await.unwrap(), answer);
    }

    // A name no route has, and no default cluster: closed before any backend.
    let refused = tls_connect(config.clone(), proxy.addr, "c.example.com").await;
    assert!(refused.is_err(), "an unrouted name gets no handshake");

    let log = wait_log(dir.path(), 4).await;
    assert_eq!(log.len(), 4, "{log:?}");
    let a_entry = log.iter().find(|e| e["sni"] == "a.example.com").unwrap();
    assert_eq!(a_entry["protocol"], "tls-passthrough");
    assert_eq!(a_entry["cluster"], "a");
    assert_eq!(a_entry["endpoint"], a.addr.to_string());
    let c_entry = log.iter().find(|e| e["sni"] == "c.example.com").unwrap();
    assert_eq!(c_entry["reason"], "no route for server name c.example.com");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_client_hello_is_refused_without_affecting_others() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let a_leaf = ca.leaf(dir.path(), "a", &["a.example.com"]);
    let a = TlsBackend::start("backend-a", &a_leaf).await;
    let proxy = Proxy::start(
        &l4_config(
            PASSTHROUGH_LISTENER,
            &[("a", &[a.addr]), ("b", &[a.addr])],
            false,
        ),
        dir.path(),
    )
    .await;
    let config = ca.client_config(&[]);

    // A connection open before the garbage arrives...
    let mut open = tls_connect(config.clone(), proxy.addr, "a.example.com")
        .await
        .unwrap();
    assert_eq!(
        tls_exchange(&mut open, "one").await.unwrap(),
        "backend-a: one\n"
    );

    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"[..],
        &[22, 3, 1, 0, 5, 2, 0, 0, 1, 0][..],
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(garbage).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("garbage is closed promptly");
        assert!(
            out.is_empty() && read.map_or(true, |n| n == 0),
            "nothing is answered"
        );
    }

    // ...keeps working, and new ones still get through.
    assert_eq!(
        tls_exchange(&mut open, "two").await.unwrap(),
        "backend-a: two\n"
    );
    let mut fresh = tls_connect(config, proxy.addr, "a.example.com")
        .await
        .unwrap();
    assert_eq!(
        tls_exchange(&mut fresh, "three").await.unwrap(),
        "backend-a: three\n"
    );

    // Read once: a refusal is counted before the connection is closed, which the client saw.
    let refused: f64 = metrics(&proxy)
        .await
        .iter()
        .filter(|s| {
            s.name == "sluicegate_tcp_refused_total"
                && s.label("reason") == Some("bad_client_hello")
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(refused, 2.0);
    drop((open, fresh));
    proxy.stop().await;
}

/// A backend that reads a v2 header, then the payload up to the end of input, and answers
/// `{source address} {destination address} {payload}`.
async fn v2_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut fixed = [0u8; 16];
                s.read_exact(&mut fixed).await.unwrap();
                assert_eq!(&fixed[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
                assert_eq!(fixed[12], 0x21, "version 2, PROXY");
                assert_eq!(fixed[13], 0x11, "TCP over IPv4");
                let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
                assert_eq!(len, 12);
                let mut addrs = vec![0u8; len];
                s.read_exact(&mut addrs).await.unwrap();
                let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                let src = SocketAddr::from((ip(&addrs[0..4]), port(&addrs[8..10])));
                let dst = SocketAddr::from((ip(&addrs[4..8]), port(&addrs[10..12])));
                let mut payload = Vec::new();
                s.read_to_end(&mut payload).await.unwrap();
                let answer = format!("{src} {dst} {}", String::from_utf8_lossy(&payload));
                s.write_all(answer.as_bytes()).await.unwrap();
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

fn with_proxy_protocol_v2(config: String) -> String {
    config.replace(
        "connect_timeout = \"2s\"\n",
        "connect_timeout = \"2s\"\nproxy_protocol = \"v2\"\n",
    )
}

/// Writes `bytes`, ends the input, reads everything back.
async fn send_all(addr: SocketAddr, bytes: &[u8]) -> (SocketAddr, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(bytes).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the connection ends");
    (local, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_receives_a_proxy_protocol_v2_header_with_the_client_address() {
    let (backend, _task) = v2_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = with_proxy_protocol_v2(l4_config(TCP_LISTENER, &[("echo", &[backend])], false));
    let proxy = Proxy::start(&config, dir.path()).await;
    let (client, out) = send_all(proxy.addr, b"payload").await;
    assert_eq!(out, format!("{client} {} payload", proxy.addr));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_balancer_the_client_comes_from_its_proxy_header() {
    let (backend, _task) = v2_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = format!("{TCP_LISTENER}proxy_protocol_from = [\"127.0.0.1/32\"]\n");
    let config = with_proxy_protocol_v2(l4_config(&trusted, &[("echo", &[backend])], false));
    let proxy = Proxy::start(&config, dir.path()).await;
    // v1 in, v2 out: the backend sees the front balancer's client.
    let (_, out) = send_all(
        proxy.addr,
        b"PROXY TCP4 203.0.113.9 198.51.100.1 4444 5432\r\npayload",
    )
    .await;
    assert_eq!(out, format!("203.0.113.9:4444 {} payload", proxy.addr));
    // No header from a trusted peer: refused.
    let (_, out) = send_all(proxy.addr, b"payload without a header").await;
    assert_eq!(out, "");
    proxy.stop().await;

    // A peer outside proxy_protocol_from is refused even with a well-formed header.
    let untrusted = format!("{TCP_LISTENER}proxy_protocol_from = [\"10.0.0.0/8\"]\n");
    let config = with_proxy_protocol_v2(l4_config(&untrusted, &[("echo", &[backend])], false));
    let proxy = Proxy::start(&config, dir.path()).await;
    let (_, out) = send_all(
        proxy.addr,
        b"PROXY TCP4 203.0.113.9 198.51.100.1 4444 5432\r\npayload",
    )
    .await;
    assert_eq!(out, "");
    // Read once: the refusal is counted before the connection is closed, which ended `send_all`.
    let refused: f64 = metrics(&proxy)
        .await
        .iter()
        .filter(|s| {
            s.name == "sluicegate_tcp_refused_total" && s.label("reason") == Some("proxy_protocol")
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(refused, 1.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_behind_a_trusted_balancer_forwards_the_headers_client() {
    let backend = common::Backend::start("1").await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::config_for(&[backend.addr], "", "").replacen(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nproxy_protocol_from = [\"127.0.0.1\"]\n",
        1,
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let mut request = proxy_protocol_v2_header("203.0.113.9:4444", "198.51.100.1:80");
    request.extend_from_slice(
        b"GET /echo-headers HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    // No half-close here: an HTTP/1.1 server may take it as the client leaving.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("Connection: close ends the answer")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-forwarded-for: 203.0.113.9\n"), "{out}");
    proxy.stop().await;
}

/// A v2 header as a front load balancer would send it.
fn proxy_protocol_v2_header(src: &str, dst: &str) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only here")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

#[tokio::test(flavor = "current_thread")]
async fn connect_failures_eject_an_endpoint_through_outlier_detection() {
    let live = [
        EchoBackend::start("1", Duration::ZERO).await,
        EchoBackend::start("3", Duration::ZERO).await,
    ];
    let dead = dead_addr().await;
    let addrs = [live[0].addr, dead, live[1].addr];
    let dir = tempfile::tempdir().unwrap();
    let config = l4_config(TCP_LISTENER, &[("echo", &addrs)], false)
        + "[clusters.outlier]\nconsecutive_gateway_errors = 2\nbase_ejection_time = \"1m\"\nmax_ejection_percent = 50\n";
    let proxy = Proxy::start(&config, dir.path()).await;

    for _ in 0..30 {
        let answer = exchange(proxy.addr, "x")
            .await
            .expect("no connection fails");
        assert!(answer.starts_with("x from "), "{answer}");
    }
    // Read once: failed connects are counted before the retry, whose answer the client read.
    let failures: f64 = metrics(&proxy)
        .await
        .iter()
        .filter(|s| {
            s.name == "sluicegate_tcp_connect_failures_total"
                && s.label("endpoint") == Some(&dead.to_string())
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(
        failures, 2.0,
        "ejected after two connect failures, then skipped"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_speaks_tls_to_a_cluster_with_upstream_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "db", &["db.internal"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let backend = TlsBackend::start("tls-db", &leaf).await;
    let config = l4_config(TCP_LISTENER, &[("echo", &[backend.addr])], false)
        + &format!(
            "[clusters.tls]\nca_file = \"{}\"\nserver_name = \"db.internal\"\n",
            ca_file.display()
        );
    let proxy = Proxy::start(&config, dir.path()).await;
    // Clear text in, TLS out: the backend terminates the proxy's TLS and answers the line.
    let (_, out) = send_all(proxy.addr, b"hello\n").await;
    assert_eq!(out, "tls-db: hello\n");
    proxy.stop().await;
}

//! What one client, or many, may hold of the proxy's connections, memory and time: the connection
//! caps (idle keep-alive connections make room, busy ones hold new clients back while health probes
//! go on), the admin listener's own cap, the send timeout, HTTP/2's idle timeout despite PINGs, its
//! stream cap as SETTINGS say it, and the request head's size limit.

use crate::common::*;
use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound on things that should happen within a second or two, on a loaded machine.
const BOUND: Duration = Duration::from_secs(10);

/// A config with one listener carrying `listener_keys`, the admin listener, `top` tables, and a
/// cluster `web` of `backends` with `cluster_keys` (tables such as `[clusters.health_check]`
/// included).
fn config(backends: &[SocketAddr], listener_keys: &str, top: &str, cluster_keys: &str) -> String {
    let mut text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n{listener_keys}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[access_log]\nenabled = false\n\n{top}\n\n[[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\n{cluster_keys}\n"
    );
    for b in backends {
        text.push_str(&format!("[[clusters.endpoints]]\naddress = \"{b}\"\n"));
    }
    text
}

/// Sends a `GET path` on `stream` (keep-alive).
async fn send_get(stream: &mut TcpStream, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
}

/// Reads one response with a `content-length` body: its status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return (status, body);
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One keep-alive request on `stream`, within [`BOUND`].
async fn get_on(stream: &mut TcpStream, path: &str) -> (u16, String) {
    send_get(stream, path).await;
    tokio::time::timeout(BOUND, read_response(stream))
        .await
        .expect("a response in time")
}

/// Whether the proxy closes `stream` within [`BOUND`] (EOF or a reset), reading what is left.
async fn closed_in_time(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(BOUND, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn listener_label(proxy: &Proxy) -> String {
    proxy.addr.to_string()
}

#[tokio::test]
async fn at_the_listener_cap_the_oldest_idle_keep_alive_connection_makes_room() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(&[backend.addr], "max_connections = 3", "", ""),
        dir.path(),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(get_on(&mut c, "/").await, (200, "hello from a".into()));
        idle.push(c);
    }
    // A fourth client: served, the oldest idle one closed for it.
    let mut next = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(get_on(&mut next, "/").await, (200, "hello from a".into()));
    assert!(
        closed_in_time(&mut idle[0]).await,
        "the oldest idle connection is closed"
    );
    let label = listener_label(&proxy);
    let evicted = wait_metric(
        proxy.admin,
        "sluicegate_listener_connections_evicted_total",
        &[("listener", &label)],
        1.0,
    )
    .await;
    assert_eq!(evicted, 1.0);
    // The others still serve.
    assert_eq!(get_on(&mut idle[2], "/").await.0, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_new_ones_wait_while_probes_keep_the_endpoint_up() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let health = "[clusters.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 2\n";
    let text = config(
        &[backend.addr],
        "max_connections = 2",
        "[limits]\nmax_connections = 2",
        health,
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        send_get(&mut c, "/slow?ms=3000").await;
        busy.push(c);
    }
    // Both are mid-request once the backend has seen them.
    wait_for(
        "both slow requests at the backend",
        BOUND,
        async || backend.hits("/slow"),
        |n| *n == 2,
    )
    .await;
    let mut held = TcpStream::connect(proxy.addr).await.unwrap();
    send_get(&mut held, "/").await;
    let label = listener_label(&proxy);
    wait_metric(
        proxy.admin,
        "sluicegate_listener_connections_held_total",
        &[("listener", &label)],
        1.0,
    )
    .await;
    // Probes go on from the reserve: more of them pass while the clients are held.
    let probes = async || {
        sum(
            &scrape(proxy.admin).await,
            "sluicegate_health_probes_total",
            &[("event", "pass")],
        )
    };
    let before = probes().await;
    wait_for("more passing probes", BOUND, probes, |n| *n >= before + 3.0).await;
    let status = crate::common::status(&proxy).await;
    assert_eq!(
        status["clusters"][0]["endpoints"][0]["healthy"], true,
        "{status}"
    );
    assert_eq!(status["limits"]["max_connections"], 2, "{status}");
    // The busy requests complete; the held client is served after them.
    for c in &mut busy {
        let (code, body) = tokio::time::timeout(BOUND, read_response(c)).await.unwrap();
        assert_eq!((code, body.as_str()), (200, "hello from a"));
    }
    let (code, _) = tokio::time::timeout(BOUND, read_response(&mut held))
        .await
        .expect("the held client is served once a slot frees");
    assert_eq!(code, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn the_admin_listener_has_its_own_cap_and_timeout() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let top = "[limits]\nadmin_max_connections = 2\nadmin_timeout = \"2s\"";
    let proxy = Proxy::start(&config(&[backend.addr], "", top, ""), dir.path()).await;
    // Two silent connections take both admin slots.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(proxy.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(proxy.admin).await.unwrap();
    send_get(&mut third, "/ready").await;
    // Not served while both slots are held (they can free no sooner than the 2 s timeout).
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut third)).await;
    assert!(
        early.is_err(),
        "the third admin connection waits for a slot"
    );
    // The admin timeout closes the silent ones; the third is served then.
    for c in &mut silent {
        assert!(
            closed_in_time(c).await,
            "a silent admin connection is closed"
        );
    }
    let (code, body) = tokio::time::timeout(BOUND, read_response(&mut third))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    // Client traffic was never affected.
    assert_eq!(
        get(&http1_client(), &proxy.url("/")).await.0,
        StatusCode::OK
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_send_timeout_closes_a_client_that_never_reads() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(&[backend.addr], "send_timeout = \"1s\"", "", ""),
        dir.path(),
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut client = socket.connect(proxy.addr).await.unwrap();
    let total: u64 = 200 * 1024 * 1024;
    send_get(&mut client, &format!("/download?bytes={total}")).await;
    // Not read: the proxy's writes block, and it closes the connection at the send timeout.
    let label = listener_label(&proxy);
    wait_metric(
        proxy.admin,
        "sluicegate_listener_open_connections",
        &[("listener", &label)],
        1.0,
    )
    .await;
    wait_for(
        "the non-reading client closed",
        BOUND,
        async || {
            sum(
                &scrape(proxy.admin).await,
                "sluicegate_listener_open_connections",
                &[("listener", &label)],
            )
        },
        |n| *n == 0.0,
    )
    .await;
    let mut read = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let drained = tokio::time::timeout(BOUND, async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n as u64,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the connection is closed");
    assert!(read < total, "closed before the whole body: {read} bytes");
    proxy.stop().await;
}

#[tokio::test]
async fn http2_pings_keep_nothing_alive_past_the_idle_timeout_and_settings_carry_the_stream_cap() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = "idle_timeout = \"1s\"\nh2_max_concurrent_streams = 7";
    let proxy = Proxy::start(&config(&[backend.addr], keys, "", ""), dir.path()).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", proxy.addr))
        .body(())
        .unwrap();
    send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(BOUND, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    assert_eq!(
        send.current_max_send_streams(),
        7,
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );
    // PING every 200 ms, without a stream: the connection still ends.
    let pinging = tokio::spawn(async move {
        loop {
            if pings.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let ended = tokio::time::timeout(BOUND, conn).await;
    assert!(ended.is_ok(), "closed despite the PINGs");
    pinging.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn a_64kb_header_is_refused_while_a_4kb_one_passes() {
    let backend = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&[backend.addr], "", "", ""), dir.path()).await;
    for (size, want) in [(4 * 1024, 200), (64 * 1024, 431)] {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: edge.test\r\nX-Big: {}\r\n\r\n",
            "b".repeat(size)
        );
        // The proxy may answer and close before taking all of a refused head.
        let _ = c.write_all(req.as_bytes()).await;
        let (code, _) = tokio::time::timeout(BOUND, read_response(&mut c))
            .await
            .unwrap();
        assert_eq!(code, want, "a {size}-byte header");
    }
    proxy.stop().await;
}

//! The request path probed as an attacker would (issue 26): a client's broken, stalled, cut-short or
//! oversized request body is answered 400 / 408 / 413 and never counts against the endpoint (with
//! outlier detection tight enough that two gateway errors would eject it); bad `Host` headers and
//! long targets are refused; a `GET`'s body is forwarded; a route without upgrades forwards an
//! upgrade request as a plain one; an upload is not cut by `response_timeout`; and a response body
//! that stalls ends (HTTP/1.1 and h2) and counts against its endpoint.

use crate::common::{
    Backend, Proxy, WAIT, endpoint, h2c_client, http1_client, scrape, send, sum, wait_for,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Two gateway errors or two 5xx in a row eject an endpoint, for long enough to be seen.
const OUTLIER: &str = "[clusters.outlier]\nconsecutive_5xx = 2\nconsecutive_gateway_errors = 2\n\
                       base_ejection_time = \"30s\"\nmax_ejection_percent = 100\n";

/// A config: one listener with `listener` keys, `routes` (or one route from `/`), and cluster
/// `web` of `backends` with `cluster` keys and [`OUTLIER`].
fn config(backends: &[SocketAddr], listener: &str, cluster: &str, routes: &str) -> String {
    let routes = if routes.is_empty() {
        "[[routes]]\ncluster = \"web\"\n"
    } else {
        routes
    };
    let mut text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n{listener}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [access_log]\nenabled = false\n\n{routes}\n[[clusters]]\nname = \"web\"\n{cluster}\n{OUTLIER}\n"
    );
    for b in backends {
        text.push_str(&format!("[[clusters.endpoints]]\naddress = \"{b}\"\n"));
    }
    text
}

/// Waits until the proxy has ended `n` requests of cluster `web` (its counters are written when a
/// request ends, after the client may have its answer or left), then checks that the endpoint at
/// `addr` was not ejected and still serves a plain request.
async fn assert_not_ejected(proxy: &Proxy, addr: SocketAddr, n: usize) {
    wait_for(
        &format!("{n} requests ended"),
        WAIT,
        async || {
            sum(
                &scrape(proxy.admin).await,
                "sluicegate_requests_total",
                &[("cluster", "web")],
            )
        },
        |v| *v >= n as f64,
    )
    .await;
    let e = endpoint(proxy, addr).await;
    assert_eq!(e["health"]["ejected"], false, "{e}");
    assert_eq!(e["healthy"], true, "{e}");
    let (status, body) = crate::common::get(&http1_client(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Writes `request` on a new connection to `addr` (then, if `rest` is given, waits `pause` and
/// writes `rest`), and returns the status of the response and what followed its head, read until
/// the proxy closes or 10 s pass. `None`: the connection ended without a response.
async fn raw(addr: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

/// The status and body of the response read from `s` (until a complete head, then what arrives
/// until the connection closes or goes quiet for a second), or `None` if it ends without one.
async fn read_response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                // The head is in: the rest of a short body follows at once.
                if content_length(&got[..end]).is_some_and(|len| got.len() >= end + 4 + len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the proxy answers or closes within 10 s");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// A request head to the proxy (`Host: x`), with `extra` header lines.
fn head(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n")
}

#[tokio::test]
async fn malformed_chunked_bodies_are_400_and_never_eject_the_endpoint() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&[b.addr], "", "", ""), dir.path()).await;
    let bad = [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhello\r\nQ\r\n\r\n",
    ];
    for i in 0..6 {
        let req = head("POST", "/upload", "transfer-encoding: chunked\r\n") + bad[i % bad.len()];
        let (status, body) = raw(proxy.addr, req.as_bytes()).await.expect("an answer");
        assert_eq!(status, 400, "{body}");
    }
    assert_not_ejected(&proxy, b.addr, 6).await;
}

#[tokio::test]
async fn bodies_cut_short_by_a_client_that_leaves_never_eject_the_endpoint() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&[b.addr], "", "", ""), dir.path()).await;
    for i in 0..6 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let framing = if i % 2 == 0 {
            "content-length: 1000\r\n"
        } else {
            "transfer-encoding: chunked\r\n"
        };
        let body = if i % 2 == 0 {
            "0123456789"
        } else {
            "64\r\n0123456789"
        };
        let req = head("POST", "/upload", framing) + body;
        s.write_all(req.as_bytes()).await.unwrap();
        // The body reached the backend's side (the attempt started), then the client leaves.
        wait_for(
            "the upload reached the backend",
            WAIT,
            async || b.hits("/upload"),
            |n| *n > i,
        )
        .await;
        drop(s);
    }
    assert_not_ejected(&proxy, b.addr, 6).await;
}

#[tokio::test]
async fn a_silent_request_body_is_408_and_never_ejects_the_endpoint() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(&[b.addr], "body_read_timeout = \"1s\"", "", ""),
        dir.path(),
    )
    .await;
    // Five at once: each sends part of its body and then nothing.
    let stalls = (0..5).map(|i| {
        let framing = if i % 2 == 0 {
            "content-length: 1000\r\n"
        } else {
            "transfer-encoding: chunked\r\n"
        };
        let body = if i % 2 == 0 {
            "0123456789"
        } else {
            "64\r\n0123456789"
        };
        let req = head("POST", "/upload", framing) + body;
        let addr = proxy.addr;
        tokio::spawn(async move { raw(addr, req.as_bytes()).await })
    });
    for stall in stalls {
        let (status, body) = stall.await.unwrap().expect("an answer");
        assert_eq!(status, 408, "{body}");
    }
    assert_not_ejected(&proxy, b.addr, 5).await;
}

#[tokio::test]
async fn body_limits_are_the_smallest_of_listener_route_and_cluster() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "[[routes]]\npath_prefix = \"/small/\"\ncluster = \"web\"\nmax_request_body = 1000\n\n\
                  [[routes]]\ncluster = \"web\"\n";
    let proxy = Proxy::start(
        &config(
            &[b.addr],
            "max_request_body = \"8KB\"",
            "max_request_body = 3000",
            routes,
        ),
        dir.path(),
    )
    .await;
    let client = http1_client();
    let post = |path: &str, n: usize| {
        Request::post(proxy.url(path))
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    assert_eq!(
        send(&client, post("/upload", 2500)).await,
        (StatusCode::OK, "2500".into())
    );
    // Declared lengths over a limit: 413 before any endpoint is connected to.
    for (path, n) in [
        ("/upload", 3001),
        ("/small/upload", 1001),
        ("/upload", 9000),
    ] {
        let req = head("POST", path, &format!("content-length: {n}\r\n"));
        let (status, body) = raw(proxy.addr, req.as_bytes()).await.expect("an answer");
        assert_eq!(status, 413, "{path} {n}: {body}");
    }
    assert_eq!(b.hits("/small/upload"), 0);
    assert_eq!(b.hits("/upload"), 1, "only the request within the limits");
    // Chunked bodies are counted as they go: past the limit mid-stream, 413 (five of them).
    for _ in 0..5 {
        let req = head("POST", "/upload", "transfer-encoding: chunked\r\n")
            + &format!("dac\r\n{}\r\n", "y".repeat(3500));
        let (status, body) = raw(proxy.addr, req.as_bytes()).await.expect("an answer");
        assert_eq!(status, 413, "{body}");
    }
    assert_not_ejected(&proxy, b.addr, 9).await;
}

#[tokio::test]
async fn a_chunk_size_of_2_to_the_64_ends_at_the_body_limit_or_the_body_timeout() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(
            &[b.addr],
            "max_request_body = 1024\nbody_read_timeout = \"1s\"",
            "",
            "",
        ),
        dir.path(),
    )
    .await;
    let huge = head("POST", "/upload", "transfer-encoding: chunked\r\n") + "FFFFFFFFFFFFFFFF\r\n";
    // Past the limit: 413.
    let (status, body) = raw(proxy.addr, (huge.clone() + &"z".repeat(2048)).as_bytes())
        .await
        .expect("an answer");
    assert_eq!(status, 413, "{body}");
    // Within the limit, then silent: 408 at the body timeout.
    let (status, body) = raw(proxy.addr, (huge + &"z".repeat(100)).as_bytes())
        .await
        .expect("an answer");
    assert_eq!(status, 408, "{body}");
    assert_not_ejected(&proxy, b.addr, 2).await;
}

#[tokio::test]
async fn bad_host_headers_are_400_and_long_targets_414() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(&[b.addr], "max_uri_length = 64", "", ""),
        dir.path(),
    )
    .await;
    let long = format!("/{}", "a".repeat(64));
    for (req, want) in [
        ("GET / HTTP/1.1\r\n\r\n".to_string(), 400),
        ("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nhost: a b\r\n\r\n".into(), 400),
        ("GET / HTTP/1.1\r\nhost: a/b\r\n\r\n".into(), 400),
        (format!("GET {long} HTTP/1.1\r\nhost: a\r\n\r\n"), 414),
        (
            format!("GET {} HTTP/1.1\r\nhost: a\r\n\r\n", &long[..64]),
            200,
        ),
        ("GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n".into(), 200),
    ] {
        let (status, body) = raw(proxy.addr, req.as_bytes()).await.expect("an answer");
        assert_eq!(status, want, "{req:?}: {body}");
    }
    assert_eq!(b.hits("/"), 1, "refused heads are not forwarded");
}

/// A backend answering every request with its body, byte for byte.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(body)))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_get_with_a_chunked_body_is_forwarded_byte_for_byte() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&[echo], "", "", ""), dir.path()).await;
    let req = head("GET", "/", "transfer-encoding: chunked\r\n")
        + "6\r\nhello,\r\n7\r\n body!\n\r\n0\r\n\r\n";
    let (status, body) = raw(proxy.addr, req.as_bytes()).await.expect("an answer");
    assert_eq!((status, body.as_str()), (200, "hello, body!\n"));
}

#[tokio::test]
async fn a_route_without_upgrades_forwards_an_upgrade_request_as_a_plain_one() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "[[routes]]\nhost = \"closed.test\"\ncluster = \"web\"\nupgrade = false\n\n\
                  [[routes]]\ncluster = \"web\"\n";
    let proxy = Proxy::start(&config(&[b.addr], "", "", routes), dir.path()).await;
    let ask = |host: &str| {
        format!(
            "GET /echo-headers HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\n\
             connection: upgrade\r\n\r\n"
        )
    };
    let (status, seen) = raw(proxy.addr, ask("closed.test").as_bytes())
        .await
        .expect("an answer");
    assert_eq!(status, 200, "{seen}");
    assert!(!seen.contains("upgrade"), "no upgrade forwarded: {seen}");
    // The same request on a route that allows upgrades carries them on.
    let (status, seen) = raw(proxy.addr, ask("open.test").as_bytes())
        .await
        .expect("an answer");
    assert_eq!(status, 200, "{seen}");
    assert!(seen.contains("upgrade: websocket"), "{seen}");
}

#[tokio::test]
async fn an_upload_that_keeps_moving_outlasts_response_timeout() {
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(&[b.addr], "", "response_timeout = \"1s\"", ""),
        dir.path(),
    )
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let req = head("POST", "/upload", "transfer-encoding: chunked\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // 2.5 s of upload, a piece every 250 ms: well past the response timeout of 1 s.
    for _ in 0..10 {
        s.write_all(b"400\r\n").await.unwrap();
        s.write_all(&[b'u'; 1024]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, body) = read_response(&mut s).await.expect("an answer");
    assert_eq!((status, body.as_str()), (200, "10240"));
}

/// A backend that reads a request head, answers a head announcing 1,000 bytes and sends 10 of
/// them, then stalls (keeping the connection open).
async fn stalling_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_response_body_ends_for_http1_and_h2_clients_and_counts_against_its_endpoint() {
    let stall = stalling_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(&[stall], "", "read_timeout = \"1s\"", ""),
        dir.path(),
    )
    .await;
    for client in [http1_client(), h2c_client()] {
        let req = Request::get(proxy.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let read = async {
            let resp = client.request(req).await.expect("the head is passed on");
            assert_eq!(resp.status(), StatusCode::OK);
            resp.into_body().collect().await
        };
        let got = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the stalled response ends within 10 s (read_timeout 1 s)");
        assert!(
            got.is_err(),
            "the response ends with an error, not complete"
        );
    }
    // Two body failures in a row: ejected by outlier detection (consecutive_gateway_errors = 2).
    wait_for(
        "the stalling endpoint ejected",
        WAIT,
        async || endpoint(&proxy, stall).await,
        |e| e["health"]["ejected"] == true,
    )
    .await;
}

#[tokio::test]
async fn backend_failures_still_eject_with_this_outlier_config() {
    // The control of the tests above: the same outlier rules do eject on the endpoint's own faults.
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&[b.addr], "", "", ""), dir.path()).await;
    for _ in 0..2 {
        let (status, _) = crate::common::get(&http1_client(), &proxy.url("/fail-on?name=b")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    wait_for(
        "b ejected",
        WAIT,
        async || endpoint(&proxy, b.addr).await,
        |e| e["health"]["ejected"] == true,
    )
    .await;
}

/// A backend that reads a request head and then nothing more, keeping the connection open.
async fn deaf_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1];
                while !seen.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => seen.push(buf[0]),
                    }
                }
                // Holds the socket, unread, until the test ends.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_endpoint_that_takes_no_request_byte_fails_at_write_timeout_and_is_ejected() {
    let deaf = deaf_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config(&[deaf], "", "write_timeout = \"1s\"", ""),
        dir.path(),
    )
    .await;
    for _ in 0..2 {
        // 64 MB: more than every socket buffer between the client and the backend holds.
        const LEN: usize = 64 << 20;
        let s = TcpStream::connect(proxy.addr).await.unwrap();
        let (mut read, mut write) = s.into_split();
        let writer = tokio::spawn(async move {
            let req = head("POST", "/upload", &format!("content-length: {LEN}\r\n"));
            write.write_all(req.as_bytes()).await?;
            let piece = vec![b'w'; 1 << 20];
            for _ in 0..LEN >> 20 {
                write.write_all(&piece).await?;
            }
            Ok::<_, std::io::Error>(write)
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read_all = async {
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read_all)
            .await
            .expect("the exchange ends within 10 s (write_timeout 1 s)");
        // The 504 may be lost to the reset of a connection closed with the client's bytes unread;
        // when it arrives, it says so.
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 504"),
            "{text}"
        );
        writer.abort();
    }
    // Two timeouts in a row: ejected (consecutive_gateway_errors = 2).
    wait_for(
        "the deaf endpoint ejected",
        WAIT,
        async || endpoint(&proxy, deaf).await,
        |e| e["health"]["ejected"] == true,
    )
    .await;
}

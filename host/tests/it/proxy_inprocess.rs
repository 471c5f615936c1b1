//! The proxy run in-process on port 0 against real backends on loopback.

use crate::common;

use bytes::Bytes;
use common::{
    Backend, Proxy, WAIT, config_for, get, h2c_client, http1_client, scrape, send, sum, tally,
    wait_for,
};
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn three_backends() -> Vec<Backend> {
    vec![
        Backend::start("1").await,
        Backend::start("2").await,
        Backend::start("3").await,
    ]
}

fn addrs(backends: &[Backend]) -> Vec<std::net::SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

fn read_log(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each access log line is JSON"))
        .collect()
}

/// Waits (bounded) until the access log has at least `n` lines, and returns them. A line is written
/// when the response's body ends in the proxy, which may be after the client has the answer.
async fn wait_log(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    wait_for(
        &format!("{n} access log lines"),
        WAIT,
        async || read_log(dir),
        |log| log.len() >= n,
    )
    .await
}

// Plugin instances are per worker thread (as Envoy's per-worker balancers), so round-robin is exact
// per thread: one thread here makes the spread exactly even.
#[tokio::test(flavor = "current_thread")]
async fn round_robin_spreads_300_requests_evenly_over_http1_and_h2c() {
    let backends = three_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &config_for(&addrs(&backends), "balancer = \"round-robin\"", ""),
        dir.path(),
    )
    .await;

    for client in [http1_client(), h2c_client()] {
        let mut bodies = Vec::new();
        for _ in 0..300 {
            let (status, body) = get(&client, &proxy.url("/")).await;
            assert_eq!(status, StatusCode::OK);
            bodies.push(body);
        }
        let t = tally(&bodies);
        assert_eq!((t["1"], t["2"], t["3"]), (100, 100, 100), "{t:?}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_no_idempotent_request_and_the_log_shows_retries() {
    let backends = three_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(
        &addrs(&backends),
        "retry = { attempts = 3, min_retries = 32 }",
        "[access_log]\npath = \"access.log\"",
    );
    let proxy = std::sync::Arc::new(Proxy::start(&config, dir.path()).await);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let proxy = proxy.clone();
        let sent = sent.clone();
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            let mut failures = Vec::new();
            for _ in 0..40 {
                let (status, body) = get(&client, &proxy.url("/slow?ms=10")).await;
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if status != StatusCode::OK {
                    failures.push((status, body));
                }
            }
            failures
        }));
    }
    // Kill backend 2 while requests flow (some are in flight to it).
    wait_for(
        "80 requests answered",
        WAIT,
        async || sent.load(std::sync::atomic::Ordering::Relaxed),
        |n| *n >= 80,
    )
    .await;
    backends[1].kill().await;
    for w in workers {
        let failures = w.await.unwrap();
        assert!(
            failures.is_empty(),
            "idempotent requests failed: {failures:?}"
        );
    }
    let after_kill = backends[1].hits("/slow");
    assert!(after_kill < 320);

    // The log writer runs beside the requests: the last lines may land a moment after the last answer.
    let log = wait_log(dir.path(), 320).await;
    assert_eq!(log.len(), 320, "one access log line per request");
    assert!(
        log.iter().any(|e| e["attempts"].as_u64() > Some(1)),
        "the access log shows retries"
    );
    let dead = backends[1].addr.to_string();
    for e in log.iter().filter(|e| e["attempts"].as_u64() > Some(1)) {
        assert_eq!(e["status"], 200);
        assert_eq!(
            e["tried"][0],
            dead.as_str(),
            "retries moved away from the dead backend: {e}"
        );
        assert_ne!(e["endpoint"], dead.as_str());
    }
    std::sync::Arc::into_inner(proxy).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_was_sent_is_not_retried_but_one_that_could_not_connect_is() {
    let backends = three_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&addrs(&backends), "", "[access_log]\npath = \"access.log\"");
    let proxy = Proxy::start(&config, dir.path()).await;
    let client = http1_client();

    let post = |path: &str| {
        Request::post(proxy.url(path))
            .body(Full::new(Bytes::from_static(b"order #1")))
            .unwrap()
    };
    let (status, body) = send(&client, post("/die-after-body")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // Hits are counted as the backend takes the request, before it drops the connection that the
    // proxy's 502 reports: read once.
    assert_eq!(
        common::total_hits(&backends, "/die-after-body"),
        1,
        "the POST reached one backend once"
    );

    // The same failure on a GET is retried on the other endpoints.
    let (status, _) = get(&client, &proxy.url("/die-after-body")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        common::total_hits(&backends, "/die-after-body"),
        4,
        "1 POST + 3 GET attempts"
    );

    // A POST whose endpoint refuses the connection was never sent: it goes to another endpoint.
    // (`kill` returns once the listener and every connection are closed; the failed attempts above
    // left no pooled connection.)
    backends[0].kill().await;
    backends[1].kill().await;
    for _ in 0..3 {
        let (status, body) = send(&client, post("/upload")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "8"));
    }

    let log = wait_log(dir.path(), 5).await;
    assert_eq!(log.len(), 5, "{log:?}");
    // Lines of different worker threads come in batches, not in request order.
    let entry = |method: &str, path: &str| {
        let mut of = log
            .iter()
            .filter(|e| e["method"] == method && e["path"] == path);
        (
            of.next()
                .unwrap_or_else(|| panic!("{method} {path}: {log:?}")),
            of.count(),
        )
    };
    let (post, more) = entry("POST", "/die-after-body");
    assert_eq!(
        (&post["attempts"], &post["reason"], more),
        (&1.into(), &"upstream reset".into(), 0)
    );
    assert_eq!(entry("GET", "/die-after-body").0["attempts"], 3);
    assert!(
        log.iter()
            .any(|e| e["path"] == "/upload" && e["attempts"].as_u64() > Some(1)),
        "a refused POST was retried: {log:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn metrics_parse_and_match_the_requests_sent() {
    let backends = three_backends().await;
    let dir = tempfile::tempdir().unwrap();
    // `/nowhere` goes to a cluster without endpoints; everything else to `web`.
    let text = config_for(
        &addrs(&backends),
        "",
        "[[routes]]\npath_prefix = \"/nowhere\"\ncluster = \"empty\"",
    ) + "\n[[clusters]]\nname = \"empty\"\n";
    let proxy = Proxy::start(&text, dir.path()).await;
    let client = http1_client();
    for _ in 0..30 {
        assert_eq!(get(&client, &proxy.url("/")).await.0, StatusCode::OK);
    }
    for _ in 0..4 {
        assert_eq!(
            get(&client, &proxy.url("/nowhere")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    // Requests are counted when the response's body ends in the proxy, which may be after the
    // client has read it: wait until every request is counted, then check the figures.
    let requests = |samples: &[common::Sample], cluster: &str, class: &str| {
        sum(
            samples,
            "sluicegate_requests_total",
            &[("cluster", cluster), ("class", class)],
        )
    };
    let duration_count = |samples: &[common::Sample]| {
        sum(
            samples,
            "sluicegate_request_duration_seconds_count",
            &[("cluster", "web")],
        )
    };
    wait_for(
        "30 web 2xx, 4 empty 5xx and 30 web durations counted",
        WAIT,
        async || {
            let samples = scrape(proxy.admin).await;
            (
                requests(&samples, "web", "2xx"),
                requests(&samples, "empty", "5xx"),
                duration_count(&samples),
            )
        },
        |(ok, refused, durations)| *ok >= 30.0 && *refused >= 4.0 && *durations >= 30.0,
    )
    .await;
    let samples = scrape(proxy.admin).await;
    let requests = |cluster: &str, class: &str| requests(&samples, cluster, class);
    assert_eq!(requests("web", "2xx"), 30.0);
    assert_eq!(requests("empty", "5xx"), 4.0);
    assert_eq!(requests("web", "5xx"), 0.0);
    for b in &backends {
        let per_endpoint = samples
            .iter()
            .find(|s| {
                s.name == "sluicegate_requests_total"
                    && s.label("endpoint") == Some(&b.addr.to_string())
                    && s.label("class") == Some("2xx")
            })
            .unwrap();
        assert_eq!(per_endpoint.value, 10.0);
    }
    let count = samples
        .iter()
        .find(|s| {
            s.name == "sluicegate_request_duration_seconds_count"
                && s.label("cluster") == Some("web")
        })
        .unwrap();
    assert_eq!(count.value, 30.0);
    // Plugin calls are counted as the balancer picks, before the request is sent.
    let calls = sum(
        &samples,
        "sluicegate_plugin_calls_total",
        &[("plugin", "round-robin")],
    );
    // Round-robin picks ahead, 64 per call: the 30 first attempts took one call per worker.
    assert!(
        (1.0..30.0).contains(&calls),
        "round-robin was called, fewer times than there were requests: {calls}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "sluicegate_open_connections")
    );

    let (status, body) = get(&client, &proxy.admin_url("/status")).await;
    assert_eq!(status, StatusCode::OK);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["clusters"][0]["endpoints"].as_array().unwrap().len(),
        3
    );
    assert!(
        status["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "round-robin")
    );
    assert_eq!(
        get(&client, &proxy.admin_url("/ready")).await.0,
        StatusCode::OK
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_both_ways() {
    let backend = Backend::start("1").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config_for(&[backend.addr], "", ""), dir.path()).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"a longer message"] {
        conn.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_pass_both_ways_on_reused_connections() {
    let backend = Backend::start("1").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config_for(&[backend.addr], "", ""), dir.path()).await;
    // An upload of unknown length, sent in two parts, reaches the backend whole (chunked again).
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..3 {
        c.write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        tokio::task::yield_now().await;
        c.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
        let resp = read_until(&mut c, |b| b.ends_with(b"\r\n\r\n11")).await;
        assert!(
            resp.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }
    // A response of unknown length comes back whole to HTTP/1.1 and HTTP/2 clients.
    for client in [http1_client(), h2c_client()] {
        for n in [0, 1, 999, 123_456] {
            let (status, body) =
                get(&client, &proxy.url(&format!("/download-chunked?bytes={n}"))).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body.len(), n);
            assert!(body.bytes().all(|b| b == b'z'));
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_carry_their_reason() {
    let backend = Backend::start("1").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[access_log]
path = "access.log"

[[routes]]
path_prefix = "/empty"
cluster = "empty"
[[routes]]
path_prefix = "/down"
cluster = "down"
[[routes]]
path_prefix = "/slow"
cluster = "slow"

[[clusters]]
name = "empty"

[[clusters]]
name = "down"
[[clusters.endpoints]]
address = "{closed}"

[[clusters]]
name = "slow"
response_timeout = "200ms"
[[clusters.endpoints]]
address = "{backend}"
"#,
        backend = backend.addr
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    let client = http1_client();
    let cases = [
        ("/nothing-here", StatusCode::NOT_FOUND, "no route"),
        (
            "/empty",
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy endpoint",
        ),
        ("/down", StatusCode::BAD_GATEWAY, "upstream connect failure"),
        (
            "/slow?ms=3000",
            StatusCode::GATEWAY_TIMEOUT,
            "upstream timeout",
        ),
    ];
    for (path, status, reason) in cases {
        let (got, body) = get(&client, &proxy.url(path)).await;
        assert_eq!((got, body.trim()), (status, reason), "{path}");
    }
    let log = wait_log(dir.path(), 4).await;
    assert_eq!(log.len(), 4, "{log:?}");
    // Lines of different worker threads come in batches, not in request order.
    let entry = |path: &str| {
        let path = path.split('?').next().unwrap();
        log.iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path}: {log:?}"))
    };
    for (path, status, reason) in cases {
        let e = entry(path);
        assert_eq!(
            (e["status"].as_u64(), e["reason"].as_str()),
            (Some(u64::from(status.as_u16())), Some(reason))
        );
    }
    assert_eq!(entry("/down")["cluster"], "down");
    let slow = entry("/slow");
    assert_eq!(slow["attempts"], 1, "timeouts are not retried: {slow}");
    // The proxy gave up after 200 ms without an answer: on a loaded machine the backend may count
    // the request only after that.
    let hits = wait_for(
        "the backend counting the timed-out request",
        WAIT,
        async || backend.hits("/slow"),
        |n| *n >= 1,
    )
    .await;
    assert_eq!(hits, 1, "timeouts are not retried");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_and_forwarding_headers_are_added() {
    let backend = Backend::start("1").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config_for(&[backend.addr], "", ""), dir.path()).await;
    let client = http1_client();
    let req = Request::get(proxy.url("/echo-headers"))
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, seen) = send(&client, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen: std::collections::HashMap<&str, &str> =
        seen.lines().filter_map(|l| l.split_once(": ")).collect();
    for gone in ["x-private", "proxy-authorization", "te", "keep-alive"] {
        assert!(
            !seen.contains_key(gone),
            "{gone} reached the backend: {seen:?}"
        );
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert!(
        seen["forwarded"].starts_with("for=127.0.0.1;proto=http"),
        "{seen:?}"
    );
    assert_eq!(seen["x-request-id"].len(), 24);
    assert_eq!(seen["host"], proxy.addr.to_string());

    let req = Request::get(proxy.url("/echo-headers"))
        .header("x-request-id", "abc-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, seen) = send(&client, req).await;
    assert!(seen.contains("x-request-id: abc-123\n"), "{seen}");

    // An id that is not text is replaced by one of ours.
    let req = Request::get(proxy.url("/echo-headers"))
        .header(
            "x-request-id",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, seen) = send(&client, req).await;
    let ids: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("x-request-id: "))
        .collect();
    assert!(
        ids.len() == 1 && ids[0].len() == 24 && ids[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "{seen}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_is_refused_and_a_good_one_applies() {
    let backends = three_backends().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluicegate.toml");
    let good = config_for(&addrs(&backends[..1]), "", "");
    std::fs::write(&path, &good).unwrap();
    let config = sluicegate::config::Config::load(&path).unwrap();
    let listeners = sluicegate::server::Listeners::bind(&config).await.unwrap();
    let addr = listeners.proxy_addrs()[0];
    let server = sluicegate::server::Server::new(config).unwrap();
    let proxy = server.proxy.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(listeners, async move {
        let _ = stopped.await;
    }));
    let client = http1_client();
    let url = format!("http://{addr}/");

    std::fs::write(
        &path,
        good.replace(
            "[[routes]]\ncluster = \"web\"",
            "[[routes]]\ncluster = \"nope\"",
        ),
    )
    .unwrap();
    let err = sluicegate::reload::reload(&proxy, &path).await.unwrap_err();
    assert!(
        err.contains("sluicegate.toml:") && err.contains("unknown cluster `nope`"),
        "{err}"
    );
    assert_eq!(
        get(&client, &url).await,
        (StatusCode::OK, "hello from 1".to_string())
    );
    assert_eq!(
        proxy.reload_state().last_error.as_deref(),
        Some(err.as_str())
    );

    std::fs::write(&path, config_for(&addrs(&backends[1..2]), "", "")).unwrap();
    sluicegate::reload::reload(&proxy, &path).await.unwrap();
    assert_eq!(
        get(&client, &url).await,
        (StatusCode::OK, "hello from 2".to_string())
    );
    assert_eq!(proxy.reload_state().reloads, 1);

    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_logged_as_499() {
    let backend = Backend::start("1").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&[backend.addr], "", "[access_log]\npath = \"access.log\"");
    let proxy = Proxy::start(&config, dir.path()).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .unwrap();
    wait_for(
        "the backend taking the request",
        WAIT,
        async || backend.hits("/slow"),
        |n| *n == 1,
    )
    .await;
    drop(conn);
    let log = wait_log(dir.path(), 1).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["status"], 499);
    assert_eq!(log[0]["reason"], "client closed the request");
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn configured_statuses_are_retried_within_the_budget() {
    let backends = vec![Backend::start("1").await, Backend::start("2").await];
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(
        &addrs(&backends),
        "retry = { attempts = 2, on_status = [503] }",
        "[access_log]\npath = \"access.log\"",
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let client = http1_client();
    // Round-robin's first attempts alternate (they are picked ahead, so a retry's pick does not
    // shift them): every other GET meets backend 1's 503 and is retried on 2.
    for _ in 0..4 {
        assert_eq!(
            get(&client, &proxy.url("/fail-on?name=1")).await,
            (StatusCode::OK, "hello from 2".into())
        );
    }
    // A POST is not safe to send twice: backend 1's 503 reaches the client.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = Request::post(proxy.url("/fail-on?name=1"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        statuses.push(send(&client, req).await.0);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
    let log = wait_log(dir.path(), 6).await;
    assert_eq!(log.len(), 6, "{log:?}");
    let attempts: Vec<u64> = log
        .iter()
        .map(|e| e["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(
        attempts[..4],
        [2, 1, 2, 1],
        "every other GET met backend 1 first"
    );
    assert_eq!(&attempts[4..], [1, 1]);
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_empty_retry_budget_stops_retries() {
    let backend = Backend::start("1").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(
        &[closed, backend.addr],
        "retry = { attempts = 3, on_status = [503], budget_ratio = 0.0, min_retries = 0 }",
        "",
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let client = http1_client();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let (status, body) = get(&client, &proxy.url("/fail-on?name=1")).await;
        answers.push((status, body.trim().to_string()));
    }
    answers.sort();
    // Round-robin alternates: the dead endpoint's connect failure cannot be retried, and the
    // backend's own 503 is passed on rather than retried.
    assert_eq!(
        answers,
        [
            (StatusCode::BAD_GATEWAY, "retry budget exhausted".into()),
            (StatusCode::BAD_GATEWAY, "retry budget exhausted".into()),
            (StatusCode::SERVICE_UNAVAILABLE, "hello from 1".into()),
            (StatusCode::SERVICE_UNAVAILABLE, "hello from 1".into()),
        ]
    );
    proxy.stop().await;
}

/// Reads from `c` until `done` holds for what arrived (each read bounded to 10 s, the connection must
/// stay open until then); what arrived.
async fn read_until(c: &mut tokio::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&out) {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before the response: {out:?}");
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// One request on its own connection; the status line.
async fn request_on_new_connection(addr: std::net::SocketAddr) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nhost: workers\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out))
        .await
        .expect("response timed out")
        .unwrap();
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The proxy served by `Server::run_workers` (one event loop per worker thread) in this test's
/// runtime, in front of `backends`.
struct Workers {
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sluicegate::server::StartError>>,
    _dir: tempfile::TempDir,
}

impl Workers {
    async fn start(backends: &[std::net::SocketAddr], workers: usize) -> Workers {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("workers = {workers}\n{}", config_for(backends, "", ""));
        let config = sluicegate::config::Config::parse(&text, "test.toml", dir.path()).unwrap();
        assert_eq!(config.workers, Some(workers));
        let listeners = sluicegate::server::Listeners::bind(&config).await.unwrap();
        let (addr, admin) = (listeners.proxy_addrs()[0], listeners.admin_addr().unwrap());
        let server = sluicegate::server::Server::new(config).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_workers(
            listeners,
            async move {
                let _ = stopped.await;
            },
            workers,
        ));
        Workers {
            addr,
            admin,
            stop,
            task,
            _dir: dir,
        }
    }

    /// Shuts down and waits (at most 30 s) for every worker to stop.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the workers did not stop")
            .unwrap()
            .unwrap();
    }
}

// `run_workers`: each worker thread has its own event loop and its own SO_REUSEPORT socket of the
// listener; the kernel spreads connections over them, and shutdown drains every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_each_serve_a_share_of_the_connections() {
    let backends = three_backends().await;
    let workers = Workers::start(&addrs(&backends), 3).await;
    let (addr, admin) = (workers.addr, workers.admin);

    const CONNECTIONS: usize = 60;
    for _ in 0..CONNECTIONS {
        let status = request_on_new_connection(addr).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
    // Each worker counts a connection as it accepts it, before serving the request: read once.
    let samples = scrape(admin).await;
    let per_worker: Vec<f64> = ["0", "1", "2"]
        .iter()
        .map(|w| {
            samples
                .iter()
                .find(|s| {
                    s.name == "sluicegate_worker_connections_total" && s.label("worker") == Some(w)
                })
                .map_or(0.0, |s| s.value)
        })
        .collect();
    assert_eq!(per_worker.iter().sum::<f64>(), CONNECTIONS as f64);
    // All 60 on one worker of three happens with probability 3^-59.
    assert!(
        per_worker.iter().filter(|n| **n > 0.0).count() >= 2,
        "connections by worker: {per_worker:?}"
    );

    workers.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "every worker's socket is closed after shutdown"
    );
}

// Shutdown asks every connection to finish: an idle keep-alive connection, on any worker, is closed at
// once rather than held to the drain deadline (30 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    let backends = three_backends().await;
    let workers = Workers::start(&addrs(&backends), 2).await;
    let addr = workers.addr;

    let mut idle = Vec::new();
    for _ in 0..6 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: idle\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut c, |got| {
            String::from_utf8_lossy(got).contains("hello from")
        })
        .await;
        idle.push(c);
    }

    let stopped = tokio::spawn(workers.stop());
    let mut buf = vec![0; 4096];
    for mut c in idle {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("the idle connection was not closed at shutdown")
            .unwrap();
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    }
    stopped.await.unwrap();
}

// SO_REUSEPORT would let two proxies share a port silently; a port in use must still refuse to start.
#[tokio::test(flavor = "current_thread")]
async fn a_listener_address_in_use_refuses_to_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_for(&[address], "", "").replacen("127.0.0.1:0", &address.to_string(), 1);
    let config = sluicegate::config::Config::parse(&text, "test.toml", dir.path()).unwrap();
    let err = sluicegate::server::Listeners::bind(&config)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot listen on {address}")),
        "{err}"
    );
}

// The header read timeout is kept by the client connection's I/O (`client_io`): a head that stalls
// is cut, the first one from the connection's start and later ones from their first byte; a request
// slower than the timeout is not, as its head has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_are_cut_at_the_header_timeout_and_slow_responses_are_not() {
    let backend = Backend::start("1").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&[backend.addr], "", "").replacen(
        "address = \"127.0.0.1:0\"\n",
        "address = \"127.0.0.1:0\"\nheader_read_timeout = \"300ms\"\n",
        1,
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    /// Reads until the proxy closes the connection (or resets it); what it sent.
    async fn until_closed(c: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
            .await
            .expect("the proxy kept a stalled head's connection open");
        String::from_utf8_lossy(&out).into_owned()
    }

    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut c).await, "");

    // The response takes longer than the header timeout; after it, the next head stalls.
    let mut c = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"GET /slow?ms=800 HTTP/1.1\r\nHost: slow\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut c, |got| got.ends_with(b"hello from 1")).await;
    assert!(out.starts_with(b"HTTP/1.1 200 OK"), "{out:?}");
    c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_eq!(until_closed(&mut c).await, "");
    // Counted as the backend took the request, before its answer (which the client read).
    assert_eq!(backend.hits("/slow"), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_says_what_its_format_asks_for() {
    let backend = Backend::start("1").await;
    let client = http1_client();
    let get_with_agent = async |proxy: &Proxy| {
        let req = Request::get(proxy.url("/x?y=1"))
            .header("user-agent", "t/1 \"quoted\"")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&client, req).await.0, StatusCode::OK);
    };
    let lines = async |dir: &std::path::Path| {
        wait_for(
            "the access log line",
            WAIT,
            async || std::fs::read_to_string(dir.join("access.log")).unwrap_or_default(),
            |t| t.ends_with('\n'),
        )
        .await
    };

    // JSON, the fields chosen, in their order.
    let dir = tempfile::tempdir().unwrap();
    let top = "[access_log]\npath = \"access.log\"\n\
               fields = [\"status\", \"bytes_sent\", \"user_agent\", \"request\", \"endpoint\"]";
    let proxy = Proxy::start(&config_for(&[backend.addr], "", top), dir.path()).await;
    get_with_agent(&proxy).await;
    assert_eq!(
        lines(dir.path()).await,
        format!(
            "{{\"status\":200,\"bytes_sent\":12,\"user_agent\":\"t/1 \\\"quoted\\\"\",\
             \"request\":\"GET /x?y=1 HTTP/1.1\",\"endpoint\":\"{}\"}}\n",
            backend.addr
        )
    );
    proxy.stop().await;

    // Text, the default template: the combined log format, then id and times.
    let dir = tempfile::tempdir().unwrap();
    let top = "[access_log]\npath = \"access.log\"\nformat = \"text\"";
    let proxy = Proxy::start(&config_for(&[backend.addr], "", top), dir.path()).await;
    get_with_agent(&proxy).await;
    let line = lines(dir.path()).await;
    let (start, rest) = line.split_once(" [").unwrap();
    assert_eq!(start, "127.0.0.1 - -");
    let (_time, rest) = rest.split_once("] ").unwrap();
    assert!(
        rest.starts_with("\"GET /x?y=1 HTTP/1.1\" 200 12 \"-\" \"t/1 \\x22quoted\\x22\" "),
        "{line}"
    );
    assert_eq!(rest.split(' ').count(), 11, "{line}");
    proxy.stop().await;
}

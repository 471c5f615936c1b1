//! The embedded default plugins end to end: the real proxy in-process on port 0, real backends on
//! loopback, each balancer's spread over real requests, sticky sessions across a backend's death,
//! the router plugin and the header-rewrite filter.

use crate::common;

use bytes::Bytes;
use common::{Backend, Proxy, WAIT, get, http1_client, tally, wait_for};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A routing case: path, request headers, the backend that must answer.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(Backend::start(&i.to_string()).await);
    }
    v
}

/// The listener and admin on port 0, no access log, then `rest` (routes or router, filters).
fn head(rest: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [access_log]\nenabled = false\n\n{rest}\n"
    )
}

/// A cluster table with `extra` keys and weighted endpoints.
fn cluster(name: &str, extra: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    let mut text = format!("\n[[clusters]]\nname = \"{name}\"\n{extra}\n");
    for (addr, weight) in endpoints {
        text.push_str(&format!(
            "[[clusters.endpoints]]\naddress = \"{addr}\"\nweight = {weight}\n"
        ));
    }
    text
}

/// One cluster `web` of `backends` (weight 1 each) with `extra`, routed from `/`.
fn web_config(backends: &[Backend], extra: &str, top: &str) -> String {
    let eps: Vec<_> = backends.iter().map(|b| (b.addr, 1)).collect();
    head(&format!("{top}\n[[routes]]\ncluster = \"web\"\n")) + &cluster("web", extra, &eps)
}

/// Sends a GET with `headers`, returning status, response headers and body.
async fn get_with(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&body).trim().to_string(),
    )
}

/// `hello from N` -> `N`.
fn served_by(body: &str) -> String {
    body.strip_prefix("hello from ")
        .unwrap_or_else(|| panic!("not a backend answer: {body:?}"))
        .to_string()
}

/// Sends `n` plain GETs to `/`, all of which must succeed, and tallies the backends.
async fn spread(proxy: &Proxy, n: usize) -> HashMap<String, usize> {
    let client = http1_client();
    let mut bodies = Vec::new();
    for _ in 0..n {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        bodies.push(body);
    }
    tally(&bodies)
}

// Plugin instances are per worker thread; one thread makes the smooth weighted round-robin exact.
#[tokio::test(flavor = "current_thread")]
async fn weighted_round_robin_honours_weights_1_2_3_exactly_over_600_requests() {
    let b = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let text = head("[[routes]]\ncluster = \"web\"\n")
        + &cluster(
            "web",
            "balancer = \"weighted-round-robin\"",
            &[(b[0].addr, 1), (b[1].addr, 2), (b[2].addr, 3)],
        );
    let proxy = Proxy::start(&text, dir.path()).await;
    let t = spread(&proxy, 600).await;
    assert_eq!((t["1"], t["2"], t["3"]), (100, 200, 300), "{t:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reaches_every_backend_in_rough_proportion() {
    let b = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&web_config(&b, "balancer = \"random\"", ""), dir.path()).await;
    let t = spread(&proxy, 300).await;
    // 100 expected each, standard deviation ~8: 50 is more than six deviations away.
    for name in ["1", "2", "3"] {
        assert!(t.get(name).copied().unwrap_or(0) >= 50, "{t:?}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn least_connections_spreads_idle_requests_and_avoids_busy_backends() {
    let b = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(
        &web_config(&b, "balancer = \"least-connections\"", ""),
        dir.path(),
    )
    .await;
    // Idle pool: ties go round-robin, so every backend gets a share.
    let t = spread(&proxy, 300).await;
    for name in ["1", "2", "3"] {
        assert!(t.get(name).copied().unwrap_or(0) >= 50, "{t:?}");
    }

    // Two slow requests hold two backends; quick requests then all go to the idle third.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let url = proxy.url("/slow?ms=1500");
        slow.push(tokio::spawn(
            async move { get(&http1_client(), &url).await },
        ));
        // One at a time, so the second pick sees the first in flight.
        let want = slow.len();
        wait_for(
            "the slow requests reaching the backends",
            WAIT,
            async || common::total_hits(&b, "/slow"),
            |n| *n == want,
        )
        .await;
    }
    let busy: HashSet<String> = b
        .iter()
        .filter(|x| x.hits("/slow") == 1)
        .map(|x| x.name.clone())
        .collect();
    assert_eq!(busy.len(), 2, "the slow requests went to two backends");
    let t = spread(&proxy, 20).await;
    assert_eq!(t.len(), 1, "{t:?}");
    let idle = t.keys().next().unwrap();
    assert!(!busy.contains(idle), "{idle} is busy: {busy:?}");
    for s in slow {
        assert_eq!(s.await.unwrap().0, StatusCode::OK);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_serves_every_request() {
    let b = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&web_config(&b, "balancer = \"peak-ewma\"", ""), dir.path()).await;
    let t = spread(&proxy, 200).await;
    assert_eq!(t.values().sum::<usize>(), 200, "{t:?}");
    // Hits are counted as a backend takes a request, before it answers: read once.
    assert_eq!(common::total_hits(&b, "/"), 200);
    proxy.stop().await;
}

/// Sends `keys` x `rounds` requests, the key in header `header` (value from `value(key)`), and
/// checks that each key always lands on one backend and that the keys cover every backend.
async fn assert_affinity(
    balancer: &str,
    settings: &str,
    header: &str,
    value: impl Fn(usize) -> String,
) {
    let b = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("balancer = \"{balancer}\"\nbalancer_settings = {settings}");
    let proxy = Proxy::start(&web_config(&b, &extra, ""), dir.path()).await;
    let client = http1_client();
    let mut owner: HashMap<usize, String> = HashMap::new();
    for round in 0..5 {
        for key in 0..40 {
            let v = value(key);
            let (status, _, body) = get_with(&client, &proxy.url("/"), &[(header, &v)]).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let by = served_by(&body);
            let first = owner.entry(key).or_insert_with(|| by.clone());
            assert_eq!(
                *first, by,
                "{balancer}: key {v} moved from {first} to {by} in round {round}"
            );
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "{balancer}: 40 keys over {used:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_each_forwarded_client_on_one_backend() {
    // Every connection comes from 127.0.0.1: trusting it makes X-Forwarded-For the client.
    assert_affinity(
        "ip-hash",
        "{ trusted_proxies = [\"127.0.0.1\"] }",
        "x-forwarded-for",
        |k| format!("198.51.100.{k}"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_keeps_each_user_header_on_one_backend() {
    assert_affinity("ring-hash", "{ key = \"header:x-user\" }", "x-user", |k| {
        format!("user-{k}")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_keeps_each_user_header_on_one_backend() {
    assert_affinity("maglev", "{ key = \"header:x-user\" }", "x-user", |k| {
        format!("user-{k}")
    })
    .await;
}

/// The `sg_sticky` value of a response's `set-cookie`, if it sets one.
fn sticky_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("sg_sticky="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_pin_then_repin_when_the_backend_dies() {
    let b = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = "{ secret = \"a test secret\", cookie = \"sg_sticky\" }";
    let filter = format!("[[filters]]\nplugin = \"sticky-session\"\nsettings = {settings}\n");
    let extra = format!(
        "balancer = \"sticky-session\"\nbalancer_settings = {settings}\nretry = {{ attempts = 3 }}"
    );
    let proxy = Proxy::start(&web_config(&b, &extra, &filter), dir.path()).await;
    let client = http1_client();
    let url = proxy.url("/");

    let (status, headers, body) = get_with(&client, &url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let first = served_by(&body);
    let cookie = sticky_cookie(&headers).expect("the first response sets the cookie");
    let set_cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        set_cookie.contains("Path=/") && set_cookie.contains("HttpOnly"),
        "{set_cookie}"
    );

    let with = |c: &str| format!("sg_sticky={c}");
    for _ in 0..20 {
        let (status, headers, body) = get_with(&client, &url, &[("cookie", &with(&cookie))]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served_by(&body), first);
        assert_eq!(sticky_cookie(&headers), None, "no re-pin while it holds");
    }

    let dead = b.iter().find(|x| x.name == first).unwrap();
    dead.kill().await;
    let (status, headers, body) = get_with(&client, &url, &[("cookie", &with(&cookie))]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let second = served_by(&body);
    assert_ne!(second, first);
    let new_cookie = sticky_cookie(&headers).expect("the new backend re-pins");
    assert_ne!(new_cookie, cookie);

    for _ in 0..20 {
        let (status, headers, body) =
            get_with(&client, &url, &[("cookie", &with(&new_cookie))]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(served_by(&body), second);
        assert_eq!(sticky_cookie(&headers), None);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_plugin_routes_by_host_path_and_header_redirects_and_answers() {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let router = r#"
[router]
plugin = "router"

[router.settings]
default_cluster = "web"

[[router.settings.rules]]
host = "api.example.com"
cluster = "api"

[[router.settings.rules]]
path_prefix = "/v2/"
cluster = "api"

[[router.settings.rules]]
headers = [{ name = "x-canary", equals = "1" }]
cluster = "api"

[[router.settings.rules]]
host = "old.example.com"
redirect = { location = "https://new.example.com", status = 301, keep_path = true, keep_query = true }

[[router.settings.rules]]
path = "/healthz"
respond = { status = 200, body = "ok\n", headers = { "cache-control" = "no-store" } }
"#;
    let text = head(router)
        + &cluster("api", "", &[(api.addr, 1)])
        + &cluster("web", "", &[(web.addr, 1)]);
    let proxy = Proxy::start(&text, dir.path()).await;
    let client = http1_client();
    let to = |path: &str| proxy.url(path);

    let cases: [Case; 6] = [
        ("/", &[("host", "api.example.com")], "api"),
        ("/", &[("host", "API.example.com:8080")], "api"),
        ("/v2/items", &[], "api"),
        ("/v1/items", &[("x-canary", "1")], "api"),
        ("/v1/items", &[("x-canary", "0")], "web"),
        ("/", &[("host", "www.example.com")], "web"),
    ];
    for (path, headers, want) in cases {
        let (status, _, body) = get_with(&client, &to(path), headers).await;
        assert_eq!(status, StatusCode::OK, "{path} {headers:?}: {body}");
        assert_eq!(served_by(&body), want, "{path} {headers:?}");
    }
    // Hits are counted as a backend takes a request, before it answers: read once.
    assert_eq!(
        api.hits("/") + api.hits("/v2/items") + api.hits("/v1/items"),
        4
    );
    let web_hits = web.hits("/") + web.hits("/v1/items");
    assert_eq!(web_hits, 2);

    let (status, headers, _) = get_with(
        &client,
        &to("/some/page?a=1&b=2"),
        &[("host", "old.example.com")],
    )
    .await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        headers["location"],
        "https://new.example.com/some/page?a=1&b=2"
    );

    let (status, headers, body) = get_with(&client, &to("/healthz"), &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{headers:?}"
    );
    // Neither the redirect nor the local answer reached a backend.
    assert_eq!(api.hits("/some/page") + web.hits("/some/page"), 0);
    assert_eq!(api.hits("/healthz") + web.hits("/healthz"), 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rewrite_sets_request_and_response_headers_from_placeholders() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let filter = r#"
[[filters]]
plugin = "header-rewrite"

[[filters.settings.request]]
op = "set"
name = "x-real-ip"
value = "{client_ip}"

[[filters.settings.request]]
op = "remove"
name = "x-internal-debug"

[[filters.settings.response]]
op = "set"
name = "x-served-by"
value = "cluster {cluster}"
"#;
    let proxy = Proxy::start(&web_config(&b, "", filter), dir.path()).await;
    let client = http1_client();
    let (status, headers, seen) = get_with(
        &client,
        &proxy.url("/echo-headers"),
        &[("x-real-ip", "203.0.113.1"), ("x-internal-debug", "1")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen: HashMap<&str, &str> = seen.lines().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(seen.get("x-real-ip"), Some(&"127.0.0.1"), "{seen:?}");
    assert!(!seen.contains_key("x-internal-debug"), "{seen:?}");
    assert_eq!(headers["x-served-by"], "cluster web");
    proxy.stop().await;
}

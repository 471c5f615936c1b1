//! The proxy with real plugins that fault on purpose (tests/plugins/proxy-faults): a router,
//! a filter and a balancer from the watched plugin directory, and every fallback the proxy
//! promises when one of them traps or answers nonsense.

use crate::common;

use bytes::Bytes;
use common::{Backend, Proxy, WAIT, get, http1_client, parse_prometheus, send, wait_for};
use http_body_util::Full;
use hyper::{Request, StatusCode};
use std::path::{Path, PathBuf};

/// Builds the test plugin once per test binary.
fn faults_plugin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/proxy-faults");
            sluicegate_plugin_build::build_plugin(&dir, None).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// A directory for the proxy with the test plugin as `plugins/faults.wasm`.
fn with_faults_plugin(plugin: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(plugin, dir.path().join("plugins/faults.wasm")).unwrap();
    dir
}

fn read_log(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_faults_fall_back_as_configured_and_are_counted() {
    let plugin = tokio::task::spawn_blocking(faults_plugin).await.unwrap();
    let b1 = Backend::start("1").await;
    let b2 = Backend::start("2").await;
    let dir = with_faults_plugin(&plugin);
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[access_log]
path = "access.log"
[plugins]
dir = "plugins"

[router]
plugin = "faults"
settings = {{ cluster = "web" }}

[[filters]]
plugin = "faults"

[[clusters]]
name = "web"
balancer = "faults"
fallback_balancer = "round-robin"
[[clusters.endpoints]]
address = "{}"
[[clusters.endpoints]]
address = "{}"
"#,
        b1.addr, b2.addr
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let client = http1_client();

    // Normal path: router -> filter headers both ways -> the plugin balancer (first untried).
    let resp = client
        .get(proxy.url("/echo-headers").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-filter-response"], "yes");
    let seen = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&seen).contains("x-filtered: yes\n"));
    for _ in 0..4 {
        assert_eq!(
            get(&client, &proxy.url("/")).await,
            (StatusCode::OK, "hello from 1".into())
        );
    }

    // Balancer faults: the fallback balancer serves, the request succeeds.
    for path in ["/balancer-trap", "/balancer-bogus"] {
        let (status, body) = get(&client, &proxy.url(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // Filter fault: the request continues unchanged. Filter answer: served as asked.
    assert_eq!(
        get(&client, &proxy.url("/filter-trap")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&client, &proxy.url("/filter-deny")).await,
        (StatusCode::FORBIDDEN, "denied by filter".into())
    );
    // Router fault and unknown cluster: 502 with the reason. Router answer: served as asked.
    let (status, body) = get(&client, &proxy.url("/router-trap")).await;
    assert_eq!(
        (status, body.trim()),
        (StatusCode::BAD_GATEWAY, "router fault: faults")
    );
    let (status, body) = get(&client, &proxy.url("/router-unknown")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("no-such-cluster"), "{body}");
    let req = Request::get(proxy.url("/teapot"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&client, req).await,
        (StatusCode::IM_A_TEAPOT, "short and stout".into())
    );

    // Counted: faults per plugin (runtime) and fallbacks per kind (proxy). Both are counted as the
    // plugin is called, before the answer the client has read: read once.
    let (_, metrics) = get(&client, &proxy.admin_url("/metrics")).await;
    let samples = parse_prometheus(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
            .sum()
    };
    assert!(
        value("sluicegate_plugin_faults_total", &[("plugin", "faults")]) >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        value(
            "sluicegate_plugin_fallbacks_total",
            &[("plugin", "faults"), ("kind", "balancer")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "sluicegate_plugin_fallbacks_total",
            &[("plugin", "faults"), ("kind", "filter")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "sluicegate_plugin_fallbacks_total",
            &[("plugin", "faults"), ("kind", "router")]
        ),
        1.0
    );

    let (_, status) = get(&client, &proxy.admin_url("/status")).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let faults = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "faults")
        .unwrap();
    assert!(faults["faults"].as_u64() >= Some(3), "{faults}");
    assert_eq!(status["clusters"][0]["balancer"], "faults");

    // A line is written when the response's body ends in the proxy, maybe after the client read it.
    let log = wait_for(
        "12 access log lines",
        WAIT,
        async || read_log(dir.path()),
        |log| log.len() >= 12,
    )
    .await;
    assert_eq!(log.len(), 12, "{log:?}");
    let router_fault = log.iter().find(|e| e["path"] == "/router-trap").unwrap();
    assert_eq!(router_fault["reason"], "router fault: faults");
    let denied = log.iter().find(|e| e["path"] == "/filter-deny").unwrap();
    assert_eq!(denied["reason"], "answered by filter faults");
    proxy.stop().await;
}

/// A filter set to fail closed answers 503 when it faults and never forwards; a router that faults
/// hands the request to the route table, so no request fails; once their breakers open neither
/// plugin is called, and `/status` shows the breakers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_closed_filter_rejects_and_a_router_falls_back_to_the_routes() {
    let plugin = tokio::task::spawn_blocking(faults_plugin).await.unwrap();
    let web = Backend::start("web").await;
    let dir = with_faults_plugin(&plugin);
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[access_log]
enabled = false
[plugins]
dir = "plugins"
[plugins.breaker]
faults = 2
backoff = "1h"

[router]
plugin = "faults"
settings = {{ cluster = "web" }}
on_fault = "routes"

[[routes]]
cluster = "web"

[[filters]]
plugin = "faults"
on_fault = "reject"

[[clusters]]
name = "web"
[[clusters.endpoints]]
address = "{}"
"#,
        web.addr
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    let client = http1_client();
    let calls = async || -> u64 {
        let (_, status) = get(&client, &proxy.admin_url("/status")).await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "faults")
            .unwrap()["calls"]
            .as_u64()
            .unwrap()
    };

    // The filter faults: 503, and the backend never sees the request; after two faults its
    // breaker is open and every request is refused without a call.
    for _ in 0..2 {
        let (status, body) = get(&client, &proxy.url("/filter-trap")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    let before = calls().await;
    for _ in 0..5 {
        let (status, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(calls().await, before, "an open breaker calls nothing");
    assert_eq!(web.hits("/filter-trap") + web.hits("/"), 0);
    let (_, status) = get(&client, &proxy.admin_url("/status")).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["filters"][0]["on_fault"], "reject");
    assert_eq!(status["filters"][0]["breaker"]["state"], "open", "{status}");
    assert_eq!(status["router"]["breaker"]["state"], "closed", "{status}");
    proxy.stop().await;

    // Without the filter: the router faults, the route table serves, every request succeeds.
    let config = config.replace(
        "[[filters]]\nplugin = \"faults\"\non_fault = \"reject\"\n",
        "",
    );
    let proxy = Proxy::start(&config, dir.path()).await;
    for _ in 0..6 {
        let (status, body) = get(&client, &proxy.url("/router-trap")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello from web"));
    }
    assert_eq!(web.hits("/router-trap"), 6);
    let (_, status) = get(&client, &proxy.admin_url("/status")).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["router"]["on_fault"], "routes");
    assert_eq!(status["router"]["breaker"]["state"], "open", "{status}");
    assert_eq!(status["router"]["breaker"]["trips"], 1, "{status}");
    proxy.stop().await;
}

//! Panic mode is the host's alone: with `panic_threshold = 0` ("never") and every endpoint judged
//! down, every default balancer leaves the request unanswered by a backend (503), and with a
//! threshold the host's panic mode spreads the same requests over the endpoints again.

use crate::common::{self, Backend, Proxy, WAIT, get, http1_client, wait_for};
use hyper::StatusCode;

/// Every embedded balancer, with the settings that select its variants.
const BALANCERS: &[(&str, &str)] = &[
    ("round-robin", ""),
    ("weighted-round-robin", ""),
    ("least-connections", ""),
    ("least-connections", "mode = \"p2c\""),
    ("random", ""),
    ("peak-ewma", ""),
    ("ip-hash", ""),
    ("ring-hash", ""),
    ("ring-hash", "bounded_load = 1.25"),
    ("maglev", ""),
    ("sticky-session", "secret = \"panic-mode-test\""),
];

/// One cluster per balancer, routed from `/c{i}/`, over `backends`, whose health checks all fail
/// (`/fail-on?name=down`: the backends are all named `down`), with `panic_threshold`.
fn config(backends: &[Backend], panic_threshold: u32) -> String {
    let mut text = String::from(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [access_log]\nenabled = false\n",
    );
    for i in 0..BALANCERS.len() {
        text.push_str(&format!(
            "[[routes]]\npath_prefix = \"/c{i}/\"\ncluster = \"c{i}\"\n"
        ));
    }
    for (i, (balancer, settings)) in BALANCERS.iter().enumerate() {
        text.push_str(&format!(
            "[[clusters]]\nname = \"c{i}\"\nbalancer = \"{balancer}\"\n\
             balancer_settings = {{ {settings} }}\npanic_threshold = {panic_threshold}\n\
             [clusters.health_check]\npath = \"/fail-on?name=down\"\ninterval = \"100ms\"\n\
             jitter = \"10ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n"
        ));
        for b in backends {
            text.push_str(&format!(
                "[[clusters.endpoints]]\naddress = \"{}\"\n",
                b.addr
            ));
        }
    }
    text
}

/// Starts the proxy over two backends whose checks fail, and waits until every endpoint of every
/// cluster is down.
async fn all_down(panic_threshold: u32) -> (Proxy, Vec<Backend>, tempfile::TempDir) {
    let backends = vec![Backend::start("down").await, Backend::start("down").await];
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&backends, panic_threshold), dir.path()).await;
    let client = http1_client();
    wait_for(
        "every endpoint down",
        WAIT,
        async || {
            let (_, body) = get(&client, &proxy.admin_url("/status")).await;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            status["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|c| c["endpoints"].as_array().unwrap().iter())
                .filter(|e| e["healthy"] == true)
                .count()
        },
        |up| *up == 0,
    )
    .await;
    (proxy, backends, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_default_balancer_overrides_panic_threshold_zero() {
    let (proxy, backends, _dir) = all_down(0).await;
    let client = http1_client();
    for (i, (balancer, settings)) in BALANCERS.iter().enumerate() {
        for n in 0..4 {
            let (status, body) = get(&client, &proxy.url(&format!("/c{i}/{n}"))).await;
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{balancer} {{ {settings} }} answered with every endpoint down: {body}"
            );
        }
    }
    let served: usize = (0..BALANCERS.len())
        .flat_map(|i| (0..4).map(move |n| format!("/c{i}/{n}")))
        .map(|p| common::total_hits(&backends, &p))
        .sum();
    assert_eq!(served, 0, "no request reached a backend judged down");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_panic_mode_still_spreads_when_a_threshold_is_set() {
    let (proxy, _backends, _dir) = all_down(50).await;
    let client = http1_client();
    for (i, (balancer, settings)) in BALANCERS.iter().enumerate() {
        let (status, body) = get(&client, &proxy.url(&format!("/c{i}/x"))).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{balancer} {{ {settings} }} in panic mode: {body}"
        );
    }
    proxy.stop().await;
}

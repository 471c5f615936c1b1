//! Health checking end to end: the proxy in-process against real backends on loopback whose
//! `/health` answer and traffic status the tests switch. Intervals are short real times (100 ms),
//! every wait is bounded; the state machine itself is unit-tested in `health::state`.

use crate::common;
use crate::tls_support;

use bytes::Bytes;
use common::{Proxy, WAIT, endpoint, get, http1_client, parse_prometheus, status, wait_for};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A backend whose `/health` status (and `x-health` header) and traffic status can be switched.
struct Switchable {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    header: Arc<Mutex<Option<String>>>,
    weight: Arc<Mutex<Option<String>>>,
    traffic: Arc<AtomicU16>,
    probes: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Switchable {
    async fn start(name: &str) -> Switchable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(AtomicU16::new(200));
        let header = Arc::new(Mutex::new(None::<String>));
        let weight = Arc::new(Mutex::new(None::<String>));
        let traffic = Arc::new(AtomicU16::new(200));
        let probes = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (h, hd, wt, t, p, s) = (
            health.clone(),
            header.clone(),
            weight.clone(),
            traffic.clone(),
            probes.clone(),
            served.clone(),
        );
        let name = name.to_string();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, hd, wt, t, p, s, name) = (
                    h.clone(),
                    hd.clone(),
                    wt.clone(),
                    t.clone(),
                    p.clone(),
                    s.clone(),
                    name.clone(),
                );
                conns.spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let mut resp =
                            Response::new(Full::new(Bytes::from(format!("hello from {name}"))));
                        if req.uri().path() == "/health" {
                            p.fetch_add(1, Ordering::Relaxed);
                            *resp.status_mut() =
                                StatusCode::from_u16(h.load(Ordering::Relaxed)).unwrap();
                            if let Some(v) = hd.lock().unwrap().clone() {
                                resp.headers_mut().insert("x-health", v.parse().unwrap());
                            }
                            if let Some(v) = wt.lock().unwrap().clone() {
                                resp.headers_mut().insert("x-weight", v.parse().unwrap());
                            }
                        } else {
                            s.fetch_add(1, Ordering::Relaxed);
                            *resp.status_mut() =
                                StatusCode::from_u16(t.load(Ordering::Relaxed)).unwrap();
                        }
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Switchable {
            addr,
            health,
            header,
            weight,
            traffic,
            probes,
            served,
            task,
        }
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }

    fn set_header(&self, value: Option<&str>) {
        *self.header.lock().unwrap() = value.map(str::to_string);
    }

    fn set_weight(&self, value: &str) {
        *self.weight.lock().unwrap() = Some(value.to_string());
    }

    fn set_traffic(&self, status: u16) {
        self.traffic.store(status, Ordering::Relaxed);
    }

    fn probes(&self) -> usize {
        self.probes.load(Ordering::Relaxed)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A config of one cluster `web` over `backends`: `cluster_keys` go in `[[clusters]]`, `tables`
/// after it (like `[clusters.health_check]`), `top` at the top level.
fn config(backends: &[&Switchable], cluster_keys: &str, tables: &str, top: &str) -> String {
    let mut text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n{top}\n[[routes]]\ncluster = \"web\"\n[[clusters]]\nname = \"web\"\n{cluster_keys}\n{tables}\n"
    );
    for b in backends {
        text.push_str(&format!(
            "[[clusters.endpoints]]\naddress = \"{}\"\n",
            b.addr
        ));
    }
    text
}

const ACTIVE: &str = "[clusters.health_check]\npath = \"/health\"\ninterval = \"100ms\"\njitter = \"10ms\"\ntimeout = \"500ms\"\nrise = 2\nfall = 3\n";

async fn healthy(proxy: &Proxy, addr: SocketAddr) -> bool {
    endpoint(proxy, addr).await["healthy"].as_bool().unwrap()
}

/// Waits (bounded) until the `/status` entry of the endpoint at `addr` satisfies `done` (set by the
/// health checker, or by a request's outcome), and returns it.
async fn wait_endpoint(
    proxy: &Proxy,
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(
        &format!("{addr}: {what}"),
        WAIT,
        async || endpoint(proxy, addr).await,
        done,
    )
    .await
}

/// Waits (bounded) until the endpoint at `addr` is healthy (`want`) or not, and returns its entry.
async fn wait_healthy(proxy: &Proxy, addr: SocketAddr, want: bool) -> serde_json::Value {
    let what = if want { "healthy" } else { "not healthy" };
    wait_endpoint(proxy, addr, what, |e| e["healthy"] == want).await
}

/// Sends `n` GETs, returning the statuses seen by status code.
async fn send_n(proxy: &Proxy, n: usize) -> HashMap<u16, usize> {
    let client = http1_client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (code, _) = get(&client, &proxy.url("/")).await;
        *seen.entry(code.as_u16()).or_default() += 1;
    }
    seen
}

/// The value of a metric sample with these labels (0 when absent).
async fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = get(&http1_client(), &proxy.admin_url("/metrics")).await;
    parse_prometheus(&text)
        .unwrap()
        .into_iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map_or(0.0, |s| s.value)
}

#[tokio::test(flavor = "current_thread")]
async fn a_failing_health_check_takes_the_endpoint_out_after_fall_probes_and_rise_brings_it_back() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&config(&[&a, &b], "", ACTIVE, ""), dir.path()).await;
    wait_for(
        "both endpoints probed",
        WAIT,
        async || (a.probes(), b.probes()),
        |(pa, pb)| *pa > 0 && *pb > 0,
    )
    .await;
    // `served` and `probes` count in the backend before it answers: read once after an answer.
    send_n(&proxy, 10).await;
    // Round-robin state is per plugin instance, so the spread is even but not exact.
    assert!(
        a.served() >= 3 && b.served() >= 3,
        "{} {}",
        a.served(),
        b.served()
    );

    b.set_health(503);
    let t0 = Instant::now();
    wait_healthy(&proxy, b.addr, false).await;
    let took = t0.elapsed();
    // fall × (interval + jitter), plus one interval for the probe in progress, plus slack for a
    // busy machine.
    assert!(
        took < Duration::from_millis(4 * 110 + 1000),
        "down after {took:?}"
    );
    let e = endpoint(&proxy, b.addr).await;
    assert_eq!(e["health"]["active"], "down");
    assert!(
        e["health"]["consecutive_failures"].as_u64().unwrap() >= 3,
        "{e}"
    );
    assert_eq!(e["health"]["last_probe"]["result"], "status 503");
    assert_eq!(e["health"]["last_probe"]["passed"], false);

    let before = (a.served(), b.served());
    let seen = send_n(&proxy, 20).await;
    assert_eq!(seen, HashMap::from([(200, 20)]));
    assert_eq!(
        (a.served() - before.0, b.served() - before.1),
        (20, 0),
        "no request reaches the endpoint that is down"
    );

    b.set_health(200);
    let t1 = Instant::now();
    wait_healthy(&proxy, b.addr, true).await;
    let took = t1.elapsed();
    assert!(
        took < Duration::from_millis(3 * 110 + 1000),
        "up after {took:?}"
    );
    let before = b.served();
    send_n(&proxy, 10).await;
    assert!(b.served() - before >= 3, "back in rotation");

    // Read once: a transition and a probe are counted, and the healthy gauge set, before `/status`
    // shows the state waited for above.
    let b_label = b.addr.to_string();
    let transitions = |event| {
        [
            ("endpoint", b_label.clone()),
            ("event", String::from(event)),
        ]
    };
    for (event, want) in [("down", 1.0), ("up", 1.0)] {
        let labels = transitions(event);
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            metric(&proxy, "sluicegate_health_transitions_total", &labels).await,
            want,
            "{event} is counted once"
        );
    }
    let fails = metric(
        &proxy,
        "sluicegate_health_probes_total",
        &[("endpoint", &b_label), ("event", "fail")],
    )
    .await;
    assert!(fails >= 3.0, "{fails} failed probes counted");
    assert_eq!(
        metric(
            &proxy,
            "sluicegate_endpoint_healthy",
            &[("endpoint", &b_label)]
        )
        .await,
        1.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_tcp_check_takes_out_an_endpoint_that_refuses_connections() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let tcp = "[clusters.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 2\n";
    let proxy = Proxy::start(&config(&[&a, &b], "", tcp, ""), dir.path()).await;
    b.task.abort();
    wait_healthy(&proxy, b.addr, false).await;
    let e = endpoint(&proxy, b.addr).await;
    assert_eq!(e["health"]["last_probe"]["result"], "connect failure");
    assert_eq!(a.probes(), 0, "a TCP check sends no request");
    assert_eq!(send_n(&proxy, 10).await, HashMap::from([(200, 10)]));
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn consecutive_5xx_eject_an_endpoint_for_the_ejection_time_which_doubles_next_time() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let outlier = "[clusters.outlier]\nconsecutive_5xx = 3\nbase_ejection_time = \"600ms\"\nmax_ejection_percent = 50\n";
    let proxy = Proxy::start(&config(&[&a, &b], "", outlier, ""), dir.path()).await;
    b.set_traffic(500);

    // Outlier detection judges a response before passing it on: once a request's answer is in,
    // so is the ejection it caused, and the transition's count.
    wait_for(
        "b ejected",
        WAIT,
        async || {
            send_n(&proxy, 1).await;
            endpoint(&proxy, b.addr).await
        },
        |e| e["health"]["ejected"] == true,
    )
    .await;
    assert_eq!(b.served(), 3, "ejected at its third 500 in a row");
    let e = endpoint(&proxy, b.addr).await;
    assert_eq!(e["healthy"], false, "{e}");
    assert_eq!(e["health"]["ejected"], true);
    assert_eq!(e["health"]["ejections"], 1);
    assert!(e["health"]["returns_in_ms"].as_u64().unwrap() <= 600);
    let ejected_at = Instant::now();

    let before = b.served();
    assert_eq!(send_n(&proxy, 20).await, HashMap::from([(200, 20)]));
    assert_eq!(
        b.served(),
        before,
        "no request reaches the ejected endpoint"
    );

    wait_healthy(&proxy, b.addr, true).await;
    let out_for = ejected_at.elapsed();
    assert!(
        out_for >= Duration::from_millis(400),
        "returned after {out_for:?}"
    );

    // Still failing: ejected again (once the pool has it back), this time for 2 × 600 ms.
    wait_for(
        "b ejected a second time",
        WAIT,
        async || {
            send_n(&proxy, 2).await;
            endpoint(&proxy, b.addr).await
        },
        |e| e["health"]["ejections"] == 2,
    )
    .await;
    let e = endpoint(&proxy, b.addr).await;
    assert!(e["health"]["returns_in_ms"].as_u64().unwrap() > 700, "{e}");
    let b_label = b.addr.to_string();
    assert_eq!(
        metric(
            &proxy,
            "sluicegate_health_transitions_total",
            &[("endpoint", &b_label), ("event", "ejected")]
        )
        .await,
        2.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn max_ejection_percent_keeps_the_second_failing_endpoint_in() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let c = Switchable::start("c").await;
    let dir = tempfile::tempdir().unwrap();
    let outlier = "[clusters.outlier]\nconsecutive_5xx = 2\nbase_ejection_time = \"30s\"\nmax_ejection_percent = 40\n";
    let proxy = Proxy::start(&config(&[&a, &b, &c], "", outlier, ""), dir.path()).await;
    a.set_traffic(500);
    b.set_traffic(500);
    // Ejections are decided before the response that causes them is passed on: read once.
    send_n(&proxy, 12).await;
    let (ea, eb) = (
        endpoint(&proxy, a.addr).await,
        endpoint(&proxy, b.addr).await,
    );
    let ejected = [&ea, &eb]
        .iter()
        .filter(|e| e["health"]["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "40% of 3 allows one: {ea} {eb}");
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn panic_mode_spreads_traffic_over_all_endpoints_when_most_are_down_and_ends_on_recovery() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let c = Switchable::start("c").await;
    let dir = tempfile::tempdir().unwrap();
    let check =
        "[clusters.health_check]\ninterval = \"100ms\"\njitter = \"10ms\"\nrise = 1\nfall = 1\n";
    let proxy = Proxy::start(
        &config(&[&a, &b, &c], "panic_threshold = 50", check, ""),
        dir.path(),
    )
    .await;
    let panic = async || status(&proxy).await["clusters"][0]["panic"] == true;

    b.set_health(503);
    wait_healthy(&proxy, b.addr, false).await;
    assert!(!panic().await, "2 of 3 healthy is above 50%");
    let before = b.served();
    send_n(&proxy, 10).await;
    assert_eq!(b.served(), before, "b is out");

    c.set_health(503);
    wait_for("panic mode", WAIT, panic, |p| *p).await;
    // Panic mode, the endpoints' health and the panic gauge are set together (in one `refresh`).
    assert!(!healthy(&proxy, c.addr).await);
    let before = [a.served(), b.served(), c.served()];
    assert_eq!(send_n(&proxy, 30).await, HashMap::from([(200, 30)]));
    let got = [
        a.served() - before[0],
        b.served() - before[1],
        c.served() - before[2],
    ];
    assert!(
        got.iter().all(|n| *n >= 7),
        "panic mode spreads over all: {got:?}"
    );
    assert_eq!(
        metric(&proxy, "sluicegate_cluster_panic", &[("cluster", "web")]).await,
        1.0
    );

    b.set_health(200);
    c.set_health(200);
    wait_for("panic mode over", WAIT, panic, |p| !*p).await;
    wait_healthy(&proxy, b.addr, true).await;
    wait_healthy(&proxy, c.addr, true).await;
    assert_eq!(
        metric(&proxy, "sluicegate_cluster_panic", &[("cluster", "web")]).await,
        0.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn health_survives_a_reload_and_the_old_checks_stop() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluicegate.toml");
    let text = config(&[&a, &b], "", ACTIVE, "");
    std::fs::write(&path, &text).unwrap();
    let proxy = Proxy::start(&text, dir.path()).await;
    b.set_health(503);
    wait_healthy(&proxy, b.addr, false).await;

    // The new config probes rarely: b's first probe is half an interval (5 s) away.
    let slow = ACTIVE.replace("\"100ms\"", "\"10s\"");
    std::fs::write(
        &path,
        config(&[&a, &b], "connect_timeout = \"900ms\"", &slow, ""),
    )
    .unwrap();
    sluicegate::reload::reload(&proxy.proxy, &path)
        .await
        .unwrap();
    let e = endpoint(&proxy, b.addr).await;
    assert_eq!(e["healthy"], false, "b stays down across the reload: {e}");
    assert!(e["health"]["consecutive_failures"].as_u64().unwrap() >= 3);
    let before = b.served();
    send_n(&proxy, 10).await;
    assert_eq!(b.served(), before, "the new balancers know b is down");

    let probes = b.probes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.probes(), probes, "the old config's probes stopped");
    proxy.stop().await;
}

/// Builds the health-header test plugin once per test binary.
fn health_plugin() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/plugins/health-header");
            sluicegate_plugin_build::build_plugin(&dir, None).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

#[tokio::test(flavor = "current_thread")]
async fn a_health_plugin_verdict_overrides_the_host_rule_and_a_trap_falls_back_to_it() {
    let plugin = tokio::task::spawn_blocking(health_plugin).await.unwrap();
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(&plugin, dir.path().join("plugins/health-header.wasm")).unwrap();
    let proxy = Proxy::start(
        &config(
            &[&a, &b],
            "health_policy = { plugin = \"health-header\" }",
            ACTIVE,
            "[plugins]\ndir = \"plugins\"\n",
        ),
        dir.path(),
    )
    .await;

    // 200 by the host's rule, but the plugin reads `x-health: down`.
    b.set_header(Some("down"));
    wait_healthy(&proxy, b.addr, false).await;
    assert_eq!(
        endpoint(&proxy, b.addr).await["health"]["last_probe"]["result"],
        "status 200"
    );

    // The plugin traps on every probe: the host's rule (200 passes) decides, and b comes back.
    b.set_header(Some("trap"));
    wait_healthy(&proxy, b.addr, true).await;
    // Read once: the plugin's fault is counted during the probe's judgement, before the state it
    // leads to.
    let faults = proxy
        .proxy
        .runtime
        .plugins()
        .into_iter()
        .find(|p| p.name == "health-header")
        .unwrap()
        .faults;
    assert!(faults >= 2, "each trap is a fault: {faults}");

    // Passive: the plugin ejects on 418 though no outlier detection is configured.
    // (a's /health fails too, or its next passing probe would end the ejection at once.)
    b.set_header(None);
    a.set_health(503);
    a.set_traffic(418);
    let e = wait_for(
        "a ejected by the plugin",
        WAIT,
        async || {
            send_n(&proxy, 1).await;
            endpoint(&proxy, a.addr).await
        },
        |e| e["health"]["ejected"] == true,
    )
    .await;
    assert_eq!(e["health"]["ejected"], true, "{e}");
    let before = a.served();
    assert_eq!(send_n(&proxy, 6).await, HashMap::from([(200, 6)]));
    assert_eq!(a.served(), before);
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn panic_action_refuse_answers_503_while_too_few_endpoints_are_healthy() {
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let check =
        "[clusters.health_check]\ninterval = \"100ms\"\njitter = \"10ms\"\nrise = 1\nfall = 1\n";
    let proxy = Proxy::start(
        &config(
            &[&a, &b],
            "panic_threshold = 100\npanic_action = \"refuse\"",
            check,
            "",
        ),
        dir.path(),
    )
    .await;
    assert_eq!(send_n(&proxy, 4).await, HashMap::from([(200, 4)]));
    b.set_health(503);
    wait_healthy(&proxy, b.addr, false).await;
    let served = a.served() + b.served();
    let (code, body) = get(&http1_client(), &proxy.url("/")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("panic mode"), "{body}");
    assert_eq!(a.served() + b.served(), served, "no endpoint is tried");
    b.set_health(200);
    wait_healthy(&proxy, b.addr, true).await;
    assert_eq!(send_n(&proxy, 4).await, HashMap::from([(200, 4)]));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_traffic_is_taken_out_and_only_unretryable_requests_fail() {
    use common::{Backend, send};
    let backends = [
        Backend::start("1").await,
        Backend::start("2").await,
        Backend::start("3").await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[[routes]]\ncluster = \"web\"\n[[clusters]]\nname = \"web\"\nretry = { attempts = 3, min_retries = 32 }\n[clusters.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 2\n[clusters.outlier]\nconsecutive_gateway_errors = 2\nbase_ejection_time = \"30s\"\n",
    );
    for b in &backends {
        text.push_str(&format!(
            "[[clusters.endpoints]]\naddress = \"{}\"\n",
            b.addr
        ));
    }
    let proxy = Arc::new(Proxy::start(&text, dir.path()).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Answers received by all the workers, to wait on traffic rather than on time.
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (proxy, stop, answered) = (proxy.clone(), stop.clone(), answered.clone());
        workers.push(tokio::spawn(async move {
            let client = http1_client();
            // Half the workers POST a body: once it is sent, a reset cannot be retried.
            let post = w % 2 == 1;
            let (mut sent, mut failed) = (0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let req = if post {
                    Request::post(proxy.url("/upload"))
                        .body(Full::new(Bytes::from_static(b"0123456789")))
                        .unwrap()
                } else {
                    Request::get(proxy.url("/slow?ms=5"))
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                };
                let (code, _) = send(&client, req).await;
                answered.fetch_add(1, Ordering::Relaxed);
                sent += 1;
                failed += usize::from(code != StatusCode::OK);
            }
            (post, sent, failed)
        }));
    }
    let traffic = async |what: &str, n: usize| {
        wait_for(
            what,
            WAIT,
            async || answered.load(Ordering::Relaxed),
            |got| *got >= n,
        )
        .await
    };
    // Traffic flows to all three before the kill, and goes on after the endpoint is taken out.
    traffic("30 answers before the kill", 30).await;
    backends[1].kill().await;
    let killed = backends[1].addr;
    wait_healthy(&proxy, killed, false).await;
    let out = answered.load(Ordering::Relaxed);
    traffic("30 answers after the endpoint is out", out + 30).await;
    stop.store(true, Ordering::Relaxed);
    let (mut get_failed, mut post_failed, mut total) = (0, 0, 0);
    for w in workers {
        let (post, sent, failed) = w.await.unwrap();
        total += sent;
        if post {
            post_failed += failed;
        } else {
            get_failed += failed;
        }
    }
    println!(
        "{total} requests while a backend was killed: {get_failed} GET and {post_failed} POST failures seen by clients"
    );
    assert!(total > 50, "traffic flowed: {total}");
    assert_eq!(get_failed, 0, "idempotent requests are retried elsewhere");
    let e = endpoint(&proxy, killed).await;
    assert_eq!(e["healthy"], false, "{e}");
    Arc::try_unwrap(proxy).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn success_rate_ejection_takes_out_the_endpoint_far_below_the_cluster_mean() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        backends.push(Switchable::start(name).await);
    }
    backends[2].set_traffic(500);
    let dir = tempfile::tempdir().unwrap();
    let outlier = "[clusters.outlier]\nconsecutive_5xx = 0\nconsecutive_gateway_errors = 0\nsuccess_rate = true\nsuccess_rate_interval = \"300ms\"\nsuccess_rate_request_volume = 5\nsuccess_rate_minimum_hosts = 5\n";
    let refs: Vec<&Switchable> = backends.iter().collect();
    let proxy = Proxy::start(&config(&refs, "", outlier, ""), dir.path()).await;
    let bad = backends[2].addr;
    wait_for(
        "the endpoint answering 500 ejected",
        WAIT,
        async || {
            send_n(&proxy, 25).await;
            endpoint(&proxy, bad).await
        },
        |e| e["healthy"] == false,
    )
    .await;
    for b in backends.iter().filter(|b| b.addr != bad) {
        assert!(healthy(&proxy, b.addr).await, "the others stay");
    }
    assert_eq!(send_n(&proxy, 20).await, HashMap::from([(200, 20)]));
    proxy.stop().await;
}

/// Builds a plugin crate of the repository once per test binary.
fn built(rel: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<Mutex<HashMap<String, std::path::PathBuf>>> =
        std::sync::OnceLock::new();
    let mut map = BUILT.get_or_init(Default::default).lock().unwrap();
    map.entry(rel.to_string())
        .or_insert_with(|| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(rel);
            sluicegate_plugin_build::build_plugin(&dir, None).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

#[tokio::test(flavor = "current_thread")]
async fn weights_announced_in_a_probe_header_change_the_traffic_split() {
    let plugin = tokio::task::spawn_blocking(|| built("plugins/weighted-round-robin"))
        .await
        .unwrap();
    let a = Switchable::start("a").await;
    let b = Switchable::start("b").await;
    a.set_weight("3");
    b.set_weight("1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(
        &plugin,
        dir.path().join("plugins/weighted-round-robin.wasm"),
    )
    .unwrap();
    let check = format!("{ACTIVE}weight_header = \"x-weight\"\n");
    let proxy = Proxy::start(
        &config(
            &[&a, &b],
            "balancer = \"weighted-round-robin\"",
            &check,
            "[plugins]\ndir = \"plugins\"\n",
        ),
        dir.path(),
    )
    .await;
    wait_endpoint(&proxy, a.addr, "weight 3 announced", |e| {
        e["health"]["agent_weight"] == 3
    })
    .await;
    wait_endpoint(&proxy, b.addr, "weight 1 announced", |e| {
        e["health"]["agent_weight"] == 1
    })
    .await;
    let before = (a.served(), b.served());
    send_n(&proxy, 40).await;
    let (ga, gb) = (a.served() - before.0, b.served() - before.1);
    assert!(
        (27..=33).contains(&ga) && ga + gb == 40,
        "3:1 split: {ga} {gb}"
    );

    b.set_weight("3");
    wait_endpoint(&proxy, b.addr, "weight 3 announced", |e| {
        e["health"]["agent_weight"] == 3
    })
    .await;
    let before = (a.served(), b.served());
    send_n(&proxy, 40).await;
    let (ga, gb) = (a.served() - before.0, b.served() - before.1);
    assert!(
        (17..=23).contains(&ga) && ga + gb == 40,
        "even split: {ga} {gb}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn probes_of_a_tls_cluster_speak_tls_and_verify_the_certificate() {
    use tls_support::{HttpsBackend, TestCa};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let good = ca.leaf(dir.path(), "good", &["backend.test"]);
    let wrong_name = ca.leaf(dir.path(), "wrong", &["other.test"]);
    let a = HttpsBackend::start("a", &good, None).await;
    let b = HttpsBackend::start("b", &wrong_name, None).await;
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[access_log]\nenabled = false\n[[routes]]\ncluster = \"web\"\n[[clusters]]\nname = \"web\"\n[clusters.tls]\nca_file = \"ca.pem\"\nserver_name = \"backend.test\"\n[clusters.health_check]\ninterval = \"100ms\"\nfall = 1\nbody_contains = \"sni=backend.test\"\n[[clusters.endpoints]]\naddress = \"{}\"\n[[clusters.endpoints]]\naddress = \"{}\"\n",
        a.addr, b.addr
    );
    let proxy = Proxy::start(&text, dir.path()).await;
    wait_healthy(&proxy, b.addr, false).await;
    assert_eq!(
        endpoint(&proxy, b.addr).await["health"]["last_probe"]["result"],
        "protocol error",
        "a certificate for another name fails the handshake"
    );
    wait_endpoint(
        &proxy,
        a.addr,
        "a probe that reached it over TLS with the configured SNI",
        |e| e["health"]["last_probe"]["passed"] == true,
    )
    .await;
    assert!(healthy(&proxy, a.addr).await);
    proxy.stop().await;
}

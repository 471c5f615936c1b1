//! Reloads of a config given by a relative path, the metrics of endpoints and clusters a reload
//! removes, the order of `/metrics` and the precision of the access log's durations.

use crate::common;

use common::{Backend, Proxy, eventually, get, http1_client, parse_prometheus};
use hyper::StatusCode;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long to wait for what another task or process does: generous (a loaded 2-core machine);
/// every wait ends as soon as its condition holds.
const LIMIT: Duration = Duration::from_secs(20);

async fn metrics_text(proxy: &Proxy) -> String {
    let (status, text) = get(&http1_client(), &proxy.admin_url("/metrics")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    text
}

/// A `sluicegate run` child, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_given_by_a_relative_path_reloads_without_a_restart_warning() {
    let b1 = Backend::start("1").await;
    let b2 = Backend::start("2").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    // Relative paths in the file: the access log and the plugin directory.
    let text = |backend: SocketAddr| {
        format!(
            "[[listeners]]\naddress = \"{addr}\"\n\n[admin]\naddress = \"{admin}\"\n\n\
             [access_log]\npath = \"access.log\"\n\n[plugins]\ndir = \"plugins\"\n\n\
             [[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\n\
             [[clusters.endpoints]]\naddress = \"{backend}\"\n"
        )
    };
    std::fs::create_dir(dir.path().join("conf/plugins")).unwrap();
    let config = dir.path().join("conf/sluicegate.toml");
    std::fs::write(&config, text(b1.addr)).unwrap();
    let stderr_path = dir.path().join("stderr.log");
    // `sluicegate run --config conf/sluicegate.toml` from the directory above the file's.
    let _child = Child(
        Command::new(env!("CARGO_BIN_EXE_sluicegate"))
            .current_dir(dir.path())
            .args(["run", "--config", "conf/sluicegate.toml"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let client = http1_client();
    let url = format!("http://{addr}/");
    let up = eventually(LIMIT, async || {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), client.get(url.parse().unwrap())).await,
            Ok(Ok(r)) if r.status() == StatusCode::OK
        )
    })
    .await;
    assert!(up, "the proxy did not start: {}", stderr());

    std::fs::write(&config, text(b2.addr)).unwrap();
    let reloaded = eventually(LIMIT, async || {
        get(&client, &url).await.1 == "hello from 2" && stderr().contains("config reloaded")
    })
    .await;
    assert!(reloaded, "the new config was not applied: {}", stderr());
    // The warning comes before the swap, so it would be in the log by now.
    assert!(
        !stderr().contains("change only on restart"),
        "nothing restart-only changed: {}",
        stderr()
    );
    // The access log is the one file, from the file's directory, before and after.
    let log = dir.path().join("conf/access.log");
    let logged = eventually(LIMIT, async || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"endpoint\":\"127.0.0.1"))
    })
    .await;
    assert!(logged, "no access log at {}", log.display());
}

/// A config with clusters `web` (the default route) and `api` (`/api`), each with `endpoints`, and
/// active health checks (so every per-endpoint family has series).
fn two_clusters(web: &[SocketAddr], api: Option<SocketAddr>) -> String {
    let check = "[clusters.health_check]\npath = \"/health\"\ninterval = \"100ms\"\n\
                 jitter = \"10ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";
    let mut text = String::from(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [access_log]\nenabled = false\n\n",
    );
    if api.is_some() {
        text.push_str("[[routes]]\npath_prefix = \"/api\"\ncluster = \"api\"\n\n");
    }
    text.push_str("[[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\n");
    text.push_str(check);
    for e in web {
        text.push_str(&format!("[[clusters.endpoints]]\naddress = \"{e}\"\n"));
    }
    if let Some(e) = api {
        text.push_str("\n[[clusters]]\nname = \"api\"\n");
        text.push_str(check);
        text.push_str(&format!("[[clusters.endpoints]]\naddress = \"{e}\"\n"));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_clusters_removed_by_a_reload_leave_metrics() {
    let (b1, b2, b3) = (
        Backend::start("1").await,
        Backend::start("2").await,
        Backend::start("3").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = two_clusters(&[b1.addr, b2.addr], Some(b3.addr));
    let proxy = Proxy::start(&text, dir.path()).await;
    let client = http1_client();
    for path in ["/", "/", "/api/x"] {
        assert_eq!(get(&client, &proxy.url(path)).await.0, StatusCode::OK);
    }
    let gone = [
        format!("endpoint=\"{}\"", b2.addr),
        "cluster=\"api\"".into(),
    ];
    let every_family = |text: &str, needle: &str| {
        [
            "sluicegate_requests_total{",
            "sluicegate_health_probes_total{",
            "sluicegate_endpoint_healthy{",
        ]
        .iter()
        .all(|family| {
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(needle))
        })
    };
    let mut text = String::new();
    let seen = eventually(LIMIT, async || {
        text = metrics_text(&proxy).await;
        gone.iter().all(|g| every_family(&text, g))
            && text.contains("sluicegate_request_duration_seconds_count{cluster=\"api\"}")
    })
    .await;
    assert!(seen, "series before the reload:\n{text}");

    let path = dir.path().join("sluicegate.toml");
    std::fs::write(&path, two_clusters(&[b1.addr], None)).unwrap();
    sluicegate::reload::reload(&proxy.proxy, &path)
        .await
        .unwrap();
    let left = eventually(LIMIT, async || {
        text = metrics_text(&proxy).await;
        !gone.iter().any(|g| text.contains(g.as_str()))
    })
    .await;
    assert!(
        left,
        "series of removed endpoints after the reload:\n{text}"
    );
    // The kept endpoint keeps its series and its counts.
    let kept = format!("endpoint=\"{}\"", b1.addr);
    assert!(every_family(&text, &kept), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&kept) && l.contains("class=\"2xx\"") && !l.ends_with(" 0")),
        "{text}"
    );
    // And the old config's probes, stopped, bring nothing back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics_text(&proxy).await;
    assert!(!gone.iter().any(|g| text.contains(g.as_str())), "{text}");
    proxy.stop().await;
}

/// The label values of the samples of family `prefix`, in exposition order.
fn series_order<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split_once('{').map_or("", |(_, rest)| rest))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_come_out_sorted_by_label_values_scrape_after_scrape() {
    // Many endpoints (nobody listens: their series exist from the config's build), ports that
    // sort differently as text and as numbers.
    let ports = [9, 80, 443, 1000, 8080, 8443, 9000, 10_000, 20_000, 30_000];
    let endpoints: Vec<SocketAddr> = (1..=3)
        .flat_map(|host| {
            ports
                .iter()
                .map(move |p| format!("127.0.0.{host}:{p}").parse().unwrap())
        })
        .rev()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(&two_clusters(&endpoints, None), dir.path()).await;
    let one = metrics_text(&proxy).await;
    let two = metrics_text(&proxy).await;
    let requests = series_order(&one, "sluicegate_requests_total{");
    assert_eq!(requests, series_order(&two, "sluicegate_requests_total{"));
    // Unrouted first (empty labels), then `web`'s own answers, then its endpoints by address,
    // ports by value; the classes in order within each.
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let series = [("", String::new()), ("web", String::new())]
        .into_iter()
        .chain((1..=3).flat_map(|h| {
            ports
                .iter()
                .map(move |p| ("web", format!("127.0.0.{h}:{p}")))
        }));
    let want: Vec<String> = series
        .flat_map(|(cluster, e)| {
            classes.map(|class| format!("cluster=\"{cluster}\",endpoint=\"{e}\",class=\"{class}\""))
        })
        .collect();
    let got: Vec<&str> = requests
        .iter()
        .map(|l| l.split_once('}').unwrap().0)
        .collect();
    assert_eq!(got, want);
    let healthy = series_order(&one, "sluicegate_endpoint_healthy{");
    let mut sorted = healthy.clone();
    sorted.sort_by_key(|l| {
        let address: SocketAddr = l.split('"').nth(3).unwrap().parse().unwrap();
        (address.ip(), address.port())
    });
    assert_eq!(healthy, sorted);
    assert_eq!(healthy.len(), endpoints.len());
    proxy.stop().await;
}

fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_durations_have_at_most_three_decimals() {
    let b = Backend::start("1").await;
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_for(&[b.addr], "", "[access_log]\npath = \"access.log\"\n");
    let proxy = Proxy::start(&text, dir.path()).await;
    let client = http1_client();
    for _ in 0..20 {
        get(&client, &proxy.url("/slow?ms=1")).await;
    }
    let log = dir.path().join("access.log");
    let all = eventually(LIMIT, async || read_log(&log).len() == 20).await;
    assert!(all, "{:?}", read_log(&log));
    let raw = std::fs::read_to_string(&log).unwrap();
    for line in raw.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["upstream_ms", "total_ms"] {
            let text = v[field].to_string();
            assert!(v[field].as_f64().unwrap() >= 1.0, "{line}");
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(decimals <= 3, "{field}: {line}");
            assert!(line.contains(&format!("\"{field}\":{text}")), "{line}");
        }
    }
    proxy.stop().await;
}

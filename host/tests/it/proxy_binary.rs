//! The real `sluicegate` binary against backends run by the test: memory while streaming 100 MB
//! both ways, config reloads through the file watcher, draining on SIGTERM (the access log's last
//! lines written on the way out) and reopening the access log on SIGUSR1.

use crate::common;

use bytes::Bytes;
use common::{Backend, WAIT, Zeros, eventually, get, http1_client, wait_for};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `sluicegate run` child process, killed if the test ends early.
struct Running {
    child: Child,
    addr: String,
    admin: String,
    config: PathBuf,
    /// The file behind `config` (the same file unless it is a symlink).
    real_config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_text(addr: &str, admin: &str, backends: &[&Backend]) -> String {
    let mut text = format!(
        "[[listeners]]\naddress = \"{addr}\"\n\n[admin]\naddress = \"{admin}\"\n\n[access_log]\npath = \"access.log\"\n\n[shutdown]\ndrain_timeout = \"10s\"\n\n[[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\n"
    );
    for b in backends {
        text.push_str(&format!(
            "[[clusters.endpoints]]\naddress = \"{}\"\n",
            b.addr
        ));
    }
    text
}

async fn start(backends: &[&Backend]) -> Running {
    start_with(backends, false).await
}

/// With `linked`, the config the proxy is given is a symlink to a file in another directory, so
/// writing that file escapes the proxy's directory watcher (only SIGHUP reloads it).
async fn start_with(backends: &[&Backend], linked: bool) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("sluicegate.toml");
    let real_config = if linked {
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let real = dir.path().join("real/sluicegate.toml");
        std::os::unix::fs::symlink(&real, &config).unwrap();
        real
    } else {
        config.clone()
    };
    std::fs::write(&real_config, config_text(&addr, &admin, backends)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let running = Running {
        child,
        addr,
        admin,
        config,
        real_config,
        _dir: dir,
    };
    let client = http1_client();
    let ready_url = format!("http://{}/ready", running.admin);
    let ready = eventually(Duration::from_secs(60), async || {
        matches!(
            tokio::time::timeout(Duration::from_secs(1), client.get(ready_url.parse().unwrap())).await,
            Ok(Ok(r)) if r.status() == StatusCode::OK
        )
    })
    .await;
    assert!(
        ready,
        "the proxy did not become ready: {}",
        stderr(&running)
    );
    running
}

fn stderr(r: &Running) -> String {
    std::fs::read_to_string(dir_of(&r.config).join("stderr.log")).unwrap_or_default()
}

fn dir_of(p: &Path) -> &Path {
    p.parent().unwrap()
}

/// Fields of `/proc/<pid>/status`, in KiB: peak resident, resident, anonymous and file-backed.
fn memory_kib(pid: u32) -> (u64, u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (
        field("VmHWM:"),
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_and_download_stream_through_in_little_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let backend = Backend::start("1").await;
    let proxy = start(&[&backend]).await;
    let (_, baseline, _, _) = memory_kib(proxy.child.id());

    let uploader: Client<_, Zeros> = Client::builder(TokioExecutor::new()).build_http();
    let upload = Request::post(format!("http://{}/upload", proxy.addr))
        .body(Zeros::new(SIZE))
        .unwrap();
    let download = format!("http://{}/download?bytes={SIZE}", proxy.addr);
    let (up, down) = tokio::join!(
        async {
            let resp = uploader.request(upload).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            String::from_utf8(
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap()
        },
        async {
            let client = http1_client();
            let resp = client.get(download.parse().unwrap()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                n += frame
                    .unwrap()
                    .into_data()
                    .map_or(0, |d: Bytes| d.len() as u64);
            }
            n
        }
    );
    assert_eq!(
        up,
        SIZE.to_string(),
        "the backend received the whole upload"
    );
    assert_eq!(down, SIZE, "the client received the whole download");
    let (peak, now, anon, file) = memory_kib(proxy.child.id());
    eprintln!(
        "proxy memory: before {baseline} KiB, VmHWM {peak} KiB, VmRSS {now} KiB (anonymous {anon} KiB, file {file} KiB)"
    );
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB is over 64 MiB (of the current {now} KiB, {file} KiB are the binary's own pages)"
    );
    // Streaming, not buffering: 200 MB moved for at most a few MiB of growth.
    assert!(
        peak - baseline < 16 * 1024,
        "RSS grew {} KiB while streaming",
        peak - baseline
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_written_over_the_live_one_is_refused_while_traffic_continues() {
    let b1 = Backend::start("1").await;
    let b2 = Backend::start("2").await;
    let proxy = start(&[&b1]).await;
    let url = format!("http://{}/", proxy.addr);
    let status_url = format!("http://{}/status", proxy.admin);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let traffic = {
        let (url, stop, sent) = (url.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let client = http1_client();
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(get(&client, &url).await);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };

    let live = std::fs::read_to_string(&proxy.config).unwrap();
    std::fs::write(
        &proxy.config,
        live.replace("name = \"web\"", "name = \"web\"\nbalancer = 7"),
    )
    .unwrap();
    let client = http1_client();
    let mut error = String::new();
    let refused = eventually(WAIT, async || {
        let status: serde_json::Value =
            serde_json::from_str(&get(&client, &status_url).await.1).unwrap();
        error = status["last_reload_error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        !error.is_empty()
    })
    .await;
    assert!(
        refused,
        "the broken config was not reported: {}",
        stderr(&proxy)
    );
    assert!(
        error.contains("sluicegate.toml:") && error.contains("balancer"),
        "{error}"
    );
    // Read once: the proxy writes this line to stderr (unbuffered) before it records the error
    // that `/status` showed.
    assert!(stderr(&proxy).contains("config reload refused"));

    // Reverting to the config that serves is a good reload too: the refusal no longer stands.
    std::fs::write(&proxy.config, &live).unwrap();
    let cleared = eventually(WAIT, async || {
        let status: serde_json::Value =
            serde_json::from_str(&get(&client, &status_url).await.1).unwrap();
        status["last_reload_error"].is_null()
    })
    .await;
    assert!(
        cleared,
        "a revert did not clear last_reload_error: {}",
        stderr(&proxy)
    );

    // A good config written next is applied: traffic moves to backend 2.
    std::fs::write(
        &proxy.config,
        config_text(&proxy.addr, &proxy.admin, &[&b2]),
    )
    .unwrap();
    let moved = eventually(WAIT, async || get(&client, &url).await.1 == "hello from 2").await;
    assert!(moved, "the good config was not applied: {}", stderr(&proxy));

    // The traffic task runs beside the reloads: on a loaded machine it may have made few requests
    // by now, so wait for it to have made more than 10 (all of them are checked below).
    wait_for(
        "more than 10 requests during the reloads",
        WAIT,
        async || sent.load(std::sync::atomic::Ordering::Relaxed),
        |n| *n > 10,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = traffic.await.unwrap();
    assert!(
        answers.len() > 10,
        "traffic kept flowing: {} requests",
        answers.len()
    );
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let backend = Backend::start("1").await;
    let mut proxy = start(&[&backend]).await;
    let mut in_flight = Vec::new();
    // Slow enough that the drain outlasts the signal's delivery and handling on a loaded machine.
    for _ in 0..5 {
        let url = format!("http://{}/slow?ms=3000", proxy.addr);
        in_flight.push(tokio::spawn(
            async move { get(&http1_client(), &url).await },
        ));
    }
    wait_for(
        "5 requests in flight at the backend",
        WAIT,
        async || backend.hits("/slow"),
        |n| *n == 5,
    )
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let ready_url = format!("http://{}/ready", proxy.admin);
    let draining = eventually(WAIT, async || {
        matches!(http1_client().get(ready_url.parse().unwrap()).await, Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert!(draining, "/ready says 503 while draining");

    for r in in_flight {
        assert_eq!(
            r.await.unwrap(),
            (StatusCode::OK, "hello from 1".to_string())
        );
    }
    let exit = wait_for(
        "the proxy to exit after draining",
        WAIT,
        async || proxy.child.try_wait().unwrap(),
        Option::is_some,
    )
    .await
    .unwrap();
    assert_eq!(exit.code(), Some(0), "{}", stderr(&proxy));
    // Read once the process has exited: the lines still in its buffers were written on the way
    // out, though `flush` (a second) may not have come round.
    let log = std::fs::read_to_string(dir_of(&proxy.config).join("access.log")).unwrap();
    assert_eq!(log.matches("\"path\":\"/slow\"").count(), 5, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_for_rotation() {
    let backend = Backend::start("1").await;
    let proxy = start(&[&backend]).await;
    let client = http1_client();
    let url = format!("http://{}/", proxy.addr);
    let log = dir_of(&proxy.config).join("access.log");
    let rotated = dir_of(&proxy.config).join("access.log.1");
    get(&client, &url).await;
    wait_for(
        "the first line",
        WAIT,
        async || std::fs::read_to_string(&log).unwrap_or_default(),
        |t| t.lines().count() == 1,
    )
    .await;
    // logrotate's way: rename, then SIGUSR1 in `postrotate`.
    std::fs::rename(&log, &rotated).unwrap();
    let usr1 = Command::new("kill")
        .args(["-USR1", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(usr1.success());
    let admin = proxy.admin.parse().unwrap();
    common::wait_metric(admin, "sluicegate_access_log_reopened_total", &[], 1.0).await;
    get(&client, &url).await;
    wait_for(
        "the second line, in the new file",
        WAIT,
        async || std::fs::read_to_string(&log).unwrap_or_default(),
        |t| t.lines().count() == 1,
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        1
    );
    // Counted once written, a moment after the line is in the file.
    let lines = common::wait_metric(admin, "sluicegate_access_log_lines_total", &[], 2.0).await;
    assert_eq!(lines, 2.0);
    let samples = common::scrape(admin).await;
    assert_eq!(
        common::sum(&samples, "sluicegate_access_log_dropped_lines_total", &[]),
        0.0
    );
    assert!(
        stderr(&proxy).contains("access log reopened"),
        "{}",
        stderr(&proxy)
    );
}

#[test]
fn check_validates_config_and_plugins_and_names_the_line_of_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluicegate.toml");
    let good = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n[[routes]]\ncluster = \"web\"\n\n[[clusters]]\nname = \"web\"\nbalancer = \"round-robin\"\n[[clusters.endpoints]]\naddress = \"127.0.0.1:9000\"\n";
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_sluicegate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check(good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("round-robin"));

    let out = check(&good.replace(
        "balancer = \"round-robin\"",
        "balancer = \"no-such-plugin\"",
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sluicegate.toml:9:12: [[clusters]] balancer:")
            && err.contains("no-such-plugin"),
        "{err}"
    );

    let out = check(&good.replace("cluster = \"web\"", "cluster = \"wbe\""));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sluicegate.toml:5:") && err.contains("unknown cluster `wbe`"),
        "{err}"
    );

    // What `run` would take but cannot work deployed: refused by `check`, with the line.
    let out = check(&good.replace("127.0.0.1:8080", "127.0.0.1:0"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sluicegate.toml:2:11: error: [[listeners]] address: port 0"),
        "{err}"
    );
    // What works but is risky: a warning, and the config passes.
    let out = check(&format!("[admin]\naddress = \"0.0.0.0:9901\"\n{good}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("sluicegate.toml:2:11: warning: [admin] address:") && err.contains("loopback"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config() {
    let b1 = Backend::start("1").await;
    let b2 = Backend::start("2").await;
    let proxy = start_with(&[&b1], true).await;
    let url = format!("http://{}/", proxy.addr);
    let client = http1_client();
    std::fs::write(
        &proxy.real_config,
        config_text(&proxy.addr, &proxy.admin, &[&b2]),
    )
    .unwrap();
    // The watcher cannot see the write (another directory): the old config keeps serving...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&client, &url).await.1, "hello from 1");
    // ...until SIGHUP.
    let hup = Command::new("kill")
        .args(["-HUP", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let moved = eventually(WAIT, async || get(&client, &url).await.1 == "hello from 2").await;
    assert!(moved, "SIGHUP did not reload: {}", stderr(&proxy));
    // Read once: the proxy logs the signal (unbuffered stderr) before it reloads.
    assert!(stderr(&proxy).contains("SIGHUP"));
}

//! `sluicegate demo`: the proxy on 127.0.0.1:8080 in front of three in-process backends that say
//! which one they are, with the admin API on 127.0.0.1:9901. Also the backend the tests use.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The embedded demo config (`demo.toml` next to this file: a template, not a config of
/// `examples/`, which must all pass `check` as they are); `{backendN}` stand for the backends'
/// addresses.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// The demo config with the backends' addresses filled in.
pub fn demo_config(backends: &[SocketAddr]) -> String {
    let mut text = DEMO_CONFIG.to_string();
    for (i, addr) in backends.iter().enumerate() {
        text = text.replace(&format!("{{backend{}}}", i + 1), &addr.to_string());
    }
    text
}

/// Starts a backend on `listener` answering every request with `hello from backend {n}`.
pub fn spawn_backend(listener: TcpListener, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                        "hello from backend {n}\n"
                    )))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Starts three backends on loopback (ephemeral ports) and returns their addresses.
pub async fn start_backends() -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for n in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        spawn_backend(listener, n);
    }
    Ok(addrs)
}

/// What to try, printed at start.
pub fn banner(proxy: SocketAddr, admin: Option<SocketAddr>) -> String {
    let mut s = format!(
        "Sluicegate demo: proxy on http://{proxy}, three backends behind it.\nTry:\n  curl http://{proxy}/            # run it a few times: round-robin\n  curl --http2-prior-knowledge http://{proxy}/\n"
    );
    if let Some(admin) = admin {
        s.push_str(&format!(
            "  curl http://{admin}/status\n  curl http://{admin}/metrics\n"
        ));
    }
    s.push_str("Ctrl-C stops it.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid_once_filled_in() {
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
            .collect();
        let text = demo_config(&addrs);
        let config =
            crate::config::Config::parse(&text, "demo.toml", std::path::Path::new(".")).unwrap();
        assert_eq!(config.clusters[0].endpoints.len(), 3);
        assert_eq!(config.clusters[0].endpoints[2].address, "127.0.0.1:9003");
    }
}

//! `pingora-bench-proxy`: the Pingora peer of the benchmark (bench/run.sh runs it beside Sluicegate,
//! haproxy and nginx). A minimal HTTP/1.1 reverse proxy with round-robin over static upstreams, configured
//! like the other peers: no TLS, no access log, no health checks, upstream keep-alive.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::proxy::http_proxy_service;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "pingora-bench-proxy",
    about = "Minimal Pingora HTTP reverse proxy for benchmarks"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: SocketAddr,
    /// Worker threads (Pingora's `threads` server setting).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Upstream address; repeat for more (round-robin over all of them).
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<SocketAddr>,
    /// Idle upstream connections kept for reuse, across all upstreams, per thread (Pingora's
    /// `upstream_keepalive_pool_size`; Pingora multiplies it by the threads into one process-wide pool).
    /// Default: 256 per upstream, like the other peers' idle pools, so that benchmark concurrency does
    /// not churn connections (Pingora's own default is 128).
    #[arg(long)]
    keepalive_pool: Option<usize>,
    /// One single-threaded runtime per thread instead of Pingora's default work-stealing runtime.
    #[arg(long)]
    no_work_stealing: bool,
}

/// The proxy logic: pick the next upstream, forward the request unchanged.
struct RoundRobinProxy {
    upstreams: Arc<LoadBalancer<RoundRobin>>,
}

#[async_trait]
impl ProxyHttp for RoundRobinProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Every backend counts as healthy (no health check is configured), so this always yields one;
        // the key is ignored by round-robin.
        let backend = self.upstreams.select(b"", 256).ok_or_else(|| {
            pingora::Error::explain(pingora::ErrorType::ConnectNoRoute, "no upstream")
        })?;
        // Plain HTTP/1.1; Pingora pools and reuses upstream connections per peer by default.
        Ok(Box::new(HttpPeer::new(backend.addr, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    // Static discovery dedups and orders the addresses; round-robin then cycles over them.
    let upstreams = LoadBalancer::<RoundRobin>::try_from_iter(args.upstreams.iter().copied())
        .expect("socket addresses need no resolution");

    let conf = ServerConf {
        threads: args.threads.max(1),
        work_stealing: !args.no_work_stealing,
        upstream_keepalive_pool_size: args.keepalive_pool.unwrap_or(256 * args.upstreams.len()),
        // SIGTERM exits within a second, as the other peers do (Pingora's default graceful exit
        // waits 5 minutes, then 5 s more for its runtimes).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    // No `Opt`: no config file, no daemon, no upgrade socket. No logger is installed, so Pingora's
    // `log` records (its only logging besides the unused `logging` phase) go nowhere.
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut service = http_proxy_service(
        &server.configuration,
        RoundRobinProxy {
            upstreams: Arc::new(upstreams),
        },
    );
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    server.run_forever();
}

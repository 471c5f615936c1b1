//! The `sluicegate` command line: `run`, `check`, `demo` (the default) and `plugin build`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluicegate::config::Config;
use sluicegate::server::{Listeners, Server, runtime_options};
use std::path::PathBuf;
use std::process::ExitCode;

/// The process's allocator. glibc's per-thread arenas keep what they freed: after 3,000 clients
/// that never read a 1 MB response had gone, ~220 MB stayed resident of 240 MB. jemalloc with its
/// background threads gives freed pages back (a few seconds after they are freed: ~30 MB 15 s
/// later), and served small requests no slower under wrk.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A load balancer and edge proxy whose decisions are WebAssembly components.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file (reloaded on change and on SIGHUP; SIGTERM drains and exits).
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and every plugin it names, without serving.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Serve a demo: three in-process backends behind the proxy on 127.0.0.1:8080 (the default).
    Demo,
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Build a plugin crate to a Wasm component.
    Build {
        /// The plugin crate's directory.
        crate_dir: PathBuf,
        /// Where to write the `.wasm`.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // rustls warns on every connection whose client breaks the protocol (an IP address
                // as SNI, as wrk and some libraries send): a client's fault, which our own handshake
                // errors log at debug, and one line per connection would let any client flood the log.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error")),
        )
        .init();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Run { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Demo => demo(),
        Command::Plugin {
            command: PluginCommand::Build { crate_dir, out },
        } => sluicegate_plugin_build::build_plugin(&crate_dir, out.as_deref())
            .map(|path| println!("{}", path.display()))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors already name their cause inline: print each cause only once.
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A single-threaded event loop: the control plane of `run` (the worker threads have their own),
/// and the whole of `demo`.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    // Every client connection and its backend connection take a descriptor: the soft limit (often
    // 1024) would cap the proxy long before the machine does. The cap derived from it is logged
    // when the server starts.
    match sluicegate::server::raise_nofile_limit() {
        Ok(nofile) => tracing::info!(nofile, "descriptor limit (RLIMIT_NOFILE) raised"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit (RLIMIT_NOFILE)"),
    }
    // Read as every reload reads it (relative paths in it must resolve the same way each time).
    let path = sluicegate::reload::config_path(&path);
    let config = sluicegate::reload::load(&path)?;
    for n in &config.notes {
        tracing::warn!(at = %format_args!("{}:{}:{}", config.file, n.at.line, n.at.column), key = %n.key, "{}", n.message);
    }
    let workers = config.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    runtime()?.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let server = Server::new(config)?;
        for addr in listeners.proxy_addrs() {
            tracing::info!(%addr, workers, "listening");
        }
        if let Some(addr) = listeners.admin_addr() {
            tracing::info!(%addr, "admin listening");
        }
        let _reloader = sluicegate::reload::watch(server.proxy.clone(), &path)
            .with_context(|| format!("watching {}", path.display()))?;
        server
            .run_workers(listeners, sluicegate::shutdown::signal(), workers)
            .await?;
        Ok(())
    })
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = sluicegate::reload::load(&path)?;
    let mut refused = 0;
    for n in &config.notes {
        let level = if n.refused_by_check {
            refused += 1;
            "error"
        } else {
            "warning"
        };
        eprintln!(
            "{}:{}:{}: {level}: {}: {}",
            config.file, n.at.line, n.at.column, n.key, n.message
        );
    }
    if refused > 0 {
        anyhow::bail!(
            "{}: {refused} setting(s) cannot work in a deployed proxy",
            config.file
        );
    }
    let runtime = sluicegate::plugin::PluginRuntime::new(runtime_options(&config))?;
    if let Some(dir) = &config.plugins.dir {
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("reading the plugin directory {}", dir.display()))?
        {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "wasm") {
                runtime.load_file(&p)?;
            }
        }
    }
    let metrics = sluicegate::metrics::Metrics::new(runtime.clone());
    let gateway = sluicegate::gateway::Gateway::build(config, &runtime, &metrics)?;
    println!(
        "{}: ok ({} listener(s), {} cluster(s), {} filter(s))",
        path.display(),
        gateway.config.listeners.len(),
        gateway.clusters.len(),
        gateway.filters.len()
    );
    for p in runtime.plugins() {
        println!("  plugin {} {} ({})", p.name, p.version, p.source);
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    // One event loop for everything: balancer instances are per worker (as Envoy's), so with one
    // the newcomer's consecutive curls visibly go 1, 2, 3. `run` uses a worker per core.
    runtime()?.block_on(async {
        let backends = sluicegate::demo::start_backends().await?;
        let text = sluicegate::demo::demo_config(&backends);
        let config = Config::parse(&text, "(embedded demo config)", std::path::Path::new("."))?;
        let listeners = Listeners::bind(&config).await?;
        let server = Server::new(config)?;
        let proxy = listeners.proxy_addrs()[0];
        print!(
            "{}",
            sluicegate::demo::banner(proxy, listeners.admin_addr())
        );
        server.run(listeners, sluicegate::shutdown::signal()).await;
        Ok(())
    })
}

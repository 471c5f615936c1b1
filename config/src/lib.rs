//! The proxy's configuration: the TOML file format, its validation, and errors that name the file,
//! line and key of what is wrong.
//!
//! Parsing happens in two steps: serde reads the file into `raw` structures (which keep the spans of
//! the keys we check later), then [`Config::parse`] validates them into plain, ready-to-use types.
//! Plugin names are only checked when the proxy builds the config into a running state, because that
//! needs the plugin runtime; this crate knows nothing of it, so anything can read a config.

mod access_log;
mod duration;
mod health;
mod limits;
mod listener;
mod plugins;
mod raw;
mod upstream;

pub use access_log::{
    AccessLogConfig, DEFAULT_JSON_FIELDS, DEFAULT_TEMPLATE, LogField, LogFormat, TextPart,
    WhenFull, parse_template,
};
pub use duration::{ConfigDuration, MAX_DURATION, parse_duration};
pub use health::{HealthCheckConfig, HealthConfig, OutlierConfig, PanicAction, ProbeKind};
pub use limits::{
    ConfigNote, ConfigSize, DEFAULT_RESERVED_DESCRIPTORS, LimitsConfig, ListenerLimits,
    MAX_ATTEMPTS, MIN_PROBE_INTERVAL, parse_size,
};
pub use listener::{
    CertificateConfig, Cidr, SniRoute, listeners_restart_equal, server_name_matches,
};
pub use plugins::{
    BreakerConfig, DEFAULT_CALL_DEADLINE, DEFAULT_FUEL_PER_CALL, DEFAULT_INIT_FUEL,
    DEFAULT_MAX_PLUGIN_FILE_SIZE, DEFAULT_MEMORY_LIMIT_MB, FilterConfig, FilterFault,
    PluginsConfig, RouterFault,
};
pub use upstream::{ProxyProtocol, UpstreamTlsConfig};

use raw::{RawCluster, RawConfig};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// Where in the config file something was written (1-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// A config that could not be read or is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the config: {source}")]
    Io {
        /// The config file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value is wrong.
    #[error("{file}:{}:{}: {key}: {message}", at.line, at.column)]
    Invalid {
        /// The config file.
        file: String,
        /// Where.
        at: Location,
        /// The key (with its table) that is wrong.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A plugin named by the config could not be used (missing, or refused its settings).
    #[error("{file}:{}:{}: {key}: {source}", at.line, at.column)]
    Plugin {
        /// The config file.
        file: String,
        /// Where the plugin is named.
        at: Location,
        /// The key naming the plugin.
        key: String,
        /// Why the runtime refused it.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something outside the file (a listener that cannot bind, a log file that cannot open).
    #[error("{file}: {message}")]
    Other {
        /// The config file.
        file: String,
        /// What is wrong.
        message: String,
    },
}

/// Protocol spoken on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c), in clear text.
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS (ALPN), certificates chosen by SNI.
    Https,
    /// L4: TCP connections balanced over one cluster, bytes copied both ways.
    Tcp,
    /// L4 by SNI: the ClientHello is read (not terminated) and the raw bytes go to the cluster
    /// routed for its server name.
    TlsPassthrough,
}

/// One listening socket for client traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    /// Address to bind.
    pub address: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// A client connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// `https`: the certificates (at least one).
    pub certificates: Vec<CertificateConfig>,
    /// `tcp`: the cluster; `tls-passthrough`: the cluster for names no SNI route matches.
    pub cluster: Option<String>,
    /// `tls-passthrough`: clusters by SNI name.
    pub sni_routes: Vec<SniRoute>,
    /// `http`: answer every request with a 308 redirect to https on this port.
    pub redirect_https: Option<u16>,
    /// Front load balancers whose connections start with a PROXY protocol header (v1 or v2)
    /// naming the client; connections from other addresses are refused. Empty: no header.
    pub proxy_protocol_from: Vec<Cidr>,
    /// Connection cap, size limits and the client-side timeouts.
    pub limits: ListenerLimits,
}

/// A plugin named by the config, with its settings (TOML text, empty for none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginUse {
    /// Plugin name.
    pub plugin: String,
    /// Settings as TOML text, passed to the plugin's `init`.
    pub settings: String,
    /// Where the plugin is named in the file.
    pub at: Location,
    /// The key that names it, for error messages.
    pub key: String,
    /// Where its settings are written and their key (`[[clusters]] balancer_settings`), when the
    /// config gives settings: errors about the settings (the plugin's `init` refusing them) point
    /// there rather than at the plugin's name.
    pub settings_at: Option<(Location, String)>,
}

/// One entry of the host-side route table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Host to match (lower case, no port); `*.example.com` matches subdomains; `None` matches any.
    pub host: Option<String>,
    /// Path prefix to match.
    pub path_prefix: String,
    /// Cluster to send matching requests to.
    pub cluster: String,
    /// The largest request body on this route; `None`: no limit of the route's own.
    pub max_request_body: Option<u64>,
    /// Whether requests may switch protocols (`Upgrade`, WebSocket): without, the `Upgrade`
    /// header is dropped and the request goes on as a plain one.
    pub upgrade: bool,
}

/// How requests find their cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routing {
    /// The host's route table; first match wins.
    Table(Vec<Route>),
    /// A router plugin decides.
    Plugin {
        /// The router.
        router: PluginUse,
        /// What serves when it faults (boxed: the route table it may hold is large).
        on_fault: Box<RouterFault>,
    },
}

/// One backend of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// `host:port`.
    pub address: String,
    /// Relative weight, at least 1.
    pub weight: u32,
    /// Free-form pairs passed to the balancer.
    pub metadata: Vec<(String, String)>,
}

/// When and how often to retry.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Total tries per request, the first included (1 = never retry).
    pub attempts: u32,
    /// Upstream statuses that are retried (for requests safe to retry).
    pub on_status: Vec<u16>,
    /// Retries in flight may be at most this share of the cluster's active requests...
    pub budget_ratio: f64,
    /// ...or this many, whichever is larger.
    pub min_retries: u32,
}

/// A pool of backends with its balancer and upstream settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// Unique name.
    pub name: String,
    /// Backends.
    pub endpoints: Vec<EndpointConfig>,
    /// The balancer plugin and its settings.
    pub balancer: PluginUse,
    /// The balancer used when `balancer` faults.
    pub fallback_balancer: PluginUse,
    /// Timeout to establish a connection to an endpoint: TCP, and the TLS handshake with
    /// `[clusters.tls]`.
    pub connect_timeout: Duration,
    /// From the request sent whole (its body included) to the response head.
    pub response_timeout: Duration,
    /// An endpoint that sends no byte of a response body for this long has failed (nginx's
    /// `proxy_read_timeout`).
    pub read_timeout: Duration,
    /// An endpoint that takes no byte of a request body for this long has failed (nginx's
    /// `proxy_send_timeout`).
    pub write_timeout: Duration,
    /// The largest request body sent to this cluster; `None`: no limit of the cluster's own.
    pub max_request_body: Option<u64>,
    /// Pooled upstream connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Pooled idle connections kept per endpoint, in each worker (pools are per worker thread).
    pub max_idle_per_endpoint: usize,
    /// Retries.
    pub retry: RetryPolicy,
    /// Active and passive health checking, panic threshold, slow start.
    pub health: HealthConfig,
    /// TLS to the endpoints (re-encryption); `None` for clear text.
    pub tls: Option<UpstreamTlsConfig>,
    /// The PROXY protocol header sent ahead of L4 connections to the endpoints.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from (as given), for messages.
    pub file: String,
    /// Worker threads (each runs its own event loop over every listener); `None`: one per CPU.
    pub workers: Option<usize>,
    /// Client listeners.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener, `None` when disabled.
    pub admin: Option<SocketAddr>,
    /// Access log.
    pub access_log: AccessLogConfig,
    /// Plugin runtime.
    pub plugins: PluginsConfig,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Process-wide connection limits.
    pub limits: LimitsConfig,
    /// What `check` prints (and may refuse) and `run` logs as warnings.
    pub notes: Vec<ConfigNote>,
    /// Routing.
    pub routing: Routing,
    /// Request/response filters, in order.
    pub filters: Vec<FilterConfig>,
    /// Clusters.
    pub clusters: Vec<ClusterConfig>,
}

/// The most worker threads a config may ask for.
pub const MAX_WORKERS: usize = 1024;

/// The default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

impl Config {
    /// Reads and validates a config file. Relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &file, base)
    }

    /// Validates config text. `file` names it in errors; relative paths are taken from `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            Checker { text, file }.error(span, e.message().to_string())
        })?;
        Checker { text, file }.validate(raw, base)
    }
}

/// Turns spans into located errors while validating.
struct Checker<'a> {
    text: &'a str,
    file: &'a str,
}

impl Checker<'_> {
    fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Location { line, column }
    }

    /// The key written at `offset`, with the table header it sits under: `[[clusters]] name`.
    fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = self.text[line_start..line_end].trim();
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.split('#').next().unwrap_or(l).trim());
        if line.starts_with('[') {
            return line.split('#').next().unwrap_or(line).trim().to_string();
        }
        let key = line.split('=').next().unwrap_or("").trim();
        match (table, key.is_empty()) {
            (Some(t), false) => format!("{t} {key}"),
            (Some(t), true) => t.to_string(),
            (None, false) => key.to_string(),
            (None, true) => "(top level)".to_string(),
        }
    }

    fn error(&self, span: std::ops::Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            at: self.location(span.start),
            key: self.key_at(span.start),
            message,
        }
    }

    fn err_at<T>(&self, spanned: &Spanned<T>, message: String) -> ConfigError {
        self.error(spanned.span(), message)
    }

    fn note<T>(&self, spanned: &Spanned<T>, message: String, refused_by_check: bool) -> ConfigNote {
        ConfigNote {
            at: self.location(spanned.span().start),
            key: self.key_at(spanned.span().start),
            message,
            refused_by_check,
        }
    }

    /// A plugin use: its name and, when the config gives them, its settings (a table).
    fn plugin_use(
        &self,
        plugin: &Spanned<String>,
        settings: Option<&Spanned<toml::Table>>,
    ) -> Result<PluginUse, ConfigError> {
        if plugin.get_ref().trim().is_empty() {
            return Err(self.err_at(plugin, "the plugin name is empty".into()));
        }
        let text = match settings {
            Some(s) if !s.get_ref().is_empty() => toml::to_string(s.get_ref())
                .map_err(|e| self.err_at(s, format!("settings cannot be written as TOML: {e}")))?,
            _ => String::new(),
        };
        Ok(PluginUse {
            plugin: plugin.get_ref().clone(),
            settings: text,
            at: self.location(plugin.span().start),
            key: self.key_at(plugin.span().start),
            settings_at: settings
                .map(|s| (self.location(s.span().start), self.key_at(s.span().start))),
        })
    }

    /// A socket address to bind (a listener's or the admin's): `ip:port`, port 0 for any.
    fn address(&self, spanned: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let address = spanned.get_ref();
        address.parse().map_err(|e: std::net::AddrParseError| {
            let why = split_port(address)
                .filter(|(ip, _)| format!("{ip}:0").parse::<SocketAddr>().is_ok())
                .and_then(|(_, port)| port_out_of_range(port, 0))
                .unwrap_or_else(|| e.to_string());
            self.err_at(
                spanned,
                format!("bad address `{address}`: {why} (expected ip:port, like 127.0.0.1:8080)"),
            )
        })
    }

    fn validate(&self, raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let mut listeners = Vec::new();
        let mut notes = Vec::new();
        let mut seen = HashSet::new();
        for l in &raw.listeners {
            let address = self.address(&l.address)?;
            if !seen.insert(address) {
                return Err(self.err_at(
                    &l.address,
                    format!("duplicate listener address `{address}`"),
                ));
            }
            let protocol = self.protocol(l.protocol.as_ref())?;
            if address.port() == 0 {
                notes.push(
                    self.note(
                        &l.address,
                        "port 0 binds a random port that no client knows: give the listener a port"
                            .into(),
                        true,
                    ),
                );
            }
            listeners.push(ListenerConfig {
                address,
                protocol,
                header_read_timeout: self.positive(
                    &l.header_read_timeout,
                    "header_read_timeout",
                    Duration::from_secs(10),
                )?,
                idle_timeout: self.positive(
                    &l.idle_timeout,
                    "idle_timeout",
                    Duration::from_secs(60),
                )?,
                limits: self.listener_limits(l)?,
                certificates: Vec::new(),
                cluster: None,
                sni_routes: Vec::new(),
                redirect_https: None,
                proxy_protocol_from: l
                    .proxy_protocol_from
                    .iter()
                    .map(|c| c.get_ref().parse().map_err(|m| self.err_at(c, m)))
                    .collect::<Result<_, _>>()?,
            });
        }

        let admin = match (raw.admin.enabled, &raw.admin.address) {
            (Some(false), _) => None,
            (_, Some(a)) => {
                let address = self.address(a)?;
                if !address.ip().is_loopback() {
                    notes.push(self.note(
                        a,
                        format!(
                            "the admin listener on {address} is reachable from other hosts and \
                             has no authentication: bind it to a loopback address"
                        ),
                        false,
                    ));
                }
                Some(address)
            }
            (_, None) => Some(DEFAULT_ADMIN.parse().expect("valid default")),
        };

        let access_log = self.access_log(&raw.access_log, resolve)?;
        let plugins = self.plugins(&raw.plugins, resolve)?;

        let mut clusters = raw
            .clusters
            .iter()
            .map(|c| self.cluster(c))
            .collect::<Result<Vec<_>, _>>()?;
        for (c, raw_c) in clusters.iter_mut().zip(&raw.clusters) {
            c.tls = self.upstream_tls(raw_c.tls.as_ref(), &resolve)?;
            c.proxy_protocol = self.proxy_protocol(raw_c.proxy_protocol.as_ref())?;
        }
        let mut names = HashSet::new();
        for (c, raw_c) in clusters.iter().zip(&raw.clusters) {
            if !names.insert(c.name.as_str()) {
                return Err(
                    self.err_at(&raw_c.name, format!("duplicate cluster name `{}`", c.name))
                );
            }
        }

        for (l, raw_l) in listeners.iter_mut().zip(&raw.listeners) {
            let extras = self.listener_extras(
                l.protocol,
                &raw_l.address,
                &raw_l.certificates,
                raw_l.cluster.as_ref(),
                &raw_l.sni_routes,
                &names,
                &resolve,
            )?;
            l.certificates = extras.certificates;
            l.cluster = extras.cluster;
            l.sni_routes = extras.sni_routes;
            l.redirect_https = self.redirect_https(
                l.protocol,
                raw_l.redirect_to_https.as_ref(),
                raw_l.https_port.as_ref(),
            )?;
        }
        self.check_l4_clusters(&listeners, &raw.listeners, &clusters)?;

        let route = |r: &raw::RawRoute| {
            if !names.contains(r.cluster.get_ref().as_str()) {
                return Err(self.err_at(
                    &r.cluster,
                    format!("unknown cluster `{}`", r.cluster.get_ref()),
                ));
            }
            let path_prefix = match &r.path_prefix {
                Some(p) if !p.get_ref().starts_with('/') => {
                    return Err(self.err_at(
                        p,
                        format!("path_prefix `{}` must start with `/`", p.get_ref()),
                    ));
                }
                Some(p) => p.get_ref().clone(),
                None => "/".to_string(),
            };
            Ok(Route {
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                path_prefix,
                cluster: r.cluster.get_ref().clone(),
                max_request_body: self.body_limit(&r.max_request_body)?,
                upgrade: r.upgrade.unwrap_or(true),
            })
        };
        let routing = match &raw.router {
            Some(r) => {
                let (router, on_fault) = self.router(r, &raw.routes, route)?;
                Routing::Plugin {
                    router,
                    on_fault: Box::new(on_fault),
                }
            }
            None => Routing::Table(raw.routes.iter().map(route).collect::<Result<_, _>>()?),
        };

        let filters = raw
            .filters
            .iter()
            .map(|f| self.filter(f))
            .collect::<Result<Vec<_>, _>>()?;

        let workers = match &raw.workers {
            Some(w) if !(1..=MAX_WORKERS).contains(w.get_ref()) => {
                return Err(
                    self.err_at(w, format!("`workers` must be between 1 and {MAX_WORKERS}"))
                );
            }
            w => w.as_ref().map(|w| *w.get_ref()),
        };

        Ok(Config {
            file: self.file.to_string(),
            workers,
            listeners,
            admin,
            access_log,
            plugins,
            drain_timeout: raw
                .shutdown
                .drain_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            limits: self.limits(&raw.limits)?,
            notes,
            routing,
            filters,
            clusters,
        })
    }

    fn cluster(&self, c: &RawCluster) -> Result<ClusterConfig, ConfigError> {
        let name = c.name.get_ref().clone();
        if name.is_empty() {
            return Err(self.err_at(&c.name, "the cluster name is empty".into()));
        }
        let mut endpoints = Vec::new();
        let mut seen = HashSet::new();
        for e in &c.endpoints {
            let address = e.address.get_ref();
            check_endpoint_address(address).map_err(|m| self.err_at(&e.address, m))?;
            if !seen.insert(address.as_str()) {
                return Err(self.err_at(
                    &e.address,
                    format!("duplicate endpoint `{address}` in cluster `{name}`"),
                ));
            }
            let weight = match &e.weight {
                Some(w) if *w.get_ref() == 0 => {
                    return Err(self.err_at(w, "weight must be at least 1".into()));
                }
                Some(w) => *w.get_ref(),
                None => 1,
            };
            let mut metadata = Vec::new();
            for (k, v) in &e.metadata {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                metadata.push((k.clone(), v));
            }
            endpoints.push(EndpointConfig {
                address: address.clone(),
                weight,
                metadata,
            });
        }
        let default_balancer = |s: &Option<Spanned<String>>| {
            s.clone()
                .unwrap_or_else(|| Spanned::new(c.name.span(), "round-robin".to_string()))
        };
        let balancer =
            self.plugin_use(&default_balancer(&c.balancer), c.balancer_settings.as_ref())?;
        let fallback_balancer = self.plugin_use(&default_balancer(&c.fallback_balancer), None)?;

        let attempts = match &c.retry.attempts {
            Some(a) if *a.get_ref() == 0 => {
                return Err(self.err_at(
                    a,
                    "attempts counts the first try too: it must be at least 1".into(),
                ));
            }
            Some(a) if *a.get_ref() > u64::from(MAX_ATTEMPTS) => {
                return Err(self.err_at(
                    a,
                    format!(
                        "attempts must be at most {MAX_ATTEMPTS}: more tries only pile load on \
                         failing endpoints"
                    ),
                ));
            }
            Some(a) => *a.get_ref() as u32,
            None => 3,
        };
        let mut on_status = Vec::new();
        for s in c.retry.on_status.iter().flatten() {
            if !(100..=599).contains(s.get_ref()) {
                return Err(self.err_at(s, format!("{} is not an HTTP status", s.get_ref())));
            }
            on_status.push(*s.get_ref());
        }
        let budget_ratio = match &c.retry.budget_ratio {
            Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
                return Err(self.err_at(r, "budget_ratio must be between 0.0 and 1.0".into()));
            }
            Some(r) => *r.get_ref(),
            None => 0.2,
        };
        Ok(ClusterConfig {
            name,
            endpoints,
            balancer,
            fallback_balancer,
            connect_timeout: self.positive(
                &c.connect_timeout,
                "connect_timeout",
                Duration::from_secs(1),
            )?,
            response_timeout: self.positive(
                &c.response_timeout,
                "response_timeout",
                Duration::from_secs(15),
            )?,
            read_timeout: self.positive(
                &c.read_timeout,
                "read_timeout",
                Duration::from_secs(60),
            )?,
            write_timeout: self.positive(
                &c.write_timeout,
                "write_timeout",
                Duration::from_secs(60),
            )?,
            max_request_body: self.body_limit(&c.max_request_body)?,
            idle_timeout: c.idle_timeout.map_or(Duration::from_secs(90), |d| d.0),
            max_idle_per_endpoint: c.max_idle_per_endpoint.unwrap_or(64),
            retry: RetryPolicy {
                attempts,
                on_status,
                budget_ratio,
                min_retries: c.retry.min_retries.unwrap_or(3),
            },
            health: self.health(c)?,
            tls: None,
            proxy_protocol: None,
        })
    }
}

/// An endpoint is `host:port` (a name or an IP; IPv6 in brackets).
fn check_endpoint_address(address: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!("bad endpoint address `{address}`: {why} (expected host:port, like 10.0.0.5:8080)")
    };
    let authority: http::uri::Authority = address.parse().map_err(|_| bad("not a host:port"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user info is not allowed"));
    }
    if let Some(why) = split_port(address).and_then(|(_, port)| port_out_of_range(port, 1)) {
        return Err(bad(&why));
    }
    if authority.port_u16().is_none() {
        return Err(bad("the port is missing"));
    }
    if authority.host().is_empty() {
        return Err(bad("the host is missing"));
    }
    Ok(())
}

/// `host:port` split at the port's colon, when the port is written as digits (`::1` has colons
/// but no port; `[::1]:80` has one after the brackets).
fn split_port(address: &str) -> Option<(&str, &str)> {
    let (host, port) = address.rsplit_once(':')?;
    let after_host = host.ends_with(']') || !host.contains(':');
    (after_host && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .then_some((host, port))
}

/// When `port` (digits) is not between `lowest` and 65535: the message saying so (a port that
/// does not fit 16 bits is not a missing one).
fn port_out_of_range(port: &str, lowest: u16) -> Option<String> {
    let fits = port.parse::<u16>().is_ok_and(|p| p >= lowest);
    (!fits).then(|| format!("the port {port} is out of range ({lowest}-65535)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/sg"))
    }

    fn invalid(text: &str) -> (usize, String, String) {
        match parse(text) {
            Err(ConfigError::Invalid {
                at, key, message, ..
            }) => (at.line, key, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    const GOOD: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[access_log]
path = "logs/access.log"

[[routes]]
host = "API.example.com"
path_prefix = "/v1"
cluster = "api"

[[routes]]
cluster = "web"

[[clusters]]
name = "web"
balancer_settings = { sticky = true }
[[clusters.endpoints]]
address = "127.0.0.1:9001"
weight = 2
metadata = { zone = "a" }

[[clusters]]
name = "api"
connect_timeout = "250ms"
retry = { attempts = 2, on_status = [503] }
[[clusters.endpoints]]
address = "localhost:9002"
"#;

    #[test]
    fn a_good_config_validates_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin, Some(DEFAULT_ADMIN.parse().unwrap()));
        assert_eq!(
            c.access_log.path,
            Some(std::path::PathBuf::from("/etc/sg/logs/access.log"))
        );
        let Routing::Table(routes) = &c.routing else {
            panic!("expected a table")
        };
        assert_eq!(routes[0].host.as_deref(), Some("api.example.com"));
        assert_eq!(routes[1].path_prefix, "/");
        let web = &c.clusters[0];
        assert_eq!(web.balancer.plugin, "round-robin");
        assert_eq!(web.balancer.settings.trim(), "sticky = true");
        assert_eq!(web.endpoints[0].weight, 2);
        assert_eq!(web.endpoints[0].metadata, vec![("zone".into(), "a".into())]);
        let api = &c.clusters[1];
        assert_eq!(api.connect_timeout, Duration::from_millis(250));
        assert_eq!(api.retry.attempts, 2);
        assert_eq!(api.retry.on_status, vec![503]);
        assert_eq!(api.fallback_balancer.plugin, "round-robin");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let (line, _, message) =
            invalid("[[listeners]]\naddress = \"127.0.0.1:80\"\nprotocol = \n");
        assert_eq!(line, 3);
        assert!(!message.is_empty());
    }

    #[test]
    fn unknown_keys_name_line_and_key() {
        let (line, key, message) = invalid("[[clusters]]\nname = \"a\"\nbalanser = \"x\"\n");
        assert_eq!(line, 3);
        assert_eq!(key, "[[clusters]] balanser");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn bad_durations_name_the_line() {
        let (line, key, message) =
            invalid("[[clusters]]\nname = \"a\"\n\nconnect_timeout = \"5 parsecs\"\n");
        assert_eq!(line, 4);
        assert_eq!(key, "[[clusters]] connect_timeout");
        assert!(message.contains("unit"), "{message}");
    }

    #[test]
    fn unknown_cluster_in_a_route_names_the_line() {
        let text = "[[routes]]\ncluster = \"nope\"\n\n[[clusters]]\nname = \"web\"\n";
        let (line, key, message) = invalid(text);
        assert_eq!(line, 2);
        assert_eq!(key, "[[routes]] cluster");
        assert_eq!(message, "unknown cluster `nope`");
    }

    #[test]
    fn duplicates_are_refused() {
        let text = "[[clusters]]\nname = \"web\"\n[[clusters]]\nname = \"web\"\n";
        let (line, _, message) = invalid(text);
        assert_eq!(line, 4);
        assert!(message.contains("duplicate cluster"), "{message}");

        let text = "[[clusters]]\nname = \"web\"\n[[clusters.endpoints]]\naddress = \"a:1\"\n[[clusters.endpoints]]\naddress = \"a:1\"\n";
        let (line, key, message) = invalid(text);
        assert_eq!((line, key.as_str()), (6, "[[clusters.endpoints]] address"));
        assert!(message.contains("duplicate endpoint"), "{message}");
    }

    #[test]
    fn bad_addresses_are_refused() {
        let (line, _, message) = invalid("[[listeners]]\naddress = \"localhost\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("bad address"), "{message}");
        let (line, _, message) =
            invalid("[[clusters]]\nname = \"a\"\n[[clusters.endpoints]]\naddress = \"backend\"\n");
        assert_eq!(line, 4);
        assert!(message.contains("port is missing"), "{message}");
    }

    #[test]
    fn ports_out_of_range_are_not_missing_ports() {
        let err = parse("[[listeners]]\naddress = \"127.0.0.1:191022\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "test.toml:2:11: [[listeners]] address: bad address `127.0.0.1:191022`: the port \
             191022 is out of range (0-65535) (expected ip:port, like 127.0.0.1:8080)"
        );
        let (line, _, message) = invalid("[admin]\naddress = \"[::1]:99999999999999999999\"\n");
        assert_eq!(line, 2);
        assert!(
            message.contains("the port 99999999999999999999 is out of range (0-65535)"),
            "{message}"
        );
        // Port 0 binds any free port; a host that is not an IP stays the complaint.
        assert!(parse("[[listeners]]\naddress = \"127.0.0.1:0\"\n").is_ok());
        let (_, _, message) = invalid("[[listeners]]\naddress = \"localhost:191022\"\n");
        assert!(!message.contains("out of range"), "{message}");

        let endpoint = |address: &str| {
            invalid(&format!(
                "[[clusters]]\nname = \"a\"\n[[clusters.endpoints]]\naddress = \"{address}\"\n"
            ))
        };
        let (line, key, message) = endpoint("10.0.0.5:191022");
        assert_eq!((line, key.as_str()), (4, "[[clusters.endpoints]] address"));
        assert_eq!(
            message,
            "bad endpoint address `10.0.0.5:191022`: the port 191022 is out of range (1-65535) \
             (expected host:port, like 10.0.0.5:8080)"
        );
        let (_, _, message) = endpoint("[2001:db8::1]:65536");
        assert!(
            message.contains("the port 65536 is out of range (1-65535)"),
            "{message}"
        );
        let (_, _, message) = endpoint("backend:0");
        assert!(
            message.contains("the port 0 is out of range (1-65535)"),
            "{message}"
        );
        let (_, _, message) = endpoint("backend:");
        assert!(message.contains("the port is missing"), "{message}");
    }

    #[test]
    fn plugin_settings_keep_their_location() {
        let c = parse(
            "[[filters]]\nplugin = \"f\"\nsettings = { a = 1 }\n[[filters]]\nplugin = \"g\"\n\
             [[clusters]]\nname = \"a\"\nbalancer = \"ring-hash\"\n\
             health_policy = { plugin = \"h\", settings = { b = 2 } }\n\
             balancer_settings = { key = \"path\" }\n\
             [[clusters]]\nname = \"b\"\nbalancer = \"ip-hash\"\n\
             [clusters.balancer_settings]\ntrusted_proxies = []\n\
             [[clusters]]\nname = \"c\"\n",
        )
        .unwrap();
        let at = |p: &PluginUse| {
            p.settings_at
                .as_ref()
                .map(|(at, key)| (at.line, at.column, key.clone()))
        };
        assert_eq!(
            at(&c.filters[0].plugin),
            Some((3, 12, "[[filters]] settings".into()))
        );
        assert_eq!(at(&c.filters[1].plugin), None);
        let a = &c.clusters[0];
        assert_eq!(
            (a.balancer.at.line, at(&a.balancer)),
            (8, Some((10, 21, "[[clusters]] balancer_settings".into())))
        );
        assert_eq!(at(&a.fallback_balancer), None);
        assert_eq!(
            at(a.health.plugin.as_ref().unwrap()),
            Some((9, 44, "[[clusters]] health_policy".into()))
        );
        let b = &c.clusters[1];
        assert_eq!(b.balancer.settings.trim(), "trusted_proxies = []");
        assert_eq!(
            at(&b.balancer).map(|(line, _, key)| (line, key)),
            Some((14, "[clusters.balancer_settings]".into()))
        );
        assert_eq!(at(&c.clusters[2].balancer), None);

        let c = parse("[router]\nplugin = \"r\"\n\nsettings = {}\n").unwrap();
        let Routing::Plugin { router: p, .. } = c.routing else {
            panic!("expected a plugin")
        };
        assert_eq!((p.at.line, p.settings.as_str()), (2, ""));
        assert_eq!(at(&p), Some((4, 12, "[router] settings".into())));
    }

    #[test]
    fn router_plugin_and_routes_are_exclusive() {
        let text =
            "[router]\nplugin = \"r\"\n[[routes]]\ncluster = \"a\"\n[[clusters]]\nname = \"a\"\n";
        let (line, _, message) = invalid(text);
        assert_eq!(line, 2);
        assert!(message.contains("not both"), "{message}");
        let c = parse("[router]\nplugin = \"r\"\nsettings = { x = 1 }\n").unwrap();
        let Routing::Plugin { router: p, .. } = c.routing else {
            panic!("expected a plugin")
        };
        assert_eq!(
            (p.plugin.as_str(), p.settings.trim(), p.at.line),
            ("r", "x = 1", 2)
        );
    }

    #[test]
    fn the_example_configs_validate() {
        let basic = parse(include_str!("../../examples/basic.toml")).unwrap();
        assert_eq!(basic.clusters.len(), 2);
        assert_eq!(basic.clusters[0].retry.on_status, vec![502, 503, 504]);
        assert_eq!(basic.clusters[1].retry.attempts, 2);
        assert_eq!(basic.access_log.path, None, "\"-\" is stdout");
    }

    #[test]
    fn workers_default_to_none_and_zero_is_refused_at_its_line() {
        assert_eq!(parse("").unwrap().workers, None);
        assert_eq!(parse("workers = 4\n").unwrap().workers, Some(4));
        let err = parse("\nworkers = 0\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "test.toml:2:11: workers: `workers` must be between 1 and 1024"
        );
    }

    #[test]
    fn error_display_names_file_line_and_key() {
        let err = parse("[[routes]]\ncluster = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "test.toml:2:11: [[routes]] cluster: unknown cluster `nope`"
        );
    }
}

//! The config file as written: serde structures that keep the spans of the keys we validate later,
//! so semantic errors can name the line.

use super::duration::ConfigDuration;
use super::limits::ConfigSize;
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Worker threads, each with its own event loop; default: one per CPU.
    pub workers: Option<Spanned<usize>>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub access_log: super::access_log::RawAccessLog,
    #[serde(default)]
    pub plugins: super::plugins::RawPlugins,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub limits: super::limits::RawLimits,
    pub router: Option<super::plugins::RawRouter>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub filters: Vec<super::plugins::RawFilter>,
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub address: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<ConfigDuration>>,
    pub idle_timeout: Option<Spanned<ConfigDuration>>,
    pub max_connections: Option<Spanned<usize>>,
    pub send_timeout: Option<Spanned<ConfigDuration>>,
    pub body_read_timeout: Option<Spanned<ConfigDuration>>,
    pub max_header_size: Option<Spanned<ConfigSize>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_uri_length: Option<Spanned<usize>>,
    pub max_request_body: Option<Spanned<ConfigSize>>,
    pub h2_max_concurrent_streams: Option<Spanned<u32>>,
    /// `tcp` and `tls-passthrough` listeners: the cluster (the default one for passthrough).
    pub cluster: Option<Spanned<String>>,
    #[serde(default)]
    pub certificates: Vec<super::listener::RawCertificate>,
    #[serde(default)]
    pub sni_routes: Vec<super::listener::RawSniRoute>,
    /// `http` listeners: answer every request with a redirect to https.
    pub redirect_to_https: Option<Spanned<bool>>,
    pub https_port: Option<Spanned<u16>>,
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub enabled: Option<bool>,
    pub address: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    pub drain_timeout: Option<ConfigDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPluginUse {
    pub plugin: Spanned<String>,
    pub settings: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub host: Option<String>,
    pub path_prefix: Option<Spanned<String>>,
    pub cluster: Spanned<String>,
    pub max_request_body: Option<Spanned<ConfigSize>>,
    /// Whether a request may switch protocols (`Upgrade`, WebSocket) on this route.
    pub upgrade: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub name: Spanned<String>,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    pub balancer: Option<Spanned<String>>,
    pub balancer_settings: Option<Spanned<toml::Table>>,
    pub fallback_balancer: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<ConfigDuration>>,
    pub response_timeout: Option<Spanned<ConfigDuration>>,
    pub read_timeout: Option<Spanned<ConfigDuration>>,
    pub write_timeout: Option<Spanned<ConfigDuration>>,
    pub max_request_body: Option<Spanned<ConfigSize>>,
    pub idle_timeout: Option<ConfigDuration>,
    pub max_idle_per_endpoint: Option<usize>,
    #[serde(default)]
    pub retry: RawRetry,
    pub health_check: Option<super::health::RawHealthCheck>,
    pub outlier: Option<super::health::RawOutlier>,
    pub panic_threshold: Option<Spanned<u32>>,
    pub panic_action: Option<Spanned<String>>,
    pub slow_start: Option<ConfigDuration>,
    /// `health_plugin` is the key's name before 0.3's one vocabulary of plugin kinds.
    #[serde(alias = "health_plugin")]
    pub health_policy: Option<RawPluginUse>,
    pub tls: Option<super::upstream::RawUpstreamTls>,
    pub proxy_protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub address: Spanned<String>,
    pub weight: Option<Spanned<u32>>,
    #[serde(default)]
    pub metadata: toml::Table,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub attempts: Option<Spanned<u64>>,
    pub on_status: Option<Vec<Spanned<u16>>>,
    pub budget_ratio: Option<Spanned<f64>>,
    pub min_retries: Option<u32>,
}

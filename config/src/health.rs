//! Health settings of a cluster: active checks (`[clusters.health_check]`), passive outlier
//! detection (`[clusters.outlier]`), the panic threshold, slow start and a health policy. Kept apart
//! from `mod.rs` so the cluster validation there stays short.

use super::duration::ConfigDuration;
use super::{Checker, ConfigError, MIN_PROBE_INTERVAL, PluginUse};
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// What an active probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Connects over TCP; success is an accepted connection.
    Tcp,
    /// Sends an HTTP/1.1 request on a fresh connection.
    Http {
        /// Request method.
        method: http::Method,
        /// Request path (with query).
        path: String,
        /// Host header; `None` sends the endpoint's address.
        host: Option<String>,
        /// Statuses that pass; empty means any 2xx or 3xx.
        expect: Vec<u16>,
        /// Text that must appear in the first `body_prefix_bytes` of the body.
        body_contains: Option<String>,
    },
}

/// Active health checking of a cluster's endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheckConfig {
    /// The probe.
    pub kind: ProbeKind,
    /// Time between probes of a healthy endpoint.
    pub interval: Duration,
    /// Time between probes of an unhealthy endpoint.
    pub unhealthy_interval: Duration,
    /// Each wait is lengthened by a random share of up to this much, so probes do not line up.
    pub jitter: Duration,
    /// One probe's deadline (connect, response headers and body prefix).
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy endpoint back.
    pub rise: u32,
    /// Consecutive failures that take a healthy endpoint out.
    pub fall: u32,
    /// How much of the body is read (and given to a health policy).
    pub body_prefix_bytes: usize,
    /// A response header of a passing probe whose number becomes the endpoint's weight (like
    /// HAProxy's agent-check); `None` keeps the configured weights.
    pub weight_header: Option<String>,
}

/// Passive health checking (outlier detection, as Envoy's).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// This many 5xx answers in a row eject an endpoint (0 = off).
    pub consecutive_5xx: u32,
    /// This many gateway errors in a row (connect failure, reset, timeout, 502-504) eject (0 = off).
    pub consecutive_gateway_errors: u32,
    /// An ejection lasts this long times the number of times the endpoint was ejected...
    pub base_ejection_time: Duration,
    /// ...but at most this long.
    pub max_ejection_time: Duration,
    /// At most this share (percent) of the cluster is ejected at once; one endpoint always may be.
    pub max_ejection_percent: u32,
    /// Success-rate ejection, if enabled.
    pub success_rate: Option<SuccessRateConfig>,
}

/// Success-rate ejection (as Envoy's): every `interval`, endpoints whose success rate is below the
/// cluster's mean by more than `stdev_factor` standard deviations are ejected.
#[derive(Clone, Debug, PartialEq)]
pub struct SuccessRateConfig {
    /// How often rates are compared (and counts start afresh).
    pub interval: Duration,
    /// Only endpoints with at least this many requests in the interval are compared...
    pub request_volume: u64,
    /// ...and only when at least this many endpoints qualify.
    pub minimum_hosts: usize,
    /// How many standard deviations below the mean make an outlier.
    pub stdev_factor: f64,
}

/// What a cluster in panic mode does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanicAction {
    /// Spread traffic over every endpoint, healthy or not (Envoy's behaviour): a broken health
    /// check cannot black-hole the service.
    Spread,
    /// Answer 503 without trying an endpoint.
    Refuse,
}

/// Everything about a cluster's health.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// Active checks, if configured.
    pub check: Option<HealthCheckConfig>,
    /// Passive checks, if configured.
    pub outlier: Option<OutlierConfig>,
    /// Below this share (percent) of healthy endpoints the cluster is in panic mode (0 = never).
    pub panic_threshold: u32,
    /// What panic mode does.
    pub panic_action: PanicAction,
    /// A new or recovered endpoint's weight ramps up over this window (`None` = at once).
    pub slow_start: Option<Duration>,
    /// A health policy whose verdicts override the host's rules.
    pub plugin: Option<PluginUse>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            check: None,
            outlier: None,
            panic_threshold: 50,
            panic_action: PanicAction::Spread,
            slow_start: None,
            plugin: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    pub kind: Option<Spanned<String>>,
    pub interval: Option<Spanned<ConfigDuration>>,
    pub unhealthy_interval: Option<Spanned<ConfigDuration>>,
    pub jitter: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub rise: Option<Spanned<u32>>,
    pub fall: Option<Spanned<u32>>,
    pub method: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<String>,
    pub expect: Option<Vec<Spanned<u16>>>,
    pub body_contains: Option<String>,
    pub body_prefix_bytes: Option<usize>,
    pub weight_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub base_ejection_time: Option<ConfigDuration>,
    pub max_ejection_time: Option<ConfigDuration>,
    pub max_ejection_percent: Option<Spanned<u32>>,
    pub success_rate: Option<bool>,
    pub success_rate_interval: Option<ConfigDuration>,
    pub success_rate_request_volume: Option<u64>,
    pub success_rate_minimum_hosts: Option<usize>,
    pub success_rate_stdev_factor: Option<Spanned<f64>>,
}

impl Checker<'_> {
    /// Validates a cluster's health settings.
    pub(super) fn health(&self, c: &super::raw::RawCluster) -> Result<HealthConfig, ConfigError> {
        let check = c
            .health_check
            .as_ref()
            .map(|h| self.health_check(h))
            .transpose()?;
        let outlier = c.outlier.as_ref().map(|o| self.outlier(o)).transpose()?;
        let panic_threshold = match &c.panic_threshold {
            Some(p) if *p.get_ref() > 100 => {
                return Err(self.err_at(p, "panic_threshold is a percent: 0 to 100".into()));
            }
            Some(p) => *p.get_ref(),
            None => 50,
        };
        let panic_action = match c.panic_action.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("spread") => PanicAction::Spread,
            Some("refuse") => PanicAction::Refuse,
            Some(other) => {
                let a = c.panic_action.as_ref().expect("matched Some");
                return Err(self.err_at(
                    a,
                    format!("unknown panic_action `{other}`: use `spread` or `refuse`"),
                ));
            }
        };
        let plugin = c
            .health_policy
            .as_ref()
            .map(|p| self.plugin_use(&p.plugin, p.settings.as_ref()))
            .transpose()?;
        Ok(HealthConfig {
            check,
            outlier,
            panic_threshold,
            panic_action,
            slow_start: c.slow_start.map(|d| d.0).filter(|d| !d.is_zero()),
            plugin,
        })
    }

    fn health_check(&self, h: &RawHealthCheck) -> Result<HealthCheckConfig, ConfigError> {
        let at_least_one = |v: &Option<Spanned<u32>>, name: &str, default: u32| match v {
            Some(n) if *n.get_ref() == 0 => {
                Err(self.err_at(n, format!("{name} must be at least 1")))
            }
            Some(n) => Ok(*n.get_ref()),
            None => Ok(default),
        };
        let rise = at_least_one(&h.rise, "rise", 2)?;
        let fall = at_least_one(&h.fall, "fall", 3)?;
        let probe_interval = |d: &Option<Spanned<ConfigDuration>>, name: &str, default| {
            match d {
            Some(d) if d.get_ref().0 < MIN_PROBE_INTERVAL => Err(self.err_at(
                d,
                format!("`{name}` must be at least {MIN_PROBE_INTERVAL:?}: probes would flood the endpoint"),
            )),
            Some(d) => Ok(d.get_ref().0),
            None => Ok(default),
        }
        };
        let interval = probe_interval(&h.interval, "interval", Duration::from_secs(2))?;
        let unhealthy_interval =
            probe_interval(&h.unhealthy_interval, "unhealthy_interval", interval)?;
        let kind = match h.kind.as_ref().map(|k| k.get_ref().as_str()) {
            Some("tcp") => ProbeKind::Tcp,
            None | Some("http") => {
                let method = match &h.method {
                    Some(m) => http::Method::from_bytes(m.get_ref().as_bytes())
                        .map_err(|_| self.err_at(m, format!("bad method `{}`", m.get_ref())))?,
                    None => http::Method::GET,
                };
                let path = match &h.path {
                    Some(p) if !p.get_ref().starts_with('/') => {
                        return Err(
                            self.err_at(p, format!("path `{}` must start with `/`", p.get_ref()))
                        );
                    }
                    Some(p) => p.get_ref().clone(),
                    None => "/health".to_string(),
                };
                let mut expect = Vec::new();
                for s in h.expect.iter().flatten() {
                    if !(100..=599).contains(s.get_ref()) {
                        return Err(
                            self.err_at(s, format!("{} is not an HTTP status", s.get_ref()))
                        );
                    }
                    expect.push(*s.get_ref());
                }
                ProbeKind::Http {
                    method,
                    path,
                    host: h.host.clone(),
                    expect,
                    body_contains: h.body_contains.clone(),
                }
            }
            Some(other) => {
                let k = h.kind.as_ref().expect("matched Some");
                return Err(self.err_at(
                    k,
                    format!("unknown health check kind `{other}`: use `http` or `tcp`"),
                ));
            }
        };
        Ok(HealthCheckConfig {
            kind,
            interval,
            unhealthy_interval,
            jitter: h.jitter.map_or(interval / 10, |d| d.0),
            timeout: h.timeout.map_or(Duration::from_secs(1), |d| d.0),
            rise,
            fall,
            body_prefix_bytes: h.body_prefix_bytes.unwrap_or(1024).min(64 * 1024),
            weight_header: h
                .weight_header
                .as_ref()
                .map(|w| w.trim().to_ascii_lowercase())
                .filter(|w| !w.is_empty()),
        })
    }

    fn outlier(&self, o: &RawOutlier) -> Result<OutlierConfig, ConfigError> {
        let max_ejection_percent = match &o.max_ejection_percent {
            Some(p) if *p.get_ref() > 100 => {
                return Err(self.err_at(p, "max_ejection_percent is a percent: 0 to 100".into()));
            }
            Some(p) => *p.get_ref(),
            None => 10,
        };
        let base = o
            .base_ejection_time
            .map_or(Duration::from_secs(30), |d| d.0);
        Ok(OutlierConfig {
            consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
            consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(5),
            base_ejection_time: base,
            max_ejection_time: o
                .max_ejection_time
                .map_or(Duration::from_secs(300), |d| d.0)
                .max(base),
            max_ejection_percent,
            success_rate: match o.success_rate {
                Some(true) => Some(SuccessRateConfig {
                    interval: o
                        .success_rate_interval
                        .map_or(Duration::from_secs(10), |d| d.0)
                        .max(Duration::from_millis(10)),
                    request_volume: o.success_rate_request_volume.unwrap_or(100).max(1),
                    minimum_hosts: o.success_rate_minimum_hosts.unwrap_or(5).max(2),
                    stdev_factor: match &o.success_rate_stdev_factor {
                        Some(f) if f.get_ref().is_nan() || *f.get_ref() <= 0.0 => {
                            return Err(self.err_at(
                                f,
                                "success_rate_stdev_factor must be more than 0".into(),
                            ));
                        }
                        Some(f) => *f.get_ref(),
                        None => 1.9,
                    },
                }),
                _ => None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;
    use std::path::Path;

    fn health(cluster: &str) -> Result<HealthConfig, ConfigError> {
        let text = format!("[[clusters]]\nname = \"web\"\n{cluster}");
        Config::parse(&text, "test.toml", Path::new("/")).map(|c| c.clusters[0].health.clone())
    }

    fn message(cluster: &str) -> (usize, String) {
        match health(cluster) {
            Err(ConfigError::Invalid { at, message, .. }) => (at.line, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_haproxy_and_envoy_like() {
        let h = health("[clusters.health_check]\n[clusters.outlier]\n").unwrap();
        let check = h.check.unwrap();
        assert_eq!(
            (
                check.interval,
                check.unhealthy_interval,
                check.rise,
                check.fall
            ),
            (Duration::from_secs(2), Duration::from_secs(2), 2, 3)
        );
        assert_eq!(check.jitter, Duration::from_millis(200));
        let ProbeKind::Http {
            method,
            path,
            expect,
            ..
        } = check.kind
        else {
            panic!("http by default")
        };
        assert_eq!(
            (method, path.as_str(), expect.len()),
            (http::Method::GET, "/health", 0)
        );
        let o = h.outlier.unwrap();
        assert_eq!((o.consecutive_5xx, o.consecutive_gateway_errors), (5, 5));
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));
        assert_eq!(o.max_ejection_percent, 10);
        assert_eq!(
            (h.panic_threshold, h.panic_action),
            (50, PanicAction::Spread)
        );
        let none = health("").unwrap();
        assert!(none.check.is_none() && none.outlier.is_none() && none.plugin.is_none());
    }

    #[test]
    fn the_health_policy_key_keeps_its_old_name_as_an_alias() {
        for key in ["health_policy", "health_plugin"] {
            let h = health(&format!("{key} = {{ plugin = \"judge\" }}\n")).unwrap();
            assert_eq!(
                h.plugin.map(|p| p.plugin).as_deref(),
                Some("judge"),
                "{key}"
            );
        }
    }

    #[test]
    fn every_key_is_read() {
        let h = health(
            "panic_threshold = 30\npanic_action = \"refuse\"\nslow_start = \"20s\"\n\
             health_policy = { plugin = \"judge\", settings = { strict = true } }\n\
             [clusters.health_check]\nkind = \"http\"\nmethod = \"HEAD\"\npath = \"/ready?full=1\"\n\
             host = \"svc.local\"\nweight_header = \"X-Weight\"\nexpect = [200, 204]\nbody_contains = \"ok\"\nbody_prefix_bytes = 64\n\
             interval = \"5s\"\nunhealthy_interval = \"1s\"\njitter = \"0ms\"\ntimeout = \"300ms\"\n\
             rise = 4\nfall = 1\n\
             [clusters.outlier]\nconsecutive_5xx = 0\nconsecutive_gateway_errors = 2\n\
             base_ejection_time = \"10s\"\nmax_ejection_time = \"1m\"\nmax_ejection_percent = 100\n",
        )
        .unwrap();
        assert_eq!(
            (h.panic_threshold, h.panic_action),
            (30, PanicAction::Refuse)
        );
        assert_eq!(h.slow_start, Some(Duration::from_secs(20)));
        let p = h.plugin.unwrap();
        assert_eq!(
            (p.plugin.as_str(), p.settings.trim()),
            ("judge", "strict = true")
        );
        let c = h.check.unwrap();
        assert_eq!(
            c.kind,
            ProbeKind::Http {
                method: http::Method::HEAD,
                path: "/ready?full=1".into(),
                host: Some("svc.local".into()),
                expect: vec![200, 204],
                body_contains: Some("ok".into()),
            }
        );
        assert_eq!(
            (
                c.interval,
                c.unhealthy_interval,
                c.jitter,
                c.timeout,
                c.rise,
                c.fall
            ),
            (
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::ZERO,
                Duration::from_millis(300),
                4,
                1
            )
        );
        assert_eq!(c.body_prefix_bytes, 64);
        assert_eq!(c.weight_header.as_deref(), Some("x-weight"));
        let o = h.outlier.unwrap();
        assert_eq!((o.consecutive_5xx, o.consecutive_gateway_errors), (0, 2));
        assert_eq!(o.max_ejection_time, Duration::from_secs(60));
        assert_eq!(o.max_ejection_percent, 100);
        let tcp = health("[clusters.health_check]\nkind = \"tcp\"\n").unwrap();
        assert_eq!(tcp.check.unwrap().kind, ProbeKind::Tcp);
    }

    #[test]
    fn wrong_values_name_their_line() {
        let (line, m) = message("[clusters.health_check]\nrise = 0\n");
        assert_eq!(line, 4);
        assert!(m.contains("rise must be at least 1"), "{m}");
        let (line, m) = message("[clusters.health_check]\nkind = \"udp\"\n");
        assert_eq!(line, 4);
        assert!(m.contains("`http` or `tcp`"), "{m}");
        let (_, m) = message("[clusters.health_check]\npath = \"health\"\n");
        assert!(m.contains("must start with `/`"), "{m}");
        let (_, m) = message("[clusters.health_check]\nexpect = [700]\n");
        assert!(m.contains("not an HTTP status"), "{m}");
        let (_, m) = message("panic_threshold = 101\n");
        assert!(m.contains("percent"), "{m}");
        let (_, m) = message("panic_action = \"shrug\"\n");
        assert!(m.contains("`spread` or `refuse`"), "{m}");
        let (_, m) = message("[clusters.outlier]\nmax_ejection_percent = 150\n");
        assert!(m.contains("percent"), "{m}");
        let (line, m) = message("[clusters.health_check]\nintervall = \"1s\"\n");
        assert_eq!(line, 4);
        assert!(m.contains("unknown field"), "{m}");
    }
}

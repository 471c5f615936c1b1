//! What one client may cost: connection caps and the descriptors kept back for everything else,
//! request size limits, and the timeouts of each side of an exchange. Kept in one place so every
//! bound a hostile or unlucky client meets reads as one list with its defaults.

use super::{Checker, ConfigError, Location};
use serde::{Deserialize, Deserializer};
use std::time::Duration;
use toml::Spanned;

/// A byte size written as a number (bytes) or with a unit: `"64KB"`, `"1MB"`, `"2GB"` (powers of
/// 1024, as nginx's `k`/`m`/`g`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSize(pub u64);

/// Parses `"512"`, `"64KB"`, `"1MB"`, `"2GB"` (also `K`, `M`, `G`, `KiB`, `MiB`, `GiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: write it like \"64KB\" or \"10MB\""))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit `{unit}`: use B, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl<'de> Deserialize<'de> for ConfigSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Bytes(n) => Ok(ConfigSize(n)),
            Written::Text(t) => parse_size(&t)
                .map(ConfigSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `[limits]`: process-wide bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Client connections open at once over every listener (HTTP and L4); `None`: derived from
    /// the descriptor limit (half of what the reserve leaves, since each client connection may hold
    /// one to a backend).
    pub max_connections: Option<usize>,
    /// Descriptors never given to client connections: backend connections' headroom, health
    /// probes, the admin listener, plugin and log files.
    pub reserved_descriptors: usize,
    /// Connections the admin listener serves at once (further ones wait in its backlog).
    pub admin_max_connections: usize,
    /// How long an admin connection may take to send its request, and stay idle.
    pub admin_timeout: Duration,
}

/// The default of `[limits] reserved_descriptors`.
pub const DEFAULT_RESERVED_DESCRIPTORS: usize = 512;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: None,
            reserved_descriptors: DEFAULT_RESERVED_DESCRIPTORS,
            admin_max_connections: 64,
            admin_timeout: Duration::from_secs(10),
        }
    }
}

/// What a listener bounds per connection and per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections this listener keeps open at once; `None`: only the global cap.
    pub max_connections: Option<usize>,
    /// A client that takes none of the response's bytes for this long is closed (nginx's
    /// `send_timeout`).
    pub send_timeout: Duration,
    /// A request body that sends no byte for this long is answered 408 (nginx's
    /// `client_body_timeout`); an upload may take as long as it keeps moving.
    pub body_read_timeout: Duration,
    /// The most bytes a request head may take (request line and headers together); HTTP/2's
    /// header list size. Past it: 431.
    pub max_header_size: usize,
    /// The most header lines of a request. Past it: 431.
    pub max_headers: usize,
    /// The longest request target (path and query). Past it: 414.
    pub max_uri_length: usize,
    /// The largest request body; `None`: no limit. Past it: 413 (a declared `Content-Length`
    /// before anything is sent; a chunked body where its bytes pass it). A chunk's declared size is
    /// not seen (hyper reads sizes up to `FFFFFFFFFFFFFFFF`): such a body ends at this limit, or at
    /// `body_read_timeout` (408) when its bytes stop.
    pub max_request_body: Option<u64>,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: None,
            send_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            max_header_size: 32 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            max_request_body: None,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// The most tries (the first included) a retry policy may ask for.
pub const MAX_ATTEMPTS: u32 = 10;

/// The shortest interval between health probes of an endpoint.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Bounds of the header buffer: hyper needs 8 KB to read any head; past 1 MB a head is an attack.
const HEADER_SIZE_RANGE: (usize, usize) = (8 * 1024, 1024 * 1024);

/// Something a config may run with but should not in production: `sluicegate check` prints each,
/// and refuses the config when one is `refused_by_check`; `run` logs them as warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigNote {
    /// Where.
    pub at: Location,
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
    /// Whether `check` refuses the config for it (it cannot work as a deployed proxy).
    pub refused_by_check: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub max_connections: Option<Spanned<usize>>,
    pub reserved_descriptors: Option<usize>,
    pub admin_max_connections: Option<Spanned<usize>>,
    pub admin_timeout: Option<Spanned<super::ConfigDuration>>,
}

impl Checker<'_> {
    /// A duration that must be longer than zero; `default` when not written.
    pub(super) fn positive(
        &self,
        d: &Option<Spanned<super::ConfigDuration>>,
        name: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match d {
            Some(d) if d.get_ref().0.is_zero() => Err(self.err_at(
                d,
                format!("`{name}` must be longer than 0 (the default is {default:?})"),
            )),
            Some(d) => Ok(d.get_ref().0),
            None => Ok(default),
        }
    }

    /// A count that must be at least `min`.
    fn at_least<T: Copy + PartialOrd + std::fmt::Display>(
        &self,
        v: &Option<Spanned<T>>,
        name: &str,
        min: T,
    ) -> Result<Option<T>, ConfigError> {
        match v {
            Some(n) if *n.get_ref() < min => {
                Err(self.err_at(n, format!("`{name}` must be at least {min}")))
            }
            Some(n) => Ok(Some(*n.get_ref())),
            None => Ok(None),
        }
    }

    /// A body size limit: at least one byte.
    pub(super) fn body_limit(
        &self,
        v: &Option<Spanned<ConfigSize>>,
    ) -> Result<Option<u64>, ConfigError> {
        match v {
            Some(n) if n.get_ref().0 == 0 => Err(self.err_at(
                n,
                "`max_request_body` must be at least 1 byte (leave it out for no limit)".into(),
            )),
            Some(n) => Ok(Some(n.get_ref().0)),
            None => Ok(None),
        }
    }

    pub(super) fn limits(&self, raw: &RawLimits) -> Result<LimitsConfig, ConfigError> {
        let d = LimitsConfig::default();
        Ok(LimitsConfig {
            max_connections: self.at_least(&raw.max_connections, "max_connections", 1)?,
            reserved_descriptors: raw.reserved_descriptors.unwrap_or(d.reserved_descriptors),
            admin_max_connections: self
                .at_least(&raw.admin_max_connections, "admin_max_connections", 1)?
                .unwrap_or(d.admin_max_connections),
            admin_timeout: self.positive(&raw.admin_timeout, "admin_timeout", d.admin_timeout)?,
        })
    }

    pub(super) fn listener_limits(
        &self,
        raw: &super::raw::RawListener,
    ) -> Result<ListenerLimits, ConfigError> {
        let d = ListenerLimits::default();
        let header_size = match &raw.max_header_size {
            Some(s)
                if !(HEADER_SIZE_RANGE.0 as u64..=HEADER_SIZE_RANGE.1 as u64)
                    .contains(&s.get_ref().0) =>
            {
                return Err(self.err_at(
                    s,
                    format!(
                        "`max_header_size` must be between {} KB and {} KB",
                        HEADER_SIZE_RANGE.0 / 1024,
                        HEADER_SIZE_RANGE.1 / 1024
                    ),
                ));
            }
            Some(s) => s.get_ref().0 as usize,
            None => d.max_header_size,
        };
        Ok(ListenerLimits {
            max_connections: self.at_least(&raw.max_connections, "max_connections", 1)?,
            send_timeout: self.positive(&raw.send_timeout, "send_timeout", d.send_timeout)?,
            body_read_timeout: self.positive(
                &raw.body_read_timeout,
                "body_read_timeout",
                d.body_read_timeout,
            )?,
            max_header_size: header_size,
            max_headers: self
                .at_least(&raw.max_headers, "max_headers", 1)?
                .unwrap_or(d.max_headers),
            max_uri_length: self
                .at_least(&raw.max_uri_length, "max_uri_length", 16)?
                .unwrap_or(d.max_uri_length),
            max_request_body: self.body_limit(&raw.max_request_body)?,
            h2_max_concurrent_streams: self
                .at_least(
                    &raw.h2_max_concurrent_streams,
                    "h2_max_concurrent_streams",
                    1,
                )?
                .unwrap_or(d.h2_max_concurrent_streams),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/sg"))
    }

    fn invalid(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ConfigError::Invalid { at, message, .. }) => (at.line, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn sizes_read_with_units() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KB"), Ok(64 * 1024));
        assert_eq!(parse_size("1mb"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("1TB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MB").unwrap_err().contains("not a size"));
        assert!(
            parse_size("18446744073709551615GB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn limits_have_peer_like_defaults_and_read_what_is_written() {
        let c = parse("[[listeners]]\naddress = \"127.0.0.1:80\"\n").unwrap();
        assert_eq!(c.listeners[0].limits, ListenerLimits::default());
        assert_eq!(c.limits, LimitsConfig::default());
        let c = parse(
            "[limits]\nmax_connections = 5000\nadmin_max_connections = 8\n\
             [[listeners]]\naddress = \"127.0.0.1:80\"\nmax_connections = 100\nsend_timeout = \"5s\"\n\
             body_read_timeout = \"7s\"\nmax_header_size = \"16KB\"\nmax_headers = 50\nmax_uri_length = 2048\n\
             max_request_body = \"10MB\"\nh2_max_concurrent_streams = 32\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, Some(5000));
        assert_eq!(c.limits.admin_max_connections, 8);
        let l = &c.listeners[0].limits;
        assert_eq!(l.max_connections, Some(100));
        assert_eq!(l.send_timeout, Duration::from_secs(5));
        assert_eq!(l.body_read_timeout, Duration::from_secs(7));
        assert_eq!(l.max_header_size, 16 * 1024);
        assert_eq!(l.max_headers, 50);
        assert_eq!(l.max_uri_length, 2048);
        assert_eq!(l.max_request_body, Some(10 << 20));
        assert_eq!(l.h2_max_concurrent_streams, 32);
    }

    #[test]
    fn values_that_cannot_work_are_refused_with_their_line() {
        let l = "[[listeners]]\naddress = \"127.0.0.1:80\"\n";
        for (key, needle) in [
            ("send_timeout = \"0s\"", "longer than 0"),
            ("body_read_timeout = \"0ms\"", "longer than 0"),
            ("header_read_timeout = \"0s\"", "longer than 0"),
            ("idle_timeout = \"0s\"", "longer than 0"),
            ("max_header_size = \"1KB\"", "between 8 KB"),
            ("max_header_size = \"2GB\"", "between 8 KB"),
            ("max_headers = 0", "at least 1"),
            ("max_request_body = 0", "at least 1 byte"),
            ("max_connections = 0", "at least 1"),
            ("idle_timeout = \"18446744073709551615s\"", "a year"),
        ] {
            let (line, m) = invalid(&format!("{l}{key}\n"));
            assert_eq!(line, 3, "{key}: {m}");
            assert!(m.contains(needle), "{key}: {m}");
        }
        let c = "[[clusters]]\nname = \"a\"\n";
        for (key, needle) in [
            ("connect_timeout = \"0s\"", "longer than 0"),
            ("response_timeout = \"0s\"", "longer than 0"),
            ("read_timeout = \"0s\"", "longer than 0"),
            ("write_timeout = \"0s\"", "longer than 0"),
            ("retry = { attempts = 4294967295 }", "at most 10"),
            ("max_request_body = \"0KB\"", "at least 1 byte"),
        ] {
            let (line, m) = invalid(&format!("{c}{key}\n"));
            assert_eq!(line, 3, "{key}: {m}");
            assert!(m.contains(needle), "{key}: {m}");
        }
        let (line, m) = invalid(&format!("{c}[clusters.health_check]\ninterval = \"0s\"\n"));
        assert_eq!(line, 4);
        assert!(m.contains("at least 100ms"), "{m}");
        let (line, m) = invalid(&format!(
            "{c}[clusters.health_check]\nunhealthy_interval = \"10ms\"\n"
        ));
        assert_eq!(line, 4);
        assert!(m.contains("at least 100ms"), "{m}");
    }

    #[test]
    fn port_zero_and_a_public_admin_are_noted_for_check() {
        let c = parse(
            "[admin]\naddress = \"0.0.0.0:9901\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let refused: Vec<_> = c.notes.iter().filter(|n| n.refused_by_check).collect();
        assert_eq!(refused.len(), 1, "{:?}", c.notes);
        assert_eq!(refused[0].at.line, 4);
        assert!(refused[0].message.contains("port 0"), "{:?}", refused[0]);
        let warned: Vec<_> = c.notes.iter().filter(|n| !n.refused_by_check).collect();
        assert_eq!(warned.len(), 1, "{:?}", c.notes);
        assert_eq!(warned[0].at.line, 2);
        assert!(warned[0].message.contains("loopback"), "{:?}", warned[0]);
        let c = parse("[[listeners]]\naddress = \"127.0.0.1:8080\"\n").unwrap();
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }
}

//! How a cluster's connections to its endpoints are made: TLS to the endpoints (`[clusters.tls]`,
//! re-encryption) and the PROXY protocol header sent ahead of L4 connections. Kept apart so these
//! rules read in one place.

use super::{Checker, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

/// `[clusters.tls]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreamTls {
    pub ca_file: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// TLS to a cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs trusted for the endpoints' certificates; `None` for the system roots.
    pub ca_file: Option<PathBuf>,
    /// The name sent as SNI and verified in the endpoints' certificates; `None` for the
    /// endpoint's host (a DNS name or an IP address).
    pub server_name: Option<String>,
    /// A client certificate chain and key (PEM) presented to endpoints that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The PROXY protocol version sent to endpoints of L4 connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl Checker<'_> {
    /// Validates `[clusters.tls]`; relative paths are resolved with `resolve`.
    pub(super) fn upstream_tls(
        &self,
        raw: Option<&RawUpstreamTls>,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Option<UpstreamTlsConfig>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let server_name = match &raw.server_name {
            Some(n) => {
                rustls_pki_types::ServerName::try_from(n.get_ref().as_str()).map_err(|_| {
                    self.err_at(
                        n,
                        format!("`{}` is not a DNS name or an IP address", n.get_ref()),
                    )
                })?;
                Some(n.get_ref().clone())
            }
            None => None,
        };
        let client_cert = match (&raw.cert, &raw.key) {
            (Some(c), Some(k)) => Some((resolve(c.get_ref()), resolve(k.get_ref()))),
            (None, None) => None,
            (Some(c), None) => {
                return Err(self.err_at(c, "a client `cert` needs its `key`".into()));
            }
            (None, Some(k)) => {
                return Err(self.err_at(k, "a client `key` needs its `cert`".into()));
            }
        };
        Ok(Some(UpstreamTlsConfig {
            ca_file: raw.ca_file.as_ref().map(|f| resolve(f.get_ref())),
            server_name,
            client_cert,
        }))
    }

    /// Validates `proxy_protocol` (`"v1"` or `"v2"`).
    pub(super) fn proxy_protocol(
        &self,
        raw: Option<&Spanned<String>>,
    ) -> Result<Option<ProxyProtocol>, ConfigError> {
        match raw.map(|r| (r, r.get_ref().as_str())) {
            None => Ok(None),
            Some((_, "v1")) => Ok(Some(ProxyProtocol::V1)),
            Some((_, "v2")) => Ok(Some(ProxyProtocol::V2)),
            Some((r, other)) => Err(self.err_at(
                r,
                format!("unknown PROXY protocol version `{other}`: expected `v1` or `v2`"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError, ProxyProtocol};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/sg"))
    }

    #[test]
    fn upstream_tls_and_proxy_protocol_are_read() {
        let c = parse(
            "[[clusters]]\nname = \"a\"\nproxy_protocol = \"v2\"\n[clusters.tls]\nca_file = \"ca.pem\"\nserver_name = \"api.internal\"\ncert = \"c.pem\"\nkey = \"/k.pem\"\n\
             [[clusters]]\nname = \"b\"\n",
        )
        .unwrap();
        let tls = c.clusters[0].tls.as_ref().unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(Path::new("/etc/sg/ca.pem")));
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        assert_eq!(
            tls.client_cert,
            Some(("/etc/sg/c.pem".into(), "/k.pem".into()))
        );
        assert_eq!(c.clusters[0].proxy_protocol, Some(ProxyProtocol::V2));
        assert_eq!(c.clusters[1].tls, None);
        assert_eq!(c.clusters[1].proxy_protocol, None);
    }

    #[test]
    fn bad_upstream_settings_name_the_line() {
        let invalid = |text: &str| match parse(text) {
            Err(ConfigError::Invalid { at, message, .. }) => (at.line, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        };
        let (line, m) = invalid("[[clusters]]\nname = \"a\"\nproxy_protocol = \"v3\"\n");
        assert_eq!(line, 3);
        assert!(m.contains("expected `v1` or `v2`"), "{m}");
        let (line, m) = invalid("[[clusters]]\nname = \"a\"\n[clusters.tls]\ncert = \"c.pem\"\n");
        assert_eq!(line, 4);
        assert!(m.contains("needs its `key`"), "{m}");
        let (line, m) =
            invalid("[[clusters]]\nname = \"a\"\n[clusters.tls]\nserver_name = \"not a name\"\n");
        assert_eq!(line, 4);
        assert!(m.contains("not a DNS name"), "{m}");
    }
}

//! Listener protocols beyond plain HTTP: TLS termination (`https`, certificates chosen by SNI), L4
//! (`tcp`, a cluster per listener) and TLS passthrough (`tls-passthrough`, a cluster per SNI name).
//! Kept apart from the rest of the config so each protocol's rules read in one place.

use super::{Checker, ConfigError, ListenerConfig, Location, Protocol};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;
use toml::Spanned;

/// `[[listeners.certificates]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default)]
    pub server_names: Vec<Spanned<String>>,
}

/// `[[listeners.sni_routes]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSniRoute {
    pub server_names: Vec<Spanned<String>>,
    pub cluster: Spanned<String>,
}

/// A certificate chain and its private key (PEM files) served on an `https` listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM file with the chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names it is served for, lower case: exact names or `*.example.com` for any subdomain.
    /// Empty for the default certificate.
    pub server_names: Vec<String>,
    /// Where the certificate is written in the config, for errors about its files.
    pub at: Location,
}

/// Where a TLS passthrough listener sends connections for some SNI names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniRoute {
    /// Lower-case names: exact, or `*.example.com` for any subdomain.
    pub server_names: Vec<String>,
    /// The cluster.
    pub cluster: String,
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`127.0.0.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // Both sides as the top bits of a u128, so one mask works for either family.
        let bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (host, host_width)) = (bits(self.addr), bits(ip));
        if width != host_width {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == host & mask
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("bad address block `{s}`: expected like 10.0.0.0/8, ::1 or 127.0.0.1");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// The protocol-specific part of a listener, validated.
pub(super) struct ListenerExtras {
    pub certificates: Vec<CertificateConfig>,
    pub cluster: Option<String>,
    pub sni_routes: Vec<SniRoute>,
}

impl Protocol {
    /// Parses the `protocol` key.
    fn parse(name: &str) -> Option<Protocol> {
        Some(match name {
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "tcp" => Protocol::Tcp,
            "tls-passthrough" => Protocol::TlsPassthrough,
            _ => return None,
        })
    }
}

/// A server name as written for SNI matching: a DNS name or `*.` and one, lower-cased.
fn check_server_name(name: &str) -> Result<String, String> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let bare = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "bad server name `{name}`: expected a DNS name like `www.example.com` or `*.example.com`"
        ))
    }
}

impl Checker<'_> {
    /// Reads the `protocol` key (default `http`).
    pub(super) fn protocol(&self, p: Option<&Spanned<String>>) -> Result<Protocol, ConfigError> {
        match p {
            None => Ok(Protocol::Http),
            Some(p) => Protocol::parse(p.get_ref()).ok_or_else(|| {
                self.err_at(
                    p,
                    format!(
                        "unknown protocol `{}`: expected `http`, `https`, `tcp` or `tls-passthrough`",
                        p.get_ref()
                    ),
                )
            }),
        }
    }

    fn server_names(&self, names: &[Spanned<String>]) -> Result<Vec<String>, ConfigError> {
        names
            .iter()
            .map(|n| check_server_name(n.get_ref()).map_err(|m| self.err_at(n, m)))
            .collect()
    }

    /// Validates the keys that depend on the protocol. `clusters` are the configured cluster names;
    /// `address` is the listener's key, for messages.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn listener_extras(
        &self,
        protocol: Protocol,
        address: &Spanned<String>,
        certificates: &[RawCertificate],
        cluster: Option<&Spanned<String>>,
        sni_routes: &[RawSniRoute],
        clusters: &HashSet<&str>,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<ListenerExtras, ConfigError> {
        let needs = |what: &str| {
            self.err_at(
                address,
                format!("a `{}` listener needs {what}", protocol.name()),
            )
        };
        let refuse = |span: std::ops::Range<usize>, key: &str| {
            self.error(
                span,
                format!("`{key}` is not used by a `{}` listener", protocol.name()),
            )
        };
        let known_cluster = |c: &Spanned<String>| {
            if clusters.contains(c.get_ref().as_str()) {
                Ok(c.get_ref().clone())
            } else {
                Err(self.err_at(c, format!("unknown cluster `{}`", c.get_ref())))
            }
        };

        if protocol != Protocol::Https
            && let Some(c) = certificates.first()
        {
            return Err(refuse(c.cert.span(), "certificates"));
        }
        if protocol != Protocol::TlsPassthrough
            && let Some(r) = sni_routes.first()
        {
            return Err(refuse(r.cluster.span(), "sni_routes"));
        }
        if matches!(protocol, Protocol::Http | Protocol::Https)
            && let Some(c) = cluster
        {
            return Err(refuse(c.span(), "cluster"));
        }

        let mut out = ListenerExtras {
            certificates: Vec::new(),
            cluster: cluster.map(known_cluster).transpose()?,
            sni_routes: Vec::new(),
        };
        match protocol {
            Protocol::Http => {}
            Protocol::Https => {
                if certificates.is_empty() {
                    return Err(needs("at least one [[listeners.certificates]]"));
                }
                let mut defaults = 0;
                let mut names = HashSet::new();
                for c in certificates {
                    let server_names = self.server_names(&c.server_names)?;
                    for (n, raw) in server_names.iter().zip(&c.server_names) {
                        if !names.insert(n.clone()) {
                            return Err(self.err_at(
                                raw,
                                format!("server name `{n}` has two certificates on this listener"),
                            ));
                        }
                    }
                    if server_names.is_empty() {
                        defaults += 1;
                        if defaults > 1 {
                            return Err(self.err_at(
                                &c.cert,
                                "only one certificate may leave out server_names (the default)"
                                    .into(),
                            ));
                        }
                    }
                    out.certificates.push(CertificateConfig {
                        cert: resolve(c.cert.get_ref()),
                        key: resolve(c.key.get_ref()),
                        server_names,
                        at: self.location(c.cert.span().start),
                    });
                }
            }
            Protocol::Tcp => {
                if out.cluster.is_none() {
                    return Err(needs("a `cluster`"));
                }
            }
            Protocol::TlsPassthrough => {
                if sni_routes.is_empty() && out.cluster.is_none() {
                    return Err(needs(
                        "[[listeners.sni_routes]] or a default `cluster` (or both)",
                    ));
                }
                let mut names = HashSet::new();
                for r in sni_routes {
                    let server_names = self.server_names(&r.server_names)?;
                    if server_names.is_empty() {
                        return Err(self.err_at(&r.cluster, "server_names is empty".into()));
                    }
                    for (n, raw) in server_names.iter().zip(&r.server_names) {
                        if !names.insert(n.clone()) {
                            return Err(
                                self.err_at(raw, format!("server name `{n}` is routed twice"))
                            );
                        }
                    }
                    out.sni_routes.push(SniRoute {
                        server_names,
                        cluster: known_cluster(&r.cluster)?,
                    });
                }
            }
        }
        Ok(out)
    }
}

impl Checker<'_> {
    /// TLS passthrough forwards the client's own TLS: a cluster with `[clusters.tls]` would get
    /// it wrapped in TLS again, so that is refused (tcp listeners do TLS to such clusters).
    pub(super) fn check_l4_clusters(
        &self,
        listeners: &[ListenerConfig],
        raw: &[super::raw::RawListener],
        clusters: &[super::ClusterConfig],
    ) -> Result<(), ConfigError> {
        for (l, raw_l) in listeners.iter().zip(raw) {
            if l.protocol != Protocol::TlsPassthrough {
                continue;
            }
            let used = l
                .cluster
                .iter()
                .chain(l.sni_routes.iter().map(|r| &r.cluster));
            for name in used {
                if clusters.iter().any(|c| &c.name == name && c.tls.is_some()) {
                    return Err(self.err_at(
                        &raw_l.address,
                        format!(
                            "cluster `{name}` has [clusters.tls]: a tls-passthrough listener \
                             forwards the client's own TLS, use a cluster without it"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `redirect_to_https` and `https_port` (default 443), on `http` listeners only.
    pub(super) fn redirect_https(
        &self,
        protocol: Protocol,
        redirect: Option<&Spanned<bool>>,
        port: Option<&Spanned<u16>>,
    ) -> Result<Option<u16>, ConfigError> {
        let on = redirect.is_some_and(|r| *r.get_ref());
        if let Some(r) = redirect.filter(|_| protocol != Protocol::Http) {
            return Err(self.err_at(
                r,
                format!(
                    "`redirect_to_https` is for `http` listeners, not `{}`",
                    protocol.name()
                ),
            ));
        }
        match port {
            Some(p) if !on => {
                Err(self.err_at(p, "`https_port` needs `redirect_to_https = true`".into()))
            }
            Some(p) if *p.get_ref() == 0 => Err(self.err_at(p, "`https_port` cannot be 0".into())),
            Some(p) => Ok(Some(*p.get_ref())),
            None => Ok(on.then_some(443)),
        }
    }
}

impl Protocol {
    /// The protocol's name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
            Protocol::TlsPassthrough => "tls-passthrough",
        }
    }
}

/// Whether two listener lists differ only in what a reload applies without a restart: the
/// certificates of `https` listeners and the clusters and SNI routes of L4 listeners.
pub fn listeners_restart_equal(a: &[ListenerConfig], b: &[ListenerConfig]) -> bool {
    let strip = |l: &ListenerConfig| ListenerConfig {
        certificates: Vec::new(),
        cluster: None,
        sni_routes: Vec::new(),
        ..l.clone()
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| strip(x) == strip(y))
}

/// Whether `name` (lower case) matches `pattern`: exact, or `*.suffix` for any deeper name.
pub fn server_name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_checked_and_lower_cased() {
        assert_eq!(
            check_server_name("WWW.Example.com.").unwrap(),
            "www.example.com"
        );
        assert_eq!(check_server_name("*.example.com").unwrap(), "*.example.com");
        assert!(check_server_name("a..b").is_err());
        assert!(check_server_name("*").is_err());
        assert!(check_server_name("a b.com").is_err());
        assert!(check_server_name("").is_err());
    }

    #[test]
    fn address_blocks_contain_what_they_should() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!c("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(c("127.0.0.1").contains(ip("::ffff:127.0.0.1")));
        assert!(c("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:1::5")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::5")));
        assert!(!c("::1").contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        assert!(server_name_matches("*.example.com", "a.example.com"));
        assert!(server_name_matches("*.example.com", "a.b.example.com"));
        assert!(!server_name_matches("*.example.com", "example.com"));
        assert!(!server_name_matches("*.example.com", "badexample.com"));
        assert!(server_name_matches("example.com", "example.com"));
        assert!(!server_name_matches("example.com", "a.example.com"));
    }
}

#[cfg(test)]
mod config_tests {
    use crate::{Config, ConfigError, Protocol};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/sg"))
    }

    fn message(text: &str) -> (usize, String) {
        match parse(text) {
            Err(ConfigError::Invalid { at, message, .. }) => (at.line, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    const CLUSTERS: &str = "[[clusters]]\nname = \"a\"\n[[clusters]]\nname = \"b\"\n";

    #[test]
    fn https_listeners_take_certificates_with_a_default() {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:443\"\nprotocol = \"https\"\n\
             [[listeners.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\nserver_names = [\"A.example.com\", \"*.b.example.com\"]\n\
             [[listeners.certificates]]\ncert = \"/abs/d.pem\"\nkey = \"d.key\"\n{CLUSTERS}"
        );
        let c = parse(&text).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.protocol, Protocol::Https);
        assert_eq!(l.certificates[0].cert, Path::new("/etc/sg/a.pem"));
        assert_eq!(
            l.certificates[0].server_names,
            vec!["a.example.com", "*.b.example.com"]
        );
        assert_eq!(l.certificates[0].at.line, 5);
        assert_eq!(l.certificates[1].cert, Path::new("/abs/d.pem"));
        assert!(l.certificates[1].server_names.is_empty());
    }

    #[test]
    fn protocol_rules_are_enforced_with_lines() {
        let (line, m) =
            message("[[listeners]]\naddress = \"127.0.0.1:443\"\nprotocol = \"https\"\n");
        assert_eq!(line, 2);
        assert!(m.contains("needs at least one"), "{m}");

        let (line, m) = message(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\nprotocol = \"tcp\"\ncluster = \"nope\"\n{CLUSTERS}"
        ));
        assert_eq!((line, m.as_str()), (4, "unknown cluster `nope`"));

        let (_, m) = message("[[listeners]]\naddress = \"127.0.0.1:1\"\nprotocol = \"tcp\"\n");
        assert!(m.contains("needs a `cluster`"), "{m}");

        let (line, m) = message(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\ncluster = \"a\"\n{CLUSTERS}"
        ));
        assert_eq!(line, 3);
        assert!(m.contains("not used by a `http` listener"), "{m}");

        let (line, m) = message(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\nprotocol = \"tcp\"\ncluster = \"a\"\nredirect_to_https = true\n[[clusters]]\nname = \"a\"\n",
        );
        assert_eq!(line, 5);
        assert!(m.contains("for `http` listeners"), "{m}");
        let c = parse("[[listeners]]\naddress = \"127.0.0.1:1\"\nredirect_to_https = true\nhttps_port = 8443\n").unwrap();
        assert_eq!(c.listeners[0].redirect_https, Some(8443));
        let c =
            parse("[[listeners]]\naddress = \"127.0.0.1:1\"\nredirect_to_https = true\n").unwrap();
        assert_eq!(c.listeners[0].redirect_https, Some(443));

        let (line, m) = message("[[listeners]]\naddress = \"127.0.0.1:1\"\nprotocol = \"quic\"\n");
        assert_eq!(line, 3);
        assert!(m.contains("unknown protocol `quic`"), "{m}");

        let (line, m) = message(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:443\"\nprotocol = \"https\"\n\
             [[listeners.certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [[listeners.certificates]]\ncert = \"b.pem\"\nkey = \"b.key\"\n{CLUSTERS}"
        ));
        assert_eq!(line, 8);
        assert!(m.contains("only one certificate"), "{m}");
    }

    #[test]
    fn certificates_and_l4_routes_change_without_a_restart_but_addresses_do_not() {
        let with = |cert: &str, cluster: &str, port: u16| {
            parse(&format!(
                "[[listeners]]\naddress = \"127.0.0.1:{port}\"\nprotocol = \"https\"\n\
                 [[listeners.certificates]]\ncert = \"{cert}\"\nkey = \"k.pem\"\n\
                 [[listeners]]\naddress = \"127.0.0.1:2\"\nprotocol = \"tcp\"\ncluster = \"{cluster}\"\n{CLUSTERS}"
            ))
            .unwrap()
            .listeners
        };
        let base = with("a.pem", "a", 1);
        assert!(crate::listeners_restart_equal(
            &base,
            &with("b.pem", "b", 1)
        ));
        assert!(!crate::listeners_restart_equal(
            &base,
            &with("a.pem", "a", 3)
        ));
        assert!(!crate::listeners_restart_equal(&base, &base[..1]));
    }

    #[test]
    fn l4_listeners_refuse_clusters_with_upstream_tls() {
        let (line, m) = message(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\nprotocol = \"tls-passthrough\"\ncluster = \"a\"\n\
             [[clusters]]\nname = \"a\"\n[clusters.tls]\nserver_name = \"a.internal\"\n",
        );
        assert_eq!(line, 2);
        assert!(m.contains("cluster `a` has [clusters.tls]"), "{m}");
    }

    #[test]
    fn passthrough_routes_names_to_clusters() {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:443\"\nprotocol = \"tls-passthrough\"\ncluster = \"b\"\n\
             [[listeners.sni_routes]]\nserver_names = [\"a.example.com\", \"*.a.example.com\"]\ncluster = \"a\"\n{CLUSTERS}"
        );
        let c = parse(&text).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.cluster.as_deref(), Some("b"));
        assert_eq!(l.sni_routes[0].cluster, "a");
        assert_eq!(l.sni_routes[0].server_names.len(), 2);

        let (line, m) = message(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:443\"\nprotocol = \"tls-passthrough\"\n\
             [[listeners.sni_routes]]\nserver_names = [\"a.example.com\"]\ncluster = \"a\"\n\
             [[listeners.sni_routes]]\nserver_names = [\"A.example.com\"]\ncluster = \"b\"\n{CLUSTERS}"
        ));
        assert_eq!(line, 8);
        assert!(m.contains("routed twice"), "{m}");
    }
}

#[cfg(test)]
mod example_tests {
    use crate::{Config, Protocol};
    use std::path::Path;

    #[test]
    fn the_tls_example_validates() {
        let c = Config::parse(
            include_str!("../../examples/tls.toml"),
            "tls.toml",
            Path::new("/etc/sg"),
        )
        .unwrap();
        let protocols: Vec<Protocol> = c.listeners.iter().map(|l| l.protocol).collect();
        assert_eq!(
            protocols,
            [Protocol::Https, Protocol::Tcp, Protocol::TlsPassthrough]
        );
        assert_eq!(c.listeners[0].certificates.len(), 2);
        assert_eq!(c.listeners[1].cluster.as_deref(), Some("postgres"));
        assert_eq!(c.listeners[2].sni_routes[1].cluster, "web-tls");
    }
}

//! TLS termination for `https` listeners: certificates loaded from PEM files, chosen by SNI
//! (exact name, then the longest matching `*.` wildcard, then the default), served with ALPN
//! `h2` and `http/1.1` over TLS 1.2 and 1.3 (rustls with the ring provider).
//!
//! Certificates are reloaded without a restart: [`CertWatcher`] polls the files' size and mtime
//! (and the listener's entry in the current config, so a config reload that names other files is
//! followed) and swaps a fully loaded set in atomically. A handshake uses the set that was current
//! when it started, so no handshake fails during a swap; a set that fails to load (a file written
//! half-way, a key that does not match) is logged and the previous one keeps serving.

use crate::config::{CertificateConfig, ConfigError, ListenerConfig, Protocol};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Marks a request on an `http` listener that redirects everything to https on `port`.
#[derive(Clone, Copy, Debug)]
pub struct RedirectHttps {
    /// The https port (443 is left out of the URL).
    pub port: u16,
}

/// Where a request redirected to https goes: same host (its port replaced), path and query.
/// `None` when the request names no host.
pub fn https_location(parts: &http::request::Parts, port: u16) -> Option<String> {
    let authority = crate::headers::request_authority(&parts.uri, &parts.headers)?;
    let host = crate::headers::strip_port(authority);
    if host.is_empty() {
        return None;
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    Some(if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    })
}

/// ALPN protocols offered to clients, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// How often certificate files are checked for changes.
pub const CERT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a listener's certificates could not be loaded. Messages name the listener and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("listener {listener}: cannot read the {what} file {}: {source}", path.display())]
    Read {
        /// The listener's address.
        listener: SocketAddr,
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file was read but is not what it should be.
    #[error("listener {listener}: {what} file {}: {message}", path.display())]
    Bad {
        /// The listener's address.
        listener: SocketAddr,
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The TLS configuration could not be built.
    #[error("listener {listener}: {message}")]
    Config {
        /// The listener's address.
        listener: SocketAddr,
        /// What is wrong.
        message: String,
    },
}

/// The certificates of one listener, ready for lookups by SNI name.
#[derive(Debug)]
pub struct ListenerCerts {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`, longest suffix first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ListenerCerts {
    /// Loads every certificate of `listener` (an `https` listener with at least one certificate).
    pub fn load(listener: &ListenerConfig) -> Result<ListenerCerts, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        let mut first = None;
        for c in &listener.certificates {
            let key = Arc::new(load_certified_key(listener.address, c)?);
            first.get_or_insert_with(|| key.clone());
            if c.server_names.is_empty() {
                default = Some(key.clone());
            }
            for name in &c.server_names {
                match name.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_string(), key.clone())),
                    None => {
                        exact.insert(name.clone(), key.clone());
                    }
                }
            }
        }
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let default = default.or(first).ok_or_else(|| TlsError::Config {
            listener: listener.address,
            message: "an https listener needs at least one certificate".into(),
        })?;
        Ok(ListenerCerts {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for SNI `name` (any case), or the default one.
    pub fn lookup(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map_or_else(|| self.default.clone(), |(_, k)| k.clone())
    }
}

fn read(listener: SocketAddr, what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        listener,
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a chain and its key, and checks that the key belongs to the leaf certificate.
fn load_certified_key(
    listener: SocketAddr,
    c: &CertificateConfig,
) -> Result<CertifiedKey, TlsError> {
    let bad = |what: &'static str, path: &Path, message: String| TlsError::Bad {
        listener,
        what,
        path: path.to_path_buf(),
        message,
    };
    let pem = read(listener, "certificate", &c.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bad(
                "certificate",
                &c.cert,
                format!("not a PEM certificate: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(bad(
            "certificate",
            &c.cert,
            "no CERTIFICATE block in the file".into(),
        ));
    }
    let pem = read(listener, "key", &c.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad("key", &c.key, format!("no usable private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| bad("key", &c.key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        bad(
            "key",
            &c.key,
            format!("does not match the certificate {} ({e})", c.cert.display()),
        )
    })?;
    Ok(certified)
}

/// Loads the certificates of every `https` listener of a config, to refuse bad files when the
/// config is checked or reloaded. Errors point at the certificate's line in the config.
pub fn check_listeners(config: &crate::config::Config) -> Result<(), ConfigError> {
    for l in config
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Https)
    {
        if let Err(e) = ListenerCerts::load(l) {
            let at = match &e {
                TlsError::Read { path, .. } | TlsError::Bad { path, .. } => l
                    .certificates
                    .iter()
                    .find(|c| &c.cert == path || &c.key == path)
                    .map(|c| c.at),
                TlsError::Config { .. } => None,
            };
            return Err(ConfigError::Invalid {
                file: config.file.clone(),
                at: at.unwrap_or_default(),
                key: "[[listeners.certificates]]".into(),
                message: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Picks the certificate by SNI from the listener's current set.
#[derive(Debug)]
struct SniResolver(Arc<ArcSwap<ListenerCerts>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().lookup(hello.server_name()))
    }
}

/// The rustls server config of a listener whose certificates come from `certs`: TLS 1.2 and 1.3,
/// no client authentication, ALPN `h2` then `http/1.1`.
pub fn server_config(
    listener: SocketAddr,
    certs: Arc<ArcSwap<ListenerCerts>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config {
            listener,
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// What identifies a version of a listener's certificate files.
#[derive(Debug, PartialEq, Eq)]
struct FilesStamp(Vec<(PathBuf, Option<(u64, SystemTime)>)>);

impl FilesStamp {
    fn of(listener: &ListenerConfig) -> FilesStamp {
        let mut files = Vec::new();
        for c in &listener.certificates {
            for p in [&c.cert, &c.key] {
                let meta = std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                files.push((p.clone(), meta));
            }
        }
        FilesStamp(files)
    }
}

/// Keeps one listener's certificates current (see the module docs). Dropping it stops the polling.
pub struct CertWatcher {
    /// The current certificates.
    pub certs: Arc<ArcSwap<ListenerCerts>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CertWatcher {
    /// Serves `loaded` (the certificates of `listener`, just loaded) and polls for changes every
    /// `interval`. `current` returns the listener's config as of now (it changes on a config
    /// reload); `None` keeps the last one. Must be called inside a Tokio runtime.
    pub fn start(
        listener: &ListenerConfig,
        loaded: ListenerCerts,
        interval: Duration,
        current: impl Fn() -> Option<ListenerConfig> + Send + 'static,
    ) -> CertWatcher {
        let certs = Arc::new(ArcSwap::from_pointee(loaded));
        let mut stamp = FilesStamp::of(listener);
        let mut last = listener.clone();
        let shared = certs.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Some(l) = current() {
                    last = l;
                }
                let l = last.clone();
                // File reads are blocking: keep them off the async workers.
                let loaded = tokio::task::spawn_blocking(move || {
                    let now = FilesStamp::of(&l);
                    (now, l)
                })
                .await;
                let Ok((now, l)) = loaded else { continue };
                if now == stamp {
                    continue;
                }
                match tokio::task::spawn_blocking(move || ListenerCerts::load(&l)).await {
                    Ok(Ok(new)) => {
                        shared.store(Arc::new(new));
                        stamp = now;
                        tracing::info!(listener = %last.address, "certificates reloaded");
                    }
                    // Not recording the stamp: a file caught half-written is tried again.
                    Ok(Err(e)) => tracing::error!(
                        error = %e,
                        "certificate reload refused: the previous certificates keep serving"
                    ),
                    Err(_) => {}
                }
            }
        });
        CertWatcher { certs, task }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let k = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, k.cert.pem()).unwrap();
        std::fs::write(&key, k.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn listener(certs: Vec<CertificateConfig>) -> ListenerConfig {
        ListenerConfig {
            address: "127.0.0.1:8443".parse().unwrap(),
            protocol: Protocol::Https,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            certificates: certs,
            cluster: None,
            sni_routes: Vec::new(),
            redirect_https: None,
            proxy_protocol_from: Vec::new(),
            limits: Default::default(),
        }
    }

    fn cert(cert: &Path, key: &Path, names: &[&str]) -> CertificateConfig {
        CertificateConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            server_names: names.iter().map(|n| n.to_string()).collect(),
            at: Default::default(),
        }
    }

    #[test]
    fn https_locations_keep_host_path_and_query() {
        let parts = |uri: &str, host: Option<&str>| {
            let mut b = http::Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(
            https_location(&parts("/a/b?c=d", Some("example.com:8080")), 443).as_deref(),
            Some("https://example.com/a/b?c=d")
        );
        assert_eq!(
            https_location(&parts("/", Some("[::1]:80")), 8443).as_deref(),
            Some("https://[::1]:8443/")
        );
        assert_eq!(
            https_location(&parts("http://h2.example.com/x", None), 443).as_deref(),
            Some("https://h2.example.com/x")
        );
        assert_eq!(https_location(&parts("/", None), 443), None);
    }

    #[test]
    fn lookups_go_exact_then_longest_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let (a, ak) = cert_files(dir.path(), "a");
        let (b, bk) = cert_files(dir.path(), "b");
        let (c, ck) = cert_files(dir.path(), "c");
        let (d, dk) = cert_files(dir.path(), "d");
        let certs = ListenerCerts::load(&listener(vec![
            cert(&a, &ak, &["a.example.com"]),
            cert(&b, &bk, &["*.example.com"]),
            cert(&c, &ck, &["*.deep.example.com"]),
            cert(&d, &dk, &[]),
        ]))
        .unwrap();
        let leaf = |name: Option<&str>| certs.lookup(name).cert[0].clone();
        let expect = |path: &Path| {
            CertificateDer::pem_file_iter(path)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
        };
        assert_eq!(leaf(Some("A.Example.com.")), expect(&a));
        assert_eq!(leaf(Some("x.example.com")), expect(&b));
        assert_eq!(leaf(Some("x.deep.example.com")), expect(&c));
        assert_eq!(leaf(Some("example.com")), expect(&d));
        assert_eq!(leaf(None), expect(&d));
    }

    #[test]
    fn bad_files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (a, ak) = cert_files(dir.path(), "a");
        let (_, bk) = cert_files(dir.path(), "b");
        let missing = dir.path().join("missing.pem");
        let e = ListenerCerts::load(&listener(vec![cert(&missing, &ak, &[])])).unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("listener 127.0.0.1:8443: cannot read the certificate file"),
            "{m}"
        );
        assert!(m.contains("missing.pem"), "{m}");

        let e = ListenerCerts::load(&listener(vec![cert(&a, &bk, &[])])).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("b.key: does not match the certificate"), "{m}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let e = ListenerCerts::load(&listener(vec![cert(&junk, &ak, &[])])).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let e = ListenerCerts::load(&listener(vec![cert(&a, &junk, &[])])).unwrap_err();
        assert!(
            e.to_string().contains("junk.pem: no usable private key"),
            "{e}"
        );
    }
}

//! TLS to a cluster's endpoints (re-encryption): the rustls client config a cluster's
//! `[clusters.tls]` asks for, and the connector that speaks TLS for `https` upstream URIs and
//! clear text for `http` ones.

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sluicegate_config::UpstreamTlsConfig;
use std::path::Path;
use std::sync::Arc;

/// The connector of every cluster's HTTP client.
pub type UpstreamConnector = HttpsConnector<HttpConnector>;

fn read(cluster: &str, what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cluster `{cluster}`: cannot read the {what} file {}: {e}",
            path.display()
        )
    })
}

fn certs(cluster: &str, what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(cluster, what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cluster `{cluster}`: {what} file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cluster `{cluster}`: {what} file {}: no CERTIFICATE block",
            path.display()
        ));
    }
    Ok(certs)
}

/// The server name to verify for `endpoint` (`host:port`): the configured `server_name`, else
/// the endpoint's host.
pub fn server_name(tls: &UpstreamTlsConfig, endpoint: &str) -> Option<ServerName<'static>> {
    let host = match &tls.server_name {
        Some(n) => n.as_str(),
        None => {
            let host = crate::strip_port(endpoint);
            host.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
        }
    };
    ServerName::try_from(host.to_string()).ok()
}

/// The rustls client config for `tls`: trusted CAs (the file, or the system roots), and the
/// client certificate if any. TLS 1.2 and 1.3; the connector sets ALPN (`http/1.1`).
pub fn client_config(
    cluster: &str,
    tls: &UpstreamTlsConfig,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for c in certs(cluster, "CA", path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("cluster `{cluster}`: CA file {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(cluster, error = %e, "reading the system CA certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "cluster `{cluster}`: no system CA certificates found: set tls.ca_file"
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| format!("cluster `{cluster}`: {e}"))?
    .with_root_certificates(roots);
    let config = match &tls.client_cert {
        Some((cert, key)) => {
            let chain = certs(cluster, "client certificate", cert)?;
            let pem = read(cluster, "client key", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                format!(
                    "cluster `{cluster}`: client key file {}: {e}",
                    key.display()
                )
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "cluster `{cluster}`: client certificate {}: {e}",
                    cert.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Wraps `http` (which must not enforce the `http` scheme) in a connector that does TLS for
/// `https` URIs as `tls` says, with `config` (made by [`client_config`]). Without `tls` the cluster
/// is clear text: the TLS side is never used.
pub fn connector(
    cluster: &str,
    http: HttpConnector,
    tls: Option<(&UpstreamTlsConfig, rustls::ClientConfig)>,
) -> Result<UpstreamConnector, String> {
    let Some((tls, config)) = tls else {
        let unused = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        return Ok(hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(unused)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http));
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone())
                .map_err(|e| format!("cluster `{cluster}`: server_name `{name}`: {e}"))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    Ok(builder.enable_http1().wrap_connector(http))
}

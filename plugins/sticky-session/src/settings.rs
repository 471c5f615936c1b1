//! The settings both halves read (one table, so the balancer and the filter agree on the cookie),
//! and the keyed hash that turns an endpoint into an opaque cookie value.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluicegate_sdk::EndpointId;

/// The settings table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    secret: String,
    #[serde(default = "default_cookie")]
    cookie: String,
    #[serde(default = "default_path")]
    path: String,
    domain: Option<String>,
    max_age: Option<u64>,
    #[serde(default)]
    secure: bool,
    #[serde(default = "default_true")]
    http_only: bool,
    #[serde(default = "default_same_site")]
    same_site: String,
    cluster: Option<String>,
}

fn default_cookie() -> String {
    "sg_sticky".to_owned()
}

fn default_path() -> String {
    "/".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_same_site() -> String {
    "lax".to_owned()
}

/// The checked settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The cookie's name.
    pub cookie: String,
    /// Everything after `name=value` in the `Set-Cookie` header (`; Path=/; HttpOnly; ...`).
    pub attributes: String,
    /// The cluster this table is for, when set: the filter leaves other clusters' responses
    /// alone, and the name is part of the keyed hash.
    pub cluster: Option<String>,
    secret: String,
}

impl Settings {
    /// Parses and checks the settings (the TOML described in the crate docs).
    pub fn parse(config: &str) -> Result<Settings, String> {
        let raw: RawSettings = sluicegate_sdk::settings(config)?;
        if raw.secret.is_empty() {
            return Err(
                "secret: must not be empty (any string; proxies sharing it agree on cookie values)"
                    .into(),
            );
        }
        if !is_token(&raw.cookie) {
            return Err(format!("cookie: {:?} is not a cookie name", raw.cookie));
        }
        if !raw.path.starts_with('/') || !is_attribute_value(&raw.path) {
            return Err(format!(
                "path: {:?} must start with `/` and hold no `;` or control characters",
                raw.path
            ));
        }
        let mut attributes = format!("; Path={}", raw.path);
        if let Some(domain) = &raw.domain {
            if domain.is_empty() || !is_attribute_value(domain) || domain.contains(' ') {
                return Err(format!("domain: {domain:?} is not a domain"));
            }
            attributes.push_str(&format!("; Domain={domain}"));
        }
        match raw.max_age {
            Some(0) => {
                return Err("max_age: 0 would delete the cookie at once; leave max_age out for a cookie that lasts the browser session".into());
            }
            Some(secs) => attributes.push_str(&format!("; Max-Age={secs}")),
            None => {}
        }
        let same_site = match raw.same_site.to_ascii_lowercase().as_str() {
            "strict" => "Strict",
            "lax" => "Lax",
            "none" if !raw.secure => {
                return Err(
                    "same_site: \"none\" needs secure = true (browsers drop the cookie otherwise)"
                        .into(),
                );
            }
            "none" => "None",
            other => {
                return Err(format!(
                    "same_site: {other:?} is not \"strict\", \"lax\" or \"none\""
                ));
            }
        };
        if raw.secure {
            attributes.push_str("; Secure");
        }
        if raw.http_only {
            attributes.push_str("; HttpOnly");
        }
        attributes.push_str(&format!("; SameSite={same_site}"));
        if let Some(c) = &raw.cluster
            && c.trim().is_empty()
        {
            return Err("cluster: empty cluster name".into());
        }
        Ok(Settings {
            cookie: raw.cookie,
            attributes,
            cluster: raw.cluster,
            secret: raw.secret,
        })
    }

    /// The cookie value naming an endpoint: the first 64 bits of SHA-256 over the secret, the
    /// cluster setting and the endpoint id, in hex. Opaque without the secret, and the same in
    /// every proxy with the same settings and pool order.
    ///
    /// It is keyed on the id, not the address, because the filter half only learns the id of
    /// the endpoint that answered (`response.endpoint()`); see the crate docs.
    pub fn cookie_value(&self, id: EndpointId) -> String {
        let mut h = Sha256::new();
        h.update(b"sluicegate-sticky-v1\0");
        for part in [
            self.secret.as_bytes(),
            self.cluster.as_deref().unwrap_or("").as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(id.to_le_bytes());
        let digest = h.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `Set-Cookie` header value pinning a client to the endpoint named by `value`.
    pub fn set_cookie(&self, value: &str) -> String {
        format!("{}={value}{}", self.cookie, self.attributes)
    }
}

/// An HTTP token (RFC 9110), the syntax of cookie names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII and spaces, without `;` (which would start another attribute).
fn is_attribute_value(s: &str) -> bool {
    s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b';')
}

//! Which part of a request a hashing balancer hashes, from the `key` setting.

use sluicegate_sdk::Request;

use crate::address::{ClientAddress, ip_bytes};
use crate::hash::xxh64;

/// The request part to hash. Written in the settings as `"client-ip"`, `"path"`,
/// `"header:<name>"`, `"cookie:<name>"` or `"query:<name>"`.
///
/// When the part is missing from a request (no such header, cookie or query parameter), the
/// client's address is hashed instead, so such requests still stick to one endpoint per client.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum HashKey {
    /// The client's address (see [`ClientAddress`]).
    #[default]
    ClientIp,
    /// The path, without the query string.
    Path,
    /// The first value of a header (name matched case-insensitively).
    Header(String),
    /// The value of a cookie.
    Cookie(String),
    /// The first value of a query parameter, as sent (not percent-decoded).
    Query(String),
}

impl HashKey {
    /// Parses the setting's text.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        let named = |kind: &str, name: &str, make: fn(String) -> HashKey| {
            if name.is_empty() {
                Err(format!(
                    "key `{text}`: `{kind}:` needs a name after the colon"
                ))
            } else {
                Ok(make(name.to_owned()))
            }
        };
        match text.split_once(':') {
            None if text == "client-ip" => Ok(HashKey::ClientIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) => named("header", name, HashKey::Header),
            Some(("cookie", name)) => named("cookie", name, HashKey::Cookie),
            Some(("query", name)) => named("query", name, HashKey::Query),
            _ => Err(format!(
                "unknown key `{text}`: expected client-ip, path, header:<name>, cookie:<name> or query:<name>"
            )),
        }
    }

    /// The 64-bit hash of this key in `req` (reads one request field, or two when it is missing).
    pub fn hash(&self, req: &Request<'_>, client: &ClientAddress) -> u64 {
        let value = match self {
            HashKey::ClientIp => None,
            HashKey::Path => Some(req.path()),
            HashKey::Header(name) => req.header(name),
            HashKey::Cookie(name) => req.cookie(name),
            HashKey::Query(name) => req.query().and_then(|q| query_param(&q, name)),
        };
        match value {
            Some(v) => xxh64(v.as_bytes(), 0),
            None => xxh64(&ip_bytes(client.of(req)), 0),
        }
    }
}

impl TryFrom<String> for HashKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        HashKey::parse(&text)
    }
}

/// The first value of `name` in a query string (`a=1&b=2`); `b` alone counts as an empty value.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::TestRequest;

    fn h(key: &str, req: &TestRequest) -> u64 {
        HashKey::parse(key)
            .unwrap()
            .hash(&req.as_request(), &ClientAddress::default())
    }

    #[test]
    fn parses_every_kind_and_refuses_the_rest() {
        assert_eq!(HashKey::parse("client-ip"), Ok(HashKey::ClientIp));
        assert_eq!(HashKey::parse("path"), Ok(HashKey::Path));
        assert_eq!(
            HashKey::parse("header:x-user"),
            Ok(HashKey::Header("x-user".into()))
        );
        assert_eq!(
            HashKey::parse("cookie:session"),
            Ok(HashKey::Cookie("session".into()))
        );
        assert_eq!(HashKey::parse("query:u"), Ok(HashKey::Query("u".into())));
        for bad in ["header:", "ip", "body:x", "", "Path"] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_the_configured_part_only() {
        let a = TestRequest::get("/a?user=1&x=2")
            .header("x-user", "alice")
            .cookie("session", "s1");
        let b = TestRequest::get("/b?x=3&user=1")
            .header("x-user", "alice")
            .cookie("session", "s2");
        assert_eq!(h("header:X-User", &a), h("header:x-user", &b));
        assert_eq!(h("query:user", &a), h("query:user", &b));
        assert_ne!(h("query:x", &a), h("query:x", &b));
        assert_ne!(h("cookie:session", &a), h("cookie:session", &b));
        assert_ne!(h("path", &a), h("path", &b));
    }

    #[test]
    fn a_missing_part_falls_back_to_the_client_address() {
        let from = |ip: &str| TestRequest::get("/").client_ip(ip.parse().unwrap());
        let one = from("192.0.2.1");
        assert_eq!(h("header:x-user", &one), h("client-ip", &one));
        assert_eq!(h("query:user", &one), h("client-ip", &one));
        assert_ne!(h("cookie:s", &one), h("cookie:s", &from("192.0.2.2")));
    }
}

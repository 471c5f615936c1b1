//! Header rules of a proxy: hop-by-hop headers stop here (RFC 9110 §7.6.1), forwarding headers record
//! the client (X-Forwarded-For, X-Forwarded-Proto, Forwarded), and upgrades keep what they need.

use crate::client_io::ClientInfo;
use bytes::Bytes;
use http::header::{CONNECTION, Entry, HOST, HeaderMap, HeaderName, HeaderValue, UPGRADE};

/// Whether `name` (lower case, as `HeaderName` keeps it) applies to one connection only, besides
/// `Connection` and the headers it names. A string match is a length switch and one comparison.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-authenticate-info"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `Forwarded`.
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `Connection` lists `token` (case-insensitive).
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` and `Upgrade`).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`, `Proxy-*`,
/// `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`. With `keep_upgrade`, `Upgrade` stays and
/// `Connection: upgrade` is set again, as a WebSocket handshake needs.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names first: most messages carry none of these (or only `Connection`),
    // and a removal by name hashes and probes even when the name is absent.
    let (mut connection, mut others) = (false, false);
    for name in headers.keys() {
        match name.as_str() {
            "connection" => connection = true,
            n if is_hop_by_hop(n) => others = true,
            _ => {}
        }
    }
    if connection {
        remove_connection(headers, keep_upgrade);
    }
    if others {
        let found: Vec<HeaderName> = headers
            .keys()
            .filter(|n| is_hop_by_hop(n.as_str()) && !(keep_upgrade && *n == UPGRADE))
            .cloned()
            .collect();
        for name in found {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes `Connection` and the headers its values name.
fn remove_connection(headers: &mut HeaderMap, keep_upgrade: bool) {
    let Entry::Occupied(entry) = headers.entry(CONNECTION) else {
        return;
    };
    let (_, mut values) = entry.remove_entry_mult();
    let first = values.next();
    // Several Connection lines are rare: the others are copied out (no allocation for none).
    let others: Vec<HeaderValue> = values.collect();
    for value in first.iter().chain(&others) {
        remove_named(headers, value, keep_upgrade);
    }
}

fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue, keep_upgrade: bool) {
    // `keep-alive`, the usual token, names a header the hop-by-hop pass removes anyway.
    if connection.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
        return;
    }
    let Ok(text) = connection.to_str() else {
        return;
    };
    for token in text.split(',').map(str::trim) {
        if token.is_empty()
            || token.eq_ignore_ascii_case("keep-alive")
            || (keep_upgrade && token.eq_ignore_ascii_case("upgrade"))
        {
            continue;
        }
        headers.remove(token);
    }
}

/// Adds the forwarding headers for a request from `client`: appends the client to
/// `X-Forwarded-For` and `Forwarded` (with the `Host` asked for), and sets `X-Forwarded-Proto`.
pub fn add_forwarding(headers: &mut HeaderMap, client: &ClientInfo) {
    // One lookup for the read and the write: a name outside the standard set is hashed byte by byte.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(client.xff.clone());
        }
        // A first line that is not text is replaced by this client alone.
        Entry::Occupied(mut e) if e.get().to_str().is_err() => {
            e.insert(client.xff.clone());
        }
        // Behind another proxy: the list so far (its text lines, joined), then this client.
        Entry::Occupied(mut e) => {
            let mut list = Vec::new();
            for prev in e.iter().filter_map(|v| v.to_str().ok()) {
                list.extend_from_slice(prev.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(client.xff.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(list)) {
                e.insert(v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    let host = headers.get(HOST);
    if let (Some(host), Some((cached, element))) = (host, client.forwarded_host.get())
        && host == cached
    {
        headers.append(FORWARDED, element.clone());
        return;
    }
    let first_host = host
        .filter(|_| client.forwarded_host.get().is_none())
        .cloned();
    let element = match host.and_then(|h| h.to_str().ok()).map(strip_port) {
        Some(h)
            if h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',') =>
        {
            const HOST_PARAM: &[u8] = b";host=";
            let prefix = client.forwarded.as_bytes();
            let mut element = Vec::with_capacity(prefix.len() + HOST_PARAM.len() + h.len());
            element.extend_from_slice(prefix);
            element.extend_from_slice(HOST_PARAM);
            element.extend_from_slice(h.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(element)).ok()
        }
        _ => Some(client.forwarded.clone()),
    };
    if let Some(v) = element {
        if let Some(host) = first_host {
            let _ = client.forwarded_host.set((host, v.clone()));
        }
        headers.append(FORWARDED, v);
    }
}

/// The host the client asked for (`Host`, else the URI's authority as HTTP/2 sends it), port included.
pub fn request_authority<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

pub use sluicegate_upstream::strip_port;

/// Whether `host` may be a `Host` value: a host (name, IPv4, or an IP literal in brackets) and an
/// optional port, with only the bytes RFC 3986's authority allows (no user info checks, no
/// parsing, no allocation: it runs on every HTTP/1 request). `a b`, control bytes, `/`, `?`, `#`,
/// `@` and an empty value are refused, as haproxy and nginx answer them 400.
pub(crate) fn is_valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

/// Takes an upgrade's headers out of a request that goes on as a plain one (a route with
/// `upgrade = false`); [`strip_hop_by_hop`] left `Upgrade` and set `Connection: upgrade`.
pub(crate) fn drop_upgrade(headers: &mut HeaderMap) {
    headers.remove(UPGRADE);
    headers.remove(CONNECTION);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, SocketAddr};

    #[test]
    fn host_values_are_checked_byte_by_byte() {
        for ok in [
            "example.com",
            "example.com:8080",
            "10.0.0.1",
            "[::1]:443",
            "xn--bcher-kva.example",
        ] {
            assert!(is_valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a?b", "a#b", "u@h", "a\tb", "h\u{7f}"] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["content-type", "x-kept"]);
    }

    #[test]
    fn every_connection_line_is_read_whatever_comes_first() {
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("connection", "x-second"),
            ("x-second", "1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-authenticate-info",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "connection",
        ] {
            let mut h = map(&[("x-kept", "yes")]);
            h.insert(name, HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h, false);
            assert!(!h.contains_key(name), "{name} left");
            assert!(h.contains_key("x-kept"));
        }
        let mut h = map(&[("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
    }

    #[test]
    fn upgrades_keep_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, x-private"),
            ("upgrade", "websocket"),
            ("x-private", "1"),
        ]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert!(!h.contains_key("x-private"));
        assert!(
            !is_upgrade_request(&map(&[("upgrade", "websocket")])),
            "Upgrade alone is not a request to upgrade"
        );
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        h.insert(HOST, HeaderValue::from_static("example.com:8080"));
        let client = ClientInfo::new(
            "192.0.2.7:5555".parse().unwrap(),
            "http",
            Default::default(),
        );
        add_forwarding(&mut h, &client);
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1, 192.0.2.7");
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(
            h.get(FORWARDED).unwrap(),
            "for=192.0.2.7;proto=http;host=example.com"
        );

        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &ClientInfo::new(
                "[2001:db8::1]:80".parse().unwrap(),
                "https",
                Default::default(),
            ),
        );
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "2001:db8::1");
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "https");
        assert_eq!(
            h.get(FORWARDED).unwrap(),
            "for=\"[2001:db8::1]\";proto=https"
        );
    }

    /// The per-request formatting `add_forwarding` did before [`ClientInfo`]: its output must not
    /// change.
    fn add_forwarding_reference(headers: &mut HeaderMap, client: SocketAddr, proto: &'static str) {
        let ip = client.ip();
        let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if headers.get_all(X_FORWARDED_FOR).iter().count() == 1 => {
                format!("{prev}, {ip}")
            }
            Some(_) => {
                let prev: Vec<&str> = headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                format!("{}, {ip}", prev.join(", "))
            }
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::try_from(xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port);
        let element = match host {
            Some(h)
                if h.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',') =>
            {
                format!("for={node};proto={proto};host={h}")
            }
            _ => format!("for={node};proto={proto}"),
        };
        if let Ok(v) = HeaderValue::try_from(element) {
            headers.append(FORWARDED, v);
        }
    }

    #[test]
    fn forwarding_headers_match_the_per_request_formatting() {
        let non_text = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        let requests: Vec<HeaderMap> = vec![
            HeaderMap::new(),
            map(&[("host", "example.com")]),
            map(&[("host", "Example.COM:8443")]),
            map(&[("host", "[::1]:8080")]),
            map(&[("host", "bad;host")]),
            map(&[("host", "a\"b")]),
            map(&[("host", "")]),
            map(&[("x-forwarded-for", "10.0.0.1"), ("host", "h")]),
            map(&[
                ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
                ("x-forwarded-for", "10.0.0.3"),
                ("forwarded", "for=10.0.0.1"),
                ("forwarded", "for=10.0.0.3;proto=https"),
            ]),
            {
                let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
                h.append(X_FORWARDED_FOR, non_text.clone());
                h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
                h
            },
            {
                // A first line that is not text is replaced, as before.
                let mut h = HeaderMap::new();
                h.append(X_FORWARDED_FOR, non_text.clone());
                h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.9"));
                h.insert(HOST, non_text.clone());
                h
            },
        ];
        let clients = ["192.0.2.7:5555", "[2001:db8::1]:80", "[::ffff:10.1.2.3]:1"];
        for client in clients {
            let addr: SocketAddr = client.parse().unwrap();
            for proto in ["http", "https"] {
                // One `ClientInfo` for every request, as on one connection.
                // Each request twice, in both orders: every host is once the first seen (and
                // remembered) and once a repeat or a different one.
                let info = ClientInfo::new(addr, proto, Default::default());
                for req in requests.iter().chain(requests.iter().rev()) {
                    let (mut got, mut want) = (req.clone(), req.clone());
                    add_forwarding(&mut got, &info);
                    add_forwarding_reference(&mut want, addr, proto);
                    assert_eq!(got, want, "{client} {proto} {req:?}");
                }
            }
        }
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}

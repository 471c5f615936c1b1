//! The PROXY protocol header (HAProxy's, v1 text and v2 binary) sent to an endpoint ahead of an L4
//! connection, so the backend sees the client's address rather than the proxy's.

use crate::config::ProxyProtocol;
use std::net::{IpAddr, SocketAddr};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Both addresses in one family: IPv4 when both are, else both as IPv6 (v4-mapped).
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() && b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The header for a connection from `client` to `local` (the address the client connected to).
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    match version {
        ProxyProtocol::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            out.push(0x21);
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V6(v6) => v6.octets(),
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    };
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_are_text_lines() {
        let h = header(
            ProxyProtocol::V1,
            "192.0.2.1:5000".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
        let h = header(
            ProxyProtocol::V1,
            "[2001:db8::1]:5000".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        );
        assert_eq!(
            h,
            b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 5000 443\r\n"
        );
    }

    #[test]
    fn v2_headers_follow_the_spec_layout() {
        let h = header(
            ProxyProtocol::V2,
            "192.0.2.1:5000".parse().unwrap(),
            "198.51.100.2:443".parse().unwrap(),
        );
        let mut expect = V2_SIGNATURE.to_vec();
        expect.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2]);
        expect.extend_from_slice(&[0x13, 0x88, 0x01, 0xbb]);
        assert_eq!(h, expect);

        let h = header(
            ProxyProtocol::V2,
            "[2001:db8::1]:5000".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h[16], 0x20);
        assert_eq!(h[31], 1);
        assert_eq!(h[47], 2);
        assert_eq!(&h[48..], &[0x13, 0x88, 0x01, 0xbb]);
    }
}

/// Why a PROXY protocol header from a front load balancer was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The peer is not one of the listener's trusted front load balancers.
    #[error("{0} may not send a PROXY protocol header (not in proxy_protocol_from)")]
    Untrusted(IpAddr),
    /// The connection does not start with a valid header.
    #[error("bad PROXY protocol header: {0}")]
    Bad(&'static str),
    /// No complete header in time.
    #[error("no PROXY protocol header in time")]
    Timeout,
    /// Reading failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The longest v1 header (spec: 107 bytes with CRLF).
const V1_MAX: usize = 107;
/// The most address and TLV bytes accepted after a v2 header's fixed part.
const V2_MAX_LEN: usize = 4096;

/// Parses a v1 line (with its CRLF). `Ok(None)` for `PROXY UNKNOWN`.
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let bad = HeaderError::Bad;
    let text = std::str::from_utf8(line).map_err(|_| bad("v1 is not text"))?;
    let text = text.strip_suffix("\r\n").ok_or(bad("v1 without CRLF"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad("v1 without PROXY"));
    }
    let family = parts.next().ok_or(bad("v1 without a family"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields[..] else {
        return Err(bad("v1 needs 4 address fields"));
    };
    let ip: IpAddr = src.parse().map_err(|_| bad("v1 source address"))?;
    let port: u16 = sport.parse().map_err(|_| bad("v1 source port"))?;
    match (family, ip) {
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(Some(SocketAddr::new(ip, port))),
        _ => Err(bad("v1 family does not match the address")),
    }
}

/// Parses a v2 header: `fixed` is its first 16 bytes, `rest` the `len` bytes after them.
/// `Ok(None)` for a LOCAL command or an address family other than TCP/UDP over IPv4/IPv6.
pub fn parse_v2(fixed: &[u8; 16], rest: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let bad = HeaderError::Bad;
    if fixed[..12] != V2_SIGNATURE {
        return Err(bad("v2 signature"));
    }
    if fixed[12] >> 4 != 2 {
        return Err(bad("v2 version"));
    }
    match fixed[12] & 0x0f {
        0 => return Ok(None),
        1 => {}
        _ => return Err(bad("v2 command")),
    }
    let addr = |ip: IpAddr, at: usize| {
        let port = u16::from_be_bytes([rest[at], rest[at + 1]]);
        Some(SocketAddr::new(ip, port))
    };
    match fixed[13] >> 4 {
        1 if rest.len() >= 12 => {
            let ip = std::net::Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            Ok(addr(IpAddr::V4(ip), 8))
        }
        2 if rest.len() >= 36 => {
            let octets: [u8; 16] = rest[..16].try_into().expect("16 bytes");
            Ok(addr(IpAddr::V6(octets.into()), 32))
        }
        1 | 2 => Err(bad("v2 address block too short")),
        _ => Ok(None),
    }
}

/// Reads a v1 or v2 header off `stream`, byte-exact (nothing after it is consumed), and returns
/// the client address it names (`None`: the front load balancer sent no address).
pub async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, HeaderError> {
    use tokio::io::AsyncReadExt;
    let mut start = [0u8; 5];
    stream.read_exact(&mut start).await?;
    if &start == b"PROXY" {
        let mut line = start.to_vec();
        // Byte by byte: the line's end is unknown and the bytes after it are not ours.
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(HeaderError::Bad("v1 line too long"));
            }
            line.push(stream.read_u8().await?);
        }
        return parse_v1(&line);
    }
    if start != V2_SIGNATURE[..5] {
        return Err(HeaderError::Bad("neither v1 nor v2"));
    }
    let mut fixed = [0u8; 16];
    fixed[..5].copy_from_slice(&start);
    stream.read_exact(&mut fixed[5..]).await?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_LEN {
        return Err(HeaderError::Bad("v2 header too long"));
    }
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await?;
    parse_v2(&fixed, &rest)
}

/// For a listener with `proxy_protocol_from` (`from` not empty): checks the peer is trusted,
/// reads its header within `timeout`, and returns the client address (the peer's when the header
/// names none). With `from` empty, returns `peer` untouched.
pub async fn accept(
    from: &[crate::config::Cidr],
    timeout: std::time::Duration,
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, HeaderError> {
    if from.is_empty() {
        return Ok(peer);
    }
    if !from.iter().any(|c| c.contains(peer.ip())) {
        return Err(HeaderError::Untrusted(peer.ip()));
    }
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(r) => Ok(r?.unwrap_or(peer)),
        Err(_) => Err(HeaderError::Timeout),
    }
}

#[cfg(test)]
mod read_tests {
    use super::*;

    #[tokio::test]
    async fn headers_we_send_read_back_and_leave_the_payload() {
        for (version, client) in [
            (ProxyProtocol::V1, "192.0.2.1:5000"),
            (ProxyProtocol::V2, "192.0.2.1:5000"),
            (ProxyProtocol::V1, "[2001:db8::1]:6000"),
            (ProxyProtocol::V2, "[2001:db8::1]:6000"),
        ] {
            let client: SocketAddr = client.parse().unwrap();
            let local = if client.is_ipv4() {
                "198.51.100.2:443"
            } else {
                "[2001:db8::2]:443"
            };
            let mut bytes = header(version, client, local.parse().unwrap());
            bytes.extend_from_slice(b"payload");
            let mut reader = &bytes[..];
            assert_eq!(
                read_header(&mut reader).await.unwrap(),
                Some(client),
                "{version:?}"
            );
            assert_eq!(reader, b"payload");
        }
    }

    #[tokio::test]
    async fn unknown_local_and_bad_headers() {
        let mut r = &b"PROXY UNKNOWN\r\nrest"[..];
        assert_eq!(read_header(&mut r).await.unwrap(), None);
        assert_eq!(r, b"rest");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read_header(&mut &local[..]).await.unwrap(), None);

        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
        ] {
            assert!(
                read_header(&mut &bad[..]).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [&b"PROXY TCP4 "[..], &[b'1'; 200]].concat();
        assert!(matches!(
            read_header(&mut &long[..]).await,
            Err(HeaderError::Bad("v1 line too long"))
        ));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(read_header(&mut &short[..]).await.is_err());
    }
}

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

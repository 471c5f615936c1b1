//! The client's address as hashing balancers see it: the peer's address, or the first
//! `X-Forwarded-For` entry when the peer is a trusted proxy (a CIDR list in the settings).

use std::net::{IpAddr, SocketAddr};

use sluicegate_sdk::Request;

/// An address block such as `10.0.0.0/8` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` or a bare address.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address block (like 10.0.0.0/8)"))?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` is in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Cidr::parse(&text)
    }
}

/// Finds the client's address: the peer's, unless the peer is one of `trusted_proxies`, in which
/// case the first (leftmost, the original client's) `X-Forwarded-For` entry, when it parses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAddress {
    trusted_proxies: Vec<Cidr>,
}

impl ClientAddress {
    /// Trusts `X-Forwarded-For` from peers in these blocks (none: always the peer's address).
    pub fn new(trusted_proxies: Vec<Cidr>) -> Self {
        ClientAddress { trusted_proxies }
    }

    /// The client's address for this request, IPv4-mapped IPv6 folded to IPv4.
    pub fn of(&self, req: &Request<'_>) -> IpAddr {
        let peer = req.client_ip().to_canonical();
        if !self.trusted_proxies.iter().any(|c| c.contains(peer)) {
            return peer;
        }
        req.header("x-forwarded-for")
            .and_then(|xff| parse_forwarded(xff.split(',').next()?.trim()))
            .map_or(peer, |ip| ip.to_canonical())
    }
}

/// `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711` or `[2001:db8::1]:4711`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The bytes hashed for an address: 4 for IPv4, 16 for IPv6.
pub(crate) fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_sdk::testing::TestRequest;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_contains_its_block_only() {
        let v4 = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(v4.contains(ip("10.1.255.3")));
        assert!(v4.contains(ip("::ffff:10.1.0.9")));
        assert!(!v4.contains(ip("10.2.0.1")));
        assert!(!v4.contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("203.0.113.9"))
        );
        let single = Cidr::parse("192.0.2.7").unwrap();
        assert!(single.contains(ip("192.0.2.7")) && !single.contains(ip("192.0.2.8")));
    }

    #[test]
    fn cidr_refuses_nonsense() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("2001:db8::/129").is_err());
        assert!(Cidr::parse("example.com/8").is_err());
    }

    #[test]
    fn forwarded_for_is_used_only_from_trusted_peers() {
        let client = ClientAddress::new(vec![Cidr::parse("10.0.0.0/8").unwrap()]);
        let via_proxy = TestRequest::get("/")
            .client_ip(ip("10.0.0.5"))
            .header("X-Forwarded-For", "203.0.113.9, 10.0.0.4");
        assert_eq!(client.of(&via_proxy.as_request()), ip("203.0.113.9"));
        let direct = via_proxy.clone().client_ip(ip("198.51.100.1"));
        assert_eq!(client.of(&direct.as_request()), ip("198.51.100.1"));
        let v6_with_port = TestRequest::get("/")
            .client_ip(ip("10.9.9.9"))
            .header("x-forwarded-for", "[2001:db8::7]:4711");
        assert_eq!(client.of(&v6_with_port.as_request()), ip("2001:db8::7"));
        let garbage = TestRequest::get("/")
            .client_ip(ip("10.9.9.9"))
            .header("x-forwarded-for", "unknown");
        assert_eq!(client.of(&garbage.as_request()), ip("10.9.9.9"));
        let untrusting = ClientAddress::default();
        assert_eq!(untrusting.of(&via_proxy.as_request()), ip("10.0.0.5"));
    }
}

//! Which address a request came from, for the per-source failure limit:
//! the socket peer, unless the peer is a proxy the operator trusts. Pure.
//!
//! - Standalone: `X-Forwarded-For` is read only when the peer is in
//!   `BROKER_TRUSTED_PROXIES`; then the entries are walked from the right
//!   (each proxy appends the address it received the connection from), past
//!   every trusted proxy, and the first untrusted address is the client.
//!   Entries a client wrote itself sit further left and are never reached.
//! - Under the Functions host the peer is always the host on loopback. App
//!   Service's front end sets `client-ip` to the address of the connection it
//!   accepted, overwriting any value a client sent, so that header is the
//!   client; without it (a plan whose front end does not set it), the last
//!   `X-Forwarded-For` entry, which the front end appends (anything a client
//!   sends in the header stays to its left).

use std::net::IpAddr;

/// An address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        match (self.addr, ip) {
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

/// How the source address is found.
#[derive(Debug, Clone, Default)]
pub struct SourceRule {
    /// Standalone: proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpBlock>,
    /// Under the Functions host: the last `X-Forwarded-For` entry.
    pub functions_host: bool,
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
pub fn parse_forwarded(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    s.parse::<std::net::SocketAddr>().ok().map(|sa| sa.ip())
}

impl SourceRule {
    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|b| b.contains(ip))
    }

    /// The client's address, from the socket `peer` and the
    /// `X-Forwarded-For` header values in order of arrival.
    pub fn client(&self, peer: Option<IpAddr>, forwarded: &[&str]) -> Option<IpAddr> {
        self.client_from(peer, forwarded, None)
    }

    /// [`Self::client`], with the `client-ip` header: under the Functions host,
    /// App Service's front end sets it to the address it accepted the
    /// connection from, overwriting any value a client sent, so it is believed
    /// first there (and ignored standalone, where anyone can send it).
    pub fn client_from(
        &self,
        peer: Option<IpAddr>,
        forwarded: &[&str],
        client_ip: Option<&str>,
    ) -> Option<IpAddr> {
        if self.functions_host {
            if let Some(ip) = client_ip.and_then(parse_forwarded) {
                return Some(ip);
            }
        }
        // At most this many hops are looked at (a header can be long).
        const MAX_HOPS: usize = 32;
        let mut entries = forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .take(MAX_HOPS);
        if self.functions_host {
            return entries.next().and_then(parse_forwarded).or(peer);
        }
        let mut client = peer?;
        if !self.trusted(client) {
            return Some(client);
        }
        for e in entries {
            match parse_forwarded(e) {
                Some(ip) => {
                    client = ip;
                    if !self.trusted(ip) {
                        break;
                    }
                }
                // Garbage from a hop: what the last trusted proxy saw stands.
                None => break,
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let b = IpBlock::parse("10.0.0.0/8").unwrap();
        assert!(b.contains(ip("10.200.1.1")) && !b.contains(ip("11.0.0.1")));
        assert!(b.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped");
        assert!(IpBlock::parse("::1").unwrap().contains(ip("::1")));
        assert!(IpBlock::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["", "10.0.0.0/33", "nope", "1.2.3.4/x", "::/129"] {
            assert_eq!(IpBlock::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn standalone_believes_only_trusted_proxies() {
        let none = SourceRule::default();
        // Loopback is not trusted by default: a local client cannot name another address.
        assert_eq!(
            none.client(Some(ip("127.0.0.1")), &["203.0.113.9"]),
            Some(ip("127.0.0.1"))
        );
        let rule = SourceRule {
            trusted_proxies: vec![IpBlock::parse("10.0.0.0/8").unwrap()],
            functions_host: false,
        };
        // A client's own entries sit left of the proxies' and are never reached.
        assert_eq!(
            rule.client(
                Some(ip("10.0.0.2")),
                &["198.51.100.1, 203.0.113.9", "10.0.0.3"]
            ),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            rule.client(Some(ip("192.0.2.1")), &["203.0.113.9"]),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            rule.client(Some(ip("10.0.0.2")), &["junk"]),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(rule.client(Some(ip("10.0.0.2")), &[]), Some(ip("10.0.0.2")));
    }

    #[test]
    fn the_functions_host_takes_the_last_entry() {
        let rule = SourceRule {
            trusted_proxies: vec![],
            functions_host: true,
        };
        assert_eq!(
            rule.client(Some(ip("127.0.0.1")), &["6.6.6.6, 203.0.113.9:4711"]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            rule.client(Some(ip("127.0.0.1")), &[]),
            Some(ip("127.0.0.1"))
        );
        // The front end's client-ip comes first; garbage in it falls back to the list.
        assert_eq!(
            rule.client_from(
                Some(ip("127.0.0.1")),
                &["6.6.6.6, 203.0.113.9"],
                Some("198.51.100.7:50123")
            ),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            rule.client_from(Some(ip("127.0.0.1")), &["203.0.113.9"], Some("junk")),
            Some(ip("203.0.113.9"))
        );
        // Standalone, anyone can send client-ip: it is ignored.
        assert_eq!(
            SourceRule::default().client_from(Some(ip("192.0.2.1")), &[], Some("198.51.100.7")),
            Some(ip("192.0.2.1"))
        );
    }
}

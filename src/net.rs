//! Client addresses: network ranges (CIDRs) and the key a client is counted
//! under. Pure functions on `std::net` types; imports nothing from the crate.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// A network such as `10.0.0.0/8` or `2001:db8::/32`. A bare address is a
/// network of one (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, with the host bits cleared.
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True if `ip` is inside this network. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`, as a dual-stack socket reports IPv4 peers) match
    /// IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(n)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network like 10.0.0.0/8"))?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let net = match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        };
        if net != ip {
            return Err(format!(
                "{s:?} has host bits set; the network is {net}/{prefix}"
            ));
        }
        Ok(Cidr { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// True if any of `nets` contains `ip`.
pub(crate) fn any_contains(nets: &[Cidr], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

/// An IPv4 address, or an IPv6 network: the /64 an address belongs to
/// (`ClientKey::of`), or the /56 and /48 around it (`ClientKey::wider`). A
/// /64 is what one subscriber or host is routinely given, and any address
/// in it can be picked at will, so counting single IPv6 addresses would
/// count nothing; but one subscriber often holds a /56 or a /48 (256 or
/// 65,536 /64s), so those get bounded shares of their own.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, from dual-stack sockets)
/// count as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    /// The IPv4 address, or the upper 64 bits of the IPv6 address with the
    /// bits past `prefix` cleared.
    bits: u64,
    /// 0 for IPv4; 64, 56 or 48 for an IPv6 network.
    prefix: u8,
}

/// The IPv6 networks wider than a /64 that have a share of their own, with
/// how many times a /64's share each may hold (see `ClientKey::wider`).
pub(crate) const WIDER_V6: [(u8, usize); 2] = [(56, 4), (48, 16)];

impl ClientKey {
    #[inline]
    pub(crate) fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(a) => ClientKey {
                bits: u64::from(u32::from(a)),
                prefix: 0,
            },
            IpAddr::V6(a) => ClientKey {
                bits: u64::try_from(u128::from(a) >> 64).unwrap_or(0),
                prefix: 64,
            },
        }
    }

    /// For an IPv6 /64, the /56 and the /48 it belongs to (in the order of
    /// `WIDER_V6`); `None` for IPv4, whose addresses are scarce enough to
    /// be counted one by one.
    #[inline]
    pub(crate) fn wider(self) -> Option<[ClientKey; 2]> {
        if self.prefix != 64 {
            return None;
        }
        Some(WIDER_V6.map(|(prefix, _)| ClientKey {
            bits: self.bits & (u64::MAX << (64 - u32::from(prefix))),
            prefix,
        }))
    }

    /// Two words that identify the key, for hashing.
    pub(crate) fn words(self) -> (u64, u64) {
        (self.bits, u64::from(self.prefix))
    }

    /// The address, or for IPv6 the network's first address.
    pub(crate) fn ip(self) -> IpAddr {
        if self.prefix != 0 {
            IpAddr::V6(Ipv6Addr::from(u128::from(self.bits) << 64))
        } else {
            let v4 = u32::try_from(self.bits).unwrap_or(u32::MAX);
            IpAddr::V4(v4.into())
        }
    }

    /// `10.0.0.7`, or `2001:db8:1:2::/64`: for log lines and audit reasons.
    pub(crate) fn describe(self) -> String {
        if self.prefix != 0 {
            format!("{}/{}", self.ip(), self.prefix)
        } else {
            self.ip().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses() {
        let n: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.255.1.2")));
        assert!(n.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(!n.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
    }

    #[test]
    fn bad_networks_are_refused_clearly() {
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "nonsense",
            "::/129",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:10.0.0.1")),
            ClientKey::of(ip("10.0.0.1"))
        );
    }
}

#[cfg(test)]
mod client_key_tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_counts_per_64() {
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2:a:b:c:d"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::99").describe(), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2::99").ip(),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv4_counts_per_address() {
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("10.0.0.1").describe(), "10.0.0.1");
        // A dual-stack socket's mapped address is the IPv4 client.
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        // No IPv6 /64 collides with an IPv4 address.
        assert_ne!(key("::"), key("0.0.0.0"));
        assert_ne!(key("::a00:1"), key("10.0.0.1"));
        assert!(key("10.0.0.1").wider().is_none());
    }

    #[test]
    fn a_64_lies_in_a_56_and_a_48() {
        let [n56, n48] = key("2001:db8:1:2ff::1").wider().unwrap();
        assert_eq!(n56.describe(), "2001:db8:1:200::/56");
        assert_eq!(n48.describe(), "2001:db8:1::/48");
        // Every /64 of the /56 shares it; the next /56 of the /48 does not.
        assert_eq!(key("2001:db8:1:200::9").wider().unwrap()[0], n56);
        assert_ne!(key("2001:db8:1:300::9").wider().unwrap()[0], n56);
        assert_eq!(key("2001:db8:1:ff00::9").wider().unwrap()[1], n48);
        assert_ne!(key("2001:db8:2::9").wider().unwrap()[1], n48);
        // A /56 and a /64 with the same first address are different keys.
        assert_ne!(n56, key("2001:db8:1:200::"));
    }
}

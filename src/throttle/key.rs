//! Who a throttle counts.

use std::net::{IpAddr, Ipv6Addr};

/// An IPv4 address, or the /64 an IPv6 address belongs to. A /64 is what
/// one subscriber or host is routinely given, and any address in it can be
/// picked at will, so counting single IPv6 addresses would count nothing.
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, from dual-stack sockets)
/// count as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    /// The IPv4 address, or the upper 64 bits of the IPv6 address.
    bits: u64,
    v6: bool,
}

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(a) => ClientKey {
                bits: u64::from(u32::from(a)),
                v6: false,
            },
            IpAddr::V6(a) => {
                let s = a.segments();
                ClientKey {
                    bits: u64::from(s[0]) << 48
                        | u64::from(s[1]) << 32
                        | u64::from(s[2]) << 16
                        | u64::from(s[3]),
                    v6: true,
                }
            }
        }
    }

    /// Two words that identify the key, for hashing.
    pub(super) fn words(self) -> (u64, u64) {
        (self.bits, u64::from(self.v6))
    }

    /// The address, or for IPv6 the /64's first address.
    pub(crate) fn ip(self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(u128::from(self.bits) << 64))
        } else {
            let v4 = u32::try_from(self.bits).unwrap_or(u32::MAX);
            IpAddr::V4(v4.into())
        }
    }

    /// `10.0.0.7`, or `2001:db8:1:2::/64`: for log lines and audit reasons.
    pub(crate) fn describe(self) -> String {
        if self.v6 {
            format!("{}/64", self.ip())
        } else {
            self.ip().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
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
    }
}

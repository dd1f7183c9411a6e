//! Who the client is behind a load balancer. `X-Forwarded-For` is believed
//! only from `public.trusted_proxies`, and then read from the right: each
//! trusted hop appends the address it saw, so the first address from the
//! right that is not a trusted proxy is the client (a client can write
//! anything at the left end, never at the right).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::net::{any_contains, Cidr};

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client's address: `peer`, or, when `peer` is a trusted proxy, the
/// address its `X-Forwarded-For` names.
pub(super) fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> SocketAddr {
    if trusted.is_empty() || !any_contains(trusted, peer.ip()) {
        return peer;
    }
    let mut client = peer.ip();
    // Header lines in order, each a comma-separated list; walk from the right.
    let hops: Vec<&[u8]> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .collect();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage: nothing left of it can be trusted either.
            break;
        };
        client = ip;
        if !any_contains(trusted, ip) {
            break;
        }
    }
    SocketAddr::new(client, 0)
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]` or with a port.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    text.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let outsider: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let h = headers(&["203.0.113.5"]);
        assert_eq!(
            client_addr(lb, &h, &trusted).ip(),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_addr(outsider, &h, &trusted),
            outsider,
            "not from a trusted proxy"
        );
        assert_eq!(
            client_addr(lb, &h, &[]),
            lb,
            "no trusted proxies configured"
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: SocketAddr = "10.0.0.2:1".parse().unwrap();
        // The client claims 1.1.1.1; the balancers saw 203.0.113.5, then 10.0.0.9.
        let h = headers(&["1.1.1.1, 203.0.113.5", "10.0.0.9"]);
        assert_eq!(
            client_addr(lb, &h, &trusted).ip(),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        let h = headers(&["[2001:db8::7]:443"]);
        assert_eq!(
            client_addr(lb, &h, &trusted).ip(),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        // Garbage at the right end: the balancer itself is the best we know.
        let h = headers(&["203.0.113.5, not-an-ip"]);
        assert_eq!(client_addr(lb, &h, &trusted).ip(), lb.ip());
        assert_eq!(client_addr(lb, &HeaderMap::new(), &trusted).ip(), lb.ip());
    }
}

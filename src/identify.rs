//! Who the client is: the one place that decides it. Everything that keys on
//! a client (per-client connection and stream shares, the failure throttle,
//! a token's `networks`, usage records, the access log, the
//! `X-Forwarded-For` the upstream sees) takes the address decided here.
//!
//! The rule: no client chooses its own address. It is the TCP peer; or the
//! source a PROXY header names, when the peer is one of
//! `public.trusted_proxies` (which `public.proxy_protocol` requires); or the
//! address `X-Forwarded-For` names, read from the right, when the peer is
//! one of `public.trusted_forwarders` (HTTP balancers that terminate TLS and
//! write the header). A TCP balancer passes TLS through, so any
//! `X-Forwarded-For` behind it is the client's own: it is never believed
//! after a PROXY header, nor from anyone not listed as a forwarder.
//!
//! Two decisions, fed by facts: `at_accept` (the TCP peer, before a byte is
//! read) and `of_request` (the connection's `Peer` and the request headers).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;

use crate::net::{any_contains, Cidr};

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The hops a listener trusts, from `[public]`. Validation guarantees that
/// `proxies` is not empty when `proxy_protocol` is on and empty when it is
/// off, and that `forwarders` is empty when `proxy_protocol` is on.
#[derive(Clone, Default)]
pub(crate) struct Hops {
    /// Balancers that send a PROXY header (`public.trusted_proxies`).
    pub(crate) proxies: Arc<[Cidr]>,
    /// HTTP balancers whose `X-Forwarded-For` is believed (`public.trusted_forwarders`).
    pub(crate) forwarders: Arc<[Cidr]>,
    /// Every connection starts with a PROXY header (`public.proxy_protocol`).
    pub(crate) proxy_protocol: bool,
}

impl Hops {
    /// The hops `[public]` trusts: what the listener's accept decision
    /// and the public handler's per-request decision both read.
    pub(crate) fn of(public: &crate::config::PublicConfig) -> Hops {
        Hops {
            proxies: public.trusted_proxies.clone().into(),
            forwarders: public.trusted_forwarders.clone().into(),
            proxy_protocol: public.proxy_protocol,
        }
    }

    /// The second decision for a request from `peer`: see `of_request`.
    #[inline]
    pub(crate) fn client(&self, peer: Peer, headers: &HeaderMap) -> Result<SocketAddr, Unknown> {
        of_request(peer, headers, &self.forwarders)
    }
}

/// What to do with a new connection, decided from its TCP peer alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    /// An ordinary client: counted against its share before the handshake.
    Direct,
    /// A listed PROXY sender: read its header before anything else. The
    /// balancer itself is exempt from the per-client shares (it carries
    /// many clients); the client its header names is counted once named.
    ReadProxyHeader,
    /// A listed HTTP balancer: exempt from the per-client connection and
    /// stream shares (it multiplexes its clients, who are unknown until a
    /// request names them); its clients are throttled each on their own.
    Forwarder,
    /// PROXY headers are required and this peer may not send one: dropped
    /// before a byte is read, so it holds nothing while it dawdles.
    Refuse,
}

/// The first decision: what a connection from `peer` is.
#[inline]
pub(crate) fn at_accept(hops: &Hops, peer: SocketAddr) -> Accept {
    if hops.proxy_protocol {
        return if any_contains(&hops.proxies, peer.ip()) {
            Accept::ReadProxyHeader
        } else {
            Accept::Refuse
        };
    }
    // No allocation and no loop when no forwarder is configured.
    if !hops.forwarders.is_empty() && any_contains(&hops.forwarders, peer.ip()) {
        Accept::Forwarder
    } else {
        Accept::Direct
    }
}

/// What a connection knows about its client, handed to every request on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The TCP peer, or the source a trusted PROXY header named.
    pub(crate) addr: SocketAddr,
    /// True when `addr` is a trusted HTTP balancer, whose requests each
    /// name their client in `X-Forwarded-For`.
    pub(crate) forwarder: bool,
}

impl Peer {
    /// A client connected directly, or named by a PROXY header.
    pub(crate) fn direct(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            forwarder: false,
        }
    }
}

/// A request from a trusted HTTP balancer that names no usable client: no
/// `X-Forwarded-For`, or garbage at its right end. Its client cannot be
/// told apart from the balancer's other clients, so it is refused rather
/// than charged to a budget they all share (`public` answers 400, except
/// health checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unknown;

/// The second decision: the client of one request. Costs one branch unless
/// the peer is a trusted forwarder; then the header is walked from the right
/// without allocating: each trusted hop appends the address it saw, so the
/// first address from the right that is not a trusted forwarder is the
/// client (a client can write anything at the left end, never at the
/// right). `forwarders` is `public.trusted_forwarders`.
#[inline]
pub(crate) fn of_request(
    peer: Peer,
    headers: &HeaderMap,
    forwarders: &[Cidr],
) -> Result<SocketAddr, Unknown> {
    if !peer.forwarder {
        return Ok(peer.addr);
    }
    forwarded_client(headers, forwarders).map(|ip| SocketAddr::new(ip, 0))
}

/// Behind an HTTP balancer this runs for every request: no allocation.
fn forwarded_client(headers: &HeaderMap, forwarders: &[Cidr]) -> Result<IpAddr, Unknown> {
    let mut client = None;
    // Header lines in order, each a comma-separated list; walk from the right.
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','));
    for hop in hops {
        // Garbage: nothing left of it can be trusted either.
        let ip = parse_hop(hop).ok_or(Unknown)?;
        client = Some(ip);
        if !any_contains(forwarders, ip) {
            break;
        }
    }
    // Every entry a forwarder: the leftmost one is the client (a balancer's
    // own request). None at all: unknown.
    client.ok_or(Unknown)
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

    fn nets(list: &[&str]) -> Arc<[Cidr]> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn at_accept_trusts_only_listed_hops() {
        let none = Hops::default();
        assert_eq!(at_accept(&none, addr("10.0.0.2:1")), Accept::Direct);
        let proxied = Hops {
            proxies: nets(&["10.0.0.0/8"]),
            proxy_protocol: true,
            ..Hops::default()
        };
        assert_eq!(
            at_accept(&proxied, addr("10.0.0.2:1")),
            Accept::ReadProxyHeader
        );
        assert_eq!(
            at_accept(&proxied, addr("198.51.100.1:1")),
            Accept::Refuse,
            "an unlisted peer may not send a PROXY header, nor connect"
        );
        // An empty list with PROXY on (refused by validation) trusts nobody.
        let empty = Hops {
            proxy_protocol: true,
            ..Hops::default()
        };
        assert_eq!(at_accept(&empty, addr("10.0.0.2:1")), Accept::Refuse);
        let http = Hops {
            forwarders: nets(&["10.0.0.0/8"]),
            ..Hops::default()
        };
        assert_eq!(at_accept(&http, addr("10.0.0.2:1")), Accept::Forwarder);
        assert_eq!(at_accept(&http, addr("198.51.100.1:1")), Accept::Direct);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_forwarders() {
        let fw = nets(&["10.0.0.0/8"]);
        let h = headers(&["203.0.113.5"]);
        let lb = Peer {
            addr: addr("10.0.0.2:40000"),
            forwarder: true,
        };
        assert_eq!(of_request(lb, &h, &fw).unwrap().ip(), ip("203.0.113.5"));
        // A client connected directly, or named by a PROXY header, even
        // from inside a trusted range: its own header is not read.
        for p in ["198.51.100.1:40000", "10.0.0.9:1"] {
            let direct = Peer::direct(addr(p));
            assert_eq!(of_request(direct, &h, &fw), Ok(addr(p)));
        }
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let fw = nets(&["10.0.0.0/8"]);
        let lb = Peer {
            addr: addr("10.0.0.2:1"),
            forwarder: true,
        };
        let client = |h: &HeaderMap| of_request(lb, h, &fw).map(|a| a.ip());
        // The client claims 1.1.1.1; the balancers saw 203.0.113.5, then 10.0.0.9.
        let h = headers(&["1.1.1.1, 203.0.113.5", "10.0.0.9"]);
        assert_eq!(client(&h), Ok(ip("203.0.113.5")));
        assert_eq!(
            client(&headers(&["[2001:db8::7]:443"])),
            Ok(ip("2001:db8::7"))
        );
        assert_eq!(
            client(&headers(&["10.0.0.9, 10.0.0.8"])),
            Ok(ip("10.0.0.9"))
        );
        // Garbage at the right end, or nothing: the client is unknown, not
        // the balancer (whose budget every client behind it would share).
        assert_eq!(client(&headers(&["203.0.113.5, not-an-ip"])), Err(Unknown));
        assert_eq!(client(&headers(&["203.0.113.5, "])), Err(Unknown));
        assert_eq!(client(&HeaderMap::new()), Err(Unknown));
    }
}

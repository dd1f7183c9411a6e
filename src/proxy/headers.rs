//! Header rewriting between client and upstream.
//!
//! Order matters: hop-by-hop headers (and every header `Connection` names) are
//! removed first, then the client's credentials and forwarding claims, and only
//! then are the gateway's own headers added, so a client cannot name them away.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1 hop-by-hop headers, plus the legacy ones proxies also drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Client claims that only the gateway may make to the upstream.
const CLIENT_CLAIMS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
];

pub const ID_HEADER: HeaderName = HeaderName::from_static("x-tokengate-token-id");
pub const NAME_HEADER: HeaderName = HeaderName::from_static("x-tokengate-token-name");

/// Headers an operator may not configure as extra upstream headers, because
/// the gateway sets or strips them itself.
pub fn is_reserved(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || *name == header::UPGRADE
        || *name == header::HOST
        || *name == header::CONTENT_LENGTH
        || (CLIENT_CLAIMS.contains(name) && *name != header::AUTHORIZATION)
        || name.as_str().starts_with("x-tokengate-")
}

/// Removes hop-by-hop headers, including every header listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection must go too (RFC 9110 §7.6.1).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

/// Rewrites a client request's headers for the upstream.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    original_host: Option<HeaderValue>,
    peer: SocketAddr,
    upstream_host: &HeaderValue,
    extra: &[(HeaderName, HeaderValue)],
    identity: Option<(HeaderValue, HeaderValue)>,
) {
    strip_hop_by_hop(headers);
    for h in &CLIENT_CLAIMS {
        headers.remove(h);
    }
    headers.remove(ID_HEADER);
    headers.remove(NAME_HEADER);

    headers.insert(header::HOST, upstream_host.clone());
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_canonical().to_string()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    if let Some(h) = original_host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), h);
    }
    for (n, v) in extra {
        headers.insert(n.clone(), v.clone());
    }
    if let Some((id, name)) = identity {
        headers.insert(ID_HEADER, id);
        headers.insert(NAME_HEADER, name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn request_rewrite_strips_and_sets() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, hv("Bearer tga_secret"));
        h.insert(header::CONNECTION, hv("close, x-api-key"));
        h.insert("x-api-key", hv("client-chosen"));
        h.insert("keep-alive", hv("timeout=5"));
        h.insert(header::TE, hv("trailers"));
        h.insert("x-forwarded-for", hv("6.6.6.6"));
        h.insert("x-real-ip", hv("6.6.6.6"));
        h.insert(header::FORWARDED, hv("for=6.6.6.6"));
        h.insert(ID_HEADER, hv("999"));
        h.insert("accept", hv("application/json"));
        let extra = [(HeaderName::from_static("x-api-key"), hv("gateway"))];
        rewrite_request(
            &mut h,
            Some(hv("gw.example:8443")),
            "10.1.2.3:5555".parse().unwrap(),
            &hv("127.0.0.1:8124"),
            &extra,
            None,
        );
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get("x-real-ip").is_none());
        assert!(h.get(header::FORWARDED).is_none());
        assert!(h.get(ID_HEADER).is_none());
        assert_eq!(h["x-api-key"], "gateway");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "gw.example:8443");
        assert_eq!(h[header::HOST], "127.0.0.1:8124");
        assert_eq!(h["accept"], "application/json");
    }

    #[test]
    fn reserved_names() {
        assert!(is_reserved(&header::CONNECTION));
        assert!(is_reserved(&HeaderName::from_static("x-forwarded-for")));
        assert!(is_reserved(&ID_HEADER));
        assert!(
            !is_reserved(&header::AUTHORIZATION),
            "an upstream credential may be configured"
        );
        assert!(!is_reserved(&HeaderName::from_static("x-api-key")));
    }
}

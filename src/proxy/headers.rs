//! Header rewriting between client and upstream.
//!
//! Order matters: hop-by-hop headers (and every header `Connection` names),
//! the client's credentials and forwarding claims (see
//! `wire::names::is_client_claim`, underscore twins included) are removed in
//! one pass first, and only then are the gateway's own headers added, so a
//! client cannot name them away.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::wire::host::is_valid_host;
use crate::wire::names::{is_client_claim, is_hop_by_hop};

pub(crate) const ID_HEADER: HeaderName = HeaderName::from_static("x-tokengate-token-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const NAME_HEADER: HeaderName = HeaderName::from_static("x-tokengate-token-name");

/// Names to remove: the usual handful on the stack, more on the heap.
#[derive(Default)]
struct Doomed {
    few: [Option<HeaderName>; 6],
    len: usize,
    more: Vec<HeaderName>,
}

impl Doomed {
    fn push(&mut self, name: HeaderName) {
        match self.few.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(name);
                self.len += 1;
            }
            None => self.more.push(name),
        }
    }

    /// By reference: moving the array into an iterator copied all six
    /// slots and dropped each one, on every request and response.
    fn remove_from(&self, headers: &mut HeaderMap) {
        for name in self.few.iter().flatten().chain(&self.more) {
            headers.remove(name);
        }
    }
}

/// Removes every header `doomed` picks, plus every header `Connection` lists.
///
/// One pass over the (few) headers present instead of a lookup per name that
/// might be there: most requests carry none of them but `Authorization`, and
/// most responses none but `Connection: keep-alive`. No allocation unless
/// something unusual is present.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let mut gone = Doomed::default();
    let mut connection = false;
    for name in headers.keys() {
        // A standard name: compared by its tag, not its bytes.
        connection |= *name == header::CONNECTION;
        if doomed(name.as_str()) {
            gone.push(name.clone());
        }
    }
    // Names listed in Connection must go too (RFC 9110 §7.6.1). Looked up
    // only when the pass above saw one (most requests carry none).
    let listed = connection.then(|| headers.get_all(header::CONNECTION));
    for v in listed.iter().flatten() {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            // The usual options name no header (`close`) or one already gone.
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"keep-alive")
                || token.eq_ignore_ascii_case(b"close")
            {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(token) {
                gone.push(n);
            }
        }
    }
    gone.remove_from(headers);
}

/// Removes hop-by-hop headers, including every header listed in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, is_hop_by_hop);
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
    // Only a valid `host[:port]`: the upstream may build links or choose a
    // tenant from it.
    let forwarded_host = original_host.filter(|h| is_valid_host(h.as_bytes()));
    rewrite_request_checked(
        headers,
        forwarded_host,
        peer,
        upstream_host,
        extra,
        identity,
    );
}

/// `rewrite_request` for a caller that has already checked the original
/// host (the public listener refuses a request whose `Host` or authority
/// is not a valid `host[:port]`, `public::host_ok`), so it is not checked
/// a second time on every request.
pub(crate) fn rewrite_request_checked(
    headers: &mut HeaderMap,
    forwarded_host: Option<HeaderValue>,
    peer: SocketAddr,
    upstream_host: &HeaderValue,
    extra: &[(HeaderName, HeaderValue)],
    identity: Option<(HeaderValue, HeaderValue)>,
) {
    debug_assert!(forwarded_host
        .as_ref()
        .is_none_or(|h| is_valid_host(h.as_bytes())));
    remove_where(headers, |n| is_hop_by_hop(n) || is_client_claim(n));

    headers.insert(header::HOST, upstream_host.clone());
    if let Some(v) = ip_value(peer.ip().to_canonical()) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Some(h) = forwarded_host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    for (n, v) in extra {
        headers.insert(n.clone(), v.clone());
    }
    if let Some((id, name)) = identity {
        headers.insert(ID_HEADER, id);
        headers.insert(NAME_HEADER, name);
    }
}

/// The client address as a header value, formatted on the stack (IPv4, the
/// usual case, without the formatting machinery): one allocation, the header's own.
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    let mut buf = [0u8; 48];
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
            len
        }
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            std::io::Write::write_fmt(&mut cursor, format_args!("{v6}")).ok()?;
            usize::try_from(cursor.position()).ok()?
        }
    };
    HeaderValue::from_bytes(&buf[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::names::is_reserved;

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
    fn underscore_twins_and_forwarding_claims_are_dropped_and_bad_hosts_not_forwarded() {
        let mut h = HeaderMap::new();
        for n in [
            "x_tokengate_token_id",
            "x_forwarded_for",
            "x_real_ip",
            "true-client-ip",
            "x-forwarded-port",
            "x-original-url",
            "x-http-method-override",
        ] {
            h.insert(HeaderName::from_bytes(n.as_bytes()).unwrap(), hv("6.6.6.6"));
        }
        h.insert("x-kept", hv("v"));
        rewrite_request(
            &mut h,
            Some(hv("evil.example/x")),
            "10.1.2.3:5555".parse().unwrap(),
            &hv("127.0.0.1:8124"),
            &[],
            None,
        );
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            ["x-kept", "host", "x-forwarded-for", "x-forwarded-proto"],
            "{h:?}"
        );
    }

    #[test]
    fn client_addresses_format_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn connection_tokens_and_many_removals() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, hv("Keep-Alive, close, X-One,x-two , ,"));
        for n in [
            "x-one",
            "x-two",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
            "transfer-encoding",
        ] {
            h.insert(HeaderName::from_static(n), hv("v"));
        }
        h.insert("x-kept", hv("v"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "v");
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

//! Which header names belong to whom: hop-by-hop headers (one connection
//! only), and the claims only the gateway may make toward the upstream.
//! Names are compared in lower case, as `http::HeaderName` stores them.

use http::HeaderName;

/// Headers an operator may not configure as extra upstream headers, because
/// the gateway sets or strips them itself. (`Authorization` may be set: an
/// upstream credential is what `[upstream.headers]` is for.)
pub fn is_reserved(name: &HeaderName) -> bool {
    let n = name.as_str();
    is_hop_by_hop(n)
        || n == "host"
        || n == "content-length"
        || (is_client_claim(n) && n != "authorization")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus `Upgrade`, by lower-case name.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers only the gateway may set toward the upstream.
pub(crate) fn is_client_claim(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-real-ip"
    ) || name.starts_with("x-tokengate-")
}

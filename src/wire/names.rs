//! Which header names belong to whom: hop-by-hop headers (one connection
//! only), and the claims only the gateway may make toward the upstream.
//! Names are compared in lower case, as `http::HeaderName` stores them.

use http::HeaderName;

/// Headers an operator may not configure as extra upstream headers, because
/// the gateway sets or strips them itself, or because their name holds `_`
/// (see [`is_client_claim`]). (`Authorization` may be set: an upstream
/// credential is what `[upstream.headers]` is for. So may the other
/// forwarding names the gateway only strips, such as `X-Forwarded-Prefix`:
/// configured values are added after the client's are removed.)
pub fn is_reserved(name: &HeaderName) -> bool {
    let n = name.as_str();
    is_hop_by_hop(n)
        || n == "host"
        || n == "content-length"
        || has_underscore(n)
        || matches!(
            n,
            "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-real-ip"
        )
        || n.starts_with("x-tokengate-")
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

/// Headers a client may not send on to the upstream: its credential, and
/// every claim an upstream (or a framework in it) may believe about who the
/// client is, where it connected, which URL or method it asked for.
///
/// - Any name with `_`: CGI, WSGI, PHP and Rack turn `X_Real_IP` and
///   `X-Real-IP` into the same `HTTP_X_REAL_IP`, so an underscore twin
///   would slip past every other rule here (nginx drops them by default).
/// - `X-Forwarded-*` (the gateway sets `-For`, `-Proto`, `-Host` itself),
///   `Forwarded`, the client-IP headers of CDNs and load balancers, the
///   URL rewrite headers (`X-Original-URL`, `X-Rewrite-URL`, IIS and
///   Symfony route on them) and the method overrides.
/// - `X-Tokengate-*`: the identity headers.
///
/// Called for every request header: a `match` on the name (compiled to a
/// length switch and a compare), two prefix checks and one byte scan; no
/// allocation.
pub(crate) fn is_client_claim(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "forwarded"
            | "x-real-ip"
            | "true-client-ip"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "client-ip"
            | "x-originating-ip"
            | "x-remote-ip"
            | "x-remote-addr"
            | "cf-connecting-ip"
            | "cf-connecting-ipv6"
            | "fastly-client-ip"
            | "x-original-forwarded-for"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-original-uri"
            | "x-original-host"
            | "x-host"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
    ) || name.starts_with("x-forwarded-")
        || name.starts_with("x-tokengate-")
        || has_underscore(name)
}

fn has_underscore(name: &str) -> bool {
    name.as_bytes().contains(&b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_include_underscore_twins_and_every_forwarding_name() {
        for n in [
            "x_real_ip",
            "x_forwarded_for",
            "accept_language",
            "x-tokengate-token-id",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-ssl",
            "true-client-ip",
            "x-original-url",
            "x-http-method-override",
        ] {
            assert!(is_client_claim(n), "{n}");
        }
        for n in [
            "accept",
            "x-api-key",
            "user-agent",
            "x-forwarded",
            "content-type",
        ] {
            assert!(!is_client_claim(n), "{n}");
        }
    }

    #[test]
    fn reserved_configured_names() {
        for n in [
            "x_api_key",
            "x-forwarded-for",
            "x-tokengate-x",
            "connection",
            "host",
        ] {
            assert!(is_reserved(&HeaderName::from_static(n)), "{n}");
        }
        // Stripped from clients, but an operator may set them.
        for n in [
            "authorization",
            "x-forwarded-prefix",
            "true-client-ip",
            "x-api-key",
        ] {
            assert!(!is_reserved(&HeaderName::from_static(n)), "{n}");
        }
    }
}

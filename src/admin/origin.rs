//! Cross-site request refusal for the admin API.
//!
//! A browser that holds the admin's HTTP Basic credentials (or, with
//! `SameSite=Strict`, a session cookie on a same-site page) attaches them
//! to requests any web page makes. Such a page can only make "simple"
//! requests without a CORS preflight (which the admin API never answers):
//! GET, HEAD and POST with a form or text body. So the API takes POSTs as
//! `application/json` only, and refuses what browsers mark as coming from
//! elsewhere: `Sec-Fetch-Site: cross-site` or `same-site` (another port or
//! subdomain is another site's page), or an `Origin` that is not the admin
//! listener's own. Clients that are not browsers (the CLI, curl, scripts)
//! send neither header and are unaffected.

use http::header::{HOST, ORIGIN};
use http::{HeaderMap, Method, Uri};

use crate::wire::media_type;

const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Why a request to the admin API is refused as cross-site, or `None`.
pub(super) fn cross_site_refusal(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<&'static str> {
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        let site = site.as_bytes();
        if site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site") {
            return Some("the admin API refuses requests from other sites' pages");
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        // HTTP/2 carries the host in the URI (`:authority`).
        let host = headers
            .get(HOST)
            .map(|h| h.as_bytes())
            .or_else(|| uri.authority().map(|a| a.as_str().as_bytes()));
        if !host.is_some_and(|h| is_own_origin(origin.as_bytes(), h)) {
            return Some("the admin API refuses requests from another origin");
        }
    }
    if *method == Method::POST && !media_type(headers).is_some_and(|t| t.is("application/json")) {
        return Some(
            "a POST to the admin API must be Content-Type: application/json (any web page can send other types)",
        );
    }
    None
}

/// `origin` is `https://` + the `Host` this request was sent to. Browsers
/// send the origin's host in lower case, with the port only if it is not
/// 443; so does the `Host` they send. `null` (sandboxed and opaque origins)
/// matches nothing.
fn is_own_origin(origin: &[u8], host: &[u8]) -> bool {
    origin
        .strip_prefix(b"https://")
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn refused(method: Method, pairs: &[(&'static str, &'static str)]) -> bool {
        let uri = Uri::from_static("/api/refresh-tokens");
        cross_site_refusal(&method, &uri, &headers(pairs)).is_some()
    }

    #[test]
    fn the_page_and_scripts_pass() {
        let json = ("content-type", "application/json");
        let host = ("host", "localhost:8444");
        assert!(!refused(Method::POST, &[json, host]));
        assert!(!refused(Method::GET, &[host]));
        assert!(!refused(
            Method::POST,
            &[
                json,
                host,
                ("origin", "https://localhost:8444"),
                ("sec-fetch-site", "same-origin")
            ]
        ));
        assert!(!refused(Method::GET, &[host, ("sec-fetch-site", "none")]));
        assert!(!refused(
            Method::DELETE,
            &[host, ("origin", "https://LOCALHOST:8444")]
        ));
    }

    #[test]
    fn other_sites_and_simple_posts_are_refused() {
        let json = ("content-type", "application/json");
        let host = ("host", "localhost:8444");
        for t in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert!(refused(Method::POST, &[host, ("content-type", t)]), "{t}");
        }
        assert!(refused(Method::POST, &[host]));
        for site in ["cross-site", "same-site", "Cross-Site"] {
            assert!(
                refused(Method::GET, &[host, ("sec-fetch-site", site)]),
                "{site}"
            );
        }
        for origin in [
            "https://evil.example",
            "null",
            "http://localhost:8444",
            "https://localhost",
            "https://localhost:8444.evil.example",
            "",
        ] {
            assert!(
                refused(Method::POST, &[json, host, ("origin", origin)]),
                "{origin}"
            );
        }
        // No Host to compare with: any Origin is foreign.
        assert!(refused(
            Method::POST,
            &[json, ("origin", "https://localhost:8444")]
        ));
    }
}

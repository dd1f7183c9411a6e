//! The page's files, embedded in the binary: no CDN, no build step.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::wire::{full, Reply};

const INDEX: &str = include_str!("ui/index.html");
/// One script for the page, kept in two files: the Users section apart.
const APP_JS: &str = concat!(include_str!("ui/app.js"), "\n", include_str!("ui/users.js"));
const APP_CSS: &str = include_str!("ui/app.css");

/// Only our own files may load, nothing may frame the page, and nothing
/// inline runs: an injected string cannot become script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page or one of its assets, if `path` names one.
pub(super) fn asset(path: &str) -> Option<Reply> {
    let (body, content_type) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/assets/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/assets/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(r)
}

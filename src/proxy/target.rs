//! The upstream request target: `upstream.url`'s path joined with the
//! client's canonical path (see `canonical`) and its query.
//!
//! The canonical path has no dot segment, no encoded separator and no
//! empty segment left for the upstream (or a server behind it) to resolve
//! after the join, so `{base_path}{path}` stays under the base path: what
//! the upstream sees is always what the client could have asked for
//! directly, and exactly what the scope check saw.

use http::uri::PathAndQuery;
use http::Uri;

use super::canonical::{canonicalise, InvalidPath, PathPolicy};

/// Why a request target cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Path(#[from] InvalidPath),
    #[error("cannot build the upstream request target: {0}")]
    Invalid(#[from] http::Error),
}

/// The origin-form target (`/path?query`) on the upstream for an incoming
/// request target, under `base_path` (from [`crate::config::base_path`]): the pool already
/// knows where to connect. The path is canonicalised under `policy` first
/// (the query is left as it is). What the proxy does in two steps, for
/// the fuzz target and tests.
pub fn join_target(
    base_path: &str,
    incoming: &Uri,
    policy: &PathPolicy,
) -> Result<Uri, TargetError> {
    let rewrite = canonicalise(incoming.path(), policy)?.into_rewrite();
    match rewrite {
        // The two steps the proxy takes: the handler's `set_path`, then
        // `forward`'s `upstream_target`.
        Some(path) => {
            let mut uri = incoming.clone();
            set_path(&mut uri, &path)?;
            upstream_target(base_path, &uri)
        }
        None => upstream_target(base_path, incoming),
    }
}

/// Replaces `uri`'s path with `path` (a canonical one, from
/// `Canonical::into_rewrite`), keeping its scheme, authority and query.
pub(crate) fn set_path(uri: &mut Uri, path: &str) -> Result<(), http::Error> {
    let pq = match uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}"))?,
        None => PathAndQuery::try_from(path)?,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    *uri = Uri::from_parts(parts)?;
    Ok(())
}

/// The origin-form target on the upstream: `base_path`, then the request's
/// path (already canonical: the handler made it so with [`set_path`]), then
/// its query as sent.
pub(crate) fn upstream_target(base_path: &str, incoming: &Uri) -> Result<Uri, TargetError> {
    let pq = incoming.path_and_query();
    // asterisk-form (`OPTIONS *`) addresses the upstream server as a whole:
    // it goes through as it came, never as `{base_path}*`.
    if pq.is_some_and(|pq| pq.as_str() == "*") {
        return Ok(Uri::from_static("*"));
    }
    if base_path.is_empty() {
        // The common case reuses the parsed bytes; no copy. Not for an
        // empty path (`http://gw#f` parses to nothing at all): that is
        // joined below.
        if let Some(uri) = pq
            .map(|pq| Uri::from(pq.clone()))
            .filter(|u| u.path().starts_with('/'))
        {
            return Ok(uri);
        }
    }
    // `path()` is `/` for an empty path (`http://gw?q`, RFC 9110 §4.2.3),
    // so that joins as `{base_path}/?q`, like `http://gw/?q`.
    let path = match incoming.path() {
        "" => "/",
        p => p,
    };
    let joined = match incoming.query() {
        Some(q) => format!("{base_path}{path}?{q}"),
        None => format!("{base_path}{path}"),
    };
    Ok(Uri::from(
        PathAndQuery::try_from(joined).map_err(http::Error::from)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(base: &str, incoming: &str) -> Result<String, TargetError> {
        let uri: Uri = incoming.parse().unwrap();
        join_target(base, &uri, &PathPolicy::strict()).map(|u| u.to_string())
    }

    #[test]
    fn request_targets_are_origin_form_under_the_base_path() {
        for (incoming, want_plain, want_based) in [
            ("https://gw.example/a/b?x=1", "/a/b?x=1", "/base/a/b?x=1"),
            ("/a", "/a", "/base/a"),
            ("https://gw.example", "/", "/base/"),
            // Found by the upstream_target fuzz target: was `/base*`.
            ("*", "*", "*"),
            // Found by the upstream_target fuzz target: an empty path with a
            // query was joined as `/base?x=1`.
            ("https://gw.example?x=1", "/?x=1", "/base/?x=1"),
            ("gw.example:443", "/", "/base/"),
            // Found by the upstream_target fuzz target: an empty path with a
            // fragment became an empty request target (`GET  HTTP/1.1`).
            ("https://gw.example#frag", "/", "/base/"),
            ("https://gw.example?x=1#frag", "/?x=1", "/base/?x=1"),
            ("/a/b/../c?q=../..", "/a/c?q=../..", "/base/a/c?q=../.."),
            ("/a/%2E/b/%2e%2E", "/a/", "/base/a/"),
            ("/a//b?q=%2f;\\", "/a/b?q=%2f;\\", "/base/a/b?q=%2f;\\"),
        ] {
            assert_eq!(join("", incoming).unwrap(), want_plain, "{incoming}");
            assert_eq!(join("/base", incoming).unwrap(), want_based, "{incoming}");
        }
    }

    #[test]
    fn nothing_escapes_the_base_path() {
        // The base-path escapes found against real servers: each is refused.
        for incoming in [
            "/%2e%2e%2fsecret.txt",
            "/x/..%2f..%2fsecret.txt",
            "/..\\secret.txt",
            "/..",
            "/a/../..",
            "/..;x/secret.txt",
        ] {
            assert!(
                matches!(join("/public", incoming), Err(TargetError::Path(_))),
                "{incoming}"
            );
        }
    }
}

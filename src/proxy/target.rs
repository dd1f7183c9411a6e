//! The upstream request target: `upstream.url`'s path joined with the
//! client's, after resolving the client's dot segments.
//!
//! Dot segments are resolved here because the upstream (or a server behind
//! it) would otherwise resolve them itself, after the join: `/../admin`
//! under a base path of `/api` would become `/api/../admin` = `/admin`, a
//! path outside the base. Percent-encoded dots (`%2e`) and segments with
//! parameters (`..;x`, which Tomcat and Jetty read as `..`) count too. A
//! path that climbs above `/` is refused, never clamped, so what the
//! upstream sees is always what the client could have asked for directly.

use std::borrow::Cow;

use http::uri::PathAndQuery;
use http::Uri;

/// Why a request target cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("the path climbs above / with `..` segments")]
    AboveRoot,
    #[error("cannot build the upstream request target: {0}")]
    Invalid(#[from] http::Error),
}

/// The path every upstream call is prefixed with: `upstream.url`'s path
/// without its trailing slashes (empty for `https://host` and `https://host/`).
pub fn base_path(url: &Uri) -> String {
    url.path().trim_end_matches('/').to_owned()
}

/// The origin-form target (`/path?query`) on the upstream for an incoming
/// request target, under `base_path` (from [`base_path`]): the pool already
/// knows where to connect. Dot segments in the path are resolved first (the
/// query is left as it is); a path that climbs above `/` is refused.
pub fn join_target(base_path: &str, incoming: &Uri) -> Result<Uri, TargetError> {
    let pq = incoming.path_and_query();
    // asterisk-form (`OPTIONS *`) addresses the upstream server as a whole:
    // it goes through as it came, never as `{base_path}*`.
    if pq.is_some_and(|pq| pq.as_str() == "*") {
        return Ok(Uri::from_static("*"));
    }
    // `path()` is `/` for an empty path (`http://gw?q`, RFC 9110 §4.2.3), so
    // that joins as `{base_path}/?q`, like `http://gw/?q`.
    let path = match incoming.path() {
        "" => "/",
        p => p,
    };
    if has_dot_segment(path) {
        let resolved = remove_dot_segments(path)?;
        return join(base_path, &resolved, incoming.query());
    }
    if base_path.is_empty() {
        // The common case reuses the parsed bytes; no copy. Not for an empty
        // path (`http://gw#f` parses to nothing at all): that is joined below.
        if let Some(uri) = pq
            .map(|pq| Uri::from(pq.clone()))
            .filter(|u| u.path().starts_with('/'))
        {
            return Ok(uri);
        }
    }
    join(base_path, path, incoming.query())
}

/// The client's path as [`join_target`] sends it on (before the base path
/// is prefixed): dot segments resolved, an empty path read as `/`. What a
/// token's scope rules are matched against, so that no spelling the proxy
/// resolves (`..`, `%2e`, `..;x`) can reach the upstream outside a rule.
/// Borrows unless there was something to resolve.
pub(crate) fn normalised_path(path: &str) -> Result<Cow<'_, str>, TargetError> {
    let path = match path {
        "" => "/",
        p => p,
    };
    if has_dot_segment(path) {
        return remove_dot_segments(path).map(Cow::Owned);
    }
    Ok(Cow::Borrowed(path))
}

fn join(base_path: &str, path: &str, query: Option<&str>) -> Result<Uri, TargetError> {
    let joined = match query {
        Some(q) => format!("{base_path}{path}?{q}"),
        None => format!("{base_path}{path}"),
    };
    Ok(Uri::from(
        PathAndQuery::try_from(joined).map_err(http::Error::from)?,
    ))
}

/// A segment that means "this directory" (`.`) or "the parent" (`..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    One,
    Two,
}

/// Whether any segment of `path` is a dot segment. The first loop is the
/// hot path's whole cost for a path with no `.` and no `%`: one byte scan,
/// no allocation.
fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|s| dot_kind(s).is_some())
}

/// `.` or `..`, each dot written as `.` or `%2e` (any case), optionally
/// followed by `;parameters`; anything else is an ordinary segment.
fn dot_kind(segment: &str) -> Option<Dot> {
    let name = segment.split(';').next().unwrap_or_default().as_bytes();
    let mut dots = 0;
    let mut rest = name;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return None,
        };
        dots += 1;
    }
    match dots {
        1 => Some(Dot::One),
        2 => Some(Dot::Two),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 on an absolute path, except that climbing above `/` is an
/// error instead of being clamped. Empty segments (`//`) are kept; a dot
/// segment at the end leaves a trailing `/` (`/a/b/..` → `/a/`).
fn remove_dot_segments(path: &str) -> Result<String, TargetError> {
    // `path` starts with `/`: skip it so the segments are what follows.
    let body = path.strip_prefix('/').unwrap_or(path);
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match dot_kind(segment) {
            None => kept.push(segment),
            Some(dot) => {
                if dot == Dot::Two && kept.pop().is_none() {
                    return Err(TargetError::AboveRoot);
                }
                if last {
                    kept.push("");
                }
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in kept {
        out.push('/');
        out.push_str(segment);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            let uri: Uri = incoming.parse().unwrap();
            assert_eq!(
                join_target("", &uri).unwrap().to_string(),
                want_plain,
                "{incoming}"
            );
            assert_eq!(
                join_target("/base", &uri).unwrap().to_string(),
                want_based,
                "{incoming}"
            );
        }
    }

    #[test]
    fn dot_segments_resolve_like_rfc_3986_but_never_above_the_root() {
        for (path, want) in [
            ("/", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a/b/../c", "/a/c"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/a//../b", "/a/b"),
            ("/a//b", "/a//b"),
            ("/a/..;x/b", "/b"),
            ("/a/.;x/b", "/a/b"),
            ("/a/%2e%2E/b", "/b"),
        ] {
            assert_eq!(remove_dot_segments(path).unwrap(), want, "{path}");
        }
        for path in ["/..", "/../x", "/a/../..", "/%2e%2e", "/.%2E/x", "/..;a=b"] {
            assert!(
                matches!(remove_dot_segments(path), Err(TargetError::AboveRoot)),
                "{path}"
            );
        }
    }

    #[test]
    fn the_path_scopes_see_is_the_path_the_proxy_sends() {
        for (incoming, want) in [
            ("/a/b", "/a/b"),
            ("", "/"),
            ("/a/../b", "/b"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/..;x/b", "/b"),
            ("/a//../b", "/a/b"),
            ("/a/b/.", "/a/b/"),
        ] {
            assert_eq!(normalised_path(incoming).unwrap(), want, "{incoming}");
            let uri: Uri = format!("https://gw.example{incoming}").parse().unwrap();
            assert_eq!(join_target("", &uri).unwrap().path(), want, "{incoming}");
        }
        assert!(matches!(
            normalised_path("/a/../../b"),
            Err(TargetError::AboveRoot)
        ));
        assert!(matches!(normalised_path("/a/b"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn only_whole_segments_of_dots_are_dot_segments() {
        for s in [".", "..", "%2e", "%2E", ".%2e", "%2e.", "..;x", ".;"] {
            assert!(dot_kind(s).is_some(), "{s}");
        }
        for s in [
            "", ";x", "...", "..b", "c.", "%2e%2f..", "%2", "%2f", "%252e", "a.json",
        ] {
            assert_eq!(dot_kind(s), None, "{s}");
        }
        for p in ["/a/b", "/a%20b/c", "/a/b.json", "/v1.2/x", "/.well-known/x"] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }
}

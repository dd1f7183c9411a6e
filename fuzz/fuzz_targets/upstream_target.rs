//! The upstream request target: `upstream.url`'s path joined with the
//! client's request target, dot segments resolved. Input: the upstream URL,
//! a newline, the request target as the client sent it.
//!
//! Checked against a reference written here (RFC 3986 §5.2.4 with `%2e`
//! dots and `;params`, and an error instead of clamping above `/`): the
//! join refuses exactly the targets that climb above `/`, and otherwise
//! forwards the resolved path under the base path, query untouched.
#![no_main]

use http::Uri;
use libfuzzer_sys::fuzz_target;
use tokengate::fuzzing::{base_path, join_target, TargetError};

fuzz_target!(|data: &[u8]| {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let (url, incoming) = (&data[..nl], &data[nl + 1..]);
    // Only URLs `validate()` accepts: http(s), a host, no query.
    let Ok(url) = Uri::try_from(url) else {
        return;
    };
    if !matches!(url.scheme_str(), Some("http" | "https"))
        || url.authority().is_none()
        || url.query().is_some()
    {
        return;
    }
    let Ok(incoming) = Uri::try_from(incoming) else {
        return;
    };
    let base = base_path(&url);
    assert!(!base.ends_with('/'));
    assert!(base.is_empty() || base.starts_with('/'));

    // asterisk-form (OPTIONS *) is for the server as a whole.
    if incoming
        .path_and_query()
        .is_some_and(|pq| pq.as_str() == "*")
    {
        assert_eq!(join_target(&base, &incoming).unwrap(), "*");
        return;
    }
    // An empty path is `/` (RFC 9110 §4.2.3).
    let sent = match incoming.path() {
        "" => "/",
        p => p,
    };
    let joined = match (join_target(&base, &incoming), resolve(sent)) {
        (Ok(j), Some(want)) => {
            assert_eq!(j.path(), format!("{base}{want}"), "{incoming:?}");
            j
        }
        (Err(TargetError::AboveRoot), None) => return,
        (got, want) => panic!("{base:?} + {incoming:?}: got {got:?}, reference {want:?}"),
    };
    // Origin form: no scheme or authority of the client's survives.
    assert!(
        joined.scheme().is_none() && joined.authority().is_none(),
        "{joined:?}"
    );
    // The query goes through untouched.
    assert_eq!(joined.query(), incoming.query());
    // The path stays under the base path, with no dot segment left for the
    // upstream to resolve.
    assert!(joined.path().starts_with(&format!("{base}/")), "{joined:?}");
    let under = &joined.path()[base.len()..];
    assert!(under.split('/').all(|s| dot(s).is_none()), "{joined:?}");
    // Without dots, byte for byte as the client sent it.
    if !sent.contains('.') && !sent.to_ascii_lowercase().contains("%2e") {
        assert_eq!(under, sent);
    }
    // What the upstream's request line carries.
    let line = joined.to_string();
    assert!(line.starts_with('/'), "{line:?}");
});

/// `Some(1)` for `.`, `Some(2)` for `..` (each dot `.` or `%2e`, any case,
/// parameters after `;` ignored).
fn dot(segment: &str) -> Option<u8> {
    let name = segment.split(';').next().unwrap_or_default();
    match name.to_ascii_lowercase().replace("%2e", ".").as_str() {
        "." => Some(1),
        ".." => Some(2),
        _ => None,
    }
}

/// The reference resolution of an absolute path; `None` above `/`.
fn resolve(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dot(s) {
            None => out.push(s),
            Some(n) => {
                if n == 2 {
                    out.pop()?;
                }
                if last {
                    out.push("");
                }
            }
        }
    }
    Some(out.iter().map(|s| format!("/{s}")).collect())
}

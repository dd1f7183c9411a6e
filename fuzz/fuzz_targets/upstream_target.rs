//! The upstream request target: `upstream.url`'s path joined with the
//! client's canonical path. Input: the upstream URL, a newline, the request
//! target as the client sent it.
//!
//! Whatever the client sent, a target that is forwarded is origin-form,
//! under the base path, with the query untouched, and its path is
//! canonical: no dot segment, empty segment, `;`, `\`, or escape of a
//! separator or of `%` left for the upstream to read its own way, and
//! canonicalising it again changes nothing. (The canonical_path target
//! checks the canonicaliser itself against a reference model.)
#![no_main]

use http::Uri;
use libfuzzer_sys::fuzz_target;
use tokengate::fuzzing::{base_path, canonicalise, join_target, PathPolicy, TargetError};

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
    let strict = PathPolicy::strict();

    // asterisk-form (OPTIONS *) is for the server as a whole.
    if incoming
        .path_and_query()
        .is_some_and(|pq| pq.as_str() == "*")
    {
        assert_eq!(join_target(&base, &incoming, &strict).unwrap(), "*");
        return;
    }
    let joined = match join_target(&base, &incoming, &strict) {
        Ok(j) => j,
        // Refused as ambiguous: nothing is forwarded.
        Err(TargetError::Path(_)) => return,
        Err(e) => panic!("{base:?} + {incoming:?}: {e}"),
    };
    // Origin form: no scheme or authority of the client's survives.
    assert!(
        joined.scheme().is_none() && joined.authority().is_none(),
        "{joined:?}"
    );
    // The query goes through untouched.
    assert_eq!(joined.query(), incoming.query());
    // The path stays under the base path...
    assert!(joined.path().starts_with(&format!("{base}/")), "{joined:?}");
    let under = &joined.path()[base.len()..];
    // ...with nothing left for the upstream to resolve or read two ways.
    let body = under.strip_prefix('/').unwrap_or(under);
    let body = body.strip_suffix('/').unwrap_or(body);
    assert!(
        body.is_empty() || body.split('/').all(|s| !s.is_empty() && s != "." && s != ".."),
        "{joined:?}"
    );
    let lower = under.to_ascii_lowercase();
    for bad in [";", "\\", "%2f", "%5c", "%25", "%2e"] {
        assert!(!lower.contains(bad), "{bad} in {joined:?}");
    }
    // A fixed point: the canonical path is its own canonical form.
    let again = canonicalise(under, &strict).unwrap();
    assert_eq!(again.path(), under, "{joined:?}");
    // What the upstream's request line carries.
    let line = joined.to_string();
    assert!(line.starts_with('/'), "{line:?}");
});

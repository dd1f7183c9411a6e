//! The upstream request target: `upstream.url`'s path joined with the
//! client's request target. Input: the upstream URL, a newline, the request
//! target as the client sent it.
#![no_main]

use http::Uri;
use libfuzzer_sys::fuzz_target;
use tokengate::fuzzing::{base_path, join_target};

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

    // Every target the server accepts can be forwarded (no 400 from the join).
    let joined = join_target(&base, &incoming)
        .unwrap_or_else(|e| panic!("join failed for {base:?} + {incoming:?}: {e}"));
    // Origin form: no scheme or authority of the client's survives.
    assert!(
        joined.scheme().is_none() && joined.authority().is_none(),
        "{joined:?}"
    );
    // The query goes through untouched.
    assert_eq!(joined.query(), incoming.query());
    if incoming
        .path_and_query()
        .is_some_and(|pq| pq.as_str() == "*")
    {
        // asterisk-form (OPTIONS *) is for the server as a whole.
        assert_eq!(joined, "*");
        return;
    }
    // The path stays under the base path, byte for byte as the client sent
    // it; an empty path is `/` (RFC 9110 §4.2.3).
    let sent = match incoming.path() {
        "" => "/",
        p => p,
    };
    assert!(joined.path().starts_with(&format!("{base}/")), "{joined:?}");
    assert_eq!(joined.path(), format!("{base}{sent}"));
    // What the upstream's request line carries.
    let line = joined.to_string();
    assert!(line.starts_with('/'), "{line:?}");
});

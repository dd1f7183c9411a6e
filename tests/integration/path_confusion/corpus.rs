//! The path-confusion payloads, generated: every spelling of "the parent
//! directory" crossed with every spelling of "a separator", reached from
//! inside `/public` in the ways the gateway's check and a server's parser
//! have been seen to disagree on, plus hand-picked framings (`?`, `#`,
//! `//`, absolute-form) that a cross product does not produce.
//!
//! Every payload is written as the scoped set-up sends it (a path under
//! `/public`, aiming at `/secret.txt`); the base-path set-up sends the same
//! bytes with the leading `/public` cut off (the gateway adds it back), and
//! the direct run sends them as they are.

/// Spellings of `..`: percent-encoded (any case, partly), double-encoded,
/// overlong UTF-8, IIS's `%u`, with path parameters (Tomcat), with trailing
/// junk that some servers trim (NUL, space, tab, a third dot), full-width
/// dots that NFKC folds to `.`, and raw bytes that are not UTF-8.
const PARENTS: &[&[u8]] = &[
    b"..",
    b"%2e%2e",
    b"%2E%2E",
    b"%2e%2E",
    b".%2e",
    b"%2e.",
    b"%2E.",
    b".%2E",
    b"%252e%252e",
    b"%252E%252E",
    b"%25%32%65%25%32%65",
    b"%c0%ae%c0%ae",
    b"%C0%AE%C0%AE",
    b"%e0%80%ae%e0%80%ae",
    b"%u002e%u002e",
    b".%u002e",
    b"%ef%bc%8e%ef%bc%8e",
    b"..;",
    b"..;x=1",
    b"%2e%2e;x",
    b"..%3b",
    b"..%00",
    b"..%20",
    b"..%09",
    b"...",
    b"..%2e",
    b"\xc0\xae\xc0\xae",
];

/// Spellings of the separator after a `..`: raw and encoded slashes and
/// backslashes (any case), double-encoded, overlong, `%u`, doubled.
const SEPARATORS: &[&[u8]] = &[
    b"/",
    b"%2f",
    b"%2F",
    b"%5c",
    b"%5C",
    b"\\",
    b"%252f",
    b"%255c",
    b"%c0%af",
    b"%e0%80%af",
    b"%u002f",
    b"//",
    b"/./",
];

/// `base` followed by `climbs` parent steps and `secret.txt`.
fn climb(base: &[u8], join: &[u8], parent: &[u8], separator: &[u8], climbs: usize) -> Vec<u8> {
    let mut p = [base, join, parent].concat();
    for _ in 1..climbs {
        p.extend_from_slice(separator);
        p.extend_from_slice(parent);
    }
    p.extend_from_slice(separator);
    p.extend_from_slice(b"secret.txt");
    p
}

/// Hand-written payloads for framings the cross product does not produce.
const EXTRAS: &[&[u8]] = &[
    // The ones the report came with.
    b"/public;%2f..%2fsecret.txt",
    b"/public/a;%2f..%2f..%2fsecret.txt",
    b"/public/..\\secret.txt",
    b"/public/x\\..\\..\\secret.txt",
    // Merged slashes: RFC 3986 keeps `/public/` + empty segment, nginx and
    // others merge first and climb one level higher.
    b"/public//../secret.txt",
    b"/public///../../secret.txt",
    b"/public/a//../../secret.txt",
    b"/public//..%2fsecret.txt",
    b"/public/ok.txt/../../secret.txt",
    b"/public/ok.txt/..;/..;/secret.txt",
    b"/public/ok.txt%2f..%2f..%2fsecret.txt",
    // Query and fragment delimiters inside the path, raw and encoded.
    b"/public/ok.txt?/../../secret.txt",
    b"/public/x?/../../secret.txt",
    b"/public/%3f/../../secret.txt",
    b"/public/..%3f/secret.txt",
    b"/public/x#/../../secret.txt",
    b"/public/%23/../../secret.txt",
    b"/public/..%23/secret.txt",
    b"/public/..?/secret.txt",
    b"/public/..#/secret.txt",
    // NUL, CR, LF, tab and DEL in the path, encoded and raw.
    b"/public/%00/../../secret.txt",
    b"/public/..%00/secret.txt",
    b"/public/..%0d%0a/secret.txt",
    b"/public/..%0a/secret.txt",
    b"/public/..%7f/secret.txt",
    b"/public/..\t/secret.txt",
    b"/public/..\x00/secret.txt",
    b"/public/..\x7f/secret.txt",
    // Trailing dots and spaces (Windows-style trimming).
    b"/public/.. /secret.txt",
    b"/public/..%20%20/secret.txt",
    b"/public/.../secret.txt",
    b"/public/..../secret.txt",
    b"/public/.%20/../secret.txt",
    b"/public/..%2e%2e/secret.txt",
    // Encoded `;` and `=` around parameters; parameters on `.`.
    b"/public/.;/..;/secret.txt",
    b"/public;/../secret.txt",
    b"/public;jsessionid=1/../secret.txt",
    b"/public%3b/../secret.txt",
    b"/public/%2e;/%2e%2e;/secret.txt",
    // Case and encoding of `public` itself.
    b"/%70ublic/../secret.txt",
    b"/public%2f..%2fsecret.txt",
    b"/public%5c..%5csecret.txt",
    // Raw non-ASCII: valid UTF-8 around a climb, and invalid bytes.
    b"/public/\xc3\xa9/../../secret.txt",
    b"/public/\xff/../../secret.txt",
    // The secret itself, with decoy text after it.
    b"/public/../secret.txt?/public/ok.txt",
    b"/public/..%2fsecret.txt#/public/ok.txt",
];

/// Absolute-form and authority-like targets (HTTP/1.1 request line; over
/// HTTP/2 they become odd `:path` values). Each is joined with a few of
/// the generated payloads as well.
const SCHEMES: &[&[u8]] = &[
    b"http://localhost",
    b"https://localhost",
    b"HTTP://localhost",
    b"http://localhost:1",
    b"//localhost",
];

/// Every payload, each once, in a stable order.
pub(crate) fn payloads() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // Every parent spelling with every separator, one level down, after a
    // plain `/` and after the separator itself.
    for separator in SEPARATORS {
        for parent in PARENTS {
            for join in [&b"/"[..], separator] {
                out.push(climb(b"/public", join, parent, separator, 1));
            }
        }
    }
    // A path parameter before the climb, with the spellings of `..` most
    // servers decode, one and two levels down (the report's `/public;%2f..`
    // and `/public/a;%2f..%2f..`).
    for separator in SEPARATORS {
        for (base, climbs) in [(&b"/public"[..], 1), (b"/public/a", 2)] {
            for parent in [&b".."[..], b"%2e%2e", b".%2e"] {
                for join in [
                    [b";".as_slice(), separator].concat(),
                    [b";x=1".as_slice(), separator].concat(),
                ] {
                    out.push(climb(base, &join, parent, separator, climbs));
                }
            }
        }
    }
    // Two levels down (the base path's `/x/..%2f..%2f` shape).
    for separator in SEPARATORS {
        for parent in [&b".."[..], b"%2e%2e", b"%2e."] {
            for join in [&b"/"[..], separator] {
                out.push(climb(b"/public/x", join, parent, separator, 2));
            }
        }
    }
    out.extend(EXTRAS.iter().map(|p| p.to_vec()));
    // Absolute-form: a sample of what came before, behind each scheme.
    let sample: Vec<Vec<u8>> = out.iter().step_by(37).cloned().collect();
    for scheme in SCHEMES {
        out.push([scheme, &b"/secret.txt"[..]].concat());
        for p in &sample {
            out.push([scheme, p.as_slice()].concat());
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// The same payload for the set-up whose `upstream.url` ends in `/public`:
/// the client sends what follows `/public` (the gateway prefixes it). For a
/// payload where `/public` is not followed by `/` (`/public;…`,
/// `/public%2f…`), the client's target would not start with `/`: sent as
/// it is (`;%2f..` as a request target), which no server may read as a
/// path above the base either.
pub(crate) fn under_base(payload: &[u8]) -> Vec<u8> {
    if let Some(rest) = payload.strip_prefix(b"/public") {
        return rest.to_vec();
    }
    for scheme in SCHEMES {
        if let Some(rest) = payload
            .strip_prefix(*scheme)
            .and_then(|r| r.strip_prefix(b"/public"))
        {
            return [scheme, rest].concat();
        }
    }
    payload.to_vec()
}

/// Whether a standards-following client would say `payload` stays inside
/// `/public`: its path (before `?` or `#`, after any scheme and authority)
/// with only literal `.` and `..` segments resolved (RFC 3986 §5.2.4) still
/// starts with `/public`. A payload that does and still reaches the secret
/// on a server is a real parser differential, not a plain `..`.
pub(crate) fn looks_inside_public(payload: &[u8]) -> bool {
    let mut path = payload;
    for scheme in SCHEMES {
        if let Some(rest) = payload.strip_prefix(*scheme) {
            path = rest;
        }
    }
    let end = path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(path.len());
    let mut kept: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = path[..end].split(|&b| b == b'/').skip(1).collect();
    for (i, s) in segments.iter().enumerate() {
        match *s {
            b"." => {}
            b".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
        // A final dot segment leaves a directory: `/public/..` is `/`.
        if i + 1 == segments.len() && matches!(*s, b"." | b"..") {
            kept.push(b"");
        }
    }
    kept.first()
        .is_some_and(|first| first.starts_with(b"public"))
}

/// A payload as text for a report: printable ASCII as it is, anything else
/// as `\xNN`.
pub(crate) fn show(payload: &[u8]) -> String {
    payload.escape_ascii().to_string()
}

#[test]
fn the_corpus_covers_the_reported_bypasses_and_reads_inside_public() {
    let all = payloads();
    assert!(all.len() > 800, "{}", all.len());
    for reported in [
        &b"/public;%2f..%2fsecret.txt"[..],
        b"/public/a;%2f..%2f..%2fsecret.txt",
        b"/public/..\\secret.txt",
        b"/public/x\\..\\..\\secret.txt",
        b"/public/%2e%2e%2fsecret.txt",
        b"/public/x/..%2f..%2fsecret.txt",
    ] {
        assert!(all.iter().any(|p| p == reported), "{}", show(reported));
    }
    assert_eq!(
        under_base(b"/public/x/..%2f..%2fsecret.txt"),
        b"/x/..%2f..%2fsecret.txt"
    );
    assert_eq!(
        under_base(b"http://localhost/public/a"),
        b"http://localhost/a"
    );
    assert!(looks_inside_public(b"/public;%2f..%2fsecret.txt"));
    assert!(looks_inside_public(b"/public//../secret.txt"));
    assert!(!looks_inside_public(b"/public/../secret.txt"));
    assert!(!looks_inside_public(b"/public/x/../../secret.txt"));
    assert!(!looks_inside_public(b"/public/.."));
    assert!(!looks_inside_public(
        b"http://localhost/public/../secret.txt"
    ));
}

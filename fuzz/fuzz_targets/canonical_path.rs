//! The request path's canonical form (`canonicalise`), against a reference
//! model written out here from the specification alone, as a plain byte
//! loop: both refuse, or both accept with the same path and parameter.
//!
//! Input: one policy byte (`p`: `PathPolicy::with_parameters(&["jsessionid"])`,
//! anything else: `PathPolicy::strict()`), then the path as UTF-8.
//!
//! The specification the model follows:
//!
//! - An empty path is `/` (RFC 9110 §4.2.3); `*` alone is accepted
//!   unchanged; otherwise the path starts with `/`.
//! - Raw bytes: `\`, `;` (see parameters), below 0x20 and 0x7F are refused;
//!   bytes from 0x80 (UTF-8) are written `%XX`, upper-case hex; a space is
//!   written `%20` (it is the same space as an escaped one, dot rules
//!   included); any other raw byte is written as it is.
//! - `%` is followed by two hex digits. The byte it decodes to: `/`, `\`,
//!   `%`, `;`, below 0x20 and 0x7F are refused; unreserved characters
//!   (`A-Z a-z 0-9 - . _ ~`) are written raw; anything else `%XX`.
//! - The fully decoded bytes are UTF-8 (so overlong `%C0%AE` is refused).
//! - Segments (split on `/`): empty ones are dropped; a decoded `.` is
//!   dropped; `..` drops the previous kept segment and is refused when
//!   there is none (never clamped); a segment of only dots and spaces
//!   other than `.` and `..` is refused. A path whose last segment is
//!   empty, `.` or `..` ends in `/`.
//! - Output: `/` and the kept segments joined by `/`, plus that trailing
//!   `/`; `/` when nothing is kept.
//! - With parameters: one raw `;`, in the last segment only, as
//!   `;name=value` with a listed name (ASCII case ignored) and a value of
//!   1+ of `A-Z a-z 0-9 . _ -`, after a non-empty segment that is not a
//!   dot segment; it is not part of the path and is returned as
//!   `name=value`. Any other `;` is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::fuzzing::{canonicalise, PathPolicy};

/// The parameter names of the `p` policy.
const PARAMETERS: &[&str] = &["jsessionid"];

fuzz_target!(|data: &[u8]| {
    let Some((&policy_byte, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let names: &[&str] = if policy_byte == b'p' { PARAMETERS } else { &[] };
    let policy = if names.is_empty() {
        PathPolicy::strict()
    } else {
        PathPolicy::with_parameters(names)
    };
    let got = canonicalise(path, &policy)
        .ok()
        .map(|c| (c.path().to_owned(), c.parameter().map(str::to_owned)));
    let want = reference(path, names);
    assert_eq!(
        got,
        want,
        "{path:?} with parameters {names:?}: canonicalise (left) and the reference (right) disagree"
    );
    // A canonical path is its own canonical form, under either policy.
    if let Some((canonical, _)) = &got {
        for p in [
            PathPolicy::strict(),
            PathPolicy::with_parameters(PARAMETERS),
        ] {
            let again = canonicalise(canonical, &p).map(|c| c.path().to_owned());
            assert_eq!(
                again.as_deref(),
                Ok(canonical.as_str()),
                "{path:?} -> {canonical:?}"
            );
        }
    }
});

/// The reference model: `Some((path, parameter))` or `None` for refused.
fn reference(input: &str, names: &[&str]) -> Option<(String, Option<String>)> {
    if input == "*" {
        return Some(("*".to_owned(), None));
    }
    if input.is_empty() {
        return Some(("/".to_owned(), None));
    }
    let bytes = input.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }

    // Parameters: split off the one allowed `;name=value`, or refuse.
    let mut path = bytes;
    let mut parameter = None;
    let semicolons = bytes.iter().filter(|&&b| b == b';').count();
    if semicolons > 0 {
        if semicolons > 1 || names.is_empty() {
            return None;
        }
        let semi = bytes.iter().position(|&b| b == b';')?;
        let last_slash = bytes.iter().rposition(|&b| b == b'/')?;
        if semi < last_slash {
            return None; // not in the last segment
        }
        let text = &input[semi + 1..];
        let (name, value) = text.split_once('=')?;
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return None;
        }
        if value.is_empty() {
            return None;
        }
        for b in value.bytes() {
            let ok = b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
            if !ok {
                return None;
            }
        }
        path = &bytes[..semi];
        parameter = Some(text.to_owned());
    }

    // Bytes and escapes, segment by segment: each segment's decoded bytes
    // (for the dot rules) and its written form.
    let mut segments: Vec<(Vec<u8>, String)> = Vec::new();
    let mut decoded = Vec::new();
    let mut written = String::new();
    let mut everything = Vec::new();
    let mut i = 1;
    while i < path.len() {
        let b = path[i];
        if b == b'/' {
            // The separator is part of the decoded string: `%C4/%A9` is not UTF-8.
            everything.push(b);
            segments.push((decoded, written));
            decoded = Vec::new();
            written = String::new();
            i += 1;
            continue;
        }
        if b == b'\\' || b == b';' || b < 0x20 || b == 0x7F {
            return None;
        }
        if b == b'%' {
            // Two more bytes, both hex digits.
            if i + 2 >= path.len() {
                return None;
            }
            let high = hex_digit(path[i + 1])?;
            let low = hex_digit(path[i + 2])?;
            let v = high * 16 + low;
            if v == b'/' || v == b'\\' || v == b'%' || v == b';' || v < 0x20 || v == 0x7F {
                return None;
            }
            if unreserved(v) {
                written.push(char::from(v));
            } else {
                written.push_str(&format!("%{v:02X}"));
            }
            decoded.push(v);
            everything.push(v);
            i += 3;
            continue;
        }
        if b >= 0x80 || b == b' ' {
            written.push_str(&format!("%{b:02X}"));
        } else {
            written.push(char::from(b));
        }
        decoded.push(b);
        everything.push(b);
        i += 1;
    }
    segments.push((decoded, written));
    if std::str::from_utf8(&everything).is_err() {
        return None;
    }

    // The segment a parameter hangs on is an ordinary one.
    if parameter.is_some() {
        let (last, _) = segments.last()?;
        if last.is_empty() || last == b"." || last == b".." {
            return None;
        }
    }

    // Dot segments and empty segments.
    let mut kept: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    let count = segments.len();
    for (n, (decoded, written)) in segments.into_iter().enumerate() {
        let last = n + 1 == count;
        if decoded.is_empty() || decoded == b"." {
            trailing_slash = last;
            continue;
        }
        if decoded == b".." {
            kept.pop()?;
            trailing_slash = last;
            continue;
        }
        if decoded.iter().all(|&c| c == b'.' || c == b' ') {
            return None;
        }
        trailing_slash = false;
        kept.push(written);
    }

    let mut out = String::from("/");
    out.push_str(&kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        out.push('/');
    }
    Some((out, parameter))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b == b'~'
}

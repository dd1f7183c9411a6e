//! The canonical request path: the one spelling of a request's path that
//! the scope check, the base-path join and the upstream all see.
//!
//! Every parser differential between the gateway and the upstream is a
//! bypass: `/public;%2f..%2fsecret` is under `/public` to a matcher that
//! cuts at `;`, and `/secret` to nginx, lighttpd, Caddy and Python, which
//! decode `%2f` inside the parameter and then resolve `..`; `\` is `/` to
//! WHATWG `new URL()` (Node, browsers). So the path is read once, here, and
//! what could be read two ways is refused rather than guessed at:
//!
//! - raw `\`, `;` (path parameters), control characters;
//! - escapes of `/`, `\`, `%` (double encoding), `;` and control
//!   characters, and `%` not followed by two hex digits (`%u002e`);
//! - decoded bytes that are not UTF-8 (overlong `%c0%ae` is a `.` to some
//!   decoders);
//! - a segment of only dots and spaces other than `.` and `..` (`...`,
//!   `.. `: trimmed to `..` by some file systems);
//! - `..` climbing above `/`.
//!
//! What remains has one meaning everywhere, and is written in one form:
//! escapes of unreserved characters decoded (`%2e` is `.`, `%7E` is `~`),
//! other escapes in upper case, raw non-ASCII bytes and spaces escaped (Node
//! escapes them and nginx does not: the escaped form is the same path to both),
//! empty segments merged (`//x` is a host to `new URL()` and `/x` to nginx),
//! dot segments resolved. An ordinary path (no `%`, `;`, `\`, `//`, dot
//! segment or non-ASCII byte) is already canonical and is borrowed as sent:
//! the hot path costs one byte scan and no allocation.
//!
//! One narrow exception is configurable (`public.path_parameters`): a
//! single `;name=value` on the last segment, for a listed name (Tomcat's
//! `jsessionid`), with a value of letters, digits, `.`, `_` and `-`. It is
//! forwarded but is not part of the path that rules are matched against.

use std::borrow::Cow;

/// What may be in a path beyond the strict default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathPolicy {
    /// Names of the path parameters allowed on the last segment (matched
    /// ignoring ASCII case); empty: none.
    parameters: Box<[Box<str>]>,
}

impl PathPolicy {
    /// No path parameters.
    pub fn strict() -> PathPolicy {
        PathPolicy::default()
    }

    /// A `;name=value` on the last segment for these names.
    pub fn with_parameters<S: AsRef<str>>(names: &[S]) -> PathPolicy {
        PathPolicy {
            parameters: names.iter().map(|n| n.as_ref().into()).collect(),
        }
    }

    fn allows_parameter(&self, name: &str) -> bool {
        self.parameters.iter().any(|p| p.eq_ignore_ascii_case(name))
    }
}

/// Why a path cannot be forwarded. Each names what was refused, for the
/// client's `invalid_path` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPath {
    #[error("the path is not absolute (it must start with /)")]
    NotAbsolute,
    #[error("the path contains a backslash (\\), which some servers read as /")]
    Backslash,
    #[error("the path contains an encoded / (%2F), which some servers decode into a separator")]
    EncodedSlash,
    #[error("the path contains an encoded backslash (%5C), which some servers read as /")]
    EncodedBackslash,
    #[error("the path contains an encoded % (%25): double encoding is read differently by different servers")]
    EncodedPercent,
    #[error("the path contains an encoded ; (%3B), which some servers read as a path parameter")]
    EncodedSemicolon,
    #[error("the path contains a ; path parameter, which servers read differently (public.path_parameters allows named ones)")]
    Parameter,
    #[error("the path contains a control character")]
    Control,
    #[error("the path contains a % that is not followed by two hex digits")]
    MalformedEscape,
    #[error("the path's escapes do not decode to UTF-8 (for example an overlong encoding)")]
    InvalidUtf8,
    #[error("the path has a segment of only dots and spaces other than . and .., which some servers trim to ..")]
    DotVariant,
    #[error("the path climbs above / with .. segments")]
    AboveRoot,
}

/// A path as the upstream will get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// Borrowed when the path as sent was already canonical.
    path: Cow<'a, str>,
    /// An allowed `name=value` parameter of the last segment.
    parameter: Option<&'a str>,
}

impl<'a> Canonical<'a> {
    /// The canonical path: what scope rules are matched against, and (after
    /// the base path) what the upstream is sent.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The allowed path parameter, as `name=value`.
    pub fn parameter(&self) -> Option<&'a str> {
        self.parameter
    }

    /// What to forward, detached from the request it was read from (which
    /// the proxy then takes apart): `None` when that is the path as sent.
    pub(crate) fn into_rewrite(self) -> Option<String> {
        match (self.path, self.parameter) {
            (Cow::Borrowed(_), None) => None,
            (path, None) => Some(path.into_owned()),
            (path, Some(p)) => Some(format!("{path};{p}")),
        }
    }
}

/// Reads a request's path (without its query) the one way it may be read.
/// An empty path is `/` (RFC 9110 §4.2.3); `*` (asterisk-form, `OPTIONS *`)
/// stays as it is.
pub fn canonicalise<'a>(raw: &'a str, policy: &PathPolicy) -> Result<Canonical<'a>, InvalidPath> {
    match raw {
        "" => {
            return Ok(Canonical {
                path: Cow::Borrowed("/"),
                parameter: None,
            })
        }
        "*" => {
            return Ok(Canonical {
                path: Cow::Borrowed("*"),
                parameter: None,
            })
        }
        _ => {}
    }
    if !raw.starts_with('/') {
        return Err(InvalidPath::NotAbsolute);
    }
    if is_plain(raw.as_bytes()) {
        return Ok(Canonical {
            path: Cow::Borrowed(raw),
            parameter: None,
        });
    }
    rewrite(raw, policy)
}

/// Whether `path` (starting with `/`) is canonical as it is: no byte that
/// needs a look (`%`, `;`, `\\`, space, controls, non-ASCII), no empty
/// segment before the end, no segment of only dots. No allocation.
#[inline]
fn is_plain(path: &[u8]) -> bool {
    // Two branch-free passes (the compiler vectorises them): this runs on
    // every proxied request, and nearly every path is plain.
    let look = path.iter().fold(false, |acc, &b| {
        acc | (b <= b' ' || b >= 0x7f || b == b'%' || b == b';' || b == b'\\')
    });
    if look {
        return false;
    }
    let after_slash = path
        .iter()
        .zip(path.iter().skip(1))
        .fold(false, |acc, (&a, &b)| {
            acc | (a == b'/' && (b == b'/' || b == b'.'))
        });
    !after_slash || segments_plain(path)
}

/// The rarer case of [`is_plain`]: a `/` followed by `/` or `.`. Plain
/// unless that makes an empty segment (a trailing `/` is fine) or a
/// segment of only dots (`.well-known` is plain).
#[cold]
fn segments_plain(path: &[u8]) -> bool {
    let mut rest = path;
    while let Some(at) = rest.iter().position(|&c| c == b'/') {
        let seg_and_rest = rest.get(at + 1..).unwrap_or_default();
        let end = seg_and_rest
            .iter()
            .position(|&c| c == b'/')
            .unwrap_or(seg_and_rest.len());
        let seg = seg_and_rest.get(..end).unwrap_or_default();
        let last = end == seg_and_rest.len();
        if (seg.is_empty() && !last) || (!seg.is_empty() && seg.iter().all(|&c| c == b'.')) {
            return false;
        }
        rest = seg_and_rest;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The slow path: rebuilds the path segment by segment.
fn rewrite<'a>(raw: &'a str, policy: &PathPolicy) -> Result<Canonical<'a>, InvalidPath> {
    // `raw` starts with `/`: the segments are what follows it.
    let body = &raw[1..];
    let mut out = String::with_capacity(raw.len() + 8);
    // Where each kept segment starts in `out` (its `/`), so `..` can drop it.
    let mut starts: Vec<usize> = Vec::new();
    // This segment's bytes fully decoded: for the UTF-8 check and for
    // telling dot segments, however they were spelled.
    let mut decoded: Vec<u8> = Vec::new();
    let mut parameter = None;
    let mut trailing_slash = false;
    let mut segments = body.split('/').peekable();
    while let Some(raw_seg) = segments.next() {
        let last = segments.peek().is_none();
        let seg = match raw_seg.find(';') {
            None => raw_seg,
            Some(at) => {
                let (seg, param) = (&raw_seg[..at], &raw_seg[at + 1..]);
                if !last || !valid_parameter(param, policy) {
                    return Err(InvalidPath::Parameter);
                }
                parameter = Some(param);
                seg
            }
        };
        let start = out.len();
        out.push('/');
        decoded.clear();
        let bytes = seg.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'%' => {
                    let (Some(h), Some(l)) = (
                        bytes.get(i + 1).copied().and_then(hex),
                        bytes.get(i + 2).copied().and_then(hex),
                    ) else {
                        return Err(InvalidPath::MalformedEscape);
                    };
                    let v = h << 4 | l;
                    match v {
                        b'/' => return Err(InvalidPath::EncodedSlash),
                        b'\\' => return Err(InvalidPath::EncodedBackslash),
                        b'%' => return Err(InvalidPath::EncodedPercent),
                        b';' => return Err(InvalidPath::EncodedSemicolon),
                        0..=0x1f | 0x7f => return Err(InvalidPath::Control),
                        v if is_unreserved(v) => out.push(char::from(v)),
                        v => push_escape(&mut out, v),
                    }
                    decoded.push(v);
                    i += 3;
                }
                b'\\' => return Err(InvalidPath::Backslash),
                0..=0x1f | 0x7f => return Err(InvalidPath::Control),
                // A raw space (never valid in a request line; an HTTP/2
                // `:path` could carry one) is the same space as `%20`.
                b' ' | 0x80..=0xff => {
                    push_escape(&mut out, b);
                    decoded.push(b);
                    i += 1;
                }
                b => {
                    out.push(char::from(b));
                    decoded.push(b);
                    i += 1;
                }
            }
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(InvalidPath::InvalidUtf8);
        }
        match decoded.as_slice() {
            b"" | b"." => {
                if parameter.is_some() {
                    return Err(InvalidPath::Parameter);
                }
                out.truncate(start);
                trailing_slash = last;
            }
            b".." => {
                if parameter.is_some() {
                    return Err(InvalidPath::Parameter);
                }
                out.truncate(start);
                let Some(prev) = starts.pop() else {
                    return Err(InvalidPath::AboveRoot);
                };
                out.truncate(prev);
                trailing_slash = last;
            }
            d if d.iter().all(|&c| c == b'.' || c == b' ') => {
                return Err(InvalidPath::DotVariant);
            }
            _ => starts.push(start),
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Canonical {
        path: Cow::Owned(out),
        parameter,
    })
}

fn push_escape(out: &mut String, v: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(v >> 4)]));
    out.push(char::from(HEX[usize::from(v & 0xf)]));
}

/// `name=value` with a listed name and a value of `[A-Za-z0-9._-]+`.
fn valid_parameter(param: &str, policy: &PathPolicy) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    policy.allows_parameter(name)
        && !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, InvalidPath> {
        canonicalise(p, &PathPolicy::strict()).map(|c| c.path().to_owned())
    }

    #[test]
    fn ordinary_paths_pass_unchanged_and_borrowed() {
        for p in [
            "/",
            "/iwc/api/security/oauth/token",
            "/iwc/api/databases/monitor-information",
            "/a/b/",
            "/.well-known/openid-configuration",
            "/a.json",
            "/v1.2/x..y",
            "/a-b_c~d/e@f:g!h$i&j'k(l)m*n+o,p=q",
            "*",
        ] {
            let c = canonicalise(p, &PathPolicy::strict()).unwrap();
            assert_eq!(c.path(), p);
            assert!(matches!(c.path, Cow::Borrowed(_)), "{p} was copied");
            assert_eq!(c.into_rewrite(), None, "{p}");
        }
        assert_eq!(canon("").unwrap(), "/");
    }

    #[test]
    fn equivalent_spellings_become_one() {
        for (p, want) in [
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/a//b", "/a/b"),
            ("//a", "/a"),
            ("//", "/"),
            ("/a//", "/a/"),
            ("/%61%7e%2D", "/a~-"),
            ("/a%20b", "/a%20b"),
            ("/a b", "/a%20b"),
            ("/a%3fb%23c", "/a%3Fb%23c"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/%e2%82%ac", "/%E2%82%AC"),
        ] {
            assert_eq!(canon(p).unwrap(), want, "{p}");
            // Canonical is a fixed point.
            assert_eq!(canon(want).unwrap(), want, "{want}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_naming_what() {
        use InvalidPath::*;
        for (p, why) in [
            ("/public;%2f..%2fsecret.txt", Parameter),
            ("/public/a;%2f..%2f..%2fsecret.txt", Parameter),
            ("/public;x/a", Parameter),
            ("/a;jsessionid=1", Parameter),
            ("/public/..\\secret.txt", Backslash),
            ("/public/x\\..\\..\\secret.txt", Backslash),
            ("/a%2fb", EncodedSlash),
            ("/x/..%2F..%2Fsecret.txt", EncodedSlash),
            ("/a%5cb", EncodedBackslash),
            ("/%252e%252e/x", EncodedPercent),
            ("/a%3bb", EncodedSemicolon),
            ("/a%00b", Control),
            ("/a%0d%0ab", Control),
            ("/a%7f", Control),
            ("/%u002e%u002e/x", MalformedEscape),
            ("/a%2", MalformedEscape),
            ("/a%zz", MalformedEscape),
            ("/%c0%ae%c0%ae/x", InvalidUtf8),
            ("/%e0%80%ae", InvalidUtf8),
            ("/%ff", InvalidUtf8),
            ("/a/.../b", DotVariant),
            ("/a/..%20/b", DotVariant),
            ("/a/%20/b", DotVariant),
            ("/a/.. /b", DotVariant),
            ("/a/ /b", DotVariant),
            ("/..", AboveRoot),
            ("/%2e%2e%2fsecret.txt", EncodedSlash),
            ("/%2e%2e/secret.txt", AboveRoot),
            ("/a/../../b", AboveRoot),
            ("a/b", NotAbsolute),
        ] {
            assert_eq!(canon(p), Err(why), "{p}");
            assert!(!why.to_string().is_empty());
        }
    }

    #[test]
    fn a_listed_parameter_is_allowed_on_the_last_segment_only() {
        let policy = PathPolicy::with_parameters(&["jsessionid"]);
        let c = canonicalise("/app/x;JSESSIONID=ab12.node0", &policy).unwrap();
        assert_eq!(c.path(), "/app/x");
        assert_eq!(c.parameter(), Some("JSESSIONID=ab12.node0"));
        assert_eq!(
            c.into_rewrite().as_deref(),
            Some("/app/x;JSESSIONID=ab12.node0")
        );
        let c = canonicalise("/a/../app/x;jsessionid=1", &policy).unwrap();
        assert_eq!(c.into_rewrite().as_deref(), Some("/app/x;jsessionid=1"));
        for p in [
            "/app;jsessionid=1/x",
            "/app/x;other=1",
            "/app/x;jsessionid=",
            "/app/x;jsessionid=a/b",
            "/app/x;jsessionid=%2f",
            "/app/x;jsessionid=1;jsessionid=2",
            "/app/..;jsessionid=1",
            "/app/.;jsessionid=1",
            "/app/;jsessionid=1",
            "/app/x;jsessionid",
        ] {
            assert_eq!(
                canonicalise(p, &policy).map(|c| c.path().to_owned()),
                Err(InvalidPath::Parameter),
                "{p}"
            );
        }
    }
}

//! Path patterns of scope rules, and how a request path is matched.
//!
//! A pattern is an absolute path of segments: a literal segment matches
//! itself exactly (case-sensitive, as the upstream routes), `*` matches
//! exactly one segment, and `**` (only as the last segment) matches what
//! is left, none included: `/iwc/api/databases/**` matches
//! `/iwc/api/databases` and everything below it. `/` alone matches the root.
//!
//! The request path is the canonical one (`proxy::canonicalise`: what is
//! matched is exactly what the upstream is sent, and what a server could
//! read as another path was refused before this). Each segment's `%XX`
//! escapes are decoded and one trailing slash is ignored. The defensive
//! reading below is kept for any caller: `;parameters` are cut, and a path
//! that is ambiguous (an empty segment from `//`, an escape that is not
//! one, an encoded `/` or `\`) matches no rule at all.

use std::borrow::Cow;

/// Longest pattern accepted, in bytes.
pub(crate) const MAX_PATTERN_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segments: Vec<Segment>,
    /// Ends in `**`: any remaining segments, none included.
    rest: bool,
}

impl PathPattern {
    /// Compiles a pattern; the error says what is wrong with it (the caller
    /// names the field).
    pub(crate) fn parse(text: &str) -> Result<PathPattern, String> {
        if text.len() > MAX_PATTERN_LEN {
            return Err(format!("must be at most {MAX_PATTERN_LEN} bytes"));
        }
        let Some(body) = text.strip_prefix('/') else {
            return Err(format!("{text:?} must be an absolute path starting with /"));
        };
        if body.is_empty() {
            return Ok(PathPattern {
                segments: Vec::new(),
                rest: false,
            });
        }
        let parts: Vec<&str> = body.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match *part {
                "" if last => {
                    return Err(format!(
                        "{text:?} must not end with / (a trailing slash is ignored when matching)"
                    ))
                }
                "" => return Err(format!("{text:?} has an empty segment (//)")),
                "**" if last => rest = true,
                "**" => return Err(format!("{text:?}: ** may only be the last segment")),
                "*" => segments.push(Segment::One),
                "." | ".." => {
                    return Err(format!("{text:?}: . and .. segments are not allowed"))
                }
                p if p.contains('*') => {
                    return Err(format!(
                        "{text:?}: * and ** match whole segments only (a segment is *, ** or literal text)"
                    ))
                }
                p => {
                    if let Some(c) = p.chars().find(|&c| !allowed_literal(c)) {
                        return Err(format!(
                            "{text:?}: the character {c:?} is not allowed in a pattern (write segments as the upstream decodes them, without %, ;, ?, # or \\)"
                        ));
                    }
                    segments.push(Segment::Literal((*p).to_owned()));
                }
            }
        }
        Ok(PathPattern { segments, rest })
    }

    /// Whether `path` (already dot-resolved, see the module's note) matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        // One trailing slash is the same resource to nearly every server.
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut want = self.segments.iter();
        if body.is_empty() {
            return want.next().is_none();
        }
        // The common path has no parameters and no escapes: then each
        // segment is itself, with no per-segment scan (one scan here).
        let plain = !body.bytes().any(|b| b == b';' || b == b'%');
        let mut beyond = false;
        for raw in segments(body) {
            // Every segment is read, those under `**` too: an ambiguous
            // one anywhere means the path matches no rule.
            let seg = if plain && !raw.is_empty() {
                Cow::Borrowed(raw)
            } else {
                match decode_segment(raw) {
                    Some(seg) => seg,
                    None => return false,
                }
            };
            match want.next() {
                Some(Segment::One) => {}
                Some(Segment::Literal(l)) if *l == *seg => {}
                Some(Segment::Literal(_)) => return false,
                None => beyond = true,
            }
        }
        if beyond {
            self.rest
        } else {
            want.next().is_none()
        }
    }
}

/// The `/`-separated segments of `body`. A byte scan rather than
/// `str::split('/')`, whose general searcher was most of a match's cost
/// in profiles; `/` is ASCII, so every cut is at a character boundary.
fn segments(body: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'/') {
            Some(i) => {
                rest = r.get(i + 1..);
                r.get(..i)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Characters a literal segment may hold: anything printable but the
/// delimiters and escapes a request path would carry differently.
fn allowed_literal(c: char) -> bool {
    !c.is_control() && !c.is_whitespace() && !matches!(c, '%' | ';' | '?' | '#' | '\\' | '/')
}

/// A request path segment as the upstream reads it: `;parameters` cut,
/// `%XX` decoded. `None` when no rule should match it: empty (`//`), a
/// broken escape, or one that decodes to a separator, a control character
/// or bytes that are not UTF-8.
fn decode_segment(raw: &str) -> Option<Cow<'_, str>> {
    let name = raw.split(';').next().unwrap_or_default();
    if name.is_empty() {
        return None;
    }
    if !name.contains('%') {
        return Some(Cow::Borrowed(name));
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    if text
        .chars()
        .any(|c| c.is_control() || matches!(c, '/' | '\\' | ';' | '%'))
        || text == "."
        || text == ".."
    {
        return None;
    }
    Some(Cow::Owned(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn literal_one_and_rest() {
        let db = p("/iwc/api/databases/**");
        for ok in [
            "/iwc/api/databases",
            "/iwc/api/databases/",
            "/iwc/api/databases/1",
            "/iwc/api/databases/1/metrics/x",
            "/iwc/%61pi/databases/1",
            "/iwc/api;jsessionid=1/databases/1",
        ] {
            assert!(db.matches(ok), "{ok}");
        }
        for no in [
            "/iwc/api",
            "/iwc/api/databasesX",
            "/iwc/api/Databases/1",
            "/iwc/api//databases/1",
            "//iwc/api/databases/1",
            "/iwc/api/databases%2f..%2f..%2fadmin",
            "/iwc/api/databases/%2e%2e",
            "/iwc/api/databases/a%5cb",
            "/iwc/api/databases/%zz",
            "/iwc/api/databases/%e9",
            "/iwc/api/databases/%252e%252e/x",
            "/iwc/api/databases/a%3bb",
            "/iwc/api/;x/databases",
            "",
            "*",
        ] {
            assert!(!db.matches(no), "{no}");
        }
        let one = p("/a/*/c");
        assert!(one.matches("/a/b/c") && one.matches("/a/b/c/"));
        assert!(!one.matches("/a/c") && !one.matches("/a/b/x/c") && !one.matches("/a//c"));
        assert!(!one.matches("/a/b/c/d"));
        let exact = p("/a/b");
        assert!(exact.matches("/a/b") && exact.matches("/a/b/"));
        assert!(!exact.matches("/a/b/c") && !exact.matches("/a") && !exact.matches("/a/b//"));
        let root = p("/");
        assert!(root.matches("/") && !root.matches("/a"));
        let all = p("/**");
        assert!(all.matches("/") && all.matches("/a/b/c"));
        assert!(!all.matches("/a//b"), "an empty segment matches no rule");
        let star_rest = p("/*/**");
        assert!(!star_rest.matches("/") && star_rest.matches("/a") && star_rest.matches("/a/b"));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("iwc/api", "absolute"),
            ("/a//b", "empty segment"),
            ("/a/", "trailing slash"),
            ("/**/a", "last segment"),
            ("/a*", "whole segments"),
            ("/a/../b", ". and .."),
            ("/a%2fb", "not allowed"),
            ("/a;b", "not allowed"),
            ("/a b", "not allowed"),
            ("/a?x", "not allowed"),
        ] {
            let e = PathPattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(PathPattern::parse(&format!("/{}", "a".repeat(2000))).is_err());
        assert!(PathPattern::parse("/v1.2/ünïcode/**").is_ok());
    }
}

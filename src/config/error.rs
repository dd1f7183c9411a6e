//! What can be wrong with the configuration, each error naming the key (or
//! environment variable) at fault. The file format's own errors (unknown
//! keys, values of the wrong type) come from figment and serde in their
//! words; they are put in ours here, with a did-you-mean for a key one or
//! two letters off.

use std::fmt;
use std::path::PathBuf;

use figment::error::{Actual, Kind};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    MissingFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file or the environment does not fit the format: said in
    /// `Explained`'s words, the figment error kept as the source.
    #[error("{}", Explained(.0))]
    Parse(#[source] Box<figment::Error>),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub(super) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// A figment error (and those chained to it), one line each:
/// `key: what is wrong (where)`.
struct Explained<'a>(&'a figment::Error);

impl fmt::Display for Explained<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.clone().into_iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            line(f, &e)?;
        }
        Ok(())
    }
}

fn line(f: &mut fmt::Formatter<'_>, e: &figment::Error) -> fmt::Result {
    let key = e.path.join(".");
    let section = e.path[..e.path.len().saturating_sub(1)].join(".");
    let within = |name: &str| {
        if section.is_empty() {
            name.to_owned()
        } else {
            format!("{section}.{name}")
        }
    };
    if !key.is_empty() {
        write!(f, "{key}: ")?;
    }
    match &e.kind {
        Kind::UnknownField(found, expected) => {
            let what = if section.is_empty() { "section" } else { "key" };
            // The key before the colon names it already.
            match key.is_empty() {
                true => write!(f, "unknown {what} {found:?}")?,
                false => write!(f, "unknown {what}")?,
            }
            match closest(found, expected) {
                Some(near) => write!(f, "; did you mean {}?", within(near))?,
                None if !expected.is_empty() => write!(f, "; expected {}", list(expected))?,
                None => {}
            }
        }
        Kind::UnknownVariant(found, expected) => {
            write!(f, "unknown value {found:?}; expected {}", list(expected))?
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            write!(f, "expected {expected}, found {}", found(actual))?
        }
        Kind::Message(m) => f.write_str(m)?,
        other => write!(f, "{other}")?,
    }
    // Where it came from: the file, or the environment variable by name.
    if let Some(md) = &e.metadata {
        if md.name.contains("environment") && !e.path.is_empty() {
            write!(
                f,
                " (environment variable TOKENGATE_{})",
                e.path.join("__").to_ascii_uppercase()
            )?;
        } else if let Some(source) = &md.source {
            write!(f, " (in {} {source})", md.name)?;
        }
    }
    Ok(())
}

/// A value as the user wrote it: `"soon"`, `5`, `a list`.
fn found(a: &Actual) -> String {
    match a {
        Actual::Str(s) => format!("{s:?}"),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Bool(b) => b.to_string(),
        Actual::Seq => "a list".to_owned(),
        Actual::Map => "a table".to_owned(),
        other => other.to_string(),
    }
}

/// `a`, `a or b`, `one of a, b, c`.
fn list(names: &[&str]) -> String {
    match names {
        [] => "nothing here".to_owned(),
        [one] => (*one).to_owned(),
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", names.join(", ")),
    }
}

/// The expected name `found` is most likely a typo of: at most two edits
/// away (one for short names), and nearer than any other.
fn closest<'a>(found: &str, expected: &[&'a str]) -> Option<&'a str> {
    let found = found.to_ascii_lowercase();
    let limit = if found.len() <= 4 { 1 } else { 2 };
    let mut best: Option<(usize, &str)> = None;
    for &name in expected {
        let d = edits(&found, name);
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, name));
        }
    }
    best.map(|(_, n)| n)
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit
/// (`access_tll` is one edit from `access_ttl`).
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn error_of(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn a_misspelt_key_is_named_with_the_key_it_was_likely_meant_to_be() {
        let e = error_of("[tokens]\naccess_tll = \"2m\"");
        assert!(
            e.starts_with("tokens.access_tll: unknown key; did you mean tokens.access_ttl?"),
            "{e}"
        );
        assert!(!e.contains("``") && !e.contains("default."), "{e}");
        // Nothing close: the keys the section has.
        let e = error_of("[log]\ncolour = true");
        assert!(
            e.starts_with("log.colour: unknown key; expected one of "),
            "{e}"
        );
        assert!(e.contains("format, level, access"), "{e}");
        let e = error_of("[nonsense]\na = 1");
        assert!(
            e.starts_with("nonsense: unknown section; expected one of "),
            "{e}"
        );
        let e = error_of("[publik]\nworkers = 2");
        assert!(e.contains("did you mean public?"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_says_what_was_expected_and_found() {
        let e = error_of("[public]\nworkers = \"many\"");
        assert!(e.starts_with("public.workers: expected "), "{e}");
        assert!(e.contains("found \"many\""), "{e}");
        assert!(!e.contains('`'), "{e}");
        let e = error_of("[tokens]\naccess_ttl = \"soon\"");
        assert!(
            e.starts_with("tokens.access_ttl: invalid duration \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn edits_count_a_swap_as_one() {
        assert_eq!(edits("access_tll", "access_ttl"), 1);
        assert_eq!(edits("listn", "listen"), 1);
        assert_eq!(edits("abc", "xyz"), 3);
        assert_eq!(closest("colour", &["format", "level", "access"]), None);
    }
}

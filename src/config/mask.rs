//! URLs with their passwords hidden, for every place a database URL is
//! shown (the log, `check-config`, `Debug`). A leaf of `config`, so the file
//! format's own `Debug` can use it.

/// `url` with the password (of the user part, and a `password=` parameter)
/// replaced by `(hidden)`. Everything past the last `@` before the query is
/// taken as the host part, so an unencoded `@` in a password hides more, never less.
pub fn mask_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => {
                let user = &rest[..at];
                let user = match user.split_once(':') {
                    Some((name, _)) => format!("{name}:(hidden)"),
                    None => user.to_owned(),
                };
                format!("{scheme}://{user}@{}", &rest[at + 1..])
            }
            None => head.to_owned(),
        },
        // Not a URL at all: it could be anything, password included.
        None if !head.is_empty() => "(set, not a URL)".to_owned(),
        None => String::new(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=(hidden)"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

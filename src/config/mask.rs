//! URLs with their passwords hidden, for every place a database URL is
//! shown (the log, `check-config`, `Debug`). A leaf of `config`, so the file
//! format's own `Debug` can use it.

/// A webhook URL as the log and `check-config` show it: its scheme, host
/// and port only, `/…` standing for a path or query. Chat services' webhook
/// URLs carry their credential in the path, and logs travel further than the
/// configuration file.
pub fn url_origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(set, not a URL)".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // A user part may hold a password: never shown.
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let more = if rest[end..].trim_start_matches('/').is_empty() {
        ""
    } else {
        "/…"
    };
    format!("{scheme}://{host}{more}")
}

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

#[cfg(test)]
mod tests {
    use super::url_origin;

    #[test]
    fn webhook_urls_show_their_origin_only() {
        assert_eq!(
            url_origin("https://hooks.example.com/services/T0/B0/secret?x=1"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            url_origin("http://127.0.0.1:9000/"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            url_origin("https://user:pw@example.com:8443/p"),
            "https://example.com:8443/…"
        );
        assert_eq!(url_origin("nonsense"), "(set, not a URL)");
    }
}

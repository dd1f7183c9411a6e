//! `[upstream]`: the servers of the API behind the gateway, how requests are
//! spread over them and how their health is judged, and what is added to
//! every forwarded request.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::Uri;

use super::check::nonzero;
use super::{Balance, ConfigError, UpstreamConfig, UpstreamSection, DEFAULT_UPSTREAM_URL};

/// The path every upstream call is prefixed with: `upstream.url`'s path
/// without its trailing slashes (empty for `https://host` and `https://host/`).
/// Here, with the check that all servers share it, so the proxy and the
/// configuration read it the same way.
pub fn base_path(url: &Uri) -> String {
    url.path().trim_end_matches('/').to_owned()
}

pub(super) fn validate(u: UpstreamSection) -> Result<UpstreamConfig, ConfigError> {
    let urls = servers(&u.url, u.urls.as_deref())?;
    if let Some(ca) = &u.ca_file {
        if !ca.is_file() {
            return Err(ConfigError::invalid(
                "upstream.ca_file",
                format!("{} is not a readable file", ca.display()),
            ));
        }
    }
    let mut headers = Vec::with_capacity(u.headers.len());
    for (name, value) in &u.headers {
        let key = format!("upstream.headers.{name}");
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConfigError::invalid(&key, "not a valid header name"))?;
        if n.as_str().contains('_') {
            return Err(ConfigError::invalid(
                &key,
                "header names with `_` are dropped toward the upstream (CGI, WSGI and PHP \
                 read `_` and `-` alike, so a client could send the `-` twin); use `-`",
            ));
        }
        if crate::wire::names::is_reserved(&n) {
            return Err(ConfigError::invalid(
                &key,
                "this header is set by the gateway itself",
            ));
        }
        let v = HeaderValue::from_str(value)
            .map_err(|_| ConfigError::invalid(&key, "not a valid header value"))?;
        headers.push((n, v));
    }
    let balance = match u.balance.trim() {
        "round_robin" => Balance::RoundRobin,
        "least_requests" => Balance::LeastRequests,
        other => {
            return Err(ConfigError::invalid(
                "upstream.balance",
                format!("must be \"round_robin\" or \"least_requests\", got {other:?}"),
            ))
        }
    };
    let health_check = u.health_check.as_deref().map(health_path).transpose()?;
    let health_interval = nonzero("upstream.health_interval", u.health_interval)?;
    if health_interval < Duration::from_millis(100) || health_interval > Duration::from_secs(3600) {
        return Err(ConfigError::invalid(
            "upstream.health_interval",
            "must be between 100ms and 1h",
        ));
    }
    Ok(UpstreamConfig {
        urls,
        ca_file: u.ca_file,
        insecure_skip_verify: u.insecure_skip_verify,
        connect_timeout: nonzero("upstream.connect_timeout", u.connect_timeout)?,
        response_timeout: nonzero("upstream.response_timeout", u.response_timeout)?,
        pool_idle_timeout: nonzero("upstream.pool_idle_timeout", u.pool_idle_timeout)?,
        pool_max_idle_per_host: u.pool_max_idle_per_host,
        headers,
        identity_headers: u.identity_headers,
        balance,
        health_check,
        health_interval,
        unhealthy_for: nonzero("upstream.unhealthy_for", u.unhealthy_for)?,
    })
}

/// `upstream.url` or `upstream.urls` (never both), each URL checked, all
/// with one scheme and one path: the path prefixes every call whichever
/// server takes it, so servers with different paths would be different APIs.
fn servers(url: &str, urls: Option<&[String]>) -> Result<Vec<Uri>, ConfigError> {
    let listed = match urls {
        None if url.is_empty() => return Ok(vec![Uri::from_static(DEFAULT_UPSTREAM_URL)]),
        None => return Ok(vec![server("upstream.url", url)?]),
        Some(_) if !url.is_empty() => {
            return Err(ConfigError::invalid(
                "upstream.urls",
                "upstream.url is set too: use one of them (upstream.urls lists one or more \
                 servers; upstream.url names a single one)",
            ))
        }
        Some([]) => return Err(ConfigError::invalid(
            "upstream.urls",
            "must list at least one server, e.g. [\"https://api-1:8124\", \"https://api-2:8124\"]",
        )),
        Some(list) => list,
    };
    let mut out: Vec<Uri> = Vec::with_capacity(listed.len());
    for (i, text) in listed.iter().enumerate() {
        let key = format!("upstream.urls[{i}]");
        let uri = server(&key, text)?;
        if let Some(first) = out.first() {
            if uri.scheme() != first.scheme() {
                return Err(ConfigError::invalid(
                    &key,
                    format!(
                        "every server must use the scheme of upstream.urls[0] ({})",
                        first.scheme_str().unwrap_or_default()
                    ),
                ));
            }
            let (path, first_path) = (base_path(&uri), base_path(first));
            if path != first_path {
                return Err(ConfigError::invalid(
                    &key,
                    format!(
                        "every server must have the path of upstream.urls[0] ({:?}): the path \
                         prefixes every call, whichever server takes it",
                        first.path()
                    ),
                ));
            }
        }
        if let Some(j) = out.iter().position(|o| o.authority() == uri.authority()) {
            return Err(ConfigError::invalid(
                &key,
                format!("names the same server as upstream.urls[{j}]"),
            ));
        }
        out.push(uri);
    }
    Ok(out)
}

/// One server's URL: `http` or `https`, a host, no query, no credentials.
fn server(key: &str, text: &str) -> Result<Uri, ConfigError> {
    // Before parsing, so not even a parse error can echo a password.
    if has_userinfo(text) {
        return Err(ConfigError::invalid(
            key,
            "must not carry credentials (nothing before an `@` in the host part): the URL is shown \
             in logs and check-config; send them as a header instead, for example \
             [upstream.headers] Authorization = \"Basic …\"",
        ));
    }
    let url: Uri = text
        .parse()
        .map_err(|e| ConfigError::invalid(key, format!("{e}: {text:?}")))?;
    match url.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(ConfigError::invalid(
                key,
                format!("scheme must be http or https: {text:?}"),
            ))
        }
    }
    if url.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(ConfigError::invalid(key, format!("needs a host: {text:?}")));
    }
    if url.query().is_some() {
        return Err(ConfigError::invalid(key, "must not have a query"));
    }
    Ok(url)
}

/// `upstream.health_check`: an absolute path (and optional query), sent as
/// it is to each server's host (the servers' common path is not prefixed).
fn health_path(text: &str) -> Result<PathAndQuery, ConfigError> {
    let key = "upstream.health_check";
    if !text.starts_with('/') {
        return Err(ConfigError::invalid(
            key,
            format!("must be a path starting with `/`, like \"/health\", got {text:?}"),
        ));
    }
    let pq: PathAndQuery = text
        .parse()
        .map_err(|e| ConfigError::invalid(key, format!("{e}: {text:?}")))?;
    if pq.as_str() != text {
        // A fragment, which http silently drops, would never reach the server.
        return Err(ConfigError::invalid(
            key,
            format!("must be a path and optional query only, got {text:?}"),
        ));
    }
    Ok(pq)
}

/// Whether a URL's authority holds userinfo (`user:password@`, `token@`).
/// The authority runs from `://` to the first `/`, `?` or `#`.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn error(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

    #[test]
    fn one_url_or_several_urls_never_both() {
        let c = Config::from_toml_str("[upstream]\nurl = \"http://a:1/api\"").unwrap();
        assert_eq!(c.upstream.urls, ["http://a:1/api"]);
        let c =
            Config::from_toml_str("[upstream]\nurls = [\"https://a:1/api/\", \"https://b:2/api\"]")
                .unwrap();
        assert_eq!(c.upstream.urls, ["https://a:1/api/", "https://b:2/api"]);
        assert_eq!(c.upstream.balance, Balance::RoundRobin);
        assert_eq!(c.upstream.health_check, None);
        assert!(
            c.summary()
                .contains("upstream.urls = [\"https://a:1/api/\""),
            "{}",
            c.summary()
        );
        let e = error("[upstream]\nurl = \"http://a:1\"\nurls = [\"http://b:1\"]");
        assert!(
            e.starts_with("upstream.urls: upstream.url is set too"),
            "{e}"
        );
        let e = error("[upstream]\nurls = []");
        assert!(
            e.starts_with("upstream.urls: must list at least one server"),
            "{e}"
        );
    }

    #[test]
    fn every_listed_url_is_checked_and_named_by_its_place() {
        for (urls, want) in [
            ("\"http://a:1\", \"http://bad host\"", "upstream.urls[1]: "),
            (
                "\"http://a:1\", \"ftp://b\"",
                "upstream.urls[1]: scheme must be http or https",
            ),
            (
                "\"http://a:1\", \"https://b:1\"",
                "upstream.urls[1]: every server must use the scheme",
            ),
            (
                "\"http://a:1/api\", \"http://b:1/other\"",
                "upstream.urls[1]: every server must have the path",
            ),
            (
                "\"http://a:1\", \"http://a:1/\"",
                "upstream.urls[1]: names the same server as upstream.urls[0]",
            ),
            (
                "\"http://u:p@a:1\"",
                "upstream.urls[0]: must not carry credentials",
            ),
            (
                "\"http://a:1/?q=1\"",
                "upstream.urls[0]: must not have a query",
            ),
            (
                "\"/just/a/path\"",
                "upstream.urls[0]: scheme must be http or https",
            ),
        ] {
            let e = error(&format!("[upstream]\nurls = [{urls}]"));
            assert!(e.starts_with(want), "{urls}: {e}");
            assert!(!e.contains(":p@"), "{e}");
        }
    }

    #[test]
    fn balance_and_health_settings_are_checked() {
        let c = Config::from_toml_str(
            "[upstream]\nbalance = \"least_requests\"\nhealth_check = \"/health?full=1\"\nhealth_interval = \"2s\"\nunhealthy_for = \"30s\"",
        )
        .unwrap();
        assert_eq!(c.upstream.balance, Balance::LeastRequests);
        assert_eq!(c.upstream.health_check.unwrap(), "/health?full=1");
        assert_eq!(c.upstream.health_interval, Duration::from_secs(2));
        assert_eq!(c.upstream.unhealthy_for, Duration::from_secs(30));
        for (toml, want) in [
            (
                "balance = \"random\"",
                "upstream.balance: must be \"round_robin\" or \"least_requests\"",
            ),
            (
                "health_check = \"health\"",
                "upstream.health_check: must be a path starting with `/`",
            ),
            (
                "health_check = \"\"",
                "upstream.health_check: must be a path starting with `/`",
            ),
            ("health_check = \"/a b\"", "upstream.health_check: "),
            (
                "health_check = \"/h#frag\"",
                "upstream.health_check: must be a path and optional query only",
            ),
            (
                "health_interval = \"10ms\"",
                "upstream.health_interval: must be between 100ms and 1h",
            ),
            (
                "unhealthy_for = 0",
                "upstream.unhealthy_for: must be greater than zero",
            ),
        ] {
            let e = error(&format!("[upstream]\n{toml}"));
            assert!(e.starts_with(want), "{toml}: {e}");
        }
    }
}

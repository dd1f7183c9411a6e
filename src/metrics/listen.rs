//! `metrics.listen`: the scrape on a listener of its own, plain HTTP and
//! without authentication, for a Prometheus that should not hold the admin
//! password. It answers `GET /metrics` and nothing else, so it exposes no
//! more than the scrape; keep it on loopback or a private network.
//!
//! Without credentials, the `Host` check is what keeps a web page away: a
//! page on a name the attacker controls can re-point that name to this
//! address (DNS rebinding) and read the answer as same-origin. So a `Host`
//! that is not an IP literal, `localhost` or one of `metrics.allowed_hosts`
//! answers 421 (Misdirected Request: not a name this listener serves).

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::http::host::is_valid_host;
use crate::http::{error, method_not_allowed, strip_body_for_head, Reply};
use crate::state::State;

/// Scrapers are few: a handful of connections at once is plenty, and the
/// cap keeps a misdirected client from costing more.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// Per client (an address; IPv6: a /64): a scraper needs one or two, and
/// one address must not hold all 16 while the real scraper waits.
pub(crate) const MAX_CONNECTIONS_PER_CLIENT: usize = 4;
/// A scraper sends its request at once.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// And a scrape connection lives no longer than this.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// A scrape's request head is small.
pub(crate) const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// One scrape request's answer (the listener itself is driven by
/// `server::serve_plain`, with the limits above).
pub(crate) fn answer(state: &State, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if !host_allowed(req, &state.config.metrics.allowed_hosts) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            "the metrics listener answers only to an IP address, localhost or a name in metrics.allowed_hosts",
        );
    }
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return method_not_allowed("GET, HEAD");
    }
    if req.uri().path() != "/metrics" {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are at /metrics",
        );
    }
    let mut r = scrape_reply(state);
    if head {
        strip_body_for_head(&mut r);
    }
    r
}

/// Exactly one `Host` (or none over HTTP/1.0, where a scraper may leave it
/// out: no browser does), naming an IP literal, `localhost`, or one of
/// `allowed` (lowercase), with any port.
fn host_allowed<B>(req: &Request<B>, allowed: &[String]) -> bool {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return req.version() == http::Version::HTTP_10
            && req.headers().get(http::header::HOST).is_none();
    };
    let host = host.as_bytes();
    if !is_valid_host(host) {
        return false;
    }
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    // `[v6]:port`: the brackets hold an IPv6 literal (is_valid_host checked it).
    if host.starts_with('[') {
        return true;
    }
    let name = host.split_once(':').map_or(host, |(n, _)| n);
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| name.eq_ignore_ascii_case(a))
}

/// The scrape as an HTTP answer (here and on the admin listener): 404 when
/// metrics are off.
pub(crate) fn scrape_reply(state: &State) -> Reply {
    match super::render(state) {
        Some(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(super::text::CONTENT_TYPE),
            );
            r
        }
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are off (metrics.enabled = false)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: Option<&str>) -> Request<()> {
        let mut b = Request::get("/metrics");
        if let Some(h) = host {
            b = b.header(http::header::HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_ip_literals_localhost_and_listed_names_are_answered() {
        let allowed = vec!["prom.internal".to_owned()];
        for ok in [
            "127.0.0.1:9464",
            "10.0.0.5",
            "[::1]:9464",
            "localhost:9464",
            "LOCALHOST",
            "prom.internal:9464",
            "Prom.Internal",
        ] {
            assert!(host_allowed(&req(Some(ok)), &allowed), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:9464",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "prom.internal.",
            "a,b",
        ] {
            assert!(!host_allowed(&req(Some(bad)), &allowed), "{bad}");
        }
        assert!(!host_allowed(&req(None), &allowed), "HTTP/1.1 needs a Host");
        let mut two = req(Some("127.0.0.1"));
        two.headers_mut()
            .append(http::header::HOST, "evil.example".parse().unwrap());
        assert!(!host_allowed(&two, &allowed));
    }
}

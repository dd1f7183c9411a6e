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
//!
//! A listener like the public and admin ones (so it sits above `server`,
//! whose accept loop and per-client shares it uses), it knows nothing of what the scrape
//! counts: it is handed a `ScrapeSource` that takes the snapshot.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::{scrape_reply, Snapshot};
use crate::server::{serve_plain, PlainLimits};
use crate::wire::host::is_valid_host;
use crate::wire::{error, method_not_allowed, strip_body_for_head};

/// Takes one scrape's snapshot (`None` when metrics are off). Shared by
/// every connection; called once per `GET /metrics`.
pub(crate) type ScrapeSource = Arc<dyn Fn() -> Option<Snapshot> + Send + Sync>;

/// Scrapers are few: a handful of connections at once is plenty, and the
/// cap keeps a misdirected client from costing more.
const MAX_CONNECTIONS: usize = 16;
/// Per client (an address; IPv6: a /64): a scraper needs one or two, and
/// one address must not hold all 16 while the real scraper waits.
const MAX_CONNECTIONS_PER_CLIENT: usize = 4;
/// A scraper sends its request at once.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// And a scrape connection lives no longer than this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// A scrape's request head is small.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Serves scrapes until `shutdown` (through the listeners' one accept loop,
/// `server::serve_plain`, with the limits above). `allowed_hosts`:
/// `metrics.allowed_hosts`.
pub(crate) async fn serve(
    listener: TcpListener,
    allowed_hosts: Vec<String>,
    scrape: ScrapeSource,
    shutdown: watch::Receiver<bool>,
) {
    let limits = PlainLimits {
        max_connections: MAX_CONNECTIONS,
        max_connections_per_client: MAX_CONNECTIONS_PER_CLIENT,
        header_read_timeout: HEADER_READ_TIMEOUT,
        connection_timeout: CONNECTION_TIMEOUT,
        max_buf_size: MAX_REQUEST_HEAD,
    };
    serve_plain(
        "metrics",
        listener,
        limits,
        move |req| answer(&allowed_hosts, &*scrape, req),
        shutdown,
    )
    .await;
}

fn answer(
    allowed_hosts: &[String],
    scrape: &(dyn Fn() -> Option<Snapshot> + Send + Sync),
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if !host_allowed(req, allowed_hosts) {
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
    let mut r = scrape_reply(scrape());
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

//! What the helper and the agent share: the gateway's URL, an HTTPS
//! client to it (rustls, keep-alive), the refresh-token file and the
//! exchange.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use crate::tls::{client_config, Trust};

/// A body the agent sends on: buffered or streamed from its client.
pub(crate) type OutBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, OutBody>;

/// A TCP connect to the gateway that takes longer has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An exchange the gateway has not answered by then has failed.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections to the gateway are kept this long (under the
/// gateway's own `public.idle_timeout`, 60 s by default, so the agent
/// closes first and never reuses a connection the gateway is closing).
const POOL_IDLE: Duration = Duration::from_secs(50);

/// Why no access token came back.
#[derive(Debug)]
pub(crate) enum ExchangeFailure {
    /// The gateway answered and refused (`invalid_grant`, a throttle, …):
    /// its `error` and `error_description`.
    Refused { code: String, text: String },
    /// The gateway could not be reached, or answered with a server error.
    Unreachable(String),
}

/// A fresh access token.
#[derive(Debug, Deserialize)]
pub(crate) struct Fresh {
    pub(crate) access_token: String,
    pub(crate) expires_in: u64,
}

/// The gateway's base URL (`https://host:port`, any path kept, no
/// trailing `/`), checked.
pub(crate) fn base_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text.parse().map_err(|_| {
        format!("--gateway {text:?} is not a URL such as https://gateway.example.com:8443")
    })?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(format!(
            "--gateway {text:?} must start with https:// (tokens are never sent in the clear)"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("--gateway {text:?} must have no query"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// An HTTPS client trusting `cacert` (or the system's roots).
pub(crate) fn client(cacert: Option<&Path>) -> Result<HttpsClient, String> {
    let trust = match cacert {
        Some(p) => Trust::CaFile(p),
        None => Trust::System { also: None },
    };
    // hyper-rustls sets the ALPN itself (it panics on one set here).
    let tls = client_config(trust, &[]).map_err(|e| match cacert {
        Some(_) => format!("--cacert {e}"),
        None => format!("{e}; pass --cacert with the gateway's certificate"),
    })?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// Reads the refresh token from `path`, refusing a file that group or
/// others can read (the token is as good as a password).
pub(crate) fn read_refresh_token(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} can be read by group or others (mode {:o}); it holds a refresh token. Fix: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!(
            "{} must hold one refresh token (tgr_…) and nothing else",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// One exchange at `{base}/token`.
pub(crate) async fn exchange(
    client: &HttpsClient,
    base: &str,
    refresh: &str,
) -> Result<Fresh, ExchangeFailure> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh)
        .finish();
    let req = http::Request::post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("user-agent", user_agent())
        .body(Full::new(Bytes::from(body)).map_err(Into::into).boxed())
        .map_err(|e| ExchangeFailure::Unreachable(e.to_string()))?;
    let call = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| ExchangeFailure::Unreachable(chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ExchangeFailure::Unreachable(chain(&e)))?
            .to_bytes();
        Ok::<_, ExchangeFailure>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(EXCHANGE_TIMEOUT, call)
        .await
        .map_err(|_| {
            ExchangeFailure::Unreachable(format!(
                "no answer within {} s",
                EXCHANGE_TIMEOUT.as_secs()
            ))
        })??;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|_| {
            ExchangeFailure::Unreachable(format!(
                "{base}/token answered {status} without an access token: is --gateway a tokengate?"
            ))
        });
    }
    #[derive(Deserialize)]
    struct Error {
        error: String,
        #[serde(default)]
        error_description: String,
    }
    let e: Option<Error> = serde_json::from_slice(&bytes).ok();
    if status.is_server_error() || e.is_none() {
        return Err(ExchangeFailure::Unreachable(format!(
            "{base}/token answered {status}{}",
            e.map(|e| format!(": {}", e.error_description))
                .unwrap_or_default()
        )));
    }
    let e = e.map_or_else(
        || ("unknown".to_owned(), String::new()),
        |e| (e.error, e.error_description),
    );
    Err(ExchangeFailure::Refused {
        code: e.0,
        text: e.1,
    })
}

/// An error and its sources, on one line (hyper's own text is terse).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(&format!(": {s}"));
        src = s.source();
    }
    text
}

pub(crate) fn user_agent() -> &'static str {
    concat!("tokengate-scripts/", env!("CARGO_PKG_VERSION"))
}

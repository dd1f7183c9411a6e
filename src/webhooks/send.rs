//! One endpoint's HTTP client and one delivery attempt: a signed POST,
//! bounded in time, whose 2xx answer is the only success. Redirects are
//! not followed (a 3xx is a failed attempt): a receiver has no reason to
//! send a signed event elsewhere.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::WebhookConfig;
use crate::tls::{client_config, ClientTlsError, Trust};

/// Deliveries come in bursts at most: an idle connection is not kept long.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The prefix of every `webhook-id`: `msg_<outbox id>`.
pub(super) const ID_PREFIX: &str = "msg_";

pub(super) struct Endpoint {
    pub(super) config: WebhookConfig,
    /// The URL as configured: the outbox rows' `endpoint`.
    pub(super) url: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Endpoint {
    /// Reads the CA file (or the system's store) now, so a bad one stops
    /// the start naming it. A plain-http endpoint (loopback only, checked
    /// by the configuration) needs no certificates.
    pub(super) fn new(config: &WebhookConfig) -> Result<Endpoint, ClientTlsError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.timeout));
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let https = if config.url.scheme_str() == Some("http") {
            // Any roots: no TLS handshake is ever made through them.
            let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http)
        } else {
            let trust = match &config.ca_file {
                Some(path) => Trust::CaFile(path),
                None => Trust::System { also: None },
            };
            // No ALPN here: the connector sets it (`enable_http1`).
            builder
                .with_tls_config(client_config(trust, &[])?)
                .https_only()
                .enable_http1()
                .wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(https);
        Ok(Endpoint {
            config: config.clone(),
            url: config.url.to_string(),
            client,
        })
    }

    /// One signed attempt: `Ok` on a 2xx answer, else why not (for the log:
    /// never the body or the secret).
    pub(super) async fn attempt(&self, id: u64, body: &str) -> Result<(), String> {
        let msg_id = format!("{ID_PREFIX}{id}");
        // The receiver checks this against its own clock: the real time.
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = super::sign::signature(
            self.config.secret.expose(),
            &msg_id,
            timestamp,
            body.as_bytes(),
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.config.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("tokengate/", env!("CARGO_PKG_VERSION"))),
            )
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let answer = tokio::time::timeout(self.config.timeout, self.client.request(request)).await;
        match answer {
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
            Ok(Err(e)) => Err(describe(&e)),
            Ok(Ok(r)) if r.status().is_success() => Ok(()),
            Ok(Ok(r)) => Err(format!("answered {}", r.status())),
        }
    }
}

/// An error and its causes on one line (hyper-util's own says only
/// "client error (Connect)").
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

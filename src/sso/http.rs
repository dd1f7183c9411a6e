//! The HTTP client the OpenID client library talks to the provider through:
//! hyper-util's client over rustls (ring), HTTPS only, trusting
//! `admin.oidc.ca_file` or the system's store (which honours
//! `SSL_CERT_FILE`). Every call is bounded in time and in size, and
//! redirects are never followed (a provider has no reason to redirect its
//! discovery, key or token endpoints, and following one would let a
//! response send the client elsewhere).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

use crate::tls::{client_config, ClientTlsError, Trust};

/// A provider answers in well under a second; a stuck one must not hold a
/// person's sign-in (or the discovery retry) for long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Discovery documents and key sets are a few KiB; a token response too.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("no answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Request(String),
    #[error("the answer is larger than {MAX_RESPONSE_BYTES} bytes, or was cut off")]
    Body,
}

pub(crate) struct ProviderHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ProviderHttp {
    /// Reads the CA file (or the system's store) now, so a bad one stops
    /// the start-up with its path named.
    pub(crate) fn new(ca_file: Option<&std::path::Path>) -> Result<ProviderHttp, ClientTlsError> {
        let trust = match ca_file {
            Some(path) => Trust::CaFile(path),
            None => Trust::System { also: None },
        };
        // No ALPN here: the connector sets it (`enable_http1`), and panics
        // when the configuration already has one.
        let tls = client_config(trust, &[])?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Sign-ins are rare: no reason to keep idle connections long.
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(ProviderHttp { client })
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Request(describe(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|_| HttpError::Body)?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| HttpError::Timeout)?
    }
}

/// An error and its causes on one line (hyper-util's own says only
/// "client error (Connect)").
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

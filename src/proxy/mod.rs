//! Forwarding to the upstream API: a keep-alive pool (hyper-util's client over
//! rustls), explicit connect and response timeouts, streamed bodies both ways.

pub mod headers;
mod insecure;

pub use insecure::client_config as insecure_client_config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::config::UpstreamConfig;
use crate::store::RefreshLive;

/// Who made a request, for the optional identity headers.
pub struct Identity {
    id: HeaderValue,
    name: HeaderValue,
}

impl Identity {
    pub fn of(r: &RefreshLive) -> Identity {
        // Names may hold bytes a header cannot carry; those are percent-encoded.
        let name = HeaderValue::from_str(&r.name).unwrap_or_else(|_| {
            let enc: String = form_urlencoded::byte_serialize(r.name.as_bytes()).collect();
            HeaderValue::from_str(&enc).unwrap_or(HeaderValue::from_static(""))
        });
        Identity {
            id: HeaderValue::from(r.id),
            name,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("upstream.ca_file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("upstream TLS: {0}")]
    Tls(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream unreachable: {0}")]
    Connect(hyper_util::client::legacy::Error),
    #[error("upstream failed: {0}")]
    Failed(hyper_util::client::legacy::Error),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot build upstream request: {0}")]
    Request(http::Error),
}

impl ProxyError {
    /// Who caused it decides the status: the upstream → 502/504.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::Request(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
        }
    }

    /// What the client is told; the detail stays in the log.
    pub fn client_text(&self) -> &'static str {
        match self {
            ProxyError::Connect(_) => "the upstream API cannot be reached",
            ProxyError::Failed(_) => "the upstream API failed to answer",
            ProxyError::Timeout(_) => "the upstream API did not answer in time",
            ProxyError::Request(_) => "the request cannot be forwarded",
        }
    }
}

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    scheme: Scheme,
    authority: http::uri::Authority,
    /// Prefix prepended to every path (`upstream.url`'s path, without a trailing slash).
    base_path: String,
    host_header: HeaderValue,
    extra_headers: Vec<(http::HeaderName, HeaderValue)>,
    identity_headers: bool,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamSetupError> {
        let provider = crate::server::tls::provider();
        let builder = HttpsConnectorBuilder::new();
        let builder = if cfg.insecure_skip_verify {
            tracing::warn!(
                url = %cfg.url,
                "upstream.insecure_skip_verify is on: the upstream's certificate is NOT verified; use upstream.ca_file instead"
            );
            builder.with_tls_config(insecure::client_config(provider)?)
        } else if let Some(path) = &cfg.ca_file {
            let err = |detail: String| UpstreamSetupError::CaFile {
                path: path.display().to_string(),
                detail,
            };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| err(e.to_string()))?)
                    .map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no PEM certificate found".into()));
            }
            let tls = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        } else {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let connector = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(connector);

        let scheme = cfg.url.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = cfg
            .url
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamSetupError::Tls("upstream.url has no host".into()))?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| {
            UpstreamSetupError::Tls("upstream.url host is not a valid Host header".into())
        })?;
        Ok(Upstream {
            client,
            scheme,
            base_path: cfg.url.path().trim_end_matches('/').to_owned(),
            authority,
            host_header,
            extra_headers: cfg.headers.clone(),
            identity_headers: cfg.identity_headers,
            response_timeout: cfg.response_timeout,
        })
    }

    pub fn identity_headers(&self) -> bool {
        self.identity_headers
    }

    fn target(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let pq = incoming
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        let pq: PathAndQuery = if self.base_path.is_empty() {
            PathAndQuery::try_from(pq)?
        } else {
            PathAndQuery::try_from(format!("{}{}", self.base_path, pq))?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// Rewrites and forwards an authenticated request; returns the upstream's
    /// response with hop-by-hop headers removed. Bodies stream both ways.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        identity: Option<Identity>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = self.target(&parts.uri).map_err(ProxyError::Request)?;
        // The upstream leg is HTTP/1.1 whatever the client spoke.
        parts.version = Version::HTTP_11;
        headers::rewrite_request(
            &mut parts.headers,
            original_host,
            peer,
            &self.host_header,
            &self.extra_headers,
            identity.map(|i| (i.id, i.name)),
        );
        let req = Request::from_parts(parts, body);
        let mut resp =
            match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
                Err(_) => return Err(ProxyError::Timeout(self.response_timeout)),
                Ok(Err(e)) if e.is_connect() => return Err(ProxyError::Connect(e)),
                Ok(Err(e)) => return Err(ProxyError::Failed(e)),
                Ok(Ok(r)) => r,
            };
        headers::strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }
}

/// Shared so tests and benches can build the same client set-up.
pub type SharedUpstream = Arc<Upstream>;

//! Forwarding to the upstream API: a per-worker keep-alive pool (see
//! `pool`), explicit connect and response timeouts, streamed bodies both ways.

pub(crate) mod headers;
mod pool;
mod target;

pub(crate) use pool::{ConnectError, UpstreamBody};
pub(crate) use target::normalised_path;
pub use target::{base_path, join_target, TargetError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::uri::Scheme;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio_rustls::TlsConnector;

use pool::{Pool, SendError, Target};

use crate::config::UpstreamConfig;
use crate::store::RefreshToken;
use crate::tls::{client_config, ClientTlsError, Trust};

/// Who made a request, for the optional identity headers.
pub(crate) struct Identity {
    id: HeaderValue,
    name: HeaderValue,
}

impl Identity {
    pub(crate) fn of(r: &RefreshToken) -> Identity {
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
pub(crate) enum ProxyError {
    #[error("upstream unreachable: {0}")]
    Connect(ConnectError),
    #[error("upstream failed: {0}")]
    Failed(hyper::Error),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot forward the request target: {0}")]
    Target(TargetError),
}

impl ProxyError {
    /// Who caused it decides the status: the upstream → 502/504.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::Target(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
        }
    }

    /// What the client is told; the detail stays in the log.
    pub(crate) fn client_text(&self) -> &'static str {
        match self {
            ProxyError::Connect(_) => "the upstream API cannot be reached",
            ProxyError::Failed(_) => "the upstream API failed to answer",
            ProxyError::Timeout(_) => "the upstream API did not answer in time",
            ProxyError::Target(TargetError::AboveRoot) => {
                "the request path climbs above / with `..` segments"
            }
            ProxyError::Target(TargetError::Invalid(_)) => "the request cannot be forwarded",
        }
    }
}

pub(crate) struct Upstream {
    pool: Arc<Pool>,
    /// Prefix prepended to every path (`upstream.url`'s path, without a trailing slash).
    base_path: String,
    host_header: HeaderValue,
    extra_headers: Vec<(http::HeaderName, HeaderValue)>,
    identity_headers: bool,
    response_timeout: Duration,
}

impl Upstream {
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamSetupError> {
        let authority = cfg
            .url
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamSetupError::Tls("upstream.url has no host".into()))?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| {
            UpstreamSetupError::Tls("upstream.url host is not a valid Host header".into())
        })?;
        // `Authority::host` keeps an IPv6 literal's brackets; DNS and SNI want it bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = cfg.url.scheme() != Some(&Scheme::HTTP);
        let tls = if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                UpstreamSetupError::Tls(format!("upstream.url host is not a TLS server name: {e}"))
            })?;
            Some((TlsConnector::from(Arc::new(tls_config(cfg)?)), name))
        } else {
            None
        };
        let target = Target {
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            tls,
            connect_timeout: cfg.connect_timeout,
        };
        Ok(Upstream {
            pool: Arc::new(Pool::new(
                target,
                cfg.pool_max_idle_per_host,
                cfg.pool_idle_timeout,
            )),
            base_path: base_path(&cfg.url),
            host_header,
            extra_headers: cfg.headers.clone(),
            identity_headers: cfg.identity_headers,
            response_timeout: cfg.response_timeout,
        })
    }

    /// Closes idle upstream connections that aged out or were closed by the
    /// upstream, every half idle timeout, for as long as this upstream lives.
    /// Runs on the calling runtime (the worker whose connections they are).
    pub(crate) fn spawn_sweeper(self: &Arc<Self>) {
        let every =
            (self.pool.idle_timeout() / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(up) => up.pool.sweep(),
                    None => return,
                }
            }
        });
    }

    pub(crate) fn identity_headers(&self) -> bool {
        self.identity_headers
    }

    /// Rewrites and forwards an authenticated request; returns the upstream's
    /// response with hop-by-hop headers removed. Bodies stream both ways.
    pub(crate) async fn forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        identity: Option<Identity>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        parts.uri = join_target(&self.base_path, &parts.uri).map_err(ProxyError::Target)?;
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
        let mut resp = tokio::time::timeout(self.response_timeout, self.send(req))
            .await
            .map_err(|_| ProxyError::Timeout(self.response_timeout))??;
        headers::strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }

    /// Sends on a pooled connection. A reused connection the upstream closed
    /// before our request went out hands the request back; it is then sent on
    /// the next connection (the request was never seen, so this is safe for
    /// any method).
    async fn send(&self, mut req: Request<Incoming>) -> Result<Response<UpstreamBody>, ProxyError> {
        loop {
            let (mut conn, reused) = self.pool.checkout().await.map_err(ProxyError::Connect)?;
            match conn.send(req).await {
                Ok(resp) => {
                    let pool = self.pool.clone();
                    return Ok(resp.map(|body| UpstreamBody::new(body, conn, pool)));
                }
                Err(SendError::NotSent(back, e)) if reused => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying on another");
                    req = *back;
                }
                Err(SendError::NotSent(_, e) | SendError::Failed(e)) => {
                    return Err(ProxyError::Failed(e))
                }
            }
        }
    }
}

/// The rustls client set-up for an `https` upstream: the configured CA file,
/// the system roots, or (explicitly, loudly) no verification. The upstream
/// leg speaks HTTP/1.1 only.
fn tls_config(cfg: &UpstreamConfig) -> Result<ClientConfig, UpstreamSetupError> {
    let trust = if cfg.insecure_skip_verify {
        tracing::warn!(
            url = %cfg.url,
            "upstream.insecure_skip_verify is on: the upstream's certificate is NOT verified; use upstream.ca_file instead"
        );
        Trust::Insecure
    } else if let Some(path) = &cfg.ca_file {
        Trust::CaFile(path)
    } else {
        Trust::System { also: None }
    };
    client_config(trust, &[b"http/1.1"]).map_err(|e| match e {
        ClientTlsError::CaFile { path, detail } => UpstreamSetupError::CaFile {
            path: path.display().to_string(),
            detail,
        },
        ClientTlsError::NoRoots => UpstreamSetupError::Tls(
            "no usable system root certificates; set upstream.ca_file".into(),
        ),
        other => UpstreamSetupError::Tls(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> UpstreamConfig {
        UpstreamConfig {
            url: url.parse().unwrap(),
            ca_file: None,
            insecure_skip_verify: true,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            headers: Vec::new(),
            identity_headers: false,
        }
    }

    #[test]
    fn targets_come_from_the_url() {
        let up = Upstream::new(&config("http://[::1]:8080/api/")).unwrap();
        let t = &up.pool.target;
        assert_eq!(
            (t.host.as_str(), t.port, t.tls.is_some()),
            ("::1", 8080, false)
        );
        assert_eq!(up.host_header, "[::1]:8080");
        assert_eq!(up.base_path, "/api");
        let up = Upstream::new(&config("https://api.example")).unwrap();
        let t = &up.pool.target;
        assert_eq!(
            (t.host.as_str(), t.port, t.tls.is_some()),
            ("api.example", 443, true)
        );
        let up = Upstream::new(&config("http://10.0.0.5")).unwrap();
        assert_eq!(up.pool.target.port, 80);
    }
}

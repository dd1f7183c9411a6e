//! `tokengate agent`: a local HTTP/1.1 listener that sends every request
//! on to the gateway over TLS with a valid access token, so a client needs
//! no token code at all: only its base URL points at the agent.
//!
//! - One exchange at a time (single-flight), ahead of expiry: a token with
//!   less than a quarter of its life (at most 60 s) left is replaced.
//! - The gateway's own `401 invalid_token` (its challenge names
//!   `realm="tokengate"`; an upstream's 401 does not) means the token died
//!   early (a restart, a rotation): the agent exchanges once and sends the
//!   request again. That is safe because the gateway never forwarded it.
//!   Bodies up to [`REPLAY_LIMIT`] with a known length are kept for that;
//!   larger or unknown-length ones stream and are not replayed.
//! - A gateway that cannot be reached (a restart) is retried for up to
//!   [`UNREACHABLE_FOR`] before a request fails, when the request was never
//!   sent (the connection failed).
//! - A refresh token the gateway refuses ends the agent: the waiting
//!   requests get `502` JSON naming why, and it exits with status 1.
//! - The token is never logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, HOST, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use super::gateway::{self, ExchangeFailure, HttpsClient, OutBody};
use super::{AgentArgs, Failure, EXIT_REFUSED, EXIT_USAGE};

/// Request bodies up to this size (with a `Content-Length`) are kept, so
/// a request the gateway refused for its token can be sent again.
pub(crate) const REPLAY_LIMIT: u64 = 1024 * 1024;
/// How long an unreachable gateway is retried before a request fails.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);
/// Pause between attempts to reach the gateway (doubling up to 1 s).
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// A token with less than this part of its life left is replaced
/// before use (a quarter), but never earlier than [`AHEAD_MAX`] before.
const AHEAD_DIVISOR: u32 = 4;
const AHEAD_MAX: Duration = Duration::from_secs(60);
/// How long open requests may finish after a stop signal.
const DRAIN: Duration = Duration::from_secs(10);
/// A client's request head that takes longer is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the agent listens.
enum Listen {
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(PathBuf),
}

fn listen_arg(text: &str, allow_remote: bool) -> Result<Listen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        #[cfg(unix)]
        {
            if path.is_empty() {
                return Err(
                    "--listen unix: needs a path, e.g. unix:/run/user/1000/tokengate.sock".into(),
                );
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        #[cfg(not(unix))]
        return Err(format!("--listen {text}: Unix sockets need a Unix system"));
    }
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("--listen {text:?}: write 127.0.0.1:PORT or unix:PATH"))?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "--listen {addr}: anyone who can reach this address could use your refresh token through the agent; \
             listen on 127.0.0.1 or a unix: socket, or pass --allow-remote if that is what you want"
        ));
    }
    Ok(Listen::Tcp(addr))
}

/// The current access token.
struct Current {
    token: Arc<str>,
    /// When it should be replaced (ahead of its expiry).
    renew_at: Instant,
}

/// What every connection shares.
struct Agent {
    base: String,
    client: HttpsClient,
    refresh_file: PathBuf,
    /// Read on every request; written after an exchange. A std mutex: held
    /// for a clone, never across an await.
    current: Mutex<Option<Current>>,
    /// Single flight: one exchange at a time; the others wait for it and
    /// use its token.
    exchanging: tokio::sync::Mutex<()>,
    /// Set when the gateway refused the refresh token: why, for every
    /// later answer; and the signal to stop.
    fatal: watch::Sender<Option<String>>,
    /// A loopback TCP listener (not `--allow-remote`, not a socket): the
    /// `Host` a request names must be the loopback too.
    loopback_only: bool,
}

/// Why a request could not be sent on.
enum Trouble {
    Refused(String),
    Unreachable(String),
}

impl Agent {
    /// A token good for now: the current one, or a fresh one.
    async fn token(&self, stale: Option<&Arc<str>>) -> Result<Arc<str>, Trouble> {
        if let Some(t) = self.usable(stale) {
            return Ok(t);
        }
        let _one = self.exchanging.lock().await;
        // Someone else may have exchanged while this waited.
        if let Some(t) = self.usable(stale) {
            return Ok(t);
        }
        if let Some(why) = self.fatal.borrow().clone() {
            return Err(Trouble::Refused(why));
        }
        let started = Instant::now();
        let mut pause = FIRST_RETRY;
        loop {
            // Read each time: a rotated token is put in the file, and the
            // agent picks it up without a restart.
            let refresh =
                gateway::read_refresh_token(&self.refresh_file).map_err(Trouble::Refused)?;
            match gateway::exchange(&self.client, &self.base, &refresh).await {
                Ok(fresh) => {
                    let life = Duration::from_secs(fresh.expires_in);
                    let ahead = (life / AHEAD_DIVISOR).min(AHEAD_MAX);
                    let token: Arc<str> = fresh.access_token.into();
                    let now = Instant::now();
                    *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Current {
                        token: token.clone(),
                        renew_at: now + life.saturating_sub(ahead),
                    });
                    tracing::info!(expires_in = fresh.expires_in, "access token obtained");
                    return Ok(token);
                }
                Err(ExchangeFailure::Refused { code, text }) => {
                    let why = format!(
                        "the gateway refused the refresh token in {} ({code}: {text})",
                        self.refresh_file.display()
                    );
                    self.fatal.send_replace(Some(why.clone()));
                    return Err(Trouble::Refused(why));
                }
                Err(ExchangeFailure::Unreachable(why)) => {
                    if started.elapsed() >= UNREACHABLE_FOR {
                        return Err(Trouble::Unreachable(why));
                    }
                    tracing::debug!(error = %why, "gateway not reachable for an exchange; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The current token, unless it is due for renewal or is `stale` (the
    /// one the gateway just refused).
    fn usable(&self, stale: Option<&Arc<str>>) -> Option<Arc<str>> {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref()
            .filter(|c| Instant::now() < c.renew_at)
            .filter(|c| stale.is_none_or(|s| !Arc::ptr_eq(s, &c.token)))
            .map(|c| c.token.clone())
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<OutBody> {
        if let Some(why) = refusal(req.headers(), self.loopback_only) {
            tracing::info!(reason = why, "request refused: not from a local program");
            return answer(StatusCode::FORBIDDEN, "forbidden", why);
        }
        match self.forward(req).await {
            Ok(resp) => resp,
            Err(Trouble::Refused(why)) => {
                answer(StatusCode::BAD_GATEWAY, "refresh_token_refused", &why)
            }
            Err(Trouble::Unreachable(why)) => {
                tracing::warn!(error = %why, "gateway unreachable");
                answer(
                    StatusCode::BAD_GATEWAY,
                    "gateway_unreachable",
                    &format!("the agent cannot reach the gateway at {}: {why}", self.base),
                )
            }
        }
    }

    async fn forward(&self, req: Request<Incoming>) -> Result<Response<OutBody>, Trouble> {
        let (mut parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri: http::Uri = format!("{}{target}", self.base)
            .parse()
            .map_err(|_| Trouble::Unreachable(format!("cannot send {target} on")))?;
        strip_hop_by_hop(&mut parts.headers);
        // The gateway's URI names its host; the client's Host names the agent.
        parts.headers.remove(HOST);
        parts.headers.remove(AUTHORIZATION);
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        // Small bodies of known length are kept, to send again.
        let kept = match body.size_hint().exact() {
            Some(n) if n <= REPLAY_LIMIT => body
                .collect()
                .await
                .map_err(|e| Trouble::Unreachable(format!("reading the request body: {e}")))?
                .to_bytes(),
            _ => {
                // Streamed: one attempt; a 401 goes back to the client,
                // and the next request gets a fresh token.
                let token = self.token(None).await?;
                let out = request(&parts, body.map_err(Into::into).boxed(), &token);
                let resp = self.send(out, None).await?;
                if gateway_refused_token(&resp) {
                    let _ = self.token(Some(&token)).await;
                }
                return Ok(relay(resp));
            }
        };
        let mut stale = None;
        for attempt in 0..2 {
            let token = self.token(stale.as_ref()).await?;
            let out = request(
                &parts,
                Full::new(kept.clone()).map_err(Into::into).boxed(),
                &token,
            );
            let resp = self.send(out, Some(&kept)).await?;
            if attempt == 0 && gateway_refused_token(&resp) {
                tracing::info!(
                    "the gateway refused the access token; exchanging again and resending"
                );
                stale = Some(token);
                continue;
            }
            return Ok(relay(resp));
        }
        Err(Trouble::Unreachable("no answer".into()))
    }

    /// Sends `out`; a connection that could not be made is tried again
    /// (the request never left) for up to [`UNREACHABLE_FOR`], when the
    /// body is `kept`.
    async fn send(
        &self,
        out: Request<OutBody>,
        kept: Option<&Bytes>,
    ) -> Result<Response<Incoming>, Trouble> {
        let started = Instant::now();
        let mut pause = FIRST_RETRY;
        let mut out = out;
        let mut resent = false;
        loop {
            let again = kept.map(|k| {
                let mut b = Request::new(Full::new(k.clone()).map_err(Into::into).boxed());
                *b.method_mut() = out.method().clone();
                *b.uri_mut() = out.uri().clone();
                *b.headers_mut() = out.headers().clone();
                b
            });
            let err = match self.client.request(out).await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            let Some(again) = again else {
                return Err(Trouble::Unreachable(gateway::chain(&err)));
            };
            if err.is_connect() && started.elapsed() < UNREACHABLE_FOR {
                tracing::debug!(error = %gateway::chain(&err), "gateway not reachable; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            } else if !err.is_connect() && !resent && again.method().is_idempotent() {
                // A kept connection the gateway closed as this was sent (a
                // restart draining it): an idempotent request is sent once
                // more (RFC 9110 §9.2.2), on a new connection.
                tracing::debug!(error = %gateway::chain(&err), "connection to the gateway lost; sending again");
                resent = true;
            } else {
                return Err(Trouble::Unreachable(gateway::chain(&err)));
            }
            out = again;
        }
    }
}

fn request(parts: &http::request::Parts, body: OutBody, token: &str) -> Request<OutBody> {
    let mut r = Request::new(body);
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.headers_mut() = parts.headers.clone();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        let mut v = v;
        v.set_sensitive(true);
        r.headers_mut().insert(AUTHORIZATION, v);
    }
    r
}

/// The gateway's own refusal of the access token (its realm and
/// `invalid_token`), as opposed to the upstream's 401, which goes back to
/// the client untouched.
fn gateway_refused_token<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        && resp.headers().get_all(WWW_AUTHENTICATE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.starts_with(r#"Bearer realm="tokengate""#)
                    && s.contains(r#"error="invalid_token""#)
            })
        })
}

/// The gateway's answer, streamed back, without its hop-by-hop headers.
fn relay(resp: Response<Incoming>) -> Response<OutBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

/// RFC 9110 §7.6.1: `Connection` and what it names, and the fixed set.
fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        h.remove(n);
    }
}

/// The agent's own answer: the gateway's error shape.
/// Why a request must not get the token: the agent serves programs on this
/// machine, never a web page. A browser marks its requests (`Origin`,
/// `Sec-Fetch-*`), so a page cannot make the agent act for it (cross-site
/// request forgery); and a page on a name that resolves to 127.0.0.1 (DNS
/// rebinding) sends that name as `Host`, not the loopback.
fn refusal(headers: &http::HeaderMap, loopback_only: bool) -> Option<&'static str> {
    if headers.contains_key(http::header::ORIGIN)
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-mode")
    {
        return Some("the agent does not serve web browsers (the request carries Origin or Sec-Fetch headers)");
    }
    if loopback_only {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host) {
            return Some("the Host header must name the loopback (127.0.0.1, [::1] or localhost) the agent listens on");
        }
    }
    None
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or("", |(ip, _)| ip)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn answer(status: StatusCode, code: &str, text: &str) -> Response<OutBody> {
    let body = serde_json::json!({ "error": code, "error_description": text }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(Into::into).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(super) async fn run(args: &AgentArgs) -> Result<(), Failure> {
    let usage = |e: String| Failure(EXIT_USAGE, e);
    let base = gateway::base_url(&args.gateway.gateway).map_err(usage)?;
    let listen = listen_arg(&args.listen, args.allow_remote).map_err(usage)?;
    // The file is checked now, so a mistake shows at once, not at the first request.
    gateway::read_refresh_token(&args.gateway.refresh_token_file).map_err(usage)?;
    let client = gateway::client(args.gateway.cacert.as_deref()).map_err(usage)?;
    let (fatal, mut fatal_rx) = watch::channel(None);
    let agent = Arc::new(Agent {
        base,
        client,
        refresh_file: args.gateway.refresh_token_file.clone(),
        current: Mutex::new(None),
        exchanging: tokio::sync::Mutex::new(()),
        fatal,
        loopback_only: matches!(listen, Listen::Tcp(_)) && !args.allow_remote,
    });
    let listener = Listener::bind(&listen).map_err(usage)?;
    tracing::info!(listen = %args.listen, gateway = %agent.base, "agent listening");
    // A first token now: a refused refresh token shows at once. An
    // unreachable gateway is not fatal (it may be starting).
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(Trouble::Unreachable(why)) = agent.token(None).await {
                tracing::warn!(error = %why, "gateway not reachable yet");
            }
        });
    }
    let graceful = GracefulShutdown::new();
    let stop = stop_signal();
    tokio::pin!(stop);
    let refused = loop {
        tokio::select! {
            () = &mut stop => break None,
            changed = fatal_rx.changed() => {
                if changed.is_ok() {
                    if let Some(why) = fatal_rx.borrow().clone() {
                        break Some(why);
                    }
                }
            }
            conn = listener.accept() => {
                let io = match conn {
                    Ok(io) => io,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let agent = agent.clone();
                let service = service_fn(move |req| {
                    let agent = agent.clone();
                    async move { Ok::<_, std::convert::Infallible>(agent.handle(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "client connection ended");
                    }
                });
            }
        }
    };
    drop(listener);
    // Waiting requests get their answers (the 502 naming why, if refused).
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("stopped with requests still open");
    }
    #[cfg(unix)]
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    match refused {
        Some(why) => Err(Failure(
            EXIT_REFUSED,
            format!(
                "{why}; the agent stops. Put a valid refresh token in the file and start it again"
            ),
        )),
        None => Ok(()),
    }
}

/// SIGINT (ctrl-c) or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The bound listener: TCP, or a Unix socket only its user may use.
enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// A client connection of either kind.
type Io = TokioIo<Box<dyn Stream>>;
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

impl Listener {
    fn bind(listen: &Listen) -> Result<Listener, String> {
        match listen {
            Listen::Tcp(addr) => {
                let std = std::net::TcpListener::bind(addr)
                    .map_err(|e| format!("--listen {addr}: {e}"))?;
                std.set_nonblocking(true).map_err(|e| e.to_string())?;
                tokio::net::TcpListener::from_std(std)
                    .map(Listener::Tcp)
                    .map_err(|e| e.to_string())
            }
            #[cfg(unix)]
            Listen::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt, PermissionsExt};
                // A socket left by an agent that died is replaced; any other file is not.
                if let Ok(m) = std::fs::symlink_metadata(path) {
                    if m.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    } else {
                        return Err(format!(
                            "--listen unix:{}: exists and is not a socket",
                            path.display()
                        ));
                    }
                }
                let l = tokio::net::UnixListener::bind(path)
                    .map_err(|e| format!("--listen unix:{}: {e}", path.display()))?;
                // The agent adds your credentials: only you may connect.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("--listen unix:{}: {e}", path.display()))?;
                Ok(Listener::Unix(l))
            }
        }
    }

    async fn accept(&self) -> std::io::Result<Io> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(TokioIo::new(Box::new(s)))
            }
            #[cfg(unix)]
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok(TokioIo::new(Box::new(s)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_and_foreign_hosts_are_refused() {
        let mut h = http::HeaderMap::new();
        h.insert(HOST, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(refusal(&h, true), None);
        for host in ["localhost:1", "[::1]:9", "127.0.0.2", "LOCALHOST"] {
            h.insert(HOST, host.parse().unwrap());
            assert_eq!(refusal(&h, true), None, "{host}");
        }
        for host in ["evil.example:8080", "10.0.0.1", "[2001:db8::1]:80", ""] {
            h.insert(HOST, host.parse().unwrap());
            assert!(refusal(&h, true).is_some(), "{host}");
            assert_eq!(
                refusal(&h, false),
                None,
                "{host} with --allow-remote or a socket"
            );
        }
        h.insert(HOST, "127.0.0.1".parse().unwrap());
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(refusal(&h, false).is_some());
        h.remove("sec-fetch-site");
        h.insert(
            http::header::ORIGIN,
            "https://evil.example".parse().unwrap(),
        );
        assert!(refusal(&h, true).is_some());
    }

    #[test]
    fn only_loopback_or_a_socket_without_allow_remote() {
        assert!(listen_arg("127.0.0.1:8080", false).is_ok());
        assert!(listen_arg("[::1]:8080", false).is_ok());
        let e = listen_arg("0.0.0.0:8080", false).err().unwrap();
        assert!(e.contains("--allow-remote"), "{e}");
        assert!(listen_arg("0.0.0.0:8080", true).is_ok());
        assert!(listen_arg("nowhere", false).is_err());
        #[cfg(unix)]
        {
            assert!(listen_arg("unix:/tmp/a.sock", false).is_ok());
            assert!(listen_arg("unix:", false).is_err());
        }
    }

    #[test]
    fn only_the_gateways_own_challenge_means_a_dead_token() {
        let resp = |status: u16, www: Option<&str>| {
            let mut r = Response::new(());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(w) = www {
                r.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_str(w).unwrap());
            }
            r
        };
        assert!(gateway_refused_token(&resp(
            401,
            Some(r#"Bearer realm="tokengate", error="invalid_token", error_description="x""#)
        )));
        // The upstream's own 401s, and a missing token, go back untouched.
        assert!(!gateway_refused_token(&resp(
            401,
            Some(r#"Bearer realm="dpa", error="invalid_token""#)
        )));
        assert!(!gateway_refused_token(&resp(
            401,
            Some("Basic realm=\"x\"")
        )));
        assert!(!gateway_refused_token(&resp(401, None)));
        assert!(!gateway_refused_token(&resp(
            403,
            Some(r#"Bearer realm="tokengate", error="invalid_token""#)
        )));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = http::HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}

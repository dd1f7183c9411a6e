//! `POST /token` and DPA's path: the HTTP side of the RFC 6749 §6 refresh
//! grant. This module decodes the request (content type, bounded body, form
//! or JSON), hands the authentication core (`Authority::exchange`) a
//! decoded grant, and turns its verdict into RFC 6749's answer (§5.1
//! success, §5.2 errors), always `no-store`, with its audit line and metric.

use std::net::SocketAddr;

use http::header::USER_AGENT;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::authority::ExchangeRefusal;
use crate::metrics::{Exchange, WorkerMetrics};
use crate::state::State;
use crate::tokens::exchange::{Client, ExchangeError, RefreshGrant};
use crate::wire::{
    error, json, media_type, method_not_allowed, no_store, read_body, unavailable, BodyError, Reply,
};

/// Answer for any unknown, deleted or mistyped refresh token: one text for all,
/// so a caller cannot probe which tokens once existed.
const NOT_VALID: &str = "refresh token is not valid";
const EXPIRED: &str = "refresh token expired; ask an administrator for a new one";
const OUTSIDE: &str = "refresh token is not valid from this address";
const SUSPENDED: &str = "refresh token suspended";
const NOT_YET: &str = "refresh token not yet valid";
const USED_UP: &str = "usage limit reached";

/// The request's parameters, as decoded; each may be missing.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub refresh_token: Option<String>,
}

/// Body format of the token request, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
}

/// RFC 6749 §5.1 success body.
#[derive(Debug, Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

/// Why a request was refused, before or by the exchange.
enum Refusal {
    /// RFC 6749 `invalid_request`.
    InvalidRequest(String),
    /// The body could not be read (also `invalid_request`, but a body over
    /// the limit is a 413, with `Connection: close` if it was left unread).
    Body(BodyError),
    UnsupportedGrantType,
    Exchange(ExchangeError),
}

/// The exchange and its result in `tokengate_token_exchanges_total`.
pub(super) async fn endpoint(
    state: &State,
    metrics: Option<&WorkerMetrics>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Reply {
    let (reply, result) = exchange(state, peer, req).await;
    if let (Some(m), Some(r)) = (metrics, result) {
        m.exchange(r);
    }
    reply
}

/// The answer, and the result to count (`None`: not an exchange, such as a `GET`).
async fn exchange(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> (Reply, Option<Exchange>) {
    if req.method() != Method::POST {
        return (no_store(method_not_allowed("POST")), None);
    }
    // Before the body is even read: a client over its failure budget costs
    // no HMAC, no lookup and no audit line (the throttle counts it).
    let core = &state.authority;
    let (ip, now) = (peer.ip(), core.now());
    if let Err(t) = core.admit_client(ip, now) {
        return (
            no_store(super::too_many_failures(t)),
            Some(Exchange::Throttled),
        );
    }
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let user_agent = user_agent.as_deref();
    let request = match decode(state, req).await {
        Ok(r) => r,
        Err(r) => return refuse(state, r, peer, user_agent),
    };
    let grant = match grant(&request) {
        Ok(g) => g,
        Err(r) => return refuse(state, r, peer, user_agent),
    };
    let client = Client {
        ip: Some(ip),
        user_agent,
    };
    let result = match core.exchange(grant, client, now).await {
        Ok(issued) => Ok(issued),
        Err(ExchangeRefusal::Refused(e)) => Err(e),
        Err(ExchangeRefusal::Stale) => {
            return (
                no_store(unavailable(super::STALE)),
                Some(Exchange::Unavailable),
            )
        }
    };
    match result {
        Ok(issued) => {
            let refresh = &issued.refresh;
            tracing::info!(%peer, token_id = refresh.id, token_name = %refresh.name, expires_in = issued.expires_in, "access token issued");
            state.view.audit.record(&audit::Event {
                event: "token.exchanged",
                actor: Some("client"),
                client_ip: Some(peer.ip().to_canonical()),
                token_id: Some(refresh.id),
                token_name: Some(&refresh.name),
                user_agent,
                ..Default::default()
            });
            let reply = no_store(json(
                StatusCode::OK,
                &TokenResponse {
                    access_token: &issued.access_token,
                    token_type: "bearer",
                    expires_in: issued.expires_in,
                },
            ));
            (reply, Some(Exchange::Issued))
        }
        Err(e) => refuse(state, Refusal::Exchange(e), peer, user_agent),
    }
}

/// Reads and parses the body under `public.token_body_limit` and `public.body_read_timeout`.
async fn decode(state: &State, req: Request<Incoming>) -> Result<TokenRequest, Refusal> {
    let kind = body_kind(req.headers()).map_err(Refusal::InvalidRequest)?;
    let limits = &state.startup_config.public;
    let (parts, body) = req.into_parts();
    let body = read_body(
        &parts,
        body,
        limits.token_body_limit,
        limits.limits.body_read_timeout,
    )
    .await
    .map_err(Refusal::Body)?;
    parse_body(kind, &body).map_err(Refusal::InvalidRequest)
}

/// Decides the body format. A missing type is read as a form, as curl's `-d`
/// and most OAuth clients send one; anything else is refused.
pub(super) fn body_kind(headers: &http::HeaderMap) -> Result<BodyKind, String> {
    match media_type(headers) {
        None => Ok(BodyKind::Form),
        Some(t) if t.is("application/x-www-form-urlencoded") => Ok(BodyKind::Form),
        Some(t) if t.is("application/json") => Ok(BodyKind::Json),
        Some(_) => {
            Err("Content-Type must be application/x-www-form-urlencoded or application/json".into())
        }
    }
}

/// Parses a token request body; the error is the `error_description`.
pub fn parse_body(kind: BodyKind, body: &[u8]) -> Result<TokenRequest, String> {
    match kind {
        BodyKind::Form => parse_form(body),
        BodyKind::Json => parse_json(body),
    }
}

fn parse_form(body: &[u8]) -> Result<TokenRequest, String> {
    let mut req = TokenRequest::default();
    for (k, v) in form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut req.grant_type,
            "refresh_token" => &mut req.refresh_token,
            // RFC 6749 §3.2: unrecognised parameters are ignored.
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!("parameter {k} is repeated"));
        }
        *slot = Some(v.into_owned());
    }
    Ok(req)
}

fn parse_json(body: &[u8]) -> Result<TokenRequest, String> {
    const NOT_OBJECT: &str =
        "body is not a JSON object with string fields grant_type and refresh_token";
    // serde's derived struct also takes a JSON array, field by field
    // (`["refresh_token", "tgr_…"]`): found by the token_json fuzz target.
    // Only an object is the documented request.
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(NOT_OBJECT.into());
    }
    #[derive(Deserialize)]
    struct Json {
        grant_type: Option<String>,
        refresh_token: Option<String>,
    }
    // serde's derive refuses duplicate fields, which is what RFC 6749 asks of repeats.
    let j: Json = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("duplicate field") {
            format!(
                "parameter {}",
                msg.split('`')
                    .nth(1)
                    .map(|f| format!("{f} is repeated"))
                    .unwrap_or(msg.clone())
            )
        } else {
            NOT_OBJECT.into()
        }
    })?;
    Ok(TokenRequest {
        grant_type: j.grant_type,
        refresh_token: j.refresh_token,
    })
}

/// The grant inside a decoded request, or why there is none.
fn grant(req: &TokenRequest) -> Result<RefreshGrant<'_>, Refusal> {
    let invalid = |t: &str| Refusal::InvalidRequest(t.into());
    let grant_type = req
        .grant_type
        .as_deref()
        .ok_or_else(|| invalid("grant_type is missing"))?;
    if grant_type != "refresh_token" {
        return Err(Refusal::UnsupportedGrantType);
    }
    let token = req
        .refresh_token
        .as_deref()
        .ok_or_else(|| invalid("refresh_token is missing"))?
        .trim();
    if token.is_empty() {
        return Err(invalid("refresh_token is empty"));
    }
    Ok(RefreshGrant {
        refresh_token: token,
    })
}

/// RFC 6749 §5.2 answer, a log line and an audit line.
fn refuse(
    state: &State,
    r: Refusal,
    peer: SocketAddr,
    user_agent: Option<&str>,
) -> (Reply, Option<Exchange>) {
    let counted = match &r {
        Refusal::InvalidRequest(_) | Refusal::Body(_) => Exchange::InvalidRequest,
        Refusal::UnsupportedGrantType => Exchange::UnsupportedGrantType,
        Refusal::Exchange(
            ExchangeError::NotValid
            | ExchangeError::Suspended(_)
            | ExchangeError::NotYetValid(_)
            | ExchangeError::UsageLimit(_),
        ) => Exchange::InvalidGrant,
        Refusal::Exchange(ExchangeError::Expired(_)) => Exchange::Expired,
        Refusal::Exchange(ExchangeError::Network(_)) => Exchange::NetworkRefused,
        Refusal::Exchange(ExchangeError::Unavailable) => Exchange::Unavailable,
    };
    let (status, code, text): (StatusCode, &str, &str) = match &r {
        Refusal::InvalidRequest(t) => (StatusCode::BAD_REQUEST, "invalid_request", t),
        Refusal::Body(e) => (e.status(), "invalid_request", e.description()),
        Refusal::UnsupportedGrantType => (
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=refresh_token is supported",
        ),
        Refusal::Exchange(ExchangeError::NotValid) => {
            (StatusCode::BAD_REQUEST, "invalid_grant", NOT_VALID)
        }
        Refusal::Exchange(ExchangeError::Expired(_)) => {
            (StatusCode::BAD_REQUEST, "invalid_grant", EXPIRED)
        }
        Refusal::Exchange(ExchangeError::Network(_)) => {
            (StatusCode::BAD_REQUEST, "invalid_grant", OUTSIDE)
        }
        Refusal::Exchange(ExchangeError::Suspended(_)) => {
            (StatusCode::BAD_REQUEST, "invalid_grant", SUSPENDED)
        }
        Refusal::Exchange(ExchangeError::NotYetValid(_)) => {
            (StatusCode::BAD_REQUEST, "invalid_grant", NOT_YET)
        }
        Refusal::Exchange(ExchangeError::UsageLimit(_)) => {
            (StatusCode::BAD_REQUEST, "invalid_grant", USED_UP)
        }
        Refusal::Exchange(ExchangeError::Unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the gateway cannot issue tokens right now; try again",
        ),
    };
    let known = match &r {
        Refusal::Exchange(
            ExchangeError::Expired(t)
            | ExchangeError::Network(t)
            | ExchangeError::Suspended(t)
            | ExchangeError::NotYetValid(t)
            | ExchangeError::UsageLimit(t),
        ) => Some(t),
        _ => None,
    };
    // A refused exchange is the client's doing: info, not an error.
    tracing::info!(%peer, error = code, reason = text, token_id = known.map(|t| t.id), "token exchange refused");
    let reason = format!("{code}: {text}");
    state.view.audit.record(&audit::Event {
        event: "token.exchange_refused",
        actor: Some("client"),
        client_ip: Some(peer.ip().to_canonical()),
        token_id: known.map(|t| t.id),
        token_name: known.map(|t| t.name.as_str()),
        reason: Some(&reason),
        user_agent,
        ..Default::default()
    });
    let reply = match r {
        Refusal::Body(e) => no_store(e.reply()),
        _ => no_store(error(status, code, text)),
    };
    (reply, Some(counted))
}

/// The `token` parameter of a side endpoint's form (revocation,
/// introspection): content type checked, body read within the token
/// endpoint's limits, parsed; every failure already an answer.
pub(super) async fn token_form(state: &State, req: Request<Incoming>) -> Result<String, Reply> {
    let bad = |text: &str| no_store(error(StatusCode::BAD_REQUEST, "invalid_request", text));
    let kind = body_kind(req.headers()).map_err(|text| bad(&text))?;
    let limits = &state.startup_config.public;
    let (parts, body) = req.into_parts();
    let body = read_body(
        &parts,
        body,
        limits.token_body_limit,
        limits.limits.body_read_timeout,
    )
    .await
    .map_err(|e| no_store(e.reply()))?;
    token_params(kind, &body).map_err(|text| bad(&text))
}

/// The `token` parameter of a revocation or introspection body (form or
/// JSON object); `token_type_hint` may be given and is not needed: the
/// token's prefix says what it is (RFC 7009 §2.1 and RFC 7662 §2.1 let the
/// server search every type).
pub(super) fn token_params(kind: BodyKind, body: &[u8]) -> Result<String, String> {
    let mut token: Option<String> = None;
    let mut hint: Option<String> = None;
    let mut put = |k: &str, v: String| -> Result<(), String> {
        let slot = match k {
            "token" => &mut token,
            "token_type_hint" => &mut hint,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(format!("parameter {k} is repeated"));
        }
        *slot = Some(v);
        Ok(())
    };
    match kind {
        BodyKind::Form => {
            for (k, v) in form_urlencoded::parse(body) {
                put(&k, v.into_owned())?;
            }
        }
        BodyKind::Json => {
            const NOT_OBJECT: &str = "body is not a JSON object with a string field token";
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(body).map_err(|_| NOT_OBJECT.to_owned())?;
            for (k, v) in v {
                match v {
                    serde_json::Value::String(s) => put(&k, s)?,
                    _ if k == "token" || k == "token_type_hint" => {
                        return Err(NOT_OBJECT.to_owned())
                    }
                    _ => {}
                }
            }
        }
    }
    let token = token.ok_or("token is missing")?;
    if token.trim().is_empty() {
        return Err("token is empty".into());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_bodies() {
        let t = token_params(BodyKind::Form, b"token=tga_x&token_type_hint=access_token");
        assert_eq!(t.as_deref(), Ok("tga_x"));
        assert_eq!(
            token_params(BodyKind::Form, b"token_type_hint=refresh_token").unwrap_err(),
            "token is missing"
        );
        assert_eq!(
            token_params(BodyKind::Form, b"token=a&token=b").unwrap_err(),
            "parameter token is repeated"
        );
        assert!(token_params(BodyKind::Form, b"token=%20").is_err());
        assert_eq!(
            token_params(BodyKind::Json, br#"{"token":"tgr_y","other":1}"#).as_deref(),
            Ok("tgr_y")
        );
        assert!(token_params(BodyKind::Json, b"[\"token\"]").is_err());
        assert!(token_params(BodyKind::Json, br#"{"token":5}"#).is_err());
        // Bytes that are not UTF-8: replaced, never a panic.
        assert!(token_params(BodyKind::Form, b"token=%ff%fe").is_ok());
    }

    fn with_type(v: &'static [u8]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_bytes(v).unwrap(),
        );
        h
    }

    #[test]
    fn content_types() {
        assert_eq!(
            body_kind(&http::HeaderMap::new()).ok(),
            Some(BodyKind::Form)
        );
        assert_eq!(
            body_kind(&with_type(
                b"application/x-www-form-urlencoded; charset=UTF-8"
            ))
            .ok(),
            Some(BodyKind::Form)
        );
        assert_eq!(
            body_kind(&with_type(b"Application/JSON")).ok(),
            Some(BodyKind::Json)
        );
        assert!(body_kind(&with_type(b"text/plain")).is_err());
        assert!(body_kind(&with_type(b"\xff\xfe")).is_err());
    }

    #[test]
    fn form_bodies() {
        let r = parse_body(
            BodyKind::Form,
            b"grant_type=refresh_token&refresh_token=tgr_a%2Bb&x=1",
        )
        .unwrap();
        assert_eq!(r.grant_type.as_deref(), Some("refresh_token"));
        assert_eq!(r.refresh_token.as_deref(), Some("tgr_a+b"));
        let e = parse_body(
            BodyKind::Form,
            b"grant_type=refresh_token&grant_type=refresh_token",
        )
        .unwrap_err();
        assert_eq!(e, "parameter grant_type is repeated");
        // Non-UTF-8 bytes are replaced, never a panic.
        assert!(parse_body(BodyKind::Form, b"refresh_token=%ff%fe").is_ok());
    }

    #[test]
    fn json_bodies() {
        let r = parse_body(
            BodyKind::Json,
            br#"{"grant_type":"refresh_token","refresh_token":"t"}"#,
        )
        .unwrap();
        assert_eq!(r.refresh_token.as_deref(), Some("t"));
        let e = parse_body(BodyKind::Json, br#"{"grant_type":"a","grant_type":"b"}"#).unwrap_err();
        assert_eq!(e, "parameter grant_type is repeated");
        assert!(parse_body(BodyKind::Json, b"[1]").is_err());
        // A struct from an array, as serde would take it: refused.
        for body in [&br#"["refresh_token","tgr_x"]"#[..], b" \r\n[\"\",\"\"\r]"] {
            let e = parse_body(BodyKind::Json, body).unwrap_err();
            assert!(e.starts_with("body is not a JSON object"), "{e}");
        }
        assert!(parse_body(BodyKind::Json, b" \n{}").is_ok());
        assert!(parse_body(BodyKind::Json, b"{\"grant_type\":5}").is_err());
    }

    #[test]
    fn grants_need_the_refresh_grant_type_and_a_token() {
        let req = |g: Option<&str>, t: Option<&str>| TokenRequest {
            grant_type: g.map(str::to_owned),
            refresh_token: t.map(str::to_owned),
        };
        assert!(matches!(
            grant(&req(None, Some("t"))),
            Err(Refusal::InvalidRequest(_))
        ));
        assert!(matches!(
            grant(&req(Some("password"), Some("t"))),
            Err(Refusal::UnsupportedGrantType)
        ));
        assert!(matches!(
            grant(&req(Some("refresh_token"), Some("  "))),
            Err(Refusal::InvalidRequest(_))
        ));
        let r = req(Some("refresh_token"), Some(" tgr_x "));
        assert_eq!(grant(&r).ok().map(|g| g.refresh_token), Some("tgr_x"));
    }
}

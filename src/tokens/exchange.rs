//! The token endpoint's logic (RFC 6749 §6 refresh grant), free of HTTP:
//! parse the request body, check the refresh token, mint an access token.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::format::{parse_refresh, RefreshHasher};
use crate::clock::Clock;
use crate::store::{RefreshLive, RefreshStore};
use crate::tokens::access::AccessTokens;
use std::sync::Arc;

/// RFC 6749 §5.2 errors, plus the one internal failure.
#[derive(Debug, Clone)]
pub enum ExchangeError {
    InvalidRequest(String),
    UnsupportedGrantType,
    /// `token` is the refresh token when it is known (expired), for the audit log.
    InvalidGrant {
        text: &'static str,
        token: Option<Arc<RefreshLive>>,
    },
    /// Only when the OS random generator fails.
    Internal,
}

/// Answer for any unknown, deleted or mistyped refresh token: one text for all,
/// so a caller cannot probe which tokens once existed.
pub const NOT_VALID: &str = "refresh token is not valid";
pub const EXPIRED: &str = "refresh token expired; ask an administrator for a new one";

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

/// Decides the body format. A missing type is read as a form, as curl's `-d`
/// and most OAuth clients send one; anything else is refused.
pub fn body_kind(content_type: Option<&[u8]>) -> Result<BodyKind, ExchangeError> {
    let Some(raw) = content_type else {
        return Ok(BodyKind::Form);
    };
    let essence = raw.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    if essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        Ok(BodyKind::Form)
    } else if essence.eq_ignore_ascii_case(b"application/json") {
        Ok(BodyKind::Json)
    } else {
        Err(ExchangeError::InvalidRequest(
            "Content-Type must be application/x-www-form-urlencoded or application/json".into(),
        ))
    }
}

pub fn parse_body(kind: BodyKind, body: &[u8]) -> Result<TokenRequest, ExchangeError> {
    match kind {
        BodyKind::Form => parse_form(body),
        BodyKind::Json => parse_json(body),
    }
}

fn parse_form(body: &[u8]) -> Result<TokenRequest, ExchangeError> {
    let mut req = TokenRequest::default();
    for (k, v) in form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut req.grant_type,
            "refresh_token" => &mut req.refresh_token,
            // RFC 6749 §3.2: unrecognised parameters are ignored.
            _ => continue,
        };
        if slot.is_some() {
            return Err(ExchangeError::InvalidRequest(format!(
                "parameter {k} is repeated"
            )));
        }
        *slot = Some(v.into_owned());
    }
    Ok(req)
}

fn parse_json(body: &[u8]) -> Result<TokenRequest, ExchangeError> {
    #[derive(Deserialize)]
    struct Json {
        grant_type: Option<String>,
        refresh_token: Option<String>,
    }
    // serde's derive refuses duplicate fields, which is what RFC 6749 asks of repeats.
    let j: Json = serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let msg = if msg.contains("duplicate field") {
            format!(
                "parameter {}",
                msg.split('`')
                    .nth(1)
                    .map(|f| format!("{f} is repeated"))
                    .unwrap_or(msg.clone())
            )
        } else {
            "body is not a JSON object with string fields grant_type and refresh_token".into()
        };
        ExchangeError::InvalidRequest(msg)
    })?;
    Ok(TokenRequest {
        grant_type: j.grant_type,
        refresh_token: j.refresh_token,
    })
}

/// RFC 6749 §5.1 success body.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// Everything the exchange needs, borrowed from the gateway state.
pub struct Exchanger<'a> {
    pub hasher: &'a RefreshHasher,
    pub store: &'a RefreshStore,
    pub access: &'a AccessTokens,
    pub clock: &'a Clock,
    pub access_ttl: Duration,
}

impl Exchanger<'_> {
    /// Trades a refresh token for an access token.
    /// On success also returns the refresh token, for logging by id and name.
    pub fn exchange(
        &self,
        req: TokenRequest,
        client_ip: Option<std::net::IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<(TokenResponse, Arc<RefreshLive>), ExchangeError> {
        let grant = req
            .grant_type
            .ok_or_else(|| ExchangeError::InvalidRequest("grant_type is missing".into()))?;
        if grant != "refresh_token" {
            return Err(ExchangeError::UnsupportedGrantType);
        }
        let token = req
            .refresh_token
            .ok_or_else(|| ExchangeError::InvalidRequest("refresh_token is missing".into()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(ExchangeError::InvalidRequest(
                "refresh_token is empty".into(),
            ));
        }
        // A token that fails the checksum gets the same answer as an unknown one.
        let not_valid = ExchangeError::InvalidGrant {
            text: NOT_VALID,
            token: None,
        };
        let parsed = parse_refresh(token).map_err(|_| not_valid.clone())?;
        let hash = self.hasher.hash(&parsed);
        let refresh = self.store.lookup(&hash).ok_or(not_valid)?;
        let wall = self.clock.unix();
        let remaining = match refresh.expires {
            None => u64::MAX,
            Some(e) if e > wall => e - wall,
            Some(_) => {
                return Err(ExchangeError::InvalidGrant {
                    text: EXPIRED,
                    token: Some(refresh),
                })
            }
        };
        // An access token never outlives the refresh token that issued it.
        let ttl = self.access_ttl.min(Duration::from_secs(remaining));
        let access_token = self
            .access
            .issue(refresh.clone(), ttl, self.clock.now())
            .map_err(|_| ExchangeError::Internal)?;
        refresh.touch(wall, client_ip, user_agent);
        Ok((
            TokenResponse {
                access_token,
                token_type: "bearer",
                expires_in: ttl.as_secs(),
            },
            refresh,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(body_kind(None).unwrap(), BodyKind::Form);
        assert_eq!(
            body_kind(Some(b"application/x-www-form-urlencoded; charset=UTF-8")).unwrap(),
            BodyKind::Form
        );
        assert_eq!(
            body_kind(Some(b"Application/JSON")).unwrap(),
            BodyKind::Json
        );
        assert!(body_kind(Some(b"text/plain")).is_err());
        assert!(body_kind(Some(b"\xff\xfe")).is_err());
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
        assert!(
            matches!(e, ExchangeError::InvalidRequest(t) if t == "parameter grant_type is repeated")
        );
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
        assert!(
            matches!(e, ExchangeError::InvalidRequest(t) if t == "parameter grant_type is repeated")
        );
        assert!(matches!(
            parse_body(BodyKind::Json, b"[1]"),
            Err(ExchangeError::InvalidRequest(_))
        ));
        assert!(matches!(
            parse_body(BodyKind::Json, b"{\"grant_type\":5}"),
            Err(ExchangeError::InvalidRequest(_))
        ));
    }
}

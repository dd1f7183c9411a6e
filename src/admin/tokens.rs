//! Refresh-token management: create, list, delete one, delete many.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ADMIN_BODY_LIMIT;
use crate::audit::Event;
use crate::clock::{parse_rfc3339, rfc3339};
use crate::http::{error, json, no_store, read_body, Body};
use crate::state::State;
use crate::store::RefreshLive;

/// Longest accepted token name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

#[derive(Serialize)]
struct Listed {
    id: u64,
    name: String,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    use_count: u64,
    last_client_ip: Option<String>,
    last_user_agent: Option<String>,
    status: &'static str,
}

fn listed(r: &RefreshLive, now: u64) -> Listed {
    let client = r.last_client();
    Listed {
        last_client_ip: client.ip,
        last_user_agent: client.user_agent,
        id: r.id,
        name: r.name.clone(),
        created_at: rfc3339(r.created),
        expires_at: r.expires.map(rfc3339),
        last_used_at: r.last_used().map(rfc3339),
        use_count: r.use_count(),
        status: if r.is_expired(now) {
            "expired"
        } else {
            "active"
        },
    }
}

pub fn list(state: &State) -> Response<Body> {
    let now = state.clock.unix();
    let all: Vec<Listed> = state.store.list().iter().map(|r| listed(r, now)).collect();
    json(StatusCode::OK, &all)
}

fn bad(text: impl AsRef<str>) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "invalid_request", text.as_ref())
}

fn internal(what: &str, e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "{what}");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the token store could not complete the change; nothing was changed",
    )
}

/// Reads a JSON body (absent or `application/json` content type).
pub(super) async fn json_body(
    req: Request<Incoming>,
    state: &State,
) -> Result<Value, Response<Body>> {
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let essence = ct
            .as_bytes()
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default();
        if !essence
            .trim_ascii()
            .eq_ignore_ascii_case(b"application/json")
        {
            return Err(bad("Content-Type must be application/json"));
        }
    }
    if crate::http::declared_too_large(req.headers(), ADMIN_BODY_LIMIT) {
        return Err(bad("request body is too large"));
    }
    let body = read_body(
        req.into_body(),
        ADMIN_BODY_LIMIT,
        state.config.public.body_read_timeout,
    )
    .await
    .map_err(|e| bad(e.description()))?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("body is not valid JSON: {e}")))
}

/// Checks a name: trimmed, 1..=100 characters, no control characters.
pub fn validate_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("name must not be empty");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err("name must be at most 100 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters");
    }
    Ok(name.to_owned())
}

/// `expires`: absent → default lifetime; `"never"` or null → never; an RFC 3339
/// time or a `YYYY-MM-DD` date (midnight UTC), which must be in the future.
pub fn parse_expires(
    v: Option<&Value>,
    now: u64,
    default_secs: u64,
) -> Result<Option<u64>, String> {
    let text = match v {
        None => return Ok(Some(now.saturating_add(default_secs))),
        Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(_) => {
            return Err(
                "expires must be \"never\" or an RFC 3339 time such as 2027-05-01T00:00:00Z".into(),
            )
        }
    };
    if text.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let at = parse_rfc3339(text)
        .or_else(|| parse_rfc3339(&format!("{text}T00:00:00Z")))
        .ok_or_else(|| format!("expires {text:?} is not \"never\" or an RFC 3339 time such as 2027-05-01T00:00:00Z"))?;
    match u64::try_from(at) {
        Ok(at) if at > now => Ok(Some(at)),
        _ => Err(format!("expires {text:?} is not in the future")),
    }
}

#[derive(Serialize)]
struct Created {
    id: u64,
    name: String,
    token: String,
    created_at: String,
    expires_at: Option<String>,
}

pub async fn create(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let body = match json_body(req, state).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(obj) = body.as_object() else {
        return bad("body must be a JSON object like {\"name\": \"reporting\"}");
    };
    if let Some(k) = obj.keys().find(|k| *k != "name" && *k != "expires") {
        return bad(format!("unknown field {k:?}; expected name and expires"));
    }
    let name = match obj.get("name") {
        Some(Value::String(s)) => match validate_name(s) {
            Ok(n) => n,
            Err(e) => return bad(e),
        },
        Some(_) => return bad("name must be a string"),
        None => return bad("name is required"),
    };
    let now = state.clock.unix();
    let expires = match parse_expires(obj.get("expires"), now, state.config.refresh_ttl.as_secs()) {
        Ok(e) => e,
        Err(e) => return bad(e),
    };
    // redb blocks: commit on the blocking pool; answer only after the commit.
    let (live, token) = match state.create_refresh_token(&name, now, expires).await {
        Ok(x) => x,
        Err(e) => return internal("creating a refresh token failed", e),
    };
    tracing::info!(%peer, token_id = live.id, token_name = %live.name, "refresh token created");
    audit_admin(state, peer, "refresh_token.created", &live);
    let mut r = no_store(json(
        StatusCode::CREATED,
        &Created {
            id: live.id,
            name: live.name.clone(),
            token,
            created_at: rfc3339(live.created),
            expires_at: live.expires.map(rfc3339),
        },
    ));
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/refresh-tokens/{}", live.id)) {
        r.headers_mut().insert(LOCATION, loc);
    }
    r
}

/// One audit line for an administrator's action on a refresh token.
fn audit_admin(state: &State, peer: SocketAddr, event: &'static str, token: &RefreshLive) {
    state.audit.record(&Event {
        event,
        actor: Some("admin"),
        client_ip: Some(peer.ip().to_canonical()),
        token_id: Some(token.id),
        token_name: Some(&token.name),
        ..Default::default()
    });
}

/// Deletes in one transaction, then drops the access tokens they issued.
async fn delete_ids(
    state: &State,
    peer: SocketAddr,
    ids: Vec<u64>,
) -> Result<Vec<Arc<RefreshLive>>, Response<Body>> {
    let store = state.store.clone();
    let gone = match tokio::task::spawn_blocking(move || store.delete(&ids)).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return Err(internal("deleting refresh tokens failed", e)),
        Err(e) => return Err(internal("deleting refresh tokens failed", e)),
    };
    let ids: Vec<u64> = gone.iter().map(|r| r.id).collect();
    state.access.revoke_refresh(&ids);
    for r in &gone {
        tracing::info!(%peer, token_id = r.id, token_name = %r.name, "refresh token deleted");
        audit_admin(state, peer, "refresh_token.deleted", r);
    }
    Ok(gone)
}

fn parse_id(text: &str) -> Option<u64> {
    text.parse().ok().filter(|&n| n > 0)
}

pub async fn delete_one(state: &State, peer: SocketAddr, id: &str) -> Response<Body> {
    let Some(id) = parse_id(id) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no refresh token with that id",
        );
    };
    match delete_ids(state, peer, vec![id]).await {
        Err(r) => r,
        Ok(gone) if gone.is_empty() => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no refresh token with that id",
        ),
        Ok(_) => {
            let mut r = Response::new(crate::http::full(""));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteMany {
    ids: Vec<Value>,
}

#[derive(Serialize)]
struct DeletedOne {
    id: u64,
    name: String,
}

#[derive(Serialize)]
struct DeletedMany {
    deleted: Vec<DeletedOne>,
    not_found: Vec<u64>,
}

pub async fn delete_many(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match json_body(req, state).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(DeleteMany { ids }) = serde_json::from_value::<DeleteMany>(body) else {
        return bad("body must be {\"ids\": [1, 2, ...]}");
    };
    if ids.is_empty() {
        return bad("ids must list at least one id");
    }
    if ids.len() > 10_000 {
        return bad("at most 10000 ids at once");
    }
    let mut wanted = Vec::with_capacity(ids.len());
    for v in &ids {
        // Ids are numbers; numeric strings are accepted too, for clients that quote them.
        let id = match v {
            Value::Number(n) => n.as_u64().filter(|&n| n > 0),
            Value::String(s) => parse_id(s.trim()),
            _ => None,
        };
        match id {
            Some(id) if !wanted.contains(&id) => wanted.push(id),
            Some(_) => {}
            None => return bad(format!("{v} is not a token id")),
        }
    }
    let gone = match delete_ids(state, peer, wanted.clone()).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let not_found = wanted
        .into_iter()
        .filter(|id| !gone.iter().any(|g| g.id == *id))
        .collect();
    json(
        StatusCode::OK,
        &DeletedMany {
            deleted: gone
                .iter()
                .map(|g| DeletedOne {
                    id: g.id,
                    name: g.name.clone(),
                })
                .collect(),
            not_found,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("  ci bot ").unwrap(), "ci bot");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(101)).is_err());
        assert!(validate_name(&"é".repeat(100)).is_ok());
        assert!(validate_name("a\nb").is_err());
    }

    #[test]
    fn expiry_forms() {
        let now = 1_800_000_000;
        assert_eq!(parse_expires(None, now, 10).unwrap(), Some(now + 10));
        assert_eq!(parse_expires(Some(&Value::Null), now, 10).unwrap(), None);
        assert_eq!(
            parse_expires(Some(&Value::from("never")), now, 10).unwrap(),
            None
        );
        assert_eq!(
            parse_expires(Some(&Value::from("2027-05-01T00:00:00Z")), now, 10).unwrap(),
            Some(1_809_129_600)
        );
        assert_eq!(
            parse_expires(Some(&Value::from("2027-05-01")), now, 10).unwrap(),
            Some(1_809_129_600)
        );
        assert!(parse_expires(Some(&Value::from("2020-01-01T00:00:00Z")), now, 10).is_err());
        assert!(parse_expires(Some(&Value::from("tomorrow")), now, 10).is_err());
        assert!(parse_expires(Some(&Value::from(5)), now, 10).is_err());
    }
}

//! Refresh-token management: create, list, edit, rotate, suspend and
//! resume, delete one, delete many; and the lifetime policy
//! (`tokens.max_lifetime`, `tokens.revoke_unused_after`) as the API
//! enforces and shows it.

use std::sync::Arc;

use http::header::{HeaderValue, LOCATION};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::api::{
    expiry_text, parse_expiry, CreateToken, CreatedToken, DeleteTokens, DeletedToken,
    DeletedTokens, EditToken, RestrictionSpec, ResumeToken, RotateToken, RotatedToken,
    SuspendToken, TokenInfo,
};
use super::permissions::{forbidden, Action};
use super::{bad, checked, json_body, AdminHandler};
use crate::audit::Actor;
use crate::clock::{parse_rfc3339, rfc3339};
use crate::config::TokensConfig;
use crate::restrict::whole_number;
use crate::roles::Role;
use crate::store::{CreateLimits, Edit, RefreshToken};
use crate::wire::{empty, error, json, no_store, Reply};

/// The lifetime policy as the admin API applies it: from the
/// configuration the gateway started with.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Policy {
    /// Seconds; `None`: no bound.
    max_lifetime: Option<u64>,
    /// Seconds; `None`: unused tokens stay.
    revoke_unused_after: Option<u64>,
}

impl Policy {
    pub(super) fn of(t: &TokensConfig) -> Policy {
        Policy {
            max_lifetime: t.max_lifetime.map(|d| d.as_secs()),
            revoke_unused_after: t.revoke_unused_after.map(|d| d.as_secs()),
        }
    }

    /// Why an expiry (`None`: never) set at `now` breaks `tokens.max_lifetime`.
    fn refuses(&self, expires: Option<u64>, now: u64) -> Option<String> {
        let max = self.max_lifetime?;
        let limit = now.saturating_add(max);
        let words = crate::config::HumanDuration(std::time::Duration::from_secs(max));
        match expires {
            Some(e) if e <= limit => None,
            _ => Some(format!(
                "expires {} is beyond tokens.max_lifetime ({}): choose an expiry no later than {}",
                expiry_text(expires),
                String::from(words),
                rfc3339(limit),
            )),
        }
    }

    /// The policies `r` breaks at `now`.
    fn violations(&self, r: &RefreshToken, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        if self.refuses(r.expires, now).is_some() {
            out.push("max_lifetime".to_owned());
        }
        out
    }
}

fn info(r: &RefreshToken, now: u64, policy: &Policy) -> TokenInfo {
    let client = r.last_client();
    TokenInfo {
        last_client_ip: client.ip,
        last_user_agent: client.user_agent,
        id: r.id,
        name: r.name.clone(),
        created_at: rfc3339(r.created),
        created_by: r.created_by.clone(),
        expires_at: r.expires.map(rfc3339),
        last_used_at: r.last_used().map(rfc3339),
        use_count: r.use_count(),
        status: if r.is_expired(now) {
            "expired"
        } else {
            "active"
        }
        .into(),
        expiring_soon: crate::store::expires_soon(r.expires, now),
        restrictions: spec_of(r),
        suspended: r.is_suspended(),
        suspended_reason: r.suspended_reason().map(str::to_owned),
        not_before: r.not_before().map(rfc3339),
        max_uses: r.max_uses(),
        uses_left: r.uses_left(),
        violations: policy.violations(r, now),
        revoke_unused_at: policy
            .revoke_unused_after
            .map(|after| rfc3339(r.last_used().unwrap_or(r.created).saturating_add(after))),
    }
}

/// What create and rotate answer: the token, with its string this once.
fn created(token: &RefreshToken, secret: String) -> CreatedToken {
    CreatedToken {
        id: token.id,
        name: token.name.clone(),
        token: secret,
        created_at: rfc3339(token.created),
        expires_at: token.expires.map(rfc3339),
        created_by: token.created_by.clone(),
        restrictions: spec_of(token),
        not_before: token.not_before().map(rfc3339),
        max_uses: token.max_uses(),
    }
}

/// A token's restrictions as the API shows them (the defaults for none).
fn spec_of(r: &RefreshToken) -> RestrictionSpec {
    r.restrictions()
        .map(|x| x.spec().clone())
        .unwrap_or_default()
}

/// Whether `by` may change `token`: every role that may change tokens may
/// change any, but a creator only its own.
fn may_change(by: &Actor, token: &RefreshToken) -> bool {
    by.who.role != Role::Creator || token.created_by.as_deref() == Some(by.who.user.as_str())
}

impl AdminHandler {
    /// A creator changing a token it did not create: refused whole.
    fn refuse_unless_own(
        &self,
        by: &Actor,
        method: &str,
        path: &str,
        ids: &[u64],
    ) -> Option<Reply> {
        // Fail closed for a creator: a token this replica has not seen yet
        // (created on another replica a moment ago, its change still on the
        // way) may be someone else's, and the backend changes tokens by id
        // alone. It is not found for the creator until it is known here.
        let store = &self.state.view.store;
        if by.who.role == Role::Creator && ids.iter().any(|id| store.get(*id).is_none()) {
            return Some(not_found());
        }
        let foreign = ids.iter().any(|id| {
            self.state
                .view
                .store
                .get(*id)
                .is_some_and(|t| !may_change(by, &t))
        });
        foreign.then(|| {
            let method = method.parse().unwrap_or(http::Method::POST);
            forbidden(&method, path, &by.who, Action::ChangeAnyToken)
        })
    }

    fn policy(&self) -> Policy {
        Policy::of(&self.state.startup_config.tokens)
    }

    /// `GET /api/refresh-tokens[?violations=true]`.
    pub(super) fn list(&self, by: &Actor, query: Option<&str>) -> Reply {
        let mut only_violations = false;
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if k == "violations" {
                only_violations = match v.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return bad("violations must be true or false"),
                };
            }
        }
        let now = self.state.view.clock.unix();
        let policy = self.policy();
        let all: Vec<TokenInfo> = self
            .state
            .lifecycle
            .list()
            .iter()
            // A creator sees only the tokens it created.
            .filter(|r| by.who.role != Role::Creator || may_change(by, r))
            .map(|r| info(r, now, &policy))
            .filter(|t| !only_violations || !t.violations.is_empty())
            .collect();
        json(StatusCode::OK, &all)
    }

    pub(super) async fn create(&self, by: &Actor, req: Request<Incoming>) -> Reply {
        let state = &self.state;
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let now = state.view.clock.unix();
        let (request, expires) =
            match create_request(body, now, state.startup_config.tokens.refresh_ttl.as_secs()) {
                Ok(x) => x,
                Err(text) => return bad(text),
            };
        if let Some(text) = self.policy().refuses(expires, now) {
            return bad(text);
        }
        let limits = CreateLimits {
            not_before: request.not_before.as_deref().and_then(unix_time),
            max_uses: request.max_uses,
        };
        // The store blocks: commit on the blocking pool; answer only after the commit.
        let (token, secret) = match state
            .lifecycle
            .create(
                by,
                &request.name,
                now,
                expires,
                &request.restrictions,
                limits,
            )
            .await
        {
            Ok(x) => x,
            Err(e) => return internal("creating a refresh token failed", e),
        };
        let mut r = no_store(json(StatusCode::CREATED, &created(&token, secret)));
        if let Ok(loc) = HeaderValue::from_str(&format!("/api/refresh-tokens/{}", token.id)) {
            r.headers_mut().insert(LOCATION, loc);
        }
        r
    }

    /// `PATCH /api/refresh-tokens/{id}`: name, expiry and restrictions,
    /// in force from the next request of the token's live access tokens.
    pub(super) async fn edit(&self, by: &Actor, raw: &str, req: Request<Incoming>) -> Reply {
        let Some(id) = parse_id(raw) else {
            return not_found();
        };
        let path = format!("/api/refresh-tokens/{raw}");
        if let Some(r) = self.refuse_unless_own(by, "PATCH", &path, &[id]) {
            return r;
        }
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let clock = &self.state.view.clock;
        let (edit, changed) = match edit_request(body, clock.unix()) {
            Ok(x) => x,
            Err(text) => return bad(text),
        };
        if let Edit::Fields {
            expires: Some(expires),
            ..
        } = &edit
        {
            if let Some(text) = self.policy().refuses(*expires, clock.unix()) {
                return bad(text);
            }
        }
        let token = match self.state.lifecycle.edit(by, id, edit, &changed).await {
            Ok(Some(t)) => t,
            Ok(None) => return not_found(),
            Err(e) => return internal("editing a refresh token failed", e),
        };
        no_store(json(
            StatusCode::OK,
            &info(&token, clock.unix(), &self.policy()),
        ))
    }

    /// `POST /api/refresh-tokens/{id}/suspend`: exchanges refused and its
    /// access tokens ended, until a resume.
    pub(super) async fn suspend(&self, by: &Actor, raw: &str, req: Request<Incoming>) -> Reply {
        let Some(id) = parse_id(raw) else {
            return not_found();
        };
        let path = format!("/api/refresh-tokens/{raw}/suspend");
        if let Some(r) = self.refuse_unless_own(by, "POST", &path, &[id]) {
            return r;
        }
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let reason = match checked::read::<SuspendToken>(body) {
            Ok(s) => s.reason,
            Err(text) => return bad(text),
        };
        match self
            .state
            .lifecycle
            .suspend(by, id, reason.as_deref())
            .await
        {
            Ok(Some(t)) => self.answer(&t),
            Ok(None) => not_found(),
            Err(e) => internal("suspending a refresh token failed", e),
        }
    }

    /// `POST /api/refresh-tokens/{id}/resume`: exchanges work again; the
    /// access tokens of before the suspension stay ended.
    pub(super) async fn resume(&self, by: &Actor, raw: &str, req: Request<Incoming>) -> Reply {
        let Some(id) = parse_id(raw) else {
            return not_found();
        };
        let path = format!("/api/refresh-tokens/{raw}/resume");
        if let Some(r) = self.refuse_unless_own(by, "POST", &path, &[id]) {
            return r;
        }
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        if let Err(text) = checked::read::<ResumeToken>(body) {
            return bad(text);
        }
        match self.state.lifecycle.resume(by, id).await {
            Ok(Some(t)) => self.answer(&t),
            Ok(None) => not_found(),
            Err(e) => internal("resuming a refresh token failed", e),
        }
    }

    /// A token as the list shows it, `200`.
    fn answer(&self, token: &RefreshToken) -> Reply {
        let now = self.state.view.clock.unix();
        no_store(json(StatusCode::OK, &info(token, now, &self.policy())))
    }

    /// `POST /api/refresh-tokens/{id}/rotate`: a new secret for the same
    /// token (id, name, restrictions, usage), shown this once.
    pub(super) async fn rotate_secret(
        &self,
        by: &Actor,
        raw: &str,
        req: Request<Incoming>,
    ) -> Reply {
        let Some(id) = parse_id(raw) else {
            return not_found();
        };
        let path = format!("/api/refresh-tokens/{raw}/rotate");
        if let Some(r) = self.refuse_unless_own(by, "POST", &path, &[id]) {
            return r;
        }
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let grace = match checked::read::<RotateToken>(body) {
            Ok(r) => r.grace_seconds,
            Err(text) => return bad(text),
        };
        // A new secret for a token that breaks the lifetime policy would
        // renew what the policy ends: fix its expiry first.
        if let Some(t) = self.state.view.store.get(id) {
            if let Some(text) = self
                .policy()
                .refuses(t.expires, self.state.view.clock.unix())
            {
                return bad(format!("{text} (PATCH the token's expiry, then rotate)"));
            }
        }
        let rotated = match self.state.lifecycle.rotate(by, id, grace).await {
            Ok(Some(x)) => x,
            Ok(None) => return not_found(),
            Err(e) => return internal("rotating a refresh token failed", e),
        };
        no_store(json(
            StatusCode::OK,
            &RotatedToken {
                token: created(&rotated.token, rotated.secret),
                previous_token_valid_until: rotated.old_until.map(rfc3339),
            },
        ))
    }

    /// Deletes in one transaction, then drops the access tokens they issued.
    async fn delete_ids(&self, by: &Actor, ids: Vec<u64>) -> Result<Vec<Arc<RefreshToken>>, Reply> {
        self.state
            .lifecycle
            .delete(by, ids)
            .await
            .map_err(|e| internal("deleting refresh tokens failed", e))
    }

    pub(super) async fn delete_one(&self, by: &Actor, raw: &str) -> Reply {
        let Some(id) = parse_id(raw) else {
            return not_found();
        };
        let path = format!("/api/refresh-tokens/{raw}");
        if let Some(r) = self.refuse_unless_own(by, "DELETE", &path, &[id]) {
            return r;
        }
        match self.delete_ids(by, vec![id]).await {
            Err(r) => r,
            Ok(gone) if gone.is_empty() => not_found(),
            Ok(_) => empty(StatusCode::NO_CONTENT),
        }
    }

    pub(super) async fn delete_many(&self, by: &Actor, req: Request<Incoming>) -> Reply {
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let Ok(DeleteTokens { ids }) = serde_json::from_value::<DeleteTokens>(body) else {
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
            let id = match v {
                Value::Number(_) => whole_number(v).filter(|&n| n > 0),
                Value::String(s) => parse_id(s.trim()),
                _ => None,
            };
            match id {
                Some(id) if !wanted.contains(&id) => wanted.push(id),
                Some(_) => {}
                None => return bad(format!("{v} is not a token id")),
            }
        }
        if let Some(r) = self.refuse_unless_own(by, "POST", "/api/refresh-tokens/delete", &wanted) {
            return r;
        }
        let gone = match self.delete_ids(by, wanted.clone()).await {
            Ok(g) => g,
            Err(r) => return r,
        };
        let not_found = wanted
            .into_iter()
            .filter(|id| !gone.iter().any(|g| g.id == *id))
            .collect();
        json(
            StatusCode::OK,
            &DeletedTokens {
                deleted: gone
                    .iter()
                    .map(|g| DeletedToken {
                        id: g.id,
                        name: g.name.clone(),
                    })
                    .collect(),
                not_found,
            },
        )
    }
}

/// Reads a create request (each error names its field): the request, and
/// its expiry in Unix seconds (`None` = never; absent: `default_secs` from now).
fn create_request(
    body: Value,
    now: u64,
    default_secs: u64,
) -> Result<(CreateToken, Option<u64>), String> {
    let request: CreateToken = checked::read(body)?;
    let expires = match &request.expires {
        None => Some(now.saturating_add(default_secs)),
        Some(text) => parse_expiry(text, now)?,
    };
    Ok((request, expires))
}

fn not_found() -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no refresh token with that id",
    )
}

/// Reads an edit request (each error names its field): the edit, and the
/// names of the fields it changes (for the log and the audit line).
fn edit_request(body: Value, now: u64) -> Result<(Edit, String), String> {
    let request: EditToken = checked::read(body)?;
    let changed = request.changed();
    let expires = match &request.expires {
        None => None,
        Some(text) => Some(parse_expiry(text, now)?),
    };
    let edit = Edit::Fields {
        name: request.name,
        expires,
        scopes: request.scopes,
        read_only: request.read_only,
        networks: request.networks,
        rate_limit: request.rate_limit,
        introspect: request.introspect,
        not_before: request
            .not_before
            .map(|nb| nb.as_deref().and_then(unix_time)),
        max_uses: request.max_uses,
    };
    Ok((edit, changed))
}

/// An RFC 3339 time (checked already by `checked`) in Unix seconds.
fn unix_time(text: &str) -> Option<u64> {
    parse_rfc3339(text).and_then(|t| u64::try_from(t).ok())
}

fn parse_id(text: &str) -> Option<u64> {
    text.parse().ok().filter(|&n| n > 0)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Reply {
    tracing::error!(error = %e, "{what}");
    // A timeout can hide a commit that happened: say what is known.
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the token store did not confirm the change; list the tokens to see whether it was made",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_requests_name_the_field_at_fault() {
        let now = 1_800_000_000;
        let ok = |v: Value| create_request(v, now, 10);
        let (req, exp) = ok(serde_json::json!({"name": " ci "})).unwrap();
        assert_eq!((req.name.as_str(), exp), ("ci", Some(now + 10)));
        assert_eq!(
            ok(serde_json::json!({"name": "a", "expires": null}))
                .unwrap()
                .1,
            None
        );
        assert_eq!(
            ok(serde_json::json!({"name": "a", "expires": "2027-05-01"}))
                .unwrap()
                .1,
            Some(1_809_129_600)
        );
        for (body, field) in [
            (serde_json::json!({"name": 5}), "name"),
            (serde_json::json!({}), "name"),
            (serde_json::json!({"name": "a", "expires": 5}), "expires"),
            (
                serde_json::json!({"name": "a", "expires": "2020-01-01"}),
                "expires",
            ),
            (serde_json::json!({"name": "a", "colour": "red"}), "colour"),
            (
                serde_json::json!({"name": "a", "scopes": [{"methods": ["GET"], "path": "x"}]}),
                "scopes[0].path",
            ),
            (
                serde_json::json!({"name": "a", "networks": ["300.0.0.0/8"]}),
                "networks[0]",
            ),
            (
                serde_json::json!({"name": "a", "rate_limit": {"per_second": 0}}),
                "rate_limit.per_second",
            ),
            (
                serde_json::json!({"name": "a", "read_only": 1}),
                "read_only",
            ),
            (
                serde_json::json!({"name": "a", "introspect": "yes"}),
                "introspect",
            ),
        ] {
            let e = ok(body.clone()).unwrap_err();
            assert!(e.contains(field), "{body} gave {e:?}");
        }
    }

    #[test]
    fn what_the_cli_sends_is_what_the_server_reads() {
        let now = 1_800_000_000;
        let sent = CreateToken {
            name: "nightly".into(),
            expires: Some("2027-05-01T00:00:00Z".into()),
            restrictions: RestrictionSpec {
                scopes: vec![crate::restrict::ScopeRule {
                    methods: vec!["GET".into(), "HEAD".into()],
                    path: "/iwc/api/databases/**".into(),
                }],
                read_only: false,
                networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                rate_limit: Some(crate::restrict::RateLimit {
                    per_second: 5,
                    burst: 10,
                }),
                introspect: true,
            },
            not_before: Some("2027-04-01T00:00:00Z".into()),
            max_uses: Some(3),
        };
        let (read, exp) = create_request(serde_json::to_value(&sent).unwrap(), now, 10).unwrap();
        assert_eq!((read, exp), (sent, Some(1_809_129_600)));
        let default = CreateToken {
            name: "n".into(),
            expires: None,
            restrictions: RestrictionSpec::default(),
            not_before: None,
            max_uses: None,
        };
        let (_, exp) = create_request(serde_json::to_value(&default).unwrap(), now, 10).unwrap();
        assert_eq!(exp, Some(now + 10));
    }
}

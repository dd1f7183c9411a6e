//! `POST /token/introspect`: RFC 7662 token introspection.
//!
//! Who may ask: an admin account of any role, by HTTP Basic (the admin
//! listener's accounts and password check, throttled per client and per
//! account; a disabled account is refused), or a bearer access token whose
//! refresh token was created or edited with `"introspect": true`.
//!
//! - nothing usable sent, a wrong name or password, a bad bearer token:
//!   401 with both challenges (`Basic` and `Bearer`, realm "tokengate");
//! - a good bearer token without the grant: 403 `insufficient_scope`;
//! - otherwise 200 with RFC 7662's answer: `{"active": false}` alone for
//!   anything that is not a live token (unknown, malformed, expired,
//!   revoked, deleted, rotated out), or the token's fields.
//!
//! Every answer is `Cache-Control: no-store`. Introspecting is not a use of
//! the token asked about; it never shows a token or a hash.

use std::net::SocketAddr;

use http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::token::token_form;
use super::{bearer_token, STALE};
use crate::audit;
use crate::authority::{IntrospectStale, Subject};
use crate::passwords::{parse_basic, LoginRefused};
use crate::restrict::{RateLimit, RestrictionSpec};
use crate::roles::Who;
use crate::state::State;
use crate::wire::{error, json, method_not_allowed, no_store, unavailable, Reply};

/// The challenges of a request that proved nothing: either credential
/// would do (RFC 9110 §11.6.1 allows several).
const BASIC_CHALLENGE: &str = r#"Basic realm="tokengate", charset="UTF-8""#;

/// Who asked.
#[derive(Debug)]
enum Caller {
    Account(Who),
    /// An access token granted `introspect`, issued by this refresh token.
    Token(u64),
}

pub(super) async fn serve(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    if req.method() != Method::POST {
        return no_store(method_not_allowed("POST"));
    }
    let caller = match authenticate(state, peer, req.headers()).await {
        Ok(c) => c,
        Err(r) => return no_store(r),
    };
    let token = match token_form(state, req).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let core = &state.authority;
    let subject = match core.introspect(&token, core.now()).await {
        Ok(s) => s,
        Err(IntrospectStale) => return no_store(unavailable(STALE)),
    };
    match &caller {
        Caller::Account(who) => {
            tracing::debug!(%peer, user = %who.user, active = !matches!(subject, Subject::Inactive), "introspection");
        }
        Caller::Token(id) => {
            tracing::debug!(%peer, caller_token_id = id, active = !matches!(subject, Subject::Inactive), "introspection");
        }
    }
    no_store(json(StatusCode::OK, &answer(&subject)))
}

/// The caller, or the answer that refuses it.
async fn authenticate(
    state: &State,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, Reply> {
    const NOTHING: &str = "send an admin account's name and password (HTTP Basic) or a bearer access token allowed to introspect";
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthenticated("invalid_client", NOTHING, None));
    };
    if let Some((user, password)) = parse_basic(value.as_bytes()) {
        return sign_in(state, peer, user, password).await;
    }
    let token = match bearer_token(headers) {
        Ok(t) => t,
        Err(_) => return Err(unauthenticated("invalid_client", NOTHING, None)),
    };
    let core = &state.authority;
    match core.may_introspect(token, core.now()) {
        Ok(Some(id)) => Ok(Caller::Token(id)),
        Ok(None) => Err(super::bearer::challenge(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "this access token may not introspect: its refresh token needs \"introspect\": true",
        )),
        Err(e) => {
            tracing::debug!(%peer, reason = e.reason(), "introspection: access token refused");
            Err(unauthenticated(
                "invalid_token",
                &e.description(),
                Some("invalid_token"),
            ))
        }
    }
}

/// HTTP Basic with an admin account. RFC 6749 §2.3.1 has a client
/// form-encode its name and secret before Basic (authlib does); a person's
/// `curl -u` does not. The password is checked as sent, and if that fails
/// and decoding changes it, decoded (two attempts against the throttles).
async fn sign_in(
    state: &State,
    peer: SocketAddr,
    user: String,
    password: String,
) -> Result<Caller, Reply> {
    let decode = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let decoded = (decode(&user), decode(&password));
    let passwords = &state.passwords;
    let store = &state.view.store;
    let ip = peer.ip();
    let clock = &state.view.clock;
    let mut outcome = passwords
        .sign_in(
            store,
            ip,
            &user,
            password.clone(),
            clock.now(),
            crate::passwords::Listener::Public,
        )
        .await;
    if outcome == Err(LoginRefused::Wrong) && (decoded.0 != user || decoded.1 != password) {
        outcome = passwords
            .sign_in(
                store,
                ip,
                &decoded.0,
                decoded.1.clone(),
                clock.now(),
                crate::passwords::Listener::Public,
            )
            .await;
    }
    match outcome {
        Ok(who) => Ok(Caller::Account(who)),
        Err(LoginRefused::Throttled(wait)) => {
            let secs = wait.as_secs().max(1);
            Err(crate::wire::too_many_requests(
                "too_many_attempts",
                &format!("too many failed logins from this address; try again in {secs} s"),
                secs,
            ))
        }
        Err(LoginRefused::AccountLocked(wait)) => Err(unauthenticated(
            "invalid_client",
            &format!(
                "too many failed logins for this account; try again in {} s",
                wait.as_secs().max(1)
            ),
            None,
        )),
        Err(LoginRefused::Wrong) => {
            tracing::info!(%peer, "introspection: admin authentication failed");
            let name = if store.account(&user).is_some() {
                &user
            } else {
                &decoded.0
            };
            state.view.audit.record(&audit::Event {
                event: "admin.login_failed",
                actor: Some("admin"),
                client_ip: Some(ip.to_canonical()),
                reason: Some("introspection"),
                user: Some(name),
                via: Some(crate::roles::Via::Password.as_str()),
                ..Default::default()
            });
            Err(unauthenticated(
                "invalid_client",
                "wrong user name or password",
                None,
            ))
        }
    }
}

/// 401 with both challenges; the `Bearer` one names `bearer_error` when a
/// bearer token was sent and refused (RFC 6750 §3.1).
fn unauthenticated(code: &str, text: &str, bearer_error: Option<&str>) -> Reply {
    let mut r = match bearer_error {
        Some(_) => super::bearer::challenge(StatusCode::UNAUTHORIZED, code, text),
        None => {
            let mut r = error(StatusCode::UNAUTHORIZED, code, text);
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(super::bearer::REALM_ONLY),
            );
            r
        }
    };
    r.headers_mut()
        .append(WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE));
    r
}

/// RFC 7662 §2.2's answer. Every field but `active` is absent for an
/// inactive token.
#[derive(Debug, Default, Serialize)]
struct Answer<'a> {
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    /// The refresh token's id, as a string (RFC 7662 has it a string).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// The refresh token's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    /// Unix seconds; absent for a refresh token that never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    /// `METHOD:/pattern` rules, space-separated; absent: every method on
    /// every path.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
    /// Absent: from anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    networks: Option<&'a [String]>,
    /// Absent: no rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
}

fn answer(subject: &Subject) -> Answer<'_> {
    let (refresh, token_type, exp, iat) = match subject {
        Subject::Inactive => return Answer::default(),
        Subject::Access {
            refresh,
            issued,
            expires,
        } => (refresh, "access_token", Some(*expires), *issued),
        Subject::Refresh(r) => (r, "refresh_token", r.expires, r.created),
    };
    let spec = refresh.restrictions().map(|x| x.spec());
    Answer {
        active: true,
        token_type: Some(token_type),
        client_id: Some(refresh.id.to_string()),
        sub: Some(&refresh.name),
        exp,
        iat: Some(iat),
        scope: spec.and_then(scope),
        read_only: Some(spec.is_some_and(|s| s.read_only)),
        networks: spec
            .map(|s| s.networks.as_slice())
            .filter(|n| !n.is_empty()),
        rate_limit: spec.and_then(|s| s.rate_limit),
    }
}

/// The token's request rules as RFC 7662 scope strings, `METHOD:/pattern`
/// each (as a scope refusal's challenge names one; `*` for any method),
/// read-only as `GET:/**` and `HEAD:/**`; `None` when no rule limits it.
fn scope(spec: &RestrictionSpec) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    if spec.read_only {
        out.push("GET:/**".into());
        out.push("HEAD:/**".into());
    }
    for rule in &spec.scopes {
        for m in &rule.methods {
            out.push(format!("{m}:{}", rule.path));
        }
    }
    (!out.is_empty()).then(|| out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restrict::ScopeRule;

    #[test]
    fn scopes_are_method_colon_pattern_strings() {
        let spec = RestrictionSpec {
            scopes: vec![
                ScopeRule {
                    methods: vec!["GET".into(), "HEAD".into()],
                    path: "/reports/**".into(),
                },
                ScopeRule {
                    methods: vec!["*".into()],
                    path: "/status".into(),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            scope(&spec).as_deref(),
            Some("GET:/reports/** HEAD:/reports/** *:/status")
        );
        let ro = RestrictionSpec {
            read_only: true,
            ..Default::default()
        };
        assert_eq!(scope(&ro).as_deref(), Some("GET:/** HEAD:/**"));
        let networks_only = RestrictionSpec {
            networks: vec!["10.0.0.0/8".into()],
            introspect: true,
            ..Default::default()
        };
        assert_eq!(scope(&networks_only), None);
    }

    #[test]
    fn an_inactive_token_is_active_false_alone() {
        let text = serde_json::to_string(&answer(&Subject::Inactive)).unwrap();
        assert_eq!(text, r#"{"active":false}"#);
    }

    #[test]
    fn unauthenticated_answers_carry_both_challenges() {
        let r = unauthenticated("invalid_client", "x", None);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let all: Vec<_> = r
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            all,
            vec![
                r#"Bearer realm="tokengate""#.to_owned(),
                BASIC_CHALLENGE.to_owned()
            ]
        );
        let r = unauthenticated(
            "invalid_token",
            "the access token expired",
            Some("invalid_token"),
        );
        let first = r.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(first.contains(r#"error="invalid_token""#), "{first}");
        assert_eq!(r.headers().get_all(WWW_AUTHENTICATE).iter().count(), 2);
    }
}

//! `POST /token/leaked`: anyone who finds tokens of this gateway where they
//! should not be (a public repository, a paste, a log) reports them here,
//! without a credential, as JSON `{"tokens": ["…", …]}`.
//!
//! A live refresh token among them is suspended (reason `reported
//! leaked`: the administrator decides what next), a live access token is
//! revoked, and each is audited (`refresh_token.reported_leaked`,
//! `access_token.reported_leaked`) with the reporter's address. The
//! answer is always `202 {"received": N}`, the same status, body and
//! headers whether the strings were live, dead or not tokens at all, so a
//! report teaches the reporter nothing. Each client may report 60 times an
//! hour.

use std::net::SocketAddr;

use http::header::USER_AGENT;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::STALE;
use crate::audit::{self, Actor};
use crate::authority::{Leaked, RevokeError};
use crate::roles::{Role, Via, Who};
use crate::state::State;
use crate::wire::{
    error, json, media_type, method_not_allowed, no_store, read_body, too_many_requests,
    unavailable, Reply,
};

pub(crate) const LEAKED_PATH: &str = "/token/leaked";

/// Strings a report may hold: a scanner's findings in one file or commit.
pub(crate) const MAX_STRINGS: usize = 100;
/// The longest string taken: tokens are 54 (`tgr_`) and 90 (`tga_`)
/// characters; room for a format to grow, none for a whole file.
pub(crate) const MAX_STRING_CHARS: usize = 256;
/// The largest body: 100 strings of 256 characters with room for JSON
/// escapes, and far below what would cost the gateway anything to parse.
pub(crate) const BODY_LIMIT: usize = 64 << 10;
/// What a suspension for a report says, in the list and the audit.
const REASON: &str = "reported leaked";

/// The request body.
#[derive(Deserialize)]
struct Report {
    tokens: Vec<String>,
}

/// The one answer to a report that was read.
#[derive(Serialize)]
struct Received {
    received: usize,
}

/// The report's body, parsed and held to its bounds; the error is the
/// `error_description` of a 400 `invalid_request`.
fn parse(body: &[u8]) -> Result<Vec<String>, String> {
    let report: Report = serde_json::from_slice(body).map_err(|_| {
        format!(
            "body must be a JSON object {{\"tokens\": [...]}} with at most {MAX_STRINGS} strings"
        )
    })?;
    if report.tokens.len() > MAX_STRINGS {
        return Err(format!(
            "tokens holds {} strings; at most {MAX_STRINGS} per report",
            report.tokens.len()
        ));
    }
    if report
        .tokens
        .iter()
        .any(|s| s.chars().count() > MAX_STRING_CHARS)
    {
        return Err(format!(
            "a string in tokens is longer than {MAX_STRING_CHARS} characters"
        ));
    }
    Ok(report.tokens)
}

pub(super) async fn report(state: &State, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    if req.method() != Method::POST {
        return no_store(method_not_allowed("POST"));
    }
    let now = state.authority.now();
    if let Err(t) = state.leak_reports.admit(peer.ip(), now) {
        return no_store(too_many_requests(
            "too_many_requests",
            &format!(
                "at most 60 reports an hour from one address; try again in {} s",
                t.retry_after
            ),
            t.retry_after,
        ));
    }
    if !media_type(req.headers()).is_some_and(|t| t.is("application/json")) {
        return no_store(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Content-Type must be application/json",
        ));
    }
    let user_agent = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let timeout = state.startup_config.public.limits.body_read_timeout;
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts, body, BODY_LIMIT, timeout).await {
        Ok(b) => b,
        Err(e) => return no_store(e.reply()),
    };
    let strings = match parse(&body) {
        Ok(s) => s,
        Err(text) => return no_store(error(StatusCode::BAD_REQUEST, "invalid_request", &text)),
    };
    let leaked = match state.authority.find_leaked(&strings).await {
        Ok(l) => l,
        // Said before any token was looked up, whatever the strings are.
        Err(_) => return no_store(unavailable(STALE)),
    };
    act(state, peer, &leaked, user_agent.as_deref()).await;
    no_store(json(
        StatusCode::ACCEPTED,
        &Received {
            received: strings.len(),
        },
    ))
}

/// Suspends and revokes what was found live, each with its audit line. A
/// failure is logged for the administrator and not told to the reporter:
/// an answer that differed would say the token was live.
async fn act(state: &State, peer: SocketAddr, leaked: &Leaked, user_agent: Option<&str>) {
    let ip = peer.ip().to_canonical();
    let line = |event, token_id, token_name| audit::Event {
        event,
        actor: Some("client"),
        client_ip: Some(ip),
        token_id: Some(token_id),
        token_name: Some(token_name),
        reason: Some(REASON),
        user_agent,
        ..Default::default()
    };
    if !leaked.refresh.is_empty() {
        let by = reporter(peer);
        for r in &leaked.refresh {
            tracing::warn!(%peer, token_id = r.id, token_name = %r.name, "refresh token reported leaked: suspending it");
            state
                .view
                .audit
                .record(&line("refresh_token.reported_leaked", r.id, &r.name));
            if let Err(e) = state.lifecycle.suspend(&by, r.id, Some(REASON)).await {
                tracing::error!(%peer, token_id = r.id, error = %e, "a refresh token reported leaked could not be suspended");
            }
        }
    }
    for a in &leaked.access {
        tracing::warn!(%peer, token_id = a.refresh_id, token_name = %a.refresh_name, "access token reported leaked: revoking it");
        state.view.audit.record(&line(
            "access_token.reported_leaked",
            a.refresh_id,
            &a.refresh_name,
        ));
        if let Err(e) = state.authority.revoke_leaked(a).await {
            let e = match e {
                RevokeError::Stale => STALE.to_owned(),
                RevokeError::Store(e) => e,
            };
            tracing::error!(%peer, token_id = a.refresh_id, error = %e, "an access token reported leaked could not be revoked");
        }
    }
}

/// Who a suspension for a report names: the reporter's address, signed
/// in as nobody (`via: report`), with the least role (it is not checked:
/// the report itself is the authority to suspend).
fn reporter(peer: SocketAddr) -> Actor {
    Actor {
        peer,
        who: Who {
            user: "leak report".to_owned(),
            role: Role::Viewer,
            via: Via::Report,
        },
        uid: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_held_to_their_bounds() {
        assert_eq!(parse(br#"{"tokens": []}"#), Ok(vec![]));
        assert_eq!(
            parse(br#"{"tokens": ["a", "tgr_b"], "source": "x"}"#),
            Ok(vec!["a".to_owned(), "tgr_b".to_owned()])
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"tokens": "tgr_x"}"#,
            br#"{"tokens": [1]}"#,
            br#"{"token": ["x"]}"#,
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let full: Vec<String> = (0..MAX_STRINGS).map(|i| i.to_string()).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "tokens": full })).unwrap();
        assert_eq!(parse(&body).map(|v| v.len()), Ok(MAX_STRINGS));
        let over: Vec<String> = (0..=MAX_STRINGS).map(|i| i.to_string()).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "tokens": over })).unwrap();
        assert!(parse(&body).unwrap_err().contains("at most 100"));
        let long = serde_json::json!({ "tokens": ["x".repeat(MAX_STRING_CHARS + 1)] });
        assert!(parse(&serde_json::to_vec(&long).unwrap())
            .unwrap_err()
            .contains("longer than 256"));
        // Characters, not bytes: 256 of them in any script pass.
        let wide = serde_json::json!({ "tokens": ["é".repeat(MAX_STRING_CHARS)] });
        assert!(parse(&serde_json::to_vec(&wide).unwrap()).is_ok());
    }
}

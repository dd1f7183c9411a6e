//! From the lifecycle's audit events to webhook payloads: the one mapping
//! that decides which change is which webhook, so an audit event added to
//! the lifecycle becomes a webhook here and nowhere else.
//!
//! A payload is `{"type", "timestamp", "data"}`; `data` names the token
//! (id, name) and what is known of the change (who acted, its expiry).
//! It is built from the audit event and the token's record: neither holds
//! a token string or hash, so no payload can.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::audit::Event;
use crate::config::EventType;
use crate::store::RefreshToken;

/// The webhook an audit event is, if any, and which kind of token it
/// speaks of. Matched on the event's namespace and action.
pub(super) fn webhook_of(audit_event: &str) -> Option<(EventType, TokenKind)> {
    let (namespace, action) = audit_event.split_once('.')?;
    let kind = match namespace {
        "refresh_token" => TokenKind::Refresh,
        "access_token" => TokenKind::Access,
        _ => return None,
    };
    let t = match (kind, action) {
        (TokenKind::Refresh, "created") => EventType::Created,
        (TokenKind::Refresh, "updated") => EventType::Edited,
        (TokenKind::Refresh, "rotated") => EventType::Rotated,
        (TokenKind::Refresh, "deleted" | "revoked_by_holder") => EventType::Deleted,
        (TokenKind::Refresh, "suspended") => EventType::Suspended,
        (TokenKind::Refresh, "resumed") => EventType::Resumed,
        (TokenKind::Refresh, "revoked_unused") => EventType::RevokedUnused,
        // A leaked access token is news about the refresh token that issued it.
        (_, "reported_leaked") => EventType::ReportedLeaked,
        _ => return None,
    };
    Some((t, kind))
}

/// Which token an audit event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenKind {
    Refresh,
    Access,
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    data: Map<String, Value>,
}

/// The fields every payload's `data` has from the token's record, when
/// the token is still there: its expiry (`null`: never) and creator.
fn token_fields(data: &mut Map<String, Value>, token: &RefreshToken) {
    data.insert(
        "expires_at".into(),
        token
            .expires
            .map_or(Value::Null, |e| crate::clock::rfc3339(e).into()),
    );
    if let Some(by) = &token.created_by {
        data.insert("created_by".into(), by.clone().into());
    }
}

/// The body of the webhook for `event` (`token`: its record, if still
/// there), at `timestamp` (RFC 3339).
pub(super) fn payload(
    t: EventType,
    kind: TokenKind,
    event: &Event<'_>,
    token: Option<&RefreshToken>,
    timestamp: &str,
) -> String {
    let mut data = Map::new();
    let id = event.token_id.or(token.map(|t| t.id));
    data.insert("id".into(), id.into());
    let name = event.token_name.or(token.map(|t| t.name.as_str()));
    data.insert("name".into(), name.into());
    if t == EventType::ReportedLeaked {
        let which = match kind {
            TokenKind::Refresh => "refresh_token",
            TokenKind::Access => "access_token",
        };
        data.insert("token_type".into(), which.into());
    }
    if let Some(token) = token {
        token_fields(&mut data, token);
    }
    // Who acted, as the audit line names them.
    let strings = [
        ("actor", event.actor),
        ("user", event.user),
        ("via", event.via),
        ("reason", event.reason),
    ];
    for (key, value) in strings {
        if let Some(v) = value {
            data.insert(key.into(), v.into());
        }
    }
    if let Some(ip) = event.client_ip {
        data.insert("client_ip".into(), ip.to_string().into());
    }
    data.insert("audit_event".into(), event.event.into());
    render(t, timestamp, data)
}

/// The body of `token.expiring` for `token`, `now` being Unix seconds.
pub(super) fn expiring(token: &RefreshToken, now: u64, timestamp: &str) -> String {
    let mut data = Map::new();
    data.insert("id".into(), token.id.into());
    data.insert("name".into(), token.name.clone().into());
    token_fields(&mut data, token);
    if let Some(e) = token.expires {
        data.insert("expires_in".into(), e.saturating_sub(now).into());
    }
    render(EventType::Expiring, timestamp, data)
}

fn render(t: EventType, timestamp: &str, data: Map<String, Value>) -> String {
    let p = Payload {
        kind: t.name(),
        timestamp,
        data,
    };
    // A map of strings and numbers always serialises.
    serde_json::to_string(&p).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lifecycle_event_maps_to_its_webhook() {
        for (audit, webhook) in [
            ("refresh_token.created", "token.created"),
            ("refresh_token.updated", "token.edited"),
            ("refresh_token.rotated", "token.rotated"),
            ("refresh_token.deleted", "token.deleted"),
            ("refresh_token.revoked_by_holder", "token.deleted"),
            ("refresh_token.suspended", "token.suspended"),
            ("refresh_token.resumed", "token.resumed"),
            ("refresh_token.reported_leaked", "token.reported_leaked"),
            ("access_token.reported_leaked", "token.reported_leaked"),
            ("refresh_token.revoked_unused", "token.revoked_unused"),
        ] {
            let (t, _) = webhook_of(audit).unwrap_or_else(|| panic!("{audit} maps to nothing"));
            assert_eq!(t.name(), webhook, "{audit}");
        }
        for other in [
            "token.exchanged",
            "token.exchange_refused",
            "access_token.revoked_by_holder",
            "admin.login",
            "auth.throttled",
            "config.reloaded",
            "refresh_token",
            "",
        ] {
            assert!(webhook_of(other).is_none(), "{other} is no webhook");
        }
        // Every webhook type but the sweep's own comes from an audit event.
        let from_audit: std::collections::BTreeSet<EventType> = [
            "created",
            "updated",
            "rotated",
            "deleted",
            "suspended",
            "resumed",
            "reported_leaked",
            "revoked_unused",
        ]
        .iter()
        .filter_map(|a| webhook_of(&format!("refresh_token.{a}")).map(|(t, _)| t))
        .collect();
        let all: std::collections::BTreeSet<EventType> = EventType::ALL
            .iter()
            .copied()
            .filter(|t| *t != EventType::Expiring)
            .collect();
        assert_eq!(from_audit, all);
    }

    #[test]
    fn a_payload_names_the_token_and_who_acted() {
        let token = RefreshToken::detached(4, "nightly", Some(86_400));
        let event = Event {
            event: "refresh_token.suspended",
            actor: Some("admin"),
            client_ip: Some("10.0.0.7".parse().unwrap()),
            token_id: Some(4),
            token_name: Some("nightly"),
            reason: Some("reported leaked"),
            user: Some("alice"),
            via: Some("password"),
            ..Event::default()
        };
        let (t, kind) = webhook_of(event.event).unwrap();
        let body = payload(t, kind, &event, Some(&token), "2026-01-02T03:04:05Z");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "token.suspended");
        assert_eq!(v["timestamp"], "2026-01-02T03:04:05Z");
        let d = &v["data"];
        assert_eq!(
            (d["id"].as_u64(), d["name"].as_str()),
            (Some(4), Some("nightly"))
        );
        assert_eq!(d["expires_at"], "1970-01-02T00:00:00Z");
        assert_eq!(
            (d["user"].as_str(), d["via"].as_str()),
            (Some("alice"), Some("password"))
        );
        assert_eq!(d["reason"], "reported leaked");
        assert_eq!(d["client_ip"], "10.0.0.7");
        assert!(d.get("token_type").is_none());

        // A leaked access token: the refresh token it came from, and which kind.
        let leaked = Event {
            event: "access_token.reported_leaked",
            actor: Some("client"),
            token_id: Some(4),
            ..Event::default()
        };
        let (t, kind) = webhook_of(leaked.event).unwrap();
        let v: Value = serde_json::from_str(&payload(t, kind, &leaked, Some(&token), "x")).unwrap();
        assert_eq!(v["data"]["token_type"], "access_token");
        assert_eq!(v["data"]["name"], "nightly", "the name from the record");

        let soon = expiring(&token, 86_000, "x");
        let v: Value = serde_json::from_str(&soon).unwrap();
        assert_eq!(v["type"], "token.expiring");
        assert_eq!(v["data"]["expires_in"], 400);
    }
}

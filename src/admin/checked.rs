//! How the server reads the admin API's request bodies: into the very
//! types the CLI writes (`api::CreateToken`, `EditToken`, `RotateToken`),
//! through `serde(try_from = "Value")`, field by field in a fixed order so
//! each error names the field at fault, as `docs/openapi.json` documents.
//! What depends on the moment of the request (whether an expiry is in the
//! future) is checked by the handler after this.

use serde_json::{Map, Value};

use super::api::{
    parse_expiry, shows_as_written, validate_name, CreateToken, EditToken, ResumeToken,
    RotateToken, SuspendToken, MAX_GRACE_SECONDS, MAX_REASON_CHARS, MAX_USES,
};
use crate::clock::parse_rfc3339;
use crate::restrict::{
    parse_networks, parse_rate_limit, parse_read_only, parse_scopes, whole_number, RestrictionSpec,
};

/// A create or edit body: a JSON object of a token's fields, and no other.
fn token_fields(body: &Value) -> Result<&Map<String, Value>, String> {
    let Some(obj) = body.as_object() else {
        return Err("body must be a JSON object like {\"name\": \"reporting\"}".into());
    };
    const FIELDS: [&str; 8] = [
        "name",
        "expires",
        "scopes",
        "read_only",
        "networks",
        "rate_limit",
        "not_before",
        "max_uses",
    ];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {k:?}; expected name, expires, scopes, read_only, networks, rate_limit, not_before and max_uses"
        ));
    }
    Ok(obj)
}

/// An expiry as written: its form is checked here (a moment before 1970
/// is never in the future, whenever asked); whether it is in the future
/// is the handler's to check, at the request's moment.
fn expiry_text(s: &str) -> Result<String, String> {
    parse_expiry(s, 0)?;
    Ok(s.to_owned())
}

/// `not_before` as written: an RFC 3339 time (kept as written), or `null`.
fn not_before(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if parse_rfc3339(s.trim()).is_some_and(|t| t >= 0) => {
            Ok(Some(s.trim().to_owned()))
        }
        _ => {
            Err("not_before must be an RFC 3339 time such as 2027-05-01T00:00:00Z, or null".into())
        }
    }
}

/// `max_uses`: a whole number of exchanges from 1 to `MAX_USES`, or `null`.
fn max_uses(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        v => match whole_number(v) {
            Some(n) if (1..=MAX_USES).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "max_uses must be a whole number of exchanges from 1 to {MAX_USES}, or null for no limit"
            )),
        },
    }
}

impl TryFrom<Value> for CreateToken {
    type Error = String;

    fn try_from(body: Value) -> Result<CreateToken, String> {
        let obj = token_fields(&body)?;
        let name = match obj.get("name") {
            Some(Value::String(s)) => validate_name(s)?,
            Some(_) => return Err("name must be a string".into()),
            None => return Err("name is required".into()),
        };
        let expires =
            match obj.get("expires") {
                None => None,
                Some(Value::Null) => Some("never".to_owned()),
                Some(Value::String(s)) => Some(expiry_text(s)?),
                Some(_) => return Err(
                    "expires must be \"never\" or an RFC 3339 time such as 2027-05-01T00:00:00Z"
                        .into(),
                ),
            };
        // Absent and null alike mean "no restriction of this kind".
        let field = |k: &str| obj.get(k).unwrap_or(&Value::Null);
        let restrictions = RestrictionSpec {
            scopes: parse_scopes(field("scopes"))?,
            read_only: parse_read_only(field("read_only"))?,
            networks: parse_networks(field("networks"))?,
            rate_limit: parse_rate_limit(field("rate_limit"))?,
        };
        Ok(CreateToken {
            name,
            expires,
            restrictions,
            not_before: not_before(field("not_before"))?,
            max_uses: max_uses(field("max_uses"))?,
        })
    }
}

impl TryFrom<Value> for EditToken {
    type Error = String;

    fn try_from(body: Value) -> Result<EditToken, String> {
        let obj = token_fields(&body)?;
        if obj.is_empty() {
            return Err(
                "the body names nothing to change: send one or more of name, expires, scopes, read_only, networks, rate_limit, not_before and max_uses".into(),
            );
        }
        let name = match obj.get("name") {
            None => None,
            Some(Value::String(s)) => Some(validate_name(s)?),
            Some(_) => return Err("name must be a string".into()),
        };
        let expires = match obj.get("expires") {
            None => None,
            // `null` is "never", as the contract writes it.
            Some(Value::Null) => Some("never".to_owned()),
            Some(Value::String(s)) => Some(expiry_text(s)?),
            Some(_) => return Err(
                "expires must be \"never\", null or an RFC 3339 time such as 2027-05-01T00:00:00Z"
                    .into(),
            ),
        };
        Ok(EditToken {
            name,
            expires,
            scopes: obj.get("scopes").map(parse_scopes).transpose()?,
            read_only: obj.get("read_only").map(parse_read_only).transpose()?,
            networks: obj.get("networks").map(parse_networks).transpose()?,
            rate_limit: obj.get("rate_limit").map(parse_rate_limit).transpose()?,
            not_before: obj.get("not_before").map(not_before).transpose()?,
            max_uses: obj.get("max_uses").map(max_uses).transpose()?,
        })
    }
}

impl TryFrom<Value> for RotateToken {
    type Error = String;

    fn try_from(body: Value) -> Result<RotateToken, String> {
        let Some(obj) = body.as_object() else {
            return Err("body must be a JSON object like {\"grace_seconds\": 3600}".into());
        };
        if let Some(k) = obj.keys().find(|k| k.as_str() != "grace_seconds") {
            return Err(format!("unknown field {k:?}; expected grace_seconds"));
        }
        let grace_seconds = match obj.get("grace_seconds") {
            None | Some(Value::Null) => 0,
            Some(v) => match whole_number(v) {
                Some(n) if n <= MAX_GRACE_SECONDS => n,
                _ => return Err(format!(
                    "grace_seconds must be a whole number of seconds from 0 (the old token stops now) to {MAX_GRACE_SECONDS} (30 days)"
                )),
            },
        };
        Ok(RotateToken { grace_seconds })
    }
}

impl TryFrom<Value> for SuspendToken {
    type Error = String;

    fn try_from(body: Value) -> Result<SuspendToken, String> {
        let Some(obj) = body.as_object() else {
            return Err("body must be a JSON object: {} or {\"reason\": \"…\"}".into());
        };
        if let Some(k) = obj.keys().find(|k| k.as_str() != "reason") {
            return Err(format!("unknown field {k:?}; expected reason"));
        }
        let reason = match obj.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                let r = s.trim();
                if r.chars().count() > MAX_REASON_CHARS {
                    return Err(format!(
                        "reason must be at most {MAX_REASON_CHARS} characters"
                    ));
                }
                // Shown in the page, the CLI and the audit log, as a name is.
                if !shows_as_written(r) {
                    return Err(
                        "reason must not contain control or invisible formatting characters".into(),
                    );
                }
                (!r.is_empty()).then(|| r.to_owned())
            }
            Some(_) => return Err("reason must be a string".into()),
        };
        Ok(SuspendToken { reason })
    }
}

impl TryFrom<Value> for ResumeToken {
    type Error = String;

    fn try_from(body: Value) -> Result<ResumeToken, String> {
        match body.as_object() {
            Some(obj) if obj.is_empty() => Ok(ResumeToken {}),
            Some(obj) => Err(format!(
                "unknown field {:?}; resume takes an empty object {{}}",
                obj.keys().next().map_or("", String::as_str)
            )),
            None => Err("body must be an empty JSON object {}".into()),
        }
    }
}

impl EditToken {
    /// The fields this edit changes, sorted, comma-separated (for the log
    /// and the audit line).
    pub(crate) fn changed(&self) -> String {
        let mut changed = Vec::with_capacity(6);
        for (present, field) in [
            (self.expires.is_some(), "expires"),
            (self.max_uses.is_some(), "max_uses"),
            (self.name.is_some(), "name"),
            (self.networks.is_some(), "networks"),
            (self.not_before.is_some(), "not_before"),
            (self.rate_limit.is_some(), "rate_limit"),
            (self.read_only.is_some(), "read_only"),
            (self.scopes.is_some(), "scopes"),
        ] {
            if present {
                changed.push(field);
            }
        }
        changed.join(",")
    }
}

/// Reads a request body as one of the contract's types; the error is the
/// `error_description` of a 400 (the field at fault, as the type's reader
/// wrote it).
pub(super) fn read<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, String> {
    // From a `Value`, serde_json adds no position to a custom error: the
    // text is the reader's own.
    serde_json::from_value(body).map_err(|e| e.to_string())
}

//! `/api/users`: the admin accounts (admin role only; `permissions` checks
//! that before these run). Every change commits to the store on the
//! blocking pool, is mirrored in memory, ends the sessions of an account
//! disabled or deleted, and is audited with the account acted on.

use std::sync::Arc;

use http::header::{HeaderValue, LOCATION};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::api::{CreatedUser, EditUser, UserInfo, MIN_PASSWORD_CHARS};
use super::{bad, json_body, AdminHandler};
use crate::audit::Actor;
use crate::clock::rfc3339;
use crate::roles::{Role, ROLE_NAMES};
use crate::store::{validate_account_name, AccountChange, AccountRecord, Applied, Refusal, Source};
use crate::wire::{empty, error, json, no_store, Reply};

/// Longest password accepted: argon2 takes any length, but a megabyte of
/// password is an attack on the CPU, not a password.
const MAX_PASSWORD_CHARS: usize = 1024;

pub(super) fn info(a: &AccountRecord) -> UserInfo {
    UserInfo {
        name: a.name.clone(),
        role: a.role,
        disabled: a.disabled,
        source: a.source,
        created_at: rfc3339(a.created),
        last_login_at: a.last_login.map(rfc3339),
    }
}

/// Why an account change was refused, as an answer.
pub(super) fn refusal(r: &Refusal) -> Reply {
    let (status, code) = match r {
        Refusal::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        Refusal::Disabled(_) => (StatusCode::FORBIDDEN, "account_disabled"),
        _ => (StatusCode::CONFLICT, "conflict"),
    };
    error(status, code, &r.to_string())
}

fn object(body: &Value, fields: &[&str]) -> Result<Map<String, Value>, String> {
    let Some(obj) = body.as_object() else {
        return Err("body must be a JSON object".into());
    };
    if let Some(k) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(format!(
            "unknown field {k:?}; expected {}",
            fields.join(", ")
        ));
    }
    Ok(obj.clone())
}

fn role_field(v: &Value) -> Result<Role, String> {
    v.as_str()
        .ok_or_else(|| format!("role must be a string: {ROLE_NAMES}"))?
        .parse()
        .map_err(|e: String| format!("role: {e}"))
}

fn password_field(v: &Value) -> Result<String, String> {
    let p = v.as_str().ok_or("password must be a string")?;
    let n = p.chars().count();
    if n < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if n > MAX_PASSWORD_CHARS {
        return Err(format!(
            "password must be at most {MAX_PASSWORD_CHARS} characters"
        ));
    }
    Ok(p.to_owned())
}

/// A create body: (name, role, password if given). Each error names its field.
fn create_request(body: &Value) -> Result<(String, Role, Option<String>), String> {
    let obj = object(body, &["name", "role", "password"])?;
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("name must be a string".into()),
        None => return Err("name is required".into()),
    };
    validate_account_name(&name)?;
    let role = role_field(obj.get("role").ok_or("role is required")?)?;
    let password = match obj.get("password") {
        None | Some(Value::Null) => None,
        Some(v) => Some(password_field(v)?),
    };
    Ok((name, role, password))
}

/// An edit body: (role, disabled, password), at least one.
fn edit_request(body: &Value) -> Result<EditUser, String> {
    let obj = object(body, &["role", "disabled", "password"])?;
    if obj.is_empty() {
        return Err(
            "the body names nothing to change: send one or more of role, disabled and password"
                .into(),
        );
    }
    let role = obj.get("role").map(role_field).transpose()?;
    let disabled = match obj.get("disabled") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err("disabled must be true or false".into()),
    };
    let password = obj.get("password").map(password_field).transpose()?;
    Ok(EditUser {
        role,
        disabled,
        password,
    })
}

/// The account name in `/api/users/{name}`, percent-decoded (`@` may come
/// as `%40`); `None` for what cannot be a name.
pub(super) fn name_in_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    validate_account_name(&name).ok().map(|()| name)
}

async fn hash(password: String) -> Result<String, Reply> {
    match tokio::task::spawn_blocking(move || crate::secrets::hash_password(&password)).await {
        Ok(Ok(h)) => Ok(h),
        other => {
            let detail = match other {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(Ok(_)) => String::new(),
            };
            tracing::error!(error = %detail, "hashing a password failed");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the password could not be hashed; nothing was changed",
            ))
        }
    }
}

fn unconfirmed(e: impl std::fmt::Display) -> Reply {
    tracing::error!(error = %e, "changing an account failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the store did not confirm the change; list the accounts to see whether it was made",
    )
}

impl AdminHandler {
    /// Commits a change to the accounts on the blocking pool; ends the
    /// sessions of an account it disabled or deleted.
    pub(super) async fn change_account(&self, change: AccountChange) -> Result<Applied, Reply> {
        let store = self.state.view.store.clone();
        let name = change.name().to_owned();
        let done = tokio::task::spawn_blocking(move || store.change_account(&change)).await;
        let applied = match done {
            Ok(Ok(Ok(a))) => a,
            Ok(Ok(Err(r))) => return Err(refusal(&r)),
            Ok(Err(e)) => return Err(unconfirmed(e)),
            Err(e) => return Err(unconfirmed(e)),
        };
        if applied.end_sessions {
            self.auth.sessions.end_user(&name);
            self.state.passwords.forget(&name);
        }
        Ok(applied)
    }

    pub(super) fn list_users(&self) -> Reply {
        let all: Vec<UserInfo> = self
            .state
            .view
            .store
            .accounts()
            .iter()
            .map(|a| info(a))
            .collect();
        no_store(json(StatusCode::OK, &all))
    }

    pub(super) async fn create_user(&self, by: &Actor, req: Request<Incoming>) -> Reply {
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let (name, role, given) = match create_request(&body) {
            Ok(x) => x,
            Err(text) => return bad(text),
        };
        if self.state.view.store.account(&name).is_some() {
            return refusal(&Refusal::Exists(name));
        }
        let (password, generated) = match given {
            Some(p) => (p, false),
            None => match crate::secrets::generate_password() {
                Ok(p) => (p, true),
                Err(e) => return unconfirmed(e),
            },
        };
        let password_hash = match hash(password.clone()).await {
            Ok(h) => h,
            Err(r) => return r,
        };
        let rec = AccountRecord {
            name: name.clone(),
            role,
            disabled: false,
            source: Source::Local,
            password_hash: Some(password_hash),
            created: self.state.view.clock.unix(),
            last_login: None,
        };
        let applied = match self.change_account(AccountChange::Create(rec)).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let Some(made) = applied.account else {
            return unconfirmed("the account was not returned");
        };
        tracing::info!(peer = %by.peer, user = %by.who.user, target_user = %name, role = %role, "account created");
        self.audit_account(by, "admin.user_created", &name, role.as_str());
        let mut r = no_store(json(
            StatusCode::CREATED,
            &CreatedUser {
                user: info(&made),
                password: generated.then_some(password),
            },
        ));
        if let Ok(loc) = HeaderValue::from_str(&format!("/api/users/{name}")) {
            r.headers_mut().insert(LOCATION, loc);
        }
        r
    }

    pub(super) async fn edit_user(&self, by: &Actor, raw: &str, req: Request<Incoming>) -> Reply {
        let Some(name) = name_in_path(raw) else {
            return refusal(&Refusal::NotFound(raw.to_owned()));
        };
        let body = match json_body(req, self.body_read_timeout()).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let EditUser {
            role,
            disabled,
            password,
        } = match edit_request(&body) {
            Ok(x) => x,
            Err(text) => return bad(text),
        };
        // The cheap refusals first, before a password is hashed.
        let Some(current) = self.state.view.store.account(&name) else {
            return refusal(&Refusal::NotFound(name));
        };
        if password.is_some() {
            if name == crate::store::BOOTSTRAP {
                return refusal(&Refusal::BootstrapPassword);
            }
            if current.source == Source::Oidc {
                return refusal(&Refusal::OidcPassword(name));
            }
        }
        let password_hash = match password {
            Some(p) => match hash(p).await {
                Ok(h) => Some(h),
                Err(r) => return r,
            },
            None => None,
        };
        let mut changed = Vec::new();
        for (present, field) in [
            (disabled.is_some(), "disabled"),
            (password_hash.is_some(), "password"),
            (role.is_some(), "role"),
        ] {
            if present {
                changed.push(field);
            }
        }
        let new_password = password_hash.is_some();
        let change = AccountChange::Edit {
            name: name.clone(),
            role,
            disabled,
            password_hash,
        };
        let applied = match self.change_account(change).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        if new_password {
            self.state.passwords.forget(&name);
        }
        let Some(now) = applied.account else {
            return unconfirmed("the account was not returned");
        };
        let changed = changed.join(",");
        tracing::info!(peer = %by.peer, user = %by.who.user, target_user = %name, fields = %changed, "account edited");
        self.audit_account(by, "admin.user_edited", &name, &changed);
        no_store(json(StatusCode::OK, &info(&now)))
    }

    pub(super) async fn delete_user(&self, by: &Actor, raw: &str) -> Reply {
        let Some(name) = name_in_path(raw) else {
            return refusal(&Refusal::NotFound(raw.to_owned()));
        };
        if let Err(r) = self
            .change_account(AccountChange::Delete(name.clone()))
            .await
        {
            return r;
        }
        tracing::info!(peer = %by.peer, user = %by.who.user, target_user = %name, "account deleted");
        self.audit_account(by, "admin.user_deleted", &name, "");
        empty(StatusCode::NO_CONTENT)
    }

    fn audit_account(&self, by: &Actor, event: &'static str, target: &str, what: &str) {
        self.state.view.audit.record(&crate::audit::Event {
            target_user: Some(target),
            reason: (!what.is_empty()).then_some(what),
            ..by.event(event)
        });
    }
}

/// The accounts as shared state for the sessions check: the account's
/// current role if it exists and is enabled.
pub(super) fn current_role(account: Option<Arc<AccountRecord>>) -> Option<Role> {
    crate::passwords::current_role(account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_name_the_field_at_fault() {
        assert!(create_request(&json!({"name": "bob", "role": "viewer"})).is_ok());
        for (body, field) in [
            (json!({"role": "viewer"}), "name"),
            (json!({"name": "b b", "role": "viewer"}), "name"),
            (json!({"name": "x".repeat(65), "role": "viewer"}), "name"),
            (json!({"name": "bob"}), "role"),
            (json!({"name": "bob", "role": "root"}), "role"),
            (
                json!({"name": "bob", "role": "viewer", "password": "short"}),
                "password",
            ),
            (
                json!({"name": "bob", "role": "viewer", "colour": 1}),
                "colour",
            ),
        ] {
            let e = create_request(&body).unwrap_err();
            assert!(e.contains(field), "{body}: {e}");
        }
        assert!(edit_request(&json!({})).is_err());
        assert!(edit_request(&json!({"disabled": "yes"}))
            .unwrap_err()
            .contains("disabled"));
        assert_eq!(
            edit_request(&json!({"role": "manager"})).unwrap().role,
            Some(Role::Manager)
        );
    }

    #[test]
    fn names_in_paths() {
        assert_eq!(name_in_path("bob").as_deref(), Some("bob"));
        assert_eq!(
            name_in_path("eve%40example.com").as_deref(),
            Some("eve@example.com")
        );
        assert_eq!(name_in_path("a%2Fb"), None);
        assert_eq!(name_in_path("%zz"), None);
        assert_eq!(name_in_path(""), None);
    }
}

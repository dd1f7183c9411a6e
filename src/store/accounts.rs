//! Admin accounts as stored: the record, the rules a change must keep (in
//! one pure function both backends call inside their write transaction, so
//! two administrators racing cannot leave the gateway without an admin), and
//! the in-memory registry every admin request reads.
//!
//! The bootstrap account `admin` always exists. Its row holds its role and
//! whether it is disabled, never a password: that comes from the
//! configuration (`TOKENGATE_ADMIN_PASSWORD`, `admin.password_hash` or the
//! generated one), as it did before accounts existed.

use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::roles::Role;

/// The account whose password is the configured one.
pub(crate) const BOOTSTRAP: &str = "admin";
/// Longest account name, in characters.
pub const MAX_ACCOUNT_NAME: usize = 64;

/// Where an account comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Made through the admin API (or the bootstrap account): a password.
    Local,
    /// Made at a single sign-on: no password, its role from the provider.
    Oidc,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Oidc => "oidc",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Source> {
        match s {
            "local" => Some(Source::Local),
            "oidc" => Some(Source::Oidc),
            _ => None,
        }
    }
}

/// An account as stored (redb: JSON under its name; PostgreSQL: a row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountRecord {
    pub(crate) name: String,
    pub(crate) role: Role,
    #[serde(default)]
    pub(crate) disabled: bool,
    pub(crate) source: Source,
    /// The argon2 PHC string; `None` for the bootstrap account (its
    /// password is configured) and single-sign-on accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) password_hash: Option<String>,
    /// Unix seconds.
    pub(crate) created: u64,
    /// Unix seconds of the last successful sign-in.
    #[serde(default)]
    pub(crate) last_login: Option<u64>,
}

impl AccountRecord {
    /// The bootstrap account's row, as first written.
    pub(crate) fn bootstrap(now: u64) -> AccountRecord {
        AccountRecord {
            name: BOOTSTRAP.into(),
            role: Role::Admin,
            disabled: false,
            source: Source::Local,
            password_hash: None,
            created: now,
            last_login: None,
        }
    }

    fn is_enabled_admin(&self) -> bool {
        self.role == Role::Admin && !self.disabled
    }
}

/// A change to the accounts, as the admin API asks for it.
#[derive(Debug, Clone)]
pub(crate) enum AccountChange {
    /// A new account (refused if the name is taken).
    Create(AccountRecord),
    /// `PATCH`: each field present is replaced.
    Edit {
        name: String,
        role: Option<Role>,
        disabled: Option<bool>,
        /// A new argon2 PHC string.
        password_hash: Option<String>,
    },
    Delete(String),
    /// A single sign-on: the account is made if missing (source `oidc`),
    /// its role replaced; a disabled one, or a local one of that name, is
    /// refused.
    SignOn {
        name: String,
        role: Role,
        now: u64,
    },
    /// A successful sign-in at `at` (nothing is refused).
    LoggedIn {
        name: String,
        at: u64,
    },
}

impl AccountChange {
    /// The account it changes.
    pub(crate) fn name(&self) -> &str {
        match self {
            AccountChange::Create(r) => &r.name,
            AccountChange::Edit { name, .. }
            | AccountChange::Delete(name)
            | AccountChange::SignOn { name, .. }
            | AccountChange::LoggedIn { name, .. } => name,
        }
    }
}

/// Why a change to the accounts was refused; the text is the API's
/// `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no account named {0:?}")]
    NotFound(String),
    #[error("an account named {0:?} exists already")]
    Exists(String),
    #[error("{0:?} is the last enabled account with the role admin; make another admin first")]
    LastAdmin(String),
    #[error("the password of the account admin comes from the configuration (TOKENGATE_ADMIN_PASSWORD or admin.password_hash); change it there")]
    BootstrapPassword,
    #[error("the account admin comes from the configuration and cannot be deleted; disable it instead (another enabled admin must remain)")]
    BootstrapDelete,
    #[error("{0:?} signs in through single sign-on and has no password")]
    OidcPassword(String),
    #[error("the account {0:?} is disabled")]
    Disabled(String),
    #[error("the name {0:?} belongs to a local account, not a single-sign-on one")]
    NotOidc(String),
}

/// What a change leaves: the account as now stored (`None`: deleted), and
/// whether its sessions must end (disabled or deleted).
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) account: Option<AccountRecord>,
    pub(crate) end_sessions: bool,
    /// The change row's feed position, where there is a feed (PostgreSQL
    /// sets it after writing; `None` here).
    pub(crate) at: Option<i64>,
}

/// Applies `change` to `current` (the account it names, if stored) given
/// every stored account (`all`, for the last-admin rule). Pure: both
/// backends call it inside their write transaction.
pub(crate) fn apply(
    all: &[AccountRecord],
    current: Option<&AccountRecord>,
    change: &AccountChange,
) -> Result<Applied, Refusal> {
    let name = change.name().to_owned();
    let enabled_admins = |except: &str| {
        all.iter()
            .filter(|a| a.name != except && a.is_enabled_admin())
            .count()
    };
    match change {
        AccountChange::Create(rec) => match current {
            Some(_) => Err(Refusal::Exists(name)),
            None => Ok(Applied {
                at: None,
                account: Some(rec.clone()),
                end_sessions: false,
            }),
        },
        AccountChange::Edit {
            role,
            disabled,
            password_hash,
            ..
        } => {
            let Some(cur) = current else {
                return Err(Refusal::NotFound(name));
            };
            let mut next = cur.clone();
            if password_hash.is_some() {
                if cur.name == BOOTSTRAP {
                    return Err(Refusal::BootstrapPassword);
                }
                if cur.source == Source::Oidc {
                    return Err(Refusal::OidcPassword(name));
                }
                next.password_hash.clone_from(password_hash);
            }
            if let Some(r) = role {
                next.role = *r;
            }
            if let Some(d) = disabled {
                next.disabled = *d;
            }
            if cur.is_enabled_admin() && !next.is_enabled_admin() && enabled_admins(&name) == 0 {
                return Err(Refusal::LastAdmin(name));
            }
            Ok(Applied {
                at: None,
                end_sessions: next.disabled && !cur.disabled,
                account: Some(next),
            })
        }
        AccountChange::Delete(_) => {
            let Some(cur) = current else {
                return Err(Refusal::NotFound(name));
            };
            if cur.name == BOOTSTRAP {
                return Err(Refusal::BootstrapDelete);
            }
            if cur.is_enabled_admin() && enabled_admins(&name) == 0 {
                return Err(Refusal::LastAdmin(name));
            }
            Ok(Applied {
                at: None,
                account: None,
                end_sessions: true,
            })
        }
        AccountChange::SignOn { role, now, .. } => match current {
            None => Ok(Applied {
                at: None,
                account: Some(AccountRecord {
                    name: name.clone(),
                    role: *role,
                    disabled: false,
                    source: Source::Oidc,
                    password_hash: None,
                    created: *now,
                    last_login: Some(*now),
                }),
                end_sessions: false,
            }),
            Some(cur) if cur.source != Source::Oidc => Err(Refusal::NotOidc(name)),
            Some(cur) if cur.disabled => Err(Refusal::Disabled(name)),
            Some(cur) => {
                let mut next = cur.clone();
                next.role = *role;
                next.last_login = Some(*now);
                // The provider's word is final, even for the last admin:
                // refusing the sign-in would not give the role back.
                Ok(Applied {
                    at: None,
                    account: Some(next),
                    end_sessions: false,
                })
            }
        },
        AccountChange::LoggedIn { at, .. } => {
            let Some(cur) = current else {
                return Err(Refusal::NotFound(name));
            };
            let mut next = cur.clone();
            next.last_login = Some(next.last_login.map_or(*at, |l| l.max(*at)));
            Ok(Applied {
                at: None,
                account: Some(next),
                end_sessions: false,
            })
        }
    }
}

/// Checks an account name: 1 to 64 ASCII letters, digits and `._-@`.
pub fn validate_account_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ACCOUNT_NAME {
        return Err(format!(
            "name must be 1 to {MAX_ACCOUNT_NAME} characters of ASCII letters, digits and ._-@"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "name must hold only ASCII letters, digits and ._-@ (found {c:?})"
        ));
    }
    Ok(())
}

/// The accounts in memory: every admin request reads its account's role
/// and enabled flag here (never the role at login), and the change feed
/// keeps it in step with the other replicas. DashMap: read on every admin
/// request, written rarely.
#[derive(Default)]
pub(crate) struct Registry {
    by_name: DashMap<String, Arc<AccountRecord>>,
}

impl Registry {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<AccountRecord>> {
        self.by_name.get(name).map(|e| e.value().clone())
    }

    /// Replaces (or with `None` removes) the account `name`.
    pub(crate) fn set(&self, name: &str, rec: Option<AccountRecord>) {
        match rec {
            Some(r) => {
                self.by_name.insert(name.to_owned(), Arc::new(r));
            }
            None => {
                self.by_name.remove(name);
            }
        }
    }

    /// Every account, by name.
    pub(crate) fn list(&self) -> Vec<Arc<AccountRecord>> {
        let mut all: Vec<_> = self.by_name.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(name: &str, role: Role, disabled: bool) -> AccountRecord {
        AccountRecord {
            name: name.into(),
            role,
            disabled,
            source: Source::Local,
            password_hash: Some("x".into()),
            created: 1,
            last_login: None,
        }
    }

    fn edit(name: &str, role: Option<Role>, disabled: Option<bool>) -> AccountChange {
        AccountChange::Edit {
            name: name.into(),
            role,
            disabled,
            password_hash: None,
        }
    }

    #[test]
    fn the_last_enabled_admin_stays() {
        let all = vec![
            AccountRecord::bootstrap(1),
            acct("bob", Role::Manager, false),
            acct("old", Role::Admin, true),
        ];
        let admin = &all[0];
        for change in [
            edit("admin", Some(Role::Viewer), None),
            edit("admin", None, Some(true)),
        ] {
            assert_eq!(
                apply(&all, Some(admin), &change).unwrap_err(),
                Refusal::LastAdmin("admin".into())
            );
        }
        assert_eq!(
            apply(&all, Some(admin), &AccountChange::Delete("admin".into())).unwrap_err(),
            Refusal::BootstrapDelete
        );
        // With a second enabled admin, either may go.
        let mut two = all.clone();
        two.push(acct("carol", Role::Admin, false));
        assert!(apply(&two, Some(admin), &edit("admin", None, Some(true))).is_ok());
        let carol = &two[3];
        let gone = apply(&two, Some(carol), &AccountChange::Delete("carol".into())).unwrap();
        assert!(gone.account.is_none() && gone.end_sessions);
        // An admin that is already disabled can be demoted freely.
        assert!(apply(&all, Some(&all[2]), &edit("old", Some(Role::Viewer), None)).is_ok());
    }

    #[test]
    fn passwords_and_sources() {
        let all = vec![AccountRecord::bootstrap(1)];
        let pw = AccountChange::Edit {
            name: "admin".into(),
            role: None,
            disabled: None,
            password_hash: Some("h".into()),
        };
        assert_eq!(
            apply(&all, Some(&all[0]), &pw).unwrap_err(),
            Refusal::BootstrapPassword
        );
        let sso = AccountChange::SignOn {
            name: "eve@example.com".into(),
            role: Role::Viewer,
            now: 5,
        };
        let made = apply(&all, None, &sso).unwrap().account.unwrap();
        assert_eq!((made.source, made.role), (Source::Oidc, Role::Viewer));
        let pw = AccountChange::Edit {
            name: made.name.clone(),
            role: None,
            disabled: None,
            password_hash: Some("h".into()),
        };
        assert!(matches!(
            apply(&all, Some(&made), &pw),
            Err(Refusal::OidcPassword(_))
        ));
        let mut off = made.clone();
        off.disabled = true;
        assert!(matches!(
            apply(&all, Some(&off), &sso),
            Err(Refusal::Disabled(_))
        ));
        assert!(matches!(
            apply(&all, Some(&all[0]), &sso),
            Err(Refusal::NotOidc(_))
        ));
    }

    #[test]
    fn names() {
        for ok in ["a", "alice.smith@example.com", "ci_bot-2", &"x".repeat(64)] {
            assert!(validate_account_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "with space", "é", "a/b", &"x".repeat(65), "a:b"] {
            assert!(validate_account_name(bad).is_err(), "{bad}");
        }
    }
}

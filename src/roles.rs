//! Who may do what on the admin listener: the four roles of an account,
//! and how a person proved who they are.
//!
//! A leaf: the store keeps a role as its name, the admin handlers check it,
//! the single sign-on maps an identity provider's groups onto it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An account's role, from the most to the least it may do. The order is
/// the derive's: `Admin < Manager < Creator < Viewer`, so "at least a
/// manager" is `role <= Role::Manager`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: accounts, reload, cluster rotate, every token.
    Admin,
    /// Every refresh token (create, edit, rotate, delete, list) and stats.
    Manager,
    /// Creates refresh tokens, and sees and changes only the ones it created.
    Creator,
    /// Reads: the token list, stats, metrics.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Manager, Role::Creator, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Creator => "creator",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role may do everything `needed` may.
    pub fn includes(self, needed: Role) -> bool {
        self <= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names accepted, for error messages.
pub const ROLE_NAMES: &str = "admin, manager, creator or viewer";

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected {ROLE_NAMES}"))
    }
}

/// How the person behind an admin request proved who they are; recorded as
/// `via` on every admin audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// An account's password: HTTP Basic, or the page's login form.
    Password,
    /// Single sign-on through the configured OpenID provider.
    Oidc,
    /// The local Unix socket: its file permissions are the proof.
    Socket,
    /// No sign-in at all: someone on the public listener reported a leaked
    /// token (`POST /token/leaked`), and the gateway suspends it on their
    /// word. Never an account's session.
    Report,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Password => "password",
            Via::Oidc => "oidc",
            Via::Socket => "socket",
            Via::Report => "report",
        }
    }
}

/// The person behind an admin request: the account, its role, and how they
/// signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub user: String,
    pub role: Role,
    pub via: Via,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_from_most_to_least() {
        assert!(Role::Admin.includes(Role::Viewer));
        assert!(Role::Manager.includes(Role::Creator));
        assert!(!Role::Creator.includes(Role::Manager));
        assert!(!Role::Viewer.includes(Role::Creator));
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert!(r.includes(r));
        }
        assert!("root".parse::<Role>().is_err());
        assert!("Admin".parse::<Role>().is_err());
    }
}

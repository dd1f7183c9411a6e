//! Who a verified ID token names and what role they get: pure functions of
//! the token's claims and `[admin.oidc]`, tested without a provider.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::roles::Role;

/// Why a verified identity is still refused. Each says what happened in
/// words a person can act on; none holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("the identity provider's ID token has no \"{0}\" claim to name the account by")]
    NoUsername(String),
    #[error(
        "the \"{claim}\" claim is not a valid account name (1 to 64 letters, digits and ._-@)"
    )]
    BadUsername { claim: String },
    #[error("the identity provider says the e-mail address is not verified")]
    EmailUnverified,
    #[error("there is no role here for {user}: none of their \"{claim}\" values is mapped to a role, and no default role is set")]
    NoRole { user: String, claim: String },
}

/// An account name: 1–64 of ASCII letters, digits and `._-@`.
pub(crate) fn is_account_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// The account name from `claim`. When that claim is the e-mail address,
/// a provider saying `email_verified: false` is refused: whoever typed
/// someone else's address at a provider with open sign-up must not get
/// that person's account here.
pub(crate) fn username(claims: &Map<String, Value>, claim: &str) -> Result<String, IdentityError> {
    let value = match claims.get(claim) {
        None | Some(Value::Null) => return Err(IdentityError::NoUsername(claim.to_owned())),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(IdentityError::BadUsername {
                claim: claim.to_owned(),
            })
        }
    };
    if !is_account_name(value) {
        return Err(IdentityError::BadUsername {
            claim: claim.to_owned(),
        });
    }
    if claim == "email" && claims.get("email_verified") == Some(&Value::Bool(false)) {
        return Err(IdentityError::EmailUnverified);
    }
    Ok(value.to_owned())
}

/// The most privileged role any of `claim`'s values (a string or an array
/// of strings) maps to, else `default`.
pub(crate) fn role(
    claims: &Map<String, Value>,
    claim: &str,
    roles: &BTreeMap<String, Role>,
    default: Option<Role>,
    user: &str,
) -> Result<Role, IdentityError> {
    let values: Vec<&str> = match claims.get(claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    values
        .iter()
        .filter_map(|v| roles.get(*v).copied())
        // `Role`'s order runs from the most to the least it may do.
        .min()
        .or(default)
        .ok_or_else(|| IdentityError::NoRole {
            user: user.to_owned(),
            claim: claim.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn usernames() {
        let c = claims(serde_json::json!({"email": "ann@example.com", "sub": "x y", "n": 3}));
        assert_eq!(username(&c, "email").unwrap(), "ann@example.com");
        assert!(matches!(
            username(&c, "sub"),
            Err(IdentityError::BadUsername { .. })
        ));
        assert!(matches!(
            username(&c, "n"),
            Err(IdentityError::BadUsername { .. })
        ));
        assert!(matches!(
            username(&c, "nope"),
            Err(IdentityError::NoUsername(_))
        ));
        let long = "a".repeat(65);
        let c = claims(serde_json::json!({"email": long}));
        assert!(username(&c, "email").is_err());
        let c = claims(serde_json::json!({"email": "ann@example.com", "email_verified": false}));
        assert_eq!(username(&c, "email"), Err(IdentityError::EmailUnverified));
    }

    #[test]
    fn most_privileged_mapped_role_wins() {
        let map: BTreeMap<String, Role> = [
            ("dba".to_owned(), Role::Manager),
            ("ops".to_owned(), Role::Admin),
            ("all".to_owned(), Role::Viewer),
        ]
        .into();
        let c = claims(serde_json::json!({"groups": ["all", "dba", 7], "g1": "ops", "g2": ["x"]}));
        assert_eq!(role(&c, "groups", &map, None, "u"), Ok(Role::Manager));
        assert_eq!(role(&c, "g1", &map, None, "u"), Ok(Role::Admin));
        assert_eq!(
            role(&c, "g2", &map, Some(Role::Viewer), "u"),
            Ok(Role::Viewer)
        );
        assert!(matches!(
            role(&c, "g2", &map, None, "u"),
            Err(IdentityError::NoRole { .. })
        ));
        assert!(role(&c, "missing", &map, None, "u").is_err());
    }
}

//! Who may call what on the admin listener: one table, a pure function of
//! the route and the role, unit-tested without sockets. The sets are
//! explicit rather than an order: a creator sees only its own tokens while
//! a viewer sees them all, and a viewer reads stats that a creator may not.
//!
//! A creator's right to change a token holds only for the tokens it
//! created; the token handlers check that against `created_by`.

use http::{Method, StatusCode};
use serde::Serialize;

use crate::roles::{Role, Who};
use crate::wire::{json, Reply};

/// What a request asks to do, as far as roles are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `GET /api/session`, `POST /api/logout`.
    Session,
    /// `GET /api/stats`, `GET /metrics`.
    Stats,
    /// `GET /api/refresh-tokens` (a creator's list holds its own only).
    ListTokens,
    /// `POST /api/refresh-tokens`.
    CreateToken,
    /// Edit, rotate, suspend, resume, delete one or many (a creator: its
    /// own only).
    ChangeToken,
    /// Any change to a token, whoever created it.
    ChangeAnyToken,
    /// `POST /api/reload`, `POST /api/cluster/rotate`.
    Operate,
    /// `/api/users` and `/api/users/{name}`.
    Accounts,
}

impl Action {
    /// The roles that may, in the order of `Role::ALL`.
    fn allowed(self) -> &'static [Role] {
        use Role::{Admin, Creator, Manager, Viewer};
        match self {
            Action::Session | Action::ListTokens => &[Admin, Manager, Creator, Viewer],
            Action::Stats => &[Admin, Manager, Viewer],
            Action::CreateToken | Action::ChangeToken => &[Admin, Manager, Creator],
            Action::ChangeAnyToken => &[Admin, Manager],
            Action::Operate | Action::Accounts => &[Admin],
        }
    }

    pub(crate) fn permits(self, role: Role) -> bool {
        self.allowed().contains(&role)
    }

    /// The least role that may: the one a refusal names.
    pub(crate) fn least_role(self) -> Role {
        self.allowed().last().copied().unwrap_or(Role::Admin)
    }
}

/// The action of an authenticated route and method; `None` for what the
/// router answers itself (an unknown path, a method the path lacks).
pub(crate) fn action_of(method: &Method, path: &str) -> Option<Action> {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match path {
        "/api/session" if get => return Some(Action::Session),
        "/api/logout" if post => return Some(Action::Session),
        "/api/stats" | "/metrics" if get => return Some(Action::Stats),
        "/api/refresh-tokens" if get => return Some(Action::ListTokens),
        "/api/refresh-tokens" if post => return Some(Action::CreateToken),
        "/api/reload" | "/api/cluster/rotate" if post => return Some(Action::Operate),
        "/api/users" if get || post => return Some(Action::Accounts),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/api/users/") {
        let known = method == Method::PATCH || method == Method::DELETE;
        return (known && !rest.is_empty()).then_some(Action::Accounts);
    }
    let rest = path.strip_prefix("/api/refresh-tokens/")?;
    let change = match rest {
        "delete" => post,
        r if r.ends_with("/rotate") || r.ends_with("/suspend") || r.ends_with("/resume") => post,
        _ => method == Method::PATCH || method == Method::DELETE,
    };
    change.then_some(Action::ChangeToken)
}

/// The 403 body: the contract's error shape plus the role needed.
#[derive(Serialize)]
struct Forbidden<'a> {
    error: &'static str,
    error_description: &'a str,
    required_role: Role,
}

/// A refusal naming what was asked, the least role that may, and who asked.
pub(crate) fn forbidden(method: &Method, path: &str, who: &Who, action: Action) -> Reply {
    let needed = action.least_role();
    let text = format!(
        "{method} {path} needs the role {needed} (you are {}, {})",
        who.user, who.role
    );
    json(
        StatusCode::FORBIDDEN,
        &Forbidden {
            error: "forbidden",
            error_description: &text,
            required_role: needed,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::{Admin, Creator, Manager, Viewer};

    #[test]
    fn the_table() {
        // (method, path, roles that may)
        let table: &[(&str, &str, &[Role])] = &[
            ("GET", "/api/session", &[Admin, Manager, Creator, Viewer]),
            ("POST", "/api/logout", &[Admin, Manager, Creator, Viewer]),
            ("GET", "/api/stats", &[Admin, Manager, Viewer]),
            ("GET", "/metrics", &[Admin, Manager, Viewer]),
            (
                "GET",
                "/api/refresh-tokens",
                &[Admin, Manager, Creator, Viewer],
            ),
            ("POST", "/api/refresh-tokens", &[Admin, Manager, Creator]),
            ("PATCH", "/api/refresh-tokens/7", &[Admin, Manager, Creator]),
            (
                "DELETE",
                "/api/refresh-tokens/7",
                &[Admin, Manager, Creator],
            ),
            (
                "POST",
                "/api/refresh-tokens/7/rotate",
                &[Admin, Manager, Creator],
            ),
            (
                "POST",
                "/api/refresh-tokens/delete",
                &[Admin, Manager, Creator],
            ),
            (
                "POST",
                "/api/refresh-tokens/7/suspend",
                &[Admin, Manager, Creator],
            ),
            (
                "POST",
                "/api/refresh-tokens/7/resume",
                &[Admin, Manager, Creator],
            ),
            ("POST", "/api/reload", &[Admin]),
            ("POST", "/api/cluster/rotate", &[Admin]),
            ("GET", "/api/users", &[Admin]),
            ("POST", "/api/users", &[Admin]),
            ("PATCH", "/api/users/bob", &[Admin]),
            ("DELETE", "/api/users/bob", &[Admin]),
        ];
        for (method, path, may) in table {
            let m: Method = method.parse().unwrap();
            let action = action_of(&m, path).unwrap_or_else(|| panic!("{method} {path}"));
            for role in Role::ALL {
                assert_eq!(
                    action.permits(role),
                    may.contains(&role),
                    "{method} {path} as {role}"
                );
            }
        }
        assert!(!Action::ChangeAnyToken.permits(Creator));
        assert_eq!(Action::ChangeAnyToken.least_role(), Manager);
    }

    #[test]
    fn refusals_name_the_least_role_that_may() {
        assert_eq!(Action::Stats.least_role(), Viewer);
        assert_eq!(Action::CreateToken.least_role(), Creator);
        assert_eq!(Action::Operate.least_role(), Admin);
        assert_eq!(Action::Accounts.least_role(), Admin);
        let who = Who {
            user: "vic".into(),
            role: Viewer,
            via: crate::roles::Via::Password,
        };
        let r = forbidden(&Method::POST, "/api/reload", &who, Action::Operate);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn what_the_router_answers_itself_has_no_action() {
        assert_eq!(action_of(&Method::PUT, "/api/reload"), None);
        assert_eq!(action_of(&Method::GET, "/api/nope"), None);
        assert_eq!(action_of(&Method::GET, "/api/refresh-tokens/7"), None);
        assert_eq!(action_of(&Method::PATCH, "/api/users/"), None);
    }
}

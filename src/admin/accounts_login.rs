//! Starting a page session for an account, whichever way it signed in:
//! the page's password form (`POST /api/login`) and a verified single
//! sign-on both end here. With PostgreSQL the session is stored (its
//! cookie's fingerprint, never the cookie) so every replica accepts it.

use std::net::SocketAddr;

use http::header::{HeaderValue, LOCATION, SET_COOKIE};
use http::StatusCode;

use super::{session, AdminHandler};
use crate::audit::Event;
use crate::roles::{Role, Via, Who};
use crate::store::{validate_account_name, AccountChange, SessionRow};
use crate::wire::{empty, error, no_store, Reply};

/// A successful sign-in older than this is written again (`last_login_at`);
/// more often would be a write per HTTP Basic request.
const LOGIN_NOTE_EVERY_SECS: u64 = 60;

impl AdminHandler {
    /// Starts a page session for `who`: (cookie value, CSRF token).
    pub(super) async fn start_session(&self, who: &Who) -> Result<(String, String), Reply> {
        let clock = &self.state.view.clock;
        let unavailable = || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the session could not be started; try again",
            )
        };
        let (cookie, csrf) = match self.auth.sessions.create(clock.now(), who.clone()) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "random generator failed");
                return Err(unavailable());
            }
        };
        let store = self.state.view.store.clone();
        if store.shares_sessions() {
            let row = SessionRow {
                fingerprint: session::fingerprint(&cookie),
                user: who.user.clone(),
                via: who.via,
                csrf: csrf.clone(),
                expires: clock
                    .unix()
                    .saturating_add(self.auth.sessions.ttl().as_secs()),
            };
            let stored = tokio::task::spawn_blocking(move || store.put_session(&row)).await;
            if !matches!(stored, Ok(Ok(()))) {
                if let Ok(Err(e)) = &stored {
                    tracing::warn!(error = %e, "storing a page session failed");
                }
                self.auth.sessions.remove(&cookie);
                return Err(unavailable());
            }
        }
        Ok((cookie, csrf))
    }

    /// Records a successful sign-in (`last_login_at`), at most once a
    /// minute per account.
    pub(super) async fn note_login(&self, user: &str) {
        let now = self.state.view.clock.unix();
        let due = self.state.view.store.account(user).is_some_and(|a| {
            a.last_login
                .is_none_or(|l| now >= l + LOGIN_NOTE_EVERY_SECS)
        });
        if due {
            let change = AccountChange::LoggedIn {
                name: user.to_owned(),
                at: now,
            };
            if let Err(r) = self.change_account(change).await {
                tracing::debug!(status = %r.status(), "recording a sign-in failed");
            }
        }
    }

    pub(super) fn audit_login(&self, peer: SocketAddr, user: &str, via: Via, ok: bool, how: &str) {
        self.state.view.audit.record(&Event {
            event: if ok {
                "admin.login"
            } else {
                "admin.login_failed"
            },
            actor: Some("admin"),
            client_ip: Some(peer.ip().to_canonical()),
            reason: Some(how),
            user: Some(user),
            via: Some(via.as_str()),
            ..Default::default()
        });
    }

    /// After a verified OpenID login: makes or updates the account
    /// `username` (source `oidc`, its role as the provider's claims map
    /// it, replaced at each login), refuses a disabled one (403
    /// `account_disabled`), starts a session signed in `via: oidc`, and
    /// sends the browser to the page (303 to `/`).
    pub(crate) async fn sso_signed_in(
        &self,
        peer: SocketAddr,
        username: &str,
        role: Role,
    ) -> Reply {
        if let Err(text) = validate_account_name(username) {
            tracing::info!(%peer, "single sign-on refused: the user name claim is not an account name");
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("the identity provider's user name cannot be an account {text}"),
            );
        }
        let change = AccountChange::SignOn {
            name: username.to_owned(),
            role,
            now: self.state.view.clock.unix(),
        };
        let applied = match self.change_account(change).await {
            Ok(a) => a,
            Err(r) => {
                self.audit_login(peer, username, Via::Oidc, false, "single sign-on");
                return r;
            }
        };
        let role = applied.account.map_or(role, |a| a.role);
        let who = Who {
            user: username.to_owned(),
            role,
            via: Via::Oidc,
        };
        let (cookie, _csrf) = match self.start_session(&who).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        self.audit_login(peer, username, Via::Oidc, true, "single sign-on");
        tracing::info!(%peer, user = %username, role = %role, "signed in through single sign-on");
        let mut r = no_store(empty(StatusCode::SEE_OTHER));
        r.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/"));
        if let Ok(v) =
            HeaderValue::from_str(&session::set_cookie(&cookie, self.auth.sessions.ttl()))
        {
            r.headers_mut().insert(SET_COOKIE, v);
        }
        r
    }
}

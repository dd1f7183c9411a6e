//! PROVISIONAL: the session a verified single sign-on starts. The accounts
//! layer's `sso_signed_in` (which also records the `oidc` account and
//! refuses a disabled one) replaces this file; until then a sign-in starts
//! a page session for the person with the role their claims map to.

use std::net::SocketAddr;

use http::header::{HeaderValue, CACHE_CONTROL, LOCATION, SET_COOKIE};
use http::{Response, StatusCode};

use super::session;
use super::AdminHandler;
use crate::audit::Event;
use crate::roles::{Role, Via, Who};
use crate::wire::{error, full, Reply};

impl AdminHandler {
    /// Starts a page session for `username` with `role` (signed in with
    /// single sign-on), audits it and sends the browser to the page.
    pub(super) fn sso_signed_in(&self, peer: SocketAddr, username: &str, role: Role) -> Reply {
        let now = self.state.view.clock.now();
        let who = Who {
            user: username.to_owned(),
            role,
            via: Via::Oidc,
        };
        let (cookie, _csrf) = match self.auth.sessions.create(now, who) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "random generator failed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "try again",
                );
            }
        };
        self.state.view.audit.record(&Event {
            event: "admin.login",
            actor: Some(username),
            client_ip: Some(peer.ip().to_canonical()),
            reason: Some("oidc"),
            ..Default::default()
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SEE_OTHER;
        let h = r.headers_mut();
        h.insert(LOCATION, HeaderValue::from_static("/"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) =
            HeaderValue::from_str(&session::set_cookie(&cookie, self.auth.sessions.ttl()))
        {
            h.insert(SET_COOKIE, v);
        }
        r
    }
}

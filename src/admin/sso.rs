//! Single sign-on's endpoints on the admin listener, before any login:
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | /auth/oidc/info | 200 `{"display_name", "login_url"}` for the login form; 404 when not configured |
//! | GET | /auth/oidc/login | 303 to the identity provider, with the flow cookie |
//! | GET | /auth/oidc/callback | 303 to `/` with a session, or an HTML page saying why not |
//!
//! The protocol is `crate::sso`'s; this file maps its verdicts to answers,
//! audit lines and pages. Failures are pages, not JSON: a person's browser
//! lands here from the provider, not the page's script.

use std::net::SocketAddr;

use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION, SET_COOKIE, X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use super::AdminHandler;
use crate::audit::Event;
use crate::sso::{self, Failure, Sso};
use crate::wire::{error, full, json, method_not_allowed, no_store, Reply};

const INFO_PATH: &str = "/auth/oidc/info";
const LOGIN_PATH: &str = "/auth/oidc/login";

/// `GET /auth/oidc/info`: what the login form needs to offer the button.
#[derive(Debug, Serialize)]
pub(crate) struct SsoInfo<'a> {
    /// The button reads "Sign in with {display_name}".
    pub(crate) display_name: &'a str,
    pub(crate) login_url: &'static str,
}

/// The refusal page may style itself inline, and nothing else.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

impl AdminHandler {
    /// Answers `/auth/oidc/…`; `None` for every other path.
    pub(super) async fn sso_route(
        &self,
        peer: SocketAddr,
        req: &Request<Incoming>,
    ) -> Option<Reply> {
        let path = req.uri().path();
        if !matches!(path, INFO_PATH | LOGIN_PATH | sso::CALLBACK_PATH) {
            return None;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Some(method_not_allowed("GET, HEAD"));
        }
        // The local socket serves scripts, not browsers.
        let Some(sso) = self.sso.as_ref().filter(|_| !self.local) else {
            return Some(error(
                StatusCode::NOT_FOUND,
                "not_found",
                "single sign-on is not configured ([admin.oidc])",
            ));
        };
        Some(match path {
            INFO_PATH => no_store(json(
                StatusCode::OK,
                &SsoInfo {
                    display_name: sso.display_name(),
                    login_url: LOGIN_PATH,
                },
            )),
            LOGIN_PATH => self.sso_login(peer, sso, req),
            _ => self.sso_callback(peer, sso, req).await,
        })
    }

    fn sso_login(&self, peer: SocketAddr, sso: &Sso, req: &Request<Incoming>) -> Reply {
        match sso.begin(request_host(req).as_deref()) {
            Ok((location, cookie)) => {
                let (Ok(location), Ok(cookie)) = (
                    HeaderValue::from_str(&location),
                    HeaderValue::from_str(&sso::set_cookie(&cookie)),
                ) else {
                    // A URL and a base64url value: always valid header text.
                    return page(&Failure::Unreachable(
                        "the provider's authorization URL is not a valid address".into(),
                    ));
                };
                let mut r = Response::new(full(""));
                *r.status_mut() = StatusCode::SEE_OTHER;
                let h = r.headers_mut();
                h.insert(LOCATION, location);
                h.insert(SET_COOKIE, cookie);
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(f) => {
                tracing::info!(%peer, reason = %f.message(), "single sign-on could not start");
                page(&f)
            }
        }
    }

    async fn sso_callback(&self, peer: SocketAddr, sso: &Sso, req: &Request<Incoming>) -> Reply {
        let cookie = sso::cookie_value(req.headers());
        // Callbacks anyone can make up in bulk (no sign-in at the provider
        // behind them) count with failed password logins, per client: each
        // writes an audit line and may cost a request to the provider.
        let ip = peer.ip();
        let outcome = match self
            .state
            .passwords
            .throttle
            .check(ip, self.state.view.clock.now())
        {
            Ok(()) => sso.finish(req.uri().query(), cookie.as_deref()).await,
            Err(wait) => Err(Failure::Throttled(wait.as_secs().max(1))),
        };
        let mut r = match outcome {
            Ok(who) => {
                tracing::info!(%peer, user = %who.user, role = %who.role, "signed in with single sign-on");
                let r = self.sso_signed_in(peer, &who.user, who.role).await;
                if r.status().is_client_error() || r.status().is_server_error() {
                    // A person in a browser: the refusal as a page, not JSON.
                    page(&Failure::Account(refusal_text(r).await))
                } else {
                    r
                }
            }
            Err(f @ Failure::Throttled(_)) => page(&f),
            Err(f) => {
                if f.made_up() {
                    // Counted as one failed attempt (begun, never succeeded).
                    drop(
                        self.state
                            .passwords
                            .throttle
                            .begin(ip, self.state.view.clock.now()),
                    );
                }
                let reason = format!("oidc: {}", f.message());
                tracing::info!(%peer, reason = %reason, "single sign-on refused");
                self.state.view.audit.record(&Event {
                    event: "admin.login_failed",
                    actor: Some("admin"),
                    client_ip: Some(peer.ip().to_canonical()),
                    reason: Some(&reason),
                    user: f.user(),
                    via: Some(crate::roles::Via::Oidc.as_str()),
                    ..Default::default()
                });
                page(&f)
            }
        };
        // The sign-in is over either way: its cookie is spent.
        if let Ok(v) = HeaderValue::from_str(&sso::clear_cookie()) {
            r.headers_mut().append(SET_COOKIE, v);
        }
        r
    }
}

/// The request's `Host` (HTTP/1.1) or `:authority` (HTTP/2), if it is a
/// plain `host[:port]`: it becomes part of the redirect URL.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let value = match req.headers().get(HOST) {
        Some(h) => h.as_bytes().to_vec(),
        None => req.uri().authority()?.as_str().as_bytes().to_vec(),
    };
    if !crate::wire::host::is_valid_host(&value) {
        return None;
    }
    String::from_utf8(value).ok()
}

/// The `error_description` of a JSON refusal (the accounts layer's answer).
async fn refusal_text(r: Reply) -> String {
    use http_body_util::BodyExt;
    let bytes = match r.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(never) => match never {},
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error_description"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "the sign-in could not be completed; try again".into())
}

/// The page a person sees when a sign-in ends without a session.
fn page(f: &Failure) -> Reply {
    let status = StatusCode::from_u16(f.status()).unwrap_or(StatusCode::FORBIDDEN);
    let title = if status == StatusCode::FORBIDDEN {
        "Sign-in refused"
    } else {
        "Sign-in failed"
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - tokengate</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
         h1{{font-size:1.4rem}}p.why{{background:#fbeaea;border-left:4px solid #b00;padding:.75rem}}</style></head>\
         <body><main><h1 id=\"sso-refused\">{title}</h1><p class=\"why\" id=\"sso-reason\">{}</p>\
         <p><a href=\"/\">Back to the sign-in page</a></p></main></body></html>\n",
        escape(&sentence(&f.message()))
    );
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// A message as a sentence on its own: its first letter capital.
fn sentence(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Text into HTML: the message may quote what the provider sent.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"
        );
    }
}

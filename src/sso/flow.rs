//! The sign-in in progress, kept in the browser between the redirect to
//! the provider and its redirect back: `__Host-tg_oidc`, holding `state`,
//! `nonce`, the PKCE verifier and the redirect URL, with an HMAC-SHA256 tag
//! under a key derived from the server secret. Nothing is kept on the
//! server, so the callback works on whichever replica it reaches.
//!
//! SameSite=Lax (not Strict, as the session cookie is): the provider's
//! redirect back is a cross-site top-level navigation, on which a Strict
//! cookie would not be sent. It lives ten minutes and is cleared by the
//! callback whatever the outcome.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub(crate) const COOKIE: &str = "__Host-tg_oidc";
/// Time to sign in at the provider (a password, maybe a second factor).
pub(crate) const FLOW_TTL_SECS: u64 = 600;
/// The cookie's key is HMAC(server secret, this label): one key, one
/// purpose (the secret also keys refresh-token hashes). Versioned so the
/// derivation can change.
const KEY_LABEL: &[u8] = b"tokengate/oidc-flow-cookie/v1";
/// Far above what the four values need; a larger cookie is not ours.
const MAX_COOKIE: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Flow {
    pub(crate) state: String,
    pub(crate) nonce: String,
    pub(crate) verifier: String,
    pub(crate) redirect: String,
    /// Unix seconds.
    pub(crate) expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FlowError {
    #[error(
        "the sign-in cookie is missing (cookies blocked, or the sign-in was started elsewhere)"
    )]
    Missing,
    #[error("the sign-in cookie was altered")]
    Tampered,
    #[error("the sign-in took longer than ten minutes")]
    Expired,
}

pub(crate) struct FlowKey(Hmac<Sha256>);

impl FlowKey {
    pub(crate) fn derive(secret: &[u8]) -> FlowKey {
        // HMAC takes keys of any length: neither call can fail.
        let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        m.update(KEY_LABEL);
        let key = m.finalize().into_bytes();
        FlowKey(Hmac::new_from_slice(&key).unwrap_or_else(|_| unreachable!()))
    }

    /// `base64url(JSON).base64url(tag)`.
    pub(crate) fn seal(&self, flow: &Flow) -> String {
        // Serialising a struct of strings and a number cannot fail.
        let payload = serde_json::to_vec(flow).unwrap_or_default();
        let mut m = self.0.clone();
        m.update(&payload);
        let tag = m.finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The flow, if the tag is ours (compared in constant time) and it has
    /// not expired.
    pub(crate) fn open(&self, value: Option<&str>, now: u64) -> Result<Flow, FlowError> {
        let value = value.ok_or(FlowError::Missing)?;
        if value.len() > MAX_COOKIE {
            return Err(FlowError::Tampered);
        }
        let (payload, tag) = value.split_once('.').ok_or(FlowError::Tampered)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| FlowError::Tampered)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| FlowError::Tampered)?;
        let mut m = self.0.clone();
        m.update(&payload);
        m.verify_slice(&tag).map_err(|_| FlowError::Tampered)?;
        let flow: Flow = serde_json::from_slice(&payload).map_err(|_| FlowError::Tampered)?;
        if now >= flow.expires {
            return Err(FlowError::Expired);
        }
        Ok(flow)
    }
}

/// The flow cookie's value among the request's `Cookie` headers.
pub(crate) fn cookie_value(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

pub(crate) fn set_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; Path=/; Max-Age={FLOW_TTL_SECS}; HttpOnly; Secure; SameSite=Lax")
}

pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(expires: u64) -> Flow {
        Flow {
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            redirect: "https://gw/auth/oidc/callback".into(),
            expires,
        }
    }

    #[test]
    fn sealed_opens_only_with_its_key_unaltered_and_in_time() {
        let key = FlowKey::derive(b"secret");
        let sealed = key.seal(&flow(100));
        let f = key.open(Some(&sealed), 99).unwrap();
        assert_eq!((f.state.as_str(), f.nonce.as_str()), ("s", "n"));
        assert_eq!(
            key.open(Some(&sealed), 100).unwrap_err(),
            FlowError::Expired
        );
        assert_eq!(
            FlowKey::derive(b"other")
                .open(Some(&sealed), 1)
                .unwrap_err(),
            FlowError::Tampered
        );
        // Another payload under the old tag.
        let (_, tag) = sealed.split_once('.').unwrap();
        let forged = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(br#"{"state":"x"}"#));
        assert_eq!(key.open(Some(&forged), 1).unwrap_err(), FlowError::Tampered);
        assert_eq!(key.open(None, 1).unwrap_err(), FlowError::Missing);
        assert_eq!(
            key.open(Some("garbage"), 1).unwrap_err(),
            FlowError::Tampered
        );
    }
}

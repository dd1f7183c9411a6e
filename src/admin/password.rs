//! Admin authentication: HTTP Basic, user `admin`.
//!
//! argon2 is slow on purpose, so it runs on the blocking pool, at most two at a
//! time (a password-guessing client cannot eat the CPU), and a verified
//! password is remembered as an HMAC so later requests cost microseconds.

use std::sync::RwLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::secrets::AdminCredential;

pub(crate) const ADMIN_USER: &str = "admin";
/// Concurrent argon2 verifications.
const ARGON_SLOTS: usize = 2;
/// The fingerprint key is HMAC(server secret, this label), never the raw
/// secret: the secret also keys the refresh-token hashes, and one key should
/// serve one purpose, so a fingerprint can never be confused with (or help
/// compute) a stored token hash. Versioned so the derivation can change.
const FINGERPRINT_LABEL: &[u8] = b"tokengate/admin-password-fingerprint/v1";

pub struct AdminAuth {
    credential: AdminCredential,
    /// Web-page login sessions.
    pub sessions: super::session::Sessions,
    /// Failed-login slow-down, per client IP (page logins and HTTP Basic alike).
    pub throttle: super::session::Throttle,
    /// Keyed with a key derived from the server secret (see
    /// [`FINGERPRINT_LABEL`]); fingerprints passwords in memory only.
    mac: Hmac<Sha256>,
    /// Fingerprint of the last password that passed argon2.
    verified: RwLock<Option<[u8; 32]>>,
    argon_slots: Semaphore,
}

impl AdminAuth {
    pub fn new(
        credential: AdminCredential,
        secret: &[u8],
        session_ttl: std::time::Duration,
    ) -> AdminAuth {
        AdminAuth {
            credential,
            sessions: super::session::Sessions::new(session_ttl),
            throttle: super::session::Throttle::default(),
            mac: Hmac::new_from_slice(&fingerprint_key(secret)).unwrap_or_else(|_| unreachable!()),
            verified: RwLock::new(None),
            argon_slots: Semaphore::new(ARGON_SLOTS),
        }
    }

    fn fingerprint(&self, password: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(password);
        m.finalize().into_bytes().into()
    }

    /// Checks an `Authorization` header value. Constant-time in the secret parts.
    pub async fn check(&self, header: Option<&[u8]>) -> bool {
        let Some((user, password)) = header.and_then(parse_basic) else {
            return false;
        };
        self.verify(&user, password).await
    }

    /// Checks a user name and password.
    pub async fn verify(&self, user: &str, password: String) -> bool {
        let user_ok: bool = user.as_bytes().ct_eq(ADMIN_USER.as_bytes()).into();
        let fp = self.fingerprint(password.as_bytes());
        let password_ok = match &self.credential {
            AdminCredential::Plain(expected) => {
                bool::from(self.fingerprint(expected.as_bytes()).ct_eq(&fp))
            }
            AdminCredential::Hash(phc) => {
                let cached = *self.verified.read().unwrap_or_else(|p| p.into_inner());
                if cached.is_some_and(|c| bool::from(c.ct_eq(&fp))) {
                    true
                } else {
                    let Ok(_slot) = self.argon_slots.acquire().await else {
                        return false;
                    };
                    let phc = phc.clone();
                    let ok = tokio::task::spawn_blocking(move || verify_argon2(&phc, &password))
                        .await
                        .unwrap_or(false);
                    if ok {
                        *self.verified.write().unwrap_or_else(|p| p.into_inner()) = Some(fp);
                    }
                    ok
                }
            }
        };
        user_ok & password_ok
    }
}

/// HMAC(secret, [`FINGERPRINT_LABEL`]). HMAC takes a key of any length, so
/// neither `new_from_slice` can fail.
fn fingerprint_key(secret: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(FINGERPRINT_LABEL);
    m.finalize().into_bytes().into()
}

fn verify_argon2(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// `Basic base64(user:password)` → (user, password). Scheme in any case.
pub(crate) fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let v = value.trim_ascii();
    let space = v.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = v.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim_ascii()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pw: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(format!("{user}:{pw}"))).into_bytes()
    }

    #[test]
    fn parses_basic() {
        assert_eq!(
            parse_basic(&basic("admin", "p:w")),
            Some(("admin".into(), "p:w".into()))
        );
        assert_eq!(
            parse_basic(b"basic YWRtaW46eA=="),
            Some(("admin".into(), "x".into()))
        );
        assert_eq!(parse_basic(b"Bearer x"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        assert_eq!(parse_basic(b"Basic"), None);
    }

    #[test]
    fn the_fingerprint_key_is_derived_not_the_raw_secret() {
        let secret = [7u8; 32];
        let auth = AdminAuth::new(
            AdminCredential::Plain("pw".into()),
            &secret,
            std::time::Duration::from_secs(60),
        );
        let mac = |key: &[u8], msg: &[u8]| -> [u8; 32] {
            let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
            m.update(msg);
            m.finalize().into_bytes().into()
        };
        let derived = mac(&secret, b"tokengate/admin-password-fingerprint/v1");
        assert_eq!(auth.fingerprint(b"pw"), mac(&derived, b"pw"));
        assert_ne!(auth.fingerprint(b"pw"), mac(&secret, b"pw"));
    }

    #[tokio::test]
    async fn plain_and_hashed_credentials() {
        let ttl = std::time::Duration::from_secs(60);
        let plain = AdminAuth::new(AdminCredential::Plain("s3cret".into()), b"k", ttl);
        assert!(plain.check(Some(&basic("admin", "s3cret"))).await);
        assert!(!plain.check(Some(&basic("admin", "wrong"))).await);
        assert!(!plain.check(Some(&basic("root", "s3cret"))).await);
        assert!(!plain.check(None).await);

        let phc = crate::secrets::hash_password("hunter2").unwrap();
        let hashed = AdminAuth::new(AdminCredential::Hash(phc), b"k", ttl);
        assert!(!hashed.check(Some(&basic("admin", "hunter3"))).await);
        assert!(hashed.check(Some(&basic("admin", "hunter2"))).await);
        // Second time through the remembered fingerprint.
        assert!(hashed.check(Some(&basic("admin", "hunter2"))).await);
        assert!(!hashed.check(Some(&basic("admin", "hunter3"))).await);
    }
}

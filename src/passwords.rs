//! The admin accounts' password check, wherever a password is shown: the
//! admin listener (HTTP Basic, the page's login form) and the public
//! listener's introspection endpoint (HTTP Basic). The account `admin` has
//! the configured password; every other local account its own argon2 hash.
//! Each attempt is throttled per client and per account name before a hash
//! is computed, and a disabled account is refused like a wrong password.
//!
//! argon2 is slow on purpose, so it runs on the blocking pool, at most two at a
//! time (a password-guessing client cannot eat the CPU), and a verified
//! password is remembered, per account, as an HMAC so later requests cost
//! microseconds. A name with no password (unknown, or a single-sign-on
//! account) costs the same argon2 work as a wrong password, so timing does
//! not tell which names exist.

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::roles::{Role, Via, Who};
use crate::secrets::AdminCredential;
use crate::store::{AccountRecord, RefreshStore};
use crate::throttle::LoginThrottle;

pub(crate) const ADMIN_USER: &str = crate::store::BOOTSTRAP;
/// Concurrent argon2 verifications.
const ARGON_SLOTS: usize = 2;
/// The fingerprint key is HMAC(server secret, this label), never the raw
/// secret: the secret also keys the refresh-token hashes, and one key should
/// serve one purpose, so a fingerprint can never be confused with (or help
/// compute) a stored token hash. Versioned so the derivation can change.
const FINGERPRINT_LABEL: &[u8] = b"tokengate/admin-password-fingerprint/v1";

/// Why a password check let nobody in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginRefused {
    /// Too many failures from this client: it must wait this long (a 429).
    Throttled(Duration),
    /// Too many failures for this account name, from any client: a 401
    /// saying so. Not a 429: the client did nothing wrong itself, and an
    /// unknown name locks out exactly like an account, so the answer tells
    /// no one which names exist.
    AccountLocked(Duration),
    /// A wrong name or password, or a disabled account.
    Wrong,
}

pub struct Passwords {
    credential: AdminCredential,
    /// Failed-login slow-down, per client IP (page logins, HTTP Basic and
    /// introspection alike).
    pub(crate) throttle: LoginThrottle,
    /// The same slow-down per account name, whichever client guesses:
    /// many addresses guessing one account's password are held back too.
    account_throttle: LoginThrottle,
    /// The same per account for the public listener's introspection, kept
    /// apart: anyone on the internet can send it guesses, and those must
    /// never lock an account out of the admin listener.
    public_account_throttle: LoginThrottle,
    /// Seeds the account names' keys in `account_throttle` (drawn at start,
    /// so nobody can choose names that collide).
    name_keys: std::collections::hash_map::RandomState,
    /// Keyed with a key derived from the server secret (see
    /// [`FINGERPRINT_LABEL`]); fingerprints passwords in memory only.
    mac: Hmac<Sha256>,
    /// Fingerprint of the last password that passed argon2 for the
    /// bootstrap account's configured hash.
    verified: RwLock<Option<[u8; 32]>>,
    /// Per account: the PHC string that passed and the password's
    /// fingerprint. A new password (another PHC) misses, so a changed
    /// password is never served from here; one entry per account at most.
    accounts_verified: DashMap<String, (String, [u8; 32])>,
    /// What a name without a password is checked against: the same argon2
    /// work as a real account's. Made at the first such check (hashing costs
    /// what a check costs, so that one takes as long too), not at start.
    decoy: std::sync::OnceLock<Option<String>>,
    argon_slots: Semaphore,
}

impl Passwords {
    pub fn new(credential: AdminCredential, secret: &[u8]) -> Passwords {
        Passwords {
            credential,
            throttle: LoginThrottle::default(),
            account_throttle: LoginThrottle::default(),
            public_account_throttle: LoginThrottle::default(),
            name_keys: std::collections::hash_map::RandomState::new(),
            mac: Hmac::new_from_slice(&fingerprint_key(secret)).unwrap_or_else(|_| unreachable!()),
            verified: RwLock::new(None),
            accounts_verified: DashMap::new(),
            decoy: std::sync::OnceLock::new(),
            argon_slots: Semaphore::new(ARGON_SLOTS),
        }
    }

    /// Checks `user`'s `password` for a client at `ip`: throttled per
    /// client and per account (each attempt counted before the hash is
    /// computed, given back if it succeeds); an account that is disabled,
    /// unknown or without a password is refused as a wrong password is, so
    /// nothing tells a guesser that the password was right. The account's
    /// current role on success.
    pub(crate) async fn sign_in(
        &self,
        store: &RefreshStore,
        ip: IpAddr,
        user: &str,
        password: String,
        now: Instant,
        from: Listener,
    ) -> Result<Who, LoginRefused> {
        let client = self
            .throttle
            .begin(ip, now)
            .map_err(LoginRefused::Throttled)?;
        let accounts = match from {
            Listener::Admin => &self.account_throttle,
            Listener::Public => &self.public_account_throttle,
        };
        let per_account = match accounts.begin(self.account_key(user), now) {
            Ok(a) => a,
            Err(wait) => {
                // Not this client's failure: nothing was checked.
                client.cancel();
                return Err(LoginRefused::AccountLocked(wait));
            }
        };
        let account = store.account(user);
        let password_ok = self
            .verify_account(user, account.as_deref(), password)
            .await;
        match current_role(account).filter(|_| password_ok) {
            Some(role) => {
                client.succeeded();
                per_account.succeeded();
                Ok(Who {
                    user: user.to_owned(),
                    role,
                    via: Via::Password,
                })
            }
            None => Err(LoginRefused::Wrong),
        }
    }

    /// Forgets clients and account names whose failures are long past.
    pub(crate) fn sweep(&self, now: Instant) {
        self.throttle.sweep(now);
        self.account_throttle.sweep(now);
        self.public_account_throttle.sweep(now);
    }

    /// The account throttle's key for `name`: an address no client has (a
    /// keyed hash of the name as the top of an IPv6 /64), in a table of its own.
    fn account_key(&self, name: &str) -> IpAddr {
        let h = self.name_keys.hash_one(name);
        IpAddr::V6(Ipv6Addr::from(u128::from(h) << 64))
    }

    /// Checks `password` for the account `user` (`account`: as stored, if
    /// any). The bootstrap account's password is the configured one; a
    /// local account's its own hash; anything else (no such account, a
    /// single-sign-on account) is checked against a decoy hash and fails.
    /// Whether the account is enabled is the caller's to check.
    pub(crate) async fn verify_account(
        &self,
        user: &str,
        account: Option<&AccountRecord>,
        password: String,
    ) -> bool {
        if user == ADMIN_USER {
            return self.verify(user, password).await;
        }
        let fp = self.fingerprint(password.as_bytes());
        let Some(phc) = account.and_then(|a| a.password_hash.clone()) else {
            // The same work as a real check, for the same answer time.
            match self.decoy.get() {
                Some(Some(decoy)) => {
                    let _ = self.argon2(decoy.clone(), password).await;
                }
                Some(None) => {}
                None => {
                    let made = tokio::task::spawn_blocking(decoy_hash).await.ok().flatten();
                    let _ = self.decoy.set(made);
                }
            }
            return false;
        };
        if let Some(hit) = self.accounts_verified.get(user) {
            let (cached_phc, cached_fp) = hit.value();
            if *cached_phc == phc && bool::from(cached_fp.ct_eq(&fp)) {
                return true;
            }
        }
        let ok = self.argon2(phc.clone(), password).await;
        if ok {
            self.accounts_verified.insert(user.to_owned(), (phc, fp));
        } else {
            // A stale entry (an old password) goes at the first miss.
            self.accounts_verified.remove(user);
        }
        ok
    }

    /// Forgets what was verified for `user` (its password changed, or it is gone).
    pub(crate) fn forget(&self, user: &str) {
        self.accounts_verified.remove(user);
    }

    /// One argon2 verification on the blocking pool, at most `ARGON_SLOTS` at once.
    async fn argon2(&self, phc: String, password: String) -> bool {
        let Ok(_slot) = self.argon_slots.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || verify_argon2(&phc, &password))
            .await
            .unwrap_or(false)
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
                    let ok = self.argon2(phc.clone(), password).await;
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

/// A hash of a random password nobody knows, with the same parameters as
/// every account's: checking a password against it costs what a real
/// check costs.
fn decoy_hash() -> Option<String> {
    let password = crate::secrets::generate_password().ok()?;
    crate::secrets::hash_password(&password).ok()
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

/// The role an account may act with now: none for a disabled or deleted one.
pub(crate) fn current_role(account: Option<std::sync::Arc<AccountRecord>>) -> Option<Role> {
    account.filter(|a| !a.disabled).map(|a| a.role)
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

/// Which listener a password arrived on: each keeps its own per-account
/// count of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The admin listener: the page's login and HTTP Basic.
    Admin,
    /// The public listener: HTTP Basic at `POST /token/introspect`.
    Public,
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
        let auth = Passwords::new(AdminCredential::Plain("pw".into()), &secret);
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
        let plain = Passwords::new(AdminCredential::Plain("s3cret".into()), b"k");
        assert!(plain.check(Some(&basic("admin", "s3cret"))).await);
        assert!(!plain.check(Some(&basic("admin", "wrong"))).await);
        assert!(!plain.check(Some(&basic("root", "s3cret"))).await);
        assert!(!plain.check(None).await);

        let phc = crate::secrets::hash_password("hunter2").unwrap();
        let hashed = Passwords::new(AdminCredential::Hash(phc), b"k");
        assert!(!hashed.check(Some(&basic("admin", "hunter3"))).await);
        assert!(hashed.check(Some(&basic("admin", "hunter2"))).await);
        // Second time through the remembered fingerprint.
        assert!(hashed.check(Some(&basic("admin", "hunter2"))).await);
        assert!(!hashed.check(Some(&basic("admin", "hunter3"))).await);
    }
}

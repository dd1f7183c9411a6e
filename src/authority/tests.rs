//! Verdicts of the core, without sockets or a database: a redb store in a
//! temporary directory, access tokens in memory, and (for cluster mode) a
//! stand-in that says whether this replica is fresh and what a catch-up
//! brings.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;

use super::*;
use crate::restrict::{Refused, RestrictionSpec};
use crate::store::RefreshToken;
use crate::tokens::access::AccessError;
use crate::tokens::exchange::{Client, ExchangeError, Issued, RefreshGrant};
use crate::tokens::format::{new_refresh_token, parse_refresh};

const CLIENT: &str = "198.51.100.7";

/// Cluster mode without a database: `fresh` and `connected` as set, and a
/// catch-up that runs `on_catch_up` (what the round would apply) unless
/// the database is "away".
#[derive(Default)]
struct Standin {
    stale: AtomicBool,
    away: AtomicBool,
    on_catch_up: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Freshness for Standin {
    fn fresh(&self) -> bool {
        !self.stale.load(Ordering::Relaxed)
    }
    fn connected(&self) -> bool {
        self.fresh()
    }
    fn catch_up(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if self.away.load(Ordering::Relaxed) {
                return false;
            }
            if let Some(apply) = self.on_catch_up.lock().unwrap().take() {
                apply();
            }
            true
        })
    }
}

struct Fixture {
    core: Authority,
    _dir: tempfile::TempDir,
}

fn fixture(budget: u32, cluster: Option<Arc<Standin>>) -> Fixture {
    fixture_keyed(
        budget,
        cluster,
        AccessTokens::keyed(b"secret", 100).unwrap(),
    )
}

fn fixture_keyed(budget: u32, cluster: Option<Arc<Standin>>, access: AccessTokens) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RefreshStore::open(&dir.path().join("t.redb")).unwrap());
    let clock = Clock::new();
    Fixture {
        core: Authority {
            hasher: RefreshHasher::new(b"secret"),
            store,
            access: Arc::new(access),
            throttle: AuthThrottle::new(budget, clock.now()),
            audit: Arc::new(Audit::off()),
            cluster: cluster.map(|c| c as Arc<dyn Freshness>),
            access_ttl: Duration::from_secs(900),
            clock,
        },
        _dir: dir,
    }
}

impl Fixture {
    /// A refresh token (restricted by `spec`) and its string.
    fn refresh(&self, spec: serde_json::Value) -> (Arc<RefreshToken>, String) {
        let secret = new_refresh_token().unwrap();
        let hash = self.core.hasher.hash(&parse_refresh(&secret).unwrap());
        let spec: RestrictionSpec = serde_json::from_value(spec).unwrap();
        let now = self.core.clock.unix();
        let t = self
            .core
            .store
            .create_restricted(hash, "t", now, Some(now + 3600), Some(&spec))
            .unwrap();
        (t, secret)
    }

    /// An access token for `refresh`, as an exchange mints it.
    fn access(&self, refresh: &Arc<RefreshToken>) -> String {
        let c = &self.core;
        c.access
            .issue_at(refresh.clone(), c.access_ttl, c.clock.now(), c.clock.unix())
            .unwrap()
    }

    fn presented<'a>(&self, bearer: &'a str, method: &'a Method, path: &'a str) -> Presented<'a> {
        Presented {
            bearer: Ok(bearer.as_bytes()),
            client: CLIENT.parse().unwrap(),
            method,
            path,
            now: self.core.now(),
        }
    }

    /// The verdict on a GET of `path`, caught up if it asks to be.
    fn verify(&self, bearer: &str, path: &str) -> Result<u64, Refusal> {
        self.verify_as(bearer, &Method::GET, path)
    }

    fn verify_as(&self, bearer: &str, method: &Method, path: &str) -> Result<u64, Refusal> {
        let p = self.presented(bearer, method, path);
        let mut id = |r: &RefreshToken| r.id;
        match self.core.verify(&p, &mut id) {
            Verdict::Admitted(id) => Ok(id),
            Verdict::Refused(r) => Err(r),
            Verdict::CatchUp(c) => block_on(self.core.verify_caught_up(c, &p, &mut id)),
        }
    }

    fn exchange(&self, token: &str) -> Result<Issued, ExchangeRefusal> {
        let grant = RefreshGrant {
            refresh_token: token,
        };
        let client = Client {
            ip: Some(CLIENT.parse().unwrap()),
            user_agent: None,
        };
        block_on(self.core.exchange(grant, client, self.core.now()))
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// The token with one character changed: its MAC (or its shape) fails.
fn forged(token: &str) -> String {
    let mut t = token.to_owned();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

#[test]
fn a_good_token_is_admitted_with_what_on_token_made_of_it() {
    let f = fixture(10, None);
    let (r, _) = f.refresh(serde_json::json!({}));
    let t = f.access(&r);
    assert_eq!(f.verify(&t, "/anything"), Ok(r.id));
}

#[test]
fn refusals_of_the_token_itself() {
    let f = fixture(100, None);
    let (r, _) = f.refresh(serde_json::json!({}));
    let t = f.access(&r);
    assert!(matches!(
        f.verify(&forged(&t), "/"),
        Err(Refusal::Token(AccessError::Forged | AccessError::Malformed))
    ));
    assert_eq!(
        f.verify("not a token", "/"),
        Err(Refusal::Token(AccessError::Malformed))
    );
    // Another process's token (a restart): not known here, and no cluster
    // to ask.
    let other = AccessTokens::keyed(b"secret", 10).unwrap();
    let old = other
        .issue_at(
            r.clone(),
            Duration::from_secs(60),
            f.core.now(),
            f.core.clock.unix(),
        )
        .unwrap();
    assert_eq!(
        f.verify(&old, "/"),
        Err(Refusal::Token(AccessError::UnknownBoot))
    );
    // Expired.
    f.core.clock.advance(Duration::from_secs(901));
    assert_eq!(f.verify(&t, "/"), Err(Refusal::Token(AccessError::Expired)));
}

#[test]
fn a_deleted_refresh_tokens_access_tokens_are_refused() {
    let f = fixture(10, None);
    let (r, _) = f.refresh(serde_json::json!({}));
    let t = f.access(&r);
    f.core.store.delete(&[r.id]).unwrap();
    assert!(matches!(
        f.verify(&t, "/"),
        Err(Refusal::Token(
            AccessError::RefreshGone | AccessError::Unknown
        ))
    ));
}

#[test]
fn a_missing_bearer_is_refused_as_such() {
    let f = fixture(10, None);
    let m = Method::GET;
    let mut p = f.presented("", &m, "/");
    p.bearer = Err(BearerError::Scheme);
    let mut id = |r: &RefreshToken| r.id;
    assert!(matches!(
        f.core.verify(&p, &mut id),
        Verdict::Refused(Refusal::Bearer(BearerError::Scheme))
    ));
}

#[test]
fn guesses_use_up_the_budget_then_nothing_is_checked() {
    let f = fixture(3, None);
    let (r, _) = f.refresh(serde_json::json!({}));
    let t = f.access(&r);
    for _ in 0..3 {
        assert!(matches!(
            f.verify(&forged(&t), "/"),
            Err(Refusal::Token(AccessError::Forged | AccessError::Malformed))
        ));
    }
    let checks = f.core.access.refused_checks();
    // Over the budget: refused before the MAC, good token or not.
    assert!(matches!(f.verify(&t, "/"), Err(Refusal::Throttled(_))));
    assert_eq!(f.core.access.refused_checks(), checks);
    // Another client is not affected.
    let m = Method::GET;
    let mut p = f.presented(&t, &m, "/");
    p.client = "203.0.113.9".parse::<IpAddr>().unwrap();
    assert!(matches!(
        f.core.verify(&p, &mut |r: &RefreshToken| r.id),
        Verdict::Admitted(_)
    ));
}

#[test]
fn a_genuine_token_refused_is_no_guess() {
    let f = fixture(1, None);
    let (r, _) = f.refresh(serde_json::json!({}));
    let t = f.access(&r);
    f.core.clock.advance(Duration::from_secs(901));
    for _ in 0..3 {
        assert_eq!(f.verify(&t, "/"), Err(Refusal::Token(AccessError::Expired)));
    }
}

#[test]
fn restrictions_refuse_with_their_reason() {
    let f = fixture(10, None);
    let (r, _) = f.refresh(serde_json::json!({
        "scopes": [{"methods": ["GET"], "path": "/api/**"}],
        "rate_limit": {"per_second": 1, "burst": 1},
    }));
    let t = f.access(&r);
    let scope = Refusal::Restricted {
        refused: Refused::Scope,
        token_id: r.id,
    };
    assert_eq!(f.verify_as(&t, &Method::DELETE, "/api/x"), Err(scope));
    assert_eq!(f.verify(&t, "/admin"), Err(scope));
    // A refused request took none of the rate.
    assert_eq!(f.verify(&t, "/api/x"), Ok(r.id));
    assert!(matches!(
        f.verify(&t, "/api/x"),
        Err(Refusal::Restricted {
            refused: Refused::Rate(_),
            ..
        })
    ));
    let (n, _) = f.refresh(serde_json::json!({"networks": ["10.0.0.0/8"]}));
    let t = f.access(&n);
    assert_eq!(
        f.verify(&t, "/"),
        Err(Refusal::Restricted {
            refused: Refused::Network,
            token_id: n.id,
        })
    );
}

#[test]
fn a_stale_replica_vouches_for_no_token() {
    let cluster = Arc::new(Standin::default());
    let f = fixture(10, Some(cluster.clone()));
    let (r, secret) = f.refresh(serde_json::json!({}));
    let t = f.access(&r);
    cluster.stale.store(true, Ordering::Relaxed);
    assert_eq!(f.verify(&t, "/"), Err(Refusal::Stale));
    assert!(matches!(f.exchange(&secret), Err(ExchangeRefusal::Stale)));
    cluster.stale.store(false, Ordering::Relaxed);
    assert_eq!(f.verify(&t, "/"), Ok(r.id));
}

#[test]
fn a_peers_token_is_admitted_once_caught_up() {
    let cluster = Arc::new(Standin::default());
    let f = fixture(10, Some(cluster.clone()));
    let (r, _) = f.refresh(serde_json::json!({}));
    // A peer that started a moment ago, under the same server secret.
    let peer = Arc::new(AccessTokens::keyed(b"secret", 10).unwrap());
    let t = peer
        .issue_at(
            r.clone(),
            Duration::from_secs(60),
            f.core.now(),
            f.core.clock.unix(),
        )
        .unwrap();
    // The database is away: not known to be bad, so 503, not 401.
    cluster.away.store(true, Ordering::Relaxed);
    assert_eq!(f.verify(&t, "/"), Err(Refusal::Stale));
    // Back: the catch-up registers the peer's boot, and the token passes.
    cluster.away.store(false, Ordering::Relaxed);
    let (access, seed) = (f.core.access.clone(), peer.own_boot());
    *cluster.on_catch_up.lock().unwrap() = Some(Box::new(move || {
        access.set_peers(&[seed], &[]);
    }));
    assert_eq!(f.verify(&t, "/"), Ok(r.id));
}

#[test]
fn a_boot_still_unknown_after_a_catch_up_counts_as_a_guess() {
    let cluster = Arc::new(Standin::default());
    let f = fixture(2, Some(cluster));
    let (r, _) = f.refresh(serde_json::json!({}));
    let never = AccessTokens::keyed(b"secret", 10).unwrap();
    let t = never
        .issue_at(
            r.clone(),
            Duration::from_secs(60),
            f.core.now(),
            f.core.clock.unix(),
        )
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            f.verify(&t, "/"),
            Err(Refusal::Token(AccessError::UnknownBoot))
        );
    }
    assert!(matches!(f.verify(&t, "/"), Err(Refusal::Throttled(_))));
}

#[test]
fn exchanges_count_unknown_grants_and_catch_up_first() {
    let cluster = Arc::new(Standin::default());
    let f = fixture(2, Some(cluster.clone()));
    let (_, secret) = f.refresh(serde_json::json!({}));
    let issued = f.exchange(&secret).unwrap();
    assert_eq!(issued.expires_in, 900);
    // Created on another replica a moment ago: found after the catch-up.
    let late = new_refresh_token().unwrap();
    let hash = f.core.hasher.hash(&parse_refresh(&late).unwrap());
    let (store, now) = (f.core.store.clone(), f.core.clock.unix());
    *cluster.on_catch_up.lock().unwrap() = Some(Box::new(move || {
        store.create(hash, "late", now, None).unwrap();
    }));
    assert!(f.exchange(&late).is_ok());
    // Unknown everywhere: refused and counted, until the budget is spent.
    let unknown = new_refresh_token().unwrap();
    for _ in 0..2 {
        assert!(matches!(
            f.exchange(&unknown),
            Err(ExchangeRefusal::Refused(ExchangeError::NotValid))
        ));
    }
    let ip = CLIENT.parse().unwrap();
    assert!(f.core.admit_client(ip, f.core.now()).is_err());
}

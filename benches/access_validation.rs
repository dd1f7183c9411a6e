//! Access-token validation, the check every proxied request pays:
//! valid, expired, unknown (a genuine token no longer live: its refresh token
//! was deleted), minted by an earlier process (restart), forged (bad MAC) and
//! malformed tokens, at 1 thousand, 100 thousand and 1 million live tokens.
//! Then (issue 13) validation plus the checks of a restricted token (three
//! scope rules, two networks, a rate limit, all passed, the rate's CAS
//! included) and the same path for an unrestricted token, at 1 million.
//!
//! Run: `cargo bench --bench access_validation` (only the restriction
//! cases: `cargo bench --bench access_validation -- restrict`)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up: a panic is a failed run"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tokengate::benching::restrictions_admit;
use tokengate::{AccessTokens, RateLimit, RefreshToken, RestrictionSpec, ScopeRule};

fn refresh() -> Arc<RefreshToken> {
    Arc::new(RefreshToken::detached(1, "bench", None))
}

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("access_validation");
    for live in [1_000usize, 100_000, 1_000_000] {
        // One refresh token issues them all: its cap must not evict any
        // (`AccessTokens::new` keeps 1000 per refresh token).
        let tokens = AccessTokens::with_limit(live + 16).unwrap();
        let r = refresh();
        let now = Instant::now();
        let mut valid = String::new();
        for _ in 0..live {
            valid = tokens
                .issue(r.clone(), Duration::from_secs(900), now)
                .unwrap();
        }
        assert_eq!(tokens.len(), live, "every token live");
        let expired = tokens
            .issue(r.clone(), Duration::from_secs(1), now)
            .unwrap();
        // Genuine (right nonce, valid MAC) but gone from the map: its refresh
        // token was deleted. The dearest refusal: MAC check plus a lookup miss.
        let unknown = tokens
            .issue(
                Arc::new(RefreshToken::detached(2, "deleted", None)),
                Duration::from_secs(900),
                now,
            )
            .unwrap();
        assert_eq!(tokens.revoke_refresh(&[2]), 1);
        // Minted by another process (another boot nonce).
        let other = AccessTokens::new().unwrap();
        let earlier_boot = other
            .issue(r.clone(), Duration::from_secs(900), now)
            .unwrap();
        // Right boot nonce, tampered MAC tag.
        let mut forged = valid.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let later = now + Duration::from_secs(10);
        let wall = 1_800_000_000;

        let cases: [(&str, &[u8]); 6] = [
            ("valid", valid.as_bytes()),
            ("expired", expired.as_bytes()),
            ("unknown", unknown.as_bytes()),
            ("earlier_boot", earlier_boot.as_bytes()),
            ("forged", forged.as_bytes()),
            ("malformed", b"tga_this-is-not-a-token"),
        ];
        for (name, token) in cases {
            group.bench_with_input(BenchmarkId::new(name, live), &token, |b, t| {
                b.iter(|| black_box(tokens.validate(black_box(t), later, wall, |r| r.id)))
            });
        }
        // Sanity: the cases are what they claim.
        assert!(tokens
            .validate(valid.as_bytes(), later, wall, |_| ())
            .is_ok());
        assert!(tokens
            .validate(expired.as_bytes(), later, wall, |_| ())
            .is_err());
        assert!(tokens
            .validate(forged.as_bytes(), later, wall, |_| ())
            .is_err());
        assert!(tokens
            .validate(unknown.as_bytes(), later, wall, |_| ())
            .is_err());
        assert!(tokens
            .validate(earlier_boot.as_bytes(), later, wall, |_| ())
            .is_err());
    }
    group.finish();
}

/// A DPA report script's token: reads databases, writes annotations, from
/// two networks, at most 1,000,000 requests a second (the highest rate).
fn restricted_spec() -> RestrictionSpec {
    let rule = |methods: &[&str], path: &str| ScopeRule {
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        path: path.to_owned(),
    };
    RestrictionSpec {
        scopes: vec![
            rule(&["GET", "HEAD"], "/iwc/api/databases/**"),
            rule(&["GET"], "/iwc/api/metrics/*/summary"),
            rule(&["POST"], "/iwc/api/databases/*/annotations"),
        ],
        read_only: false,
        networks: vec!["10.0.0.0/8".into(), "127.0.0.0/8".into()],
        introspect: false,
        rate_limit: Some(RateLimit {
            per_second: 1_000_000,
            burst: 1_000_000,
        }),
    }
}

/// What the proxy path runs once the bearer token is read: validation, and
/// in its closure the restriction checks (one branch for a token without).
fn restricted(c: &mut Criterion) {
    const LIVE: usize = 1_000_000;
    // Each rate allows 1,000,000 a second; the requests are spread over
    // enough refresh tokens that no bucket runs dry, so every iteration
    // takes the allowed path, CAS included.
    const SPREAD: u64 = 32;
    let mut group = c.benchmark_group("access_validation_restrict");
    // Without the default cap of 1000 live tokens per refresh token, so the
    // map really holds a million.
    let tokens = AccessTokens::with_limit(2 * LIVE).unwrap();
    let now = Instant::now();
    let plain = refresh();
    for _ in 0..LIVE {
        tokens
            .issue(plain.clone(), Duration::from_secs(900), now)
            .unwrap();
    }
    let spec = restricted_spec();
    let restricted: Vec<String> = (0..SPREAD)
        .map(|i| {
            let r = Arc::new(RefreshToken::detached_restricted(
                10 + i,
                "report",
                None,
                &spec,
            ));
            tokens.issue(r, Duration::from_secs(900), now).unwrap()
        })
        .collect();
    let unrestricted = tokens
        .issue(plain.clone(), Duration::from_secs(900), now)
        .unwrap();
    // The same spread without restrictions: what touching 32 entries (and
    // their refresh tokens) costs by itself.
    let plain_spread: Vec<String> = (0..SPREAD)
        .map(|i| {
            let r = Arc::new(RefreshToken::detached(100 + i, "plain", None));
            tokens.issue(r, Duration::from_secs(900), now).unwrap()
        })
        .collect();
    // Scopes and networks only (no rate, so one token can be asked forever).
    let unlimited = RestrictionSpec {
        rate_limit: None,
        ..spec.clone()
    };
    let scoped = tokens
        .issue(
            Arc::new(RefreshToken::detached_restricted(
                200, "scoped", None, &unlimited,
            )),
            Duration::from_secs(900),
            now,
        )
        .unwrap();
    let wall = 1_800_000_000;
    let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let method = http::Method::GET;
    let path = "/iwc/api/databases/7/metrics/cpu";
    let check = |token: &[u8]| {
        // The request path reads the clock once per request, as here.
        let at = Instant::now();
        tokens.validate(token, at, wall, |r| {
            r.restrictions()
                .is_none_or(|x| restrictions_admit(x, ip, &method, path, at))
        })
    };
    assert!(tokens.len() > LIVE);
    assert_eq!(check(restricted[0].as_bytes()), Ok(true));
    assert_eq!(check(unrestricted.as_bytes()), Ok(true));
    group.bench_function(BenchmarkId::new("unrestricted_checked", LIVE), |b| {
        b.iter(|| black_box(check(black_box(unrestricted.as_bytes()))))
    });
    assert_eq!(check(scoped.as_bytes()), Ok(true));
    group.bench_function(BenchmarkId::new("scopes_and_networks", LIVE), |b| {
        b.iter(|| black_box(check(black_box(scoped.as_bytes()))))
    });
    let mut j = 0usize;
    group.bench_function(BenchmarkId::new("unrestricted_spread32", LIVE), |b| {
        b.iter(|| {
            j = (j + 1) % plain_spread.len();
            black_box(check(black_box(plain_spread[j].as_bytes())))
        })
    });
    let mut i = 0usize;
    let mut refused = 0u64;
    group.bench_function(BenchmarkId::new("restricted_all_three", LIVE), |b| {
        b.iter(|| {
            i = (i + 1) % restricted.len();
            let admitted = check(black_box(restricted[i].as_bytes()));
            refused += u64::from(admitted != Ok(true));
            black_box(admitted)
        })
    });
    // No iteration was refused (no bucket ran dry): the figures are the
    // allowed path's.
    assert_eq!(refused, 0);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = validation, restricted
}
criterion_main!(benches);

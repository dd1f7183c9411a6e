//! Access-token validation, the check every proxied request pays:
//! valid, expired, unknown (a genuine token no longer live: its refresh token
//! was deleted), minted by an earlier process (restart), forged (bad MAC) and
//! malformed tokens, at 1 thousand, 100 thousand and 1 million live tokens.
//!
//! Run: `cargo bench --bench access_validation`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up: a panic is a failed run"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tokengate::AccessTokens;
use tokengate::RefreshToken;

fn refresh() -> Arc<RefreshToken> {
    Arc::new(RefreshToken::detached(1, "bench", None))
}

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("access_validation");
    for live in [1_000usize, 100_000, 1_000_000] {
        let tokens = AccessTokens::new().unwrap();
        let r = refresh();
        let now = Instant::now();
        let mut valid = String::new();
        for _ in 0..live {
            valid = tokens
                .issue(r.clone(), Duration::from_secs(900), now)
                .unwrap();
        }
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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = validation
}
criterion_main!(benches);

//! The token exchange without the network: parse the form body, check the
//! refresh token (format, HMAC, map), mint an access token and insert it.
//!
//! Run: `cargo bench --bench exchange`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up: a panic is a failed run"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tokengate::clock::Clock;
use tokengate::AccessTokens;
use tokengate::RefreshStore;
use tokengate::{new_refresh_token, parse_refresh, RefreshHasher};
use tokengate::{parse_body, BodyKind, Client, Exchanger, RefreshGrant};

fn exchange(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = RefreshStore::open(&dir.path().join("bench.redb")).unwrap();
    let hasher = RefreshHasher::new(b"bench secret, 32 bytes long....");
    let clock = Clock::new();
    let token = new_refresh_token().unwrap();
    store
        .create(
            hasher.hash(&parse_refresh(&token).unwrap()),
            "bench",
            clock.unix(),
            None,
        )
        .unwrap();
    let body = format!("grant_type=refresh_token&refresh_token={token}");
    let ip = Some("10.0.0.7".parse().unwrap());

    c.bench_function("exchange/form", |b| {
        b.iter_custom(|iters| {
            // A fresh map per sample keeps memory bounded over the run.
            let access = AccessTokens::new().unwrap();
            let ex = Exchanger {
                hasher: &hasher,
                store: &store,
                access: &access,
                clock: &clock,
                access_ttl: Duration::from_secs(900),
            };
            let start = Instant::now();
            for _ in 0..iters {
                let req = parse_body(BodyKind::Form, black_box(body.as_bytes())).unwrap();
                let grant = RefreshGrant {
                    refresh_token: req.refresh_token.as_deref().unwrap(),
                };
                let client = Client {
                    ip,
                    user_agent: Some("python-requests/2.31.0"),
                };
                black_box(ex.exchange(grant, client).unwrap());
            }
            start.elapsed()
        });
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = exchange
}
criterion_main!(benches);

//! The token exchange without the network: parse the form body, check the
//! refresh token (format, HMAC, map), mint an access token and insert it.
//!
//! Run: `cargo bench --bench exchange`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tokengate::clock::Clock;
use tokengate::store::RefreshStore;
use tokengate::tokens::access::AccessTokens;
use tokengate::tokens::exchange::{parse_body, BodyKind, Exchanger};
use tokengate::tokens::format::{new_refresh_token, parse_refresh, RefreshHasher};

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
                let answer = ex
                    .exchange(req, ip, Some("python-requests/2.31.0"))
                    .unwrap();
                black_box(answer);
            }
            start.elapsed()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = exchange
}
criterion_main!(benches);

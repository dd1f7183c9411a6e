//! The per-request work around the token check: routing, extracting the
//! bearer token, and rewriting the headers for the upstream.
//!
//! Run: `cargo bench --bench proxy_path`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "benchmark set-up: a panic is a failed run"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokengate::rewrite_request;
use tokengate::{bearer_token, route};

/// What python-requests sends to DPA's API, plus the bearer token.
fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("gateway.example:8443"));
    h.insert(
        "user-agent",
        HeaderValue::from_static("python-requests/2.31.0"),
    );
    h.insert("accept-encoding", HeaderValue::from_static("gzip, deflate"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h.insert(
        "authorization",
        HeaderValue::from_static(
            "bearer tga_M797jyS5mLsyalcESwI3YUZMWxNermE2w8xwAjQpeyPdVMUdyoKWOQ",
        ),
    );
    h
}

fn proxy_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("proxy_path");
    for path in [
        "/iwc/api/databases/monitor-information",
        "/iwc/api/security/oauth/token",
        "/healthz",
    ] {
        g.bench_function(format!("route {path}"), |b| {
            b.iter(|| route(black_box(path)))
        });
    }
    let headers = client_headers();
    g.bench_function("bearer_token", |b| {
        b.iter(|| bearer_token(black_box(&headers)).is_ok())
    });

    let upstream_host = HeaderValue::from_static("127.0.0.1:8124");
    let extra = vec![(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static("upstream-secret"),
    )];
    let peer = "10.0.0.7:50123".parse().unwrap();
    let host = HeaderValue::from_static("gateway.example:8443");
    g.bench_function("rewrite_request_headers", |b| {
        b.iter_batched_ref(
            client_headers,
            |h| rewrite_request(h, Some(host.clone()), peer, &upstream_host, &extra, None),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = proxy_path
}
criterion_main!(benches);

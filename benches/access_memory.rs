//! Memory per live access token: RSS after issuing 1 million tokens into the
//! live map, minus RSS before. Prints one line; no timing.
//!
//! Run: `cargo bench --bench access_memory`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "benchmark set-up: a panic is a failed run; results go to stdout"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokengate::AccessTokens;
use tokengate::RefreshToken;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn main() {
    const N: usize = 1_000_000;
    let refresh = Arc::new(RefreshToken::detached(1, "memory", None));
    let tokens = AccessTokens::new().unwrap();
    let before = rss_bytes();
    let now = Instant::now();
    for _ in 0..N {
        let t = tokens
            .issue(refresh.clone(), Duration::from_secs(900), now)
            .unwrap();
        std::hint::black_box(t);
    }
    let after = rss_bytes();
    assert_eq!(tokens.len(), N);
    let per = (after.saturating_sub(before)) as f64 / N as f64;
    println!(
        "access_memory: {N} live access tokens: RSS {:.1} MB -> {:.1} MB, {per:.0} bytes per token",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
}

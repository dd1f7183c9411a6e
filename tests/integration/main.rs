//! The integration tests, one test binary: a gateway (or the `tokengate`
//! binary) driven from outside, over real sockets, TLS, files and, where a
//! test says so, real third-party programs (PostgreSQL, HAProxy, chromium,
//! the web servers of the path-confusion tests, Python clients).
//!
//! One binary rather than one per file: the helpers in `common` (and the
//! crate's dependencies) are compiled and linked once, and the compiler sees
//! every use of them, so a helper nothing uses any more is reported.
//!
//! Run one file's tests with its module path: `cargo test --test integration
//! proxy::`. A new test file is a module here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    unreachable_pub,
    reason = "test code: a panic is a failed test; the attack figures and \
              schemathesis's report are printed for the log; `pub` marks what \
              other modules of this binary use (it has no API)"
)]

mod common;

// One module per topic (formerly one test binary each), in alphabetical order.
mod access_token;
mod accounts;
mod admin_page;
mod agent;
mod audit_chain;
mod backends;
mod behind_haproxy;
mod binary;
mod browser;
mod cli;
mod cluster;
mod deploy;
mod dev_mode;
mod docs;
mod example_clients;
mod example_cluster;
mod exchange;
mod fair_share;
mod governance;
mod hostile_h2;
mod layers;
mod leaks;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod oauth;
mod oidc;
mod openapi;
mod path_confusion;
mod proxy;
mod readiness;
mod reload;
mod restrictions;
mod resumption;
mod stats;
mod throttle;
mod tls_scan;
mod upstream_pool;
mod upstream_tls;
mod upstreams;
mod users_cli;
mod users_page;
mod webhooks;
mod workers;

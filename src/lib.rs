//! tokengate: a TLS-terminating reverse proxy that adds DPA-style refresh and
//! access tokens in front of an existing HTTP API.
//!
//! ## Layers
//!
//! The modules in rows, from the top (what starts first and what a request
//! meets first) down. A module uses only modules in rows below its own, and
//! modules in one row do not use each other, so there is no circle. The
//! test `tests/layers.rs` reads this table and every `crate::`/`super::`
//! path in `src/`, and fails on an import that runs upward, inside a row or
//! in a circle; a new module needs a row here before it builds green.
//!
//! | row | modules | what they do |
//! |---|---|---|
//! | 1 | `cli`, `dev`, `scripts`, `audit_verify` | front ends: `tokengate token …`, `user …`, `cluster …`, `reload`, clients of the admin API; `serve --dev`; `tokengate access-token` and `tokengate agent`, clients of the public listener for scripts; `tokengate audit verify` |
//! | 2 | `gateway` | start-up in numbered steps, the listeners, shutdown |
//! | 3 | `periodic` | sweeps (access tokens, admin sessions) and usage flushes on a timer |
//! | 4 | `public`, `admin`, `metrics_listener` | the listeners' handlers: health, the token endpoint, the bearer check and the proxy path; login, the token API (`admin::api` is its wire contract) and the page; the unauthenticated scrape |
//! | 5 | `reload` | live reload (SIGHUP, `POST /api/reload`, certificate files changing on disk) |
//! | 6 | `state` | what the listeners share, built at start-up |
//! | 7 | `server` | the connection driver, generic over a listener's handler: accept loops, TLS handshakes, HTTP/1.1 and HTTP/2, limits, workers |
//! | 8 | `authority`, `lifecycle`, `passwords` | the HTTP-free authentication core (the bearer check, the exchange and introspection as typed verdicts: throttling, cluster catch-up, validation, restrictions); the token lifecycle (create, edit, rotate, delete with revoke, other replicas' changes), each with its audit line; the admin accounts' password check, throttled per client and per account (the admin listener's logins, the public listener's introspection) |
//! | 9 | `cluster`, `proxy`, `identify`, `sso` | replicas sharing PostgreSQL; the upstream servers, their health, per-worker pools and header rewriting; who the client is (TCP peer, trusted PROXY header or `X-Forwarded-For`), decided in one place; single sign-on, an OpenID Connect client of the identity provider |
//! | 10 | `tokens`, `throttle`, `webhooks` | token formats, the live access-token map, the exchange; per-client limits on failed authentication; signed webhooks of the lifecycle's events, delivered from the store's outbox |
//! | 11 | `store` | refresh tokens, durable in a backend and mirrored in memory |
//! | 12 | `restrict` | what a refresh token may do (scopes, networks, rate), parsed and compiled |
//! | 13 | `metrics`, `access_log` | Prometheus counters and the scrape, rendered from a snapshot the layers above fill; the access log writer |
//! | 14 | `audit` | the audit log writer |
//! | 15 | `tls`, `log_writer`, `audit_chain` | rustls server and client configurations; the bounded writer thread both logs run on; the audit log's hash chain (line format, recovery at start, verification) |
//! | 16 | `config` | settings: defaults, file, environment, validated |
//! | 17 | `shutdown`, `wire`, `secrets`, `clock`, `net`, `roles` | leaves: the shutdown signal, the HTTP wire toolkit (answers, the error shape, bounded bodies, `Host` and header names), secrets on disk, the time source, client addresses and networks, the admin accounts' roles |

mod access_log;
mod admin;
mod audit;
mod audit_chain;
pub mod audit_verify;
mod authority;
pub mod cli;
pub mod clock;
mod cluster;
pub mod config;
mod dev;
mod gateway;
mod identify;
mod lifecycle;
mod log_writer;
mod metrics;
mod metrics_listener;
mod net;
mod passwords;
mod periodic;
mod proxy;
mod public;
pub mod reload;
mod restrict;
pub mod roles;
pub mod scripts;
mod secrets;
mod server;
mod shutdown;
mod sso;
mod state;
mod store;
mod throttle;
pub mod tls;
mod tokens;
mod webhooks;
mod wire;

pub use admin::api;
pub use config::Config;
pub use dev::run as serve_dev;
pub use gateway::{Gateway, StartError, StartOptions};
pub use lifecycle::LifecycleError;
pub use net::Cidr;
pub use restrict::{RateLimit, RestrictionSpec, Restrictions, ScopeRule};
pub use state::State;

pub use passwords::Passwords;
/// Building blocks that the integration tests and benchmarks drive directly.
pub use proxy::headers::rewrite_request;
pub use public::{bearer_token, parse_body, route, BodyKind, Route, TokenRequest};
pub use secrets::{hash_password, AdminCredential};
pub use store::{
    migrate as migrate_postgres, Migrated, RefreshStore, RefreshToken, StoreError, SCHEMA_VERSION,
};
pub use throttle::{AuthThrottle, Throttled};
pub use tokens::access::AccessTokens;
pub use tokens::exchange::{Client, Exchanger, Issued, RefreshGrant};
pub use tokens::format::{new_refresh_token, parse_refresh, RefreshHasher};

/// For the benchmarks only: the proxy path's checks of a token's
/// restrictions (networks, scopes on the normalised path, rate), as the
/// public listener runs them after validation. Not an API.
#[doc(hidden)]
pub mod benching {
    /// True when the request may go on to the upstream.
    #[inline]
    pub fn restrictions_admit(
        r: &crate::Restrictions,
        ip: std::net::IpAddr,
        method: &http::Method,
        path: &str,
        now: std::time::Instant,
    ) -> bool {
        crate::authority::restrictions::check(r, ip, method, path, now).is_ok()
    }
}

/// For the cargo-fuzz targets in `fuzz/` only: internals they drive directly.
/// Not an API; may change at any time.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::config::base_path;
    pub use crate::proxy::{
        canonicalise, join_target, Canonical, InvalidPath, PathPolicy, TargetError,
    };
    pub use crate::wire::names::is_reserved;
}

//! tokengate: a TLS-terminating reverse proxy that adds DPA-style refresh and
//! access tokens in front of an existing HTTP API.
//!
//! The modules, from the top (what a request meets first) down; each uses
//! only modules below it:
//!
//! - `gateway`: start-up in numbered steps, both listeners, shutdown.
//! - `public`: the public listener's handler: health, the token endpoint,
//!   the bearer check and the proxy path.
//! - `admin`: the admin listener's handler: login, sessions, the token API
//!   (`admin::api` is its wire contract) and the page.
//! - `cli`: `tokengate token …`, a client of the admin API. `dev`: `serve --dev`.
//! - `periodic`: sweeps and usage flushes on a timer.
//! - `reload`: live reload (SIGHUP, `POST /api/reload`, certificate files
//!   changing on disk).
//! - `server`: the connection driver, generic over a listener's handler:
//!   accept loops, TLS handshakes, HTTP/1.1 and HTTP/2, limits, workers.
//! - `identify`: who the client is (TCP peer, trusted PROXY header, or a
//!   trusted HTTP balancer's `X-Forwarded-For`): the one place it is decided.
//! - `proxy`: the upstream servers and their health (shared), the client
//!   (per-worker pools) and header rewriting.
//! - `state`: what both listeners share, built at start-up.
//! - `tokens`: token formats, the live access-token map, the exchange.
//! - `store`: refresh tokens, durable in a backend and mirrored in memory.
//! - `restrict`: what a refresh token may do (scopes, networks, rate), and
//!   the checks the public listener makes with them.
//! - `throttle`: per-client limits on failed authentication (bounded tables).
//! - `audit`: the audit log writer. `access_log`: the access log writer.
//! - `log_writer`: the bounded writer thread both logs run on.
//! - `metrics`: Prometheus counters, the scrape, its own listener.
//! - `tls`: rustls server and client configurations.
//! - `http`: the response toolkit (JSON answers, errors, bounded bodies).
//! - `config`, `secrets`, `clock`, `net`: settings, secrets on disk, the
//!   time source, client addresses and networks.

mod access_log;
mod admin;
mod audit;
pub mod cli;
pub mod clock;
mod cluster;
pub mod config;
mod dev;
mod gateway;
mod http;
mod identify;
mod log_writer;
mod metrics;
mod net;
mod periodic;
mod proxy;
mod public;
pub mod reload;
mod restrict;
mod secrets;
mod server;
mod state;
mod store;
mod throttle;
pub mod tls;
mod tokens;

pub use admin::api;
pub use config::Config;
pub use dev::run as serve_dev;
pub use gateway::{Gateway, StartError, StartOptions};
pub use net::Cidr;
pub use restrict::{RateLimit, RestrictionSpec, Restrictions, ScopeRule};
pub use state::State;

/// Building blocks that the integration tests and benchmarks drive directly.
pub use admin::auth::AdminAuth;
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
        crate::public::restriction_check(r, ip, method, path, now).is_ok()
    }
}

/// For the cargo-fuzz targets in `fuzz/` only: internals they drive directly.
/// Not an API; may change at any time.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::names::is_reserved;
    pub use crate::proxy::{
        base_path, canonicalise, join_target, Canonical, InvalidPath, PathPolicy, TargetError,
    };
}

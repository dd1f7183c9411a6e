//! Per-client limits on failed authentication.
//!
//! - `key`: who is counted — an IPv4 address, or an IPv6 /64.
//! - `table`: a fixed-capacity, set-associative table of per-client entries:
//!   bounded memory whatever the number of addresses, one small lock per set
//!   (never a global one), the coldest entry of a full set reused.
//! - `auth`: the public listener's throttle on failed token checks and
//!   exchanges (429 with `Retry-After`, one `auth.throttled` audit line per
//!   address and window).
//! - `logins`: the admin accounts' failed-login slow-down, per client and
//!   per account name (the admin listener's logins and the public
//!   listener's introspection alike).
//! - `hourly`: at most 60 requests an hour per client, for an endpoint
//!   anyone may call without a credential (`POST /token/leaked`).

mod failures;
mod hourly;
mod logins;
mod table;

pub(crate) use crate::net::ClientKey;
pub use failures::{AuthThrottle, Throttled};
pub(crate) use hourly::HourlyLimit;
pub(crate) use logins::LoginThrottle;
pub(crate) use table::Table;

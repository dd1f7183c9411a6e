//! A token's restrictions on the proxy path: networks, scopes, rate, in
//! that order. A rate is taken only by a request that passed the other
//! checks: a refused request costs the script none of its rate.

use std::net::IpAddr;
use std::time::Instant;

use http::Method;

use crate::restrict::{Refused, Restrictions};

/// Runs the checks for one request; `path` is the request's canonical
/// path (`proxy::canonicalise`): the very path the upstream will be sent.
#[inline]
pub(crate) fn check(
    r: &Restrictions,
    ip: IpAddr,
    method: &Method,
    path: &str,
    now: Instant,
) -> Result<(), Refused> {
    if !r.allows_ip(ip) {
        return Err(Refused::Network);
    }
    if r.has_scopes() && !r.allows(method, path) {
        return Err(Refused::Scope);
    }
    r.take(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{canonicalise, PathPolicy};
    use crate::restrict::RestrictionSpec;
    use serde_json::json;

    fn compiled(v: serde_json::Value) -> Restrictions {
        let spec: RestrictionSpec = serde_json::from_value(v).unwrap();
        Restrictions::compile(&spec, Instant::now())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn path_tricks_cannot_leave_a_rule() {
        let r =
            compiled(json!({"scopes": [{"methods": ["GET"], "path": "/iwc/api/databases/**"}]}));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        // As the handler does: canonicalise (which may refuse), then check.
        let get = |p: &str| match canonicalise(p, &PathPolicy::strict()) {
            Ok(c) => check(&r, ip, &Method::GET, c.path(), now).map_err(Some),
            Err(_) => Err(None),
        };
        for ok in [
            "/iwc/api/databases",
            "/iwc/api/databases/1/x",
            "/iwc/api/x/../databases/1",
            "/iwc/api/databases/",
            // Merged to `/iwc/api/databases/1`, which is what is forwarded.
            "//iwc/api/databases/1",
        ] {
            assert_eq!(get(ok), Ok(()), "{ok}");
        }
        for no in [
            "/iwc/api/databases/../admin",
            "/iwc/api/databases/%2e%2e/admin",
            "/iwc/api/databases/..;x/admin",
            "/iwc/api/databases/%2E%2e/%2e%2e/x",
            "/iwc/api/databases/../../../../x",
            "/iwc/api/databases%2f..%2fadmin",
            "/iwc/api/admin;/databases",
        ] {
            assert!(get(no).is_err(), "{no}");
        }
        assert_eq!(
            check(&r, ip, &Method::DELETE, "/iwc/api/databases/1", now),
            Err(Refused::Scope)
        );
    }
}

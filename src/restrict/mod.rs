//! Restrictions a refresh token may carry, enforced on every request made
//! with its access tokens (and, for networks, at the exchange):
//!
//! - `scopes`: rules of methods and a path pattern (`pattern`); a request
//!   must match one. `read_only` is the rule `GET, HEAD /**`.
//! - `networks`: client networks (CIDRs) a request must come from.
//! - `rate_limit`: a request rate with a burst, shared by all of the
//!   token's access tokens (`bucket`).
//! - `introspect`: not a limit but a grant: the token's access tokens may
//!   call the public listener's introspection endpoint (RFC 7662). Kept
//!   with the restrictions because it is stored, edited and shown with them.
//!
//! `RestrictionSpec` is the persisted and wire form (the admin API's shape,
//! the redb record's field, PostgreSQL's `restrictions` jsonb);
//! `Restrictions` is its compiled form, which a `RefreshToken` holds behind
//! an `Option<Box<_>>` so that an unrestricted token (no scopes, networks or
//! rate) pays one branch. Validation names the field at fault.

mod bucket;
mod pattern;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::net::Cidr;
use bucket::Bucket;
pub(crate) use bucket::Take;
use pattern::PathPattern;

/// At most this many scope rules per token: a token's check is a scan.
pub(crate) const MAX_SCOPES: usize = 64;
/// At most this many networks per token.
pub(crate) const MAX_NETWORKS: usize = 64;
/// At most this many methods per rule.
const MAX_METHODS: usize = 16;
/// The highest rate and burst accepted: beyond them a limit limits nothing.
pub(crate) const MAX_RATE: u32 = 1_000_000;

/// One scope rule, as written: methods (or `*` for any) and a path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeRule {
    pub methods: Vec<String>,
    pub path: String,
}

/// A request rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Every restriction of a token, as stored and as the admin API shows it.
/// All empty, false and absent = full access.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestrictionSpec {
    #[serde(default)]
    pub scopes: Vec<ScopeRule>,
    #[serde(default)]
    pub read_only: bool,
    /// Canonical CIDR text (`10.0.0.0/8`).
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// The token's access tokens may introspect other tokens.
    #[serde(default)]
    pub introspect: bool,
}

impl RestrictionSpec {
    /// No restriction and no grant at all: the token behaves as an
    /// unrestricted one, and is stored as one.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
            && !self.read_only
            && self.networks.is_empty()
            && self.rate_limit.is_none()
            && !self.introspect
    }
}

/// `scopes`: a list of `{"methods": [...], "path": "..."}`; `null` = none.
/// Methods are upper-cased; `*` stands for any method.
pub(crate) fn parse_scopes(v: &Value) -> Result<Vec<ScopeRule>, String> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err("scopes must be a list of {\"methods\": [...], \"path\": \"...\"}".into()),
    };
    if list.len() > MAX_SCOPES {
        return Err(format!("scopes: at most {MAX_SCOPES} rules"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, rule) in list.iter().enumerate() {
        let field = format!("scopes[{i}]");
        let Some(obj) = rule.as_object() else {
            return Err(format!(
                "{field} must be an object like {{\"methods\": [\"GET\"], \"path\": \"/api/**\"}}"
            ));
        };
        if let Some(k) = obj.keys().find(|k| *k != "methods" && *k != "path") {
            return Err(format!(
                "{field}: unknown field {k:?}; expected methods and path"
            ));
        }
        let path = match obj.get("path") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(format!("{field}.path must be a string")),
            None => return Err(format!("{field}.path is required")),
        };
        PathPattern::parse(&path).map_err(|e| format!("{field}.path: {e}"))?;
        let methods = match obj.get("methods") {
            Some(Value::Array(m)) => m,
            Some(_) => return Err(format!("{field}.methods must be a list of method names")),
            None => return Err(format!("{field}.methods is required")),
        };
        if methods.is_empty() {
            return Err(format!(
                "{field}.methods must list at least one method (or \"*\")"
            ));
        }
        if methods.len() > MAX_METHODS {
            return Err(format!("{field}.methods: at most {MAX_METHODS}"));
        }
        let mut names = Vec::with_capacity(methods.len());
        for (j, m) in methods.iter().enumerate() {
            let Some(m) = m.as_str() else {
                return Err(format!("{field}.methods[{j}] must be a string"));
            };
            let m = m.trim().to_ascii_uppercase();
            if m != "*" && Method::from_bytes(m.as_bytes()).is_err() {
                return Err(format!(
                    "{field}.methods[{j}]: {m:?} is not an HTTP method name"
                ));
            }
            if !names.contains(&m) {
                names.push(m);
            }
        }
        out.push(ScopeRule {
            methods: names,
            path,
        });
    }
    Ok(out)
}

/// `read_only`: a boolean; `null` = false.
pub(crate) fn parse_read_only(v: &Value) -> Result<bool, String> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err("read_only must be true or false".into()),
    }
}

/// `introspect`: a boolean; `null` = false.
pub(crate) fn parse_introspect(v: &Value) -> Result<bool, String> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err("introspect must be true or false".into()),
    }
}

/// `networks`: a list of CIDRs (IPv4 or IPv6; a bare address is a network
/// of one); stored in canonical form. `null` = none.
pub(crate) fn parse_networks(v: &Value) -> Result<Vec<String>, String> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err("networks must be a list of CIDRs like \"10.0.0.0/8\"".into()),
    };
    if list.len() > MAX_NETWORKS {
        return Err(format!("networks: at most {MAX_NETWORKS}"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, n) in list.iter().enumerate() {
        let Some(text) = n.as_str() else {
            return Err(format!(
                "networks[{i}] must be a string like \"10.0.0.0/8\""
            ));
        };
        let cidr: Cidr = text.parse().map_err(|e| format!("networks[{i}]: {e}"))?;
        let canonical = cidr.to_string();
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// `rate_limit`: `{"per_second": n, "burst": m}`, whole numbers from 1 to
/// `MAX_RATE`; `burst` defaults to `per_second`. `null` = no limit.
pub(crate) fn parse_rate_limit(v: &Value) -> Result<Option<RateLimit>, String> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => {
            return Err(
                "rate_limit must be an object like {\"per_second\": 5, \"burst\": 10}".into(),
            )
        }
    };
    if let Some(k) = obj.keys().find(|k| *k != "per_second" && *k != "burst") {
        return Err(format!(
            "rate_limit: unknown field {k:?}; expected per_second and burst"
        ));
    }
    let whole = |field: &str| -> Result<Option<u32>, String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => whole_number(v)
                .filter(|&n| (1..=u64::from(MAX_RATE)).contains(&n))
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    format!("rate_limit.{field} must be a whole number from 1 to {MAX_RATE}")
                }),
        }
    };
    let per_second = whole("per_second")?.ok_or("rate_limit.per_second is required")?;
    let burst = whole("burst")?.unwrap_or(per_second);
    Ok(Some(RateLimit { per_second, burst }))
}

/// A JSON number that is a whole number, as JSON Schema's `integer` has it:
/// `5` and `5.0` alike (JSON does not tell them apart; Python's `json`
/// writes a float as `5.0`). Negative, fractional and larger than 2^53
/// (where floats stop being exact) are not.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the float is checked first: whole, from 0 to 2^53, so the cast is exact"
)]
pub(crate) fn whole_number(v: &Value) -> Option<u64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=EXACT).contains(f))
            .map(|f| f as u64)
    })
}

/// A compiled scope rule.
#[derive(Debug)]
struct Rule {
    /// `None` = any method.
    methods: Option<Vec<Method>>,
    path: PathPattern,
}

impl Rule {
    fn allows(&self, method: &Method, path: &str) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method)) && self.path.matches(path)
    }
}

/// Why a request was refused by its token's restrictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// From outside the token's networks.
    Network,
    /// No scope rule allows this method on this path.
    Scope,
    /// Over the token's rate.
    Rate(RateRefusal),
}

/// What a 429 tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateRefusal {
    pub(crate) retry_after: Duration,
    pub(crate) per_second: u32,
    pub(crate) burst: u32,
    /// The policy's window: seconds an empty bucket takes to fill.
    pub(crate) window_secs: u64,
}

/// A token's restrictions, compiled for the request path.
#[derive(Debug)]
pub struct Restrictions {
    /// As stored: what the admin API lists.
    spec: RestrictionSpec,
    /// Empty = every method on every path.
    rules: Vec<Rule>,
    /// Empty = from anywhere.
    networks: Vec<Cidr>,
    rate: Option<Bucket>,
    /// Stored restrictions that could not be read: refuse everything.
    denied: bool,
}

impl Restrictions {
    /// Compiles a spec; `Ok(None)` when it restricts nothing. `origin`
    /// starts the rate bucket's timeline.
    pub(crate) fn compile(
        spec: &RestrictionSpec,
        origin: Instant,
    ) -> Result<Option<Restrictions>, String> {
        if spec.is_empty() {
            return Ok(None);
        }
        let mut rules = Vec::with_capacity(spec.scopes.len() + 1);
        if spec.read_only {
            rules.push(Rule {
                methods: Some(vec![Method::GET, Method::HEAD]),
                path: PathPattern::parse("/**")?,
            });
        }
        for (i, s) in spec.scopes.iter().enumerate() {
            let path = PathPattern::parse(&s.path).map_err(|e| format!("scopes[{i}].path: {e}"))?;
            let methods = if s.methods.iter().any(|m| m == "*") {
                None
            } else {
                Some(
                    s.methods
                        .iter()
                        .map(|m| Method::from_bytes(m.as_bytes()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| format!("scopes[{i}].methods: not HTTP methods"))?,
                )
            };
            rules.push(Rule { methods, path });
        }
        let networks = spec
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| n.parse().map_err(|e| format!("networks[{i}]: {e}")))
            .collect::<Result<Vec<Cidr>, String>>()?;
        let rate = spec
            .rate_limit
            .map(|r| Bucket::new(r.per_second, r.burst, origin));
        Ok(Some(Restrictions {
            spec: spec.clone(),
            rules,
            networks,
            rate,
            denied: false,
        }))
    }

    /// A token whose stored restrictions cannot be read: it may do nothing
    /// (fail closed) until an administrator replaces it.
    pub(crate) fn deny_all(spec: &RestrictionSpec) -> Restrictions {
        Restrictions {
            spec: spec.clone(),
            rules: Vec::new(),
            networks: Vec::new(),
            rate: None,
            denied: true,
        }
    }

    /// The restrictions as stored.
    pub(crate) fn spec(&self) -> &RestrictionSpec {
        &self.spec
    }

    /// Whether the token's access tokens may introspect (never one whose
    /// stored restrictions could not be read).
    pub(crate) fn may_introspect(&self) -> bool {
        self.spec.introspect && !self.denied
    }

    /// Whether the token may be used from `ip` at all (requests and the exchange).
    #[inline]
    pub(crate) fn allows_ip(&self, ip: IpAddr) -> bool {
        !self.denied && (self.networks.is_empty() || crate::net::any_contains(&self.networks, ip))
    }

    /// Whether the token has scope rules (then the path must be normalised
    /// and matched).
    #[inline]
    pub(crate) fn has_scopes(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether a rule allows `method` on `path` (dot-resolved as the proxy
    /// sends it). True when the token has no rules.
    pub(crate) fn allows(&self, method: &Method, path: &str) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|r| r.allows(method, path))
    }

    /// The rate and what is left of it at `now` (per second, burst,
    /// requests that would pass now), taking nothing; `None` without a rate.
    pub(crate) fn rate_state(&self, now: Instant) -> Option<(u32, u32, u64)> {
        self.rate
            .as_ref()
            .map(|b| (b.per_second(), b.burst(), b.available(now)))
    }

    /// Takes one request from the token's rate at `now`.
    #[inline]
    pub(crate) fn take(&self, now: Instant) -> Result<(), Refused> {
        let Some(bucket) = &self.rate else {
            return Ok(());
        };
        match bucket.take(now) {
            Take::Allowed { .. } => Ok(()),
            Take::Refused { retry_after } => Err(Refused::Rate(RateRefusal {
                retry_after,
                per_second: bucket.per_second(),
                burst: bucket.burst(),
                window_secs: bucket.window_secs(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_field_names_itself_in_errors() {
        for (v, want) in [
            (json!("x"), "scopes must be"),
            (json!([5]), "scopes[0] must be"),
            (json!([{"path": "/a"}]), "scopes[0].methods is required"),
            (
                json!([{"methods": [], "path": "/a"}]),
                "scopes[0].methods must list",
            ),
            (
                json!([{"methods": ["GET"], "path": "/a"}, {"methods": ["G T"], "path": "/a"}]),
                "scopes[1].methods[0]",
            ),
            (
                json!([{"methods": ["GET"], "path": "a"}]),
                "scopes[0].path: ",
            ),
            (
                json!([{"methods": ["GET"], "path": "/a/**/b"}]),
                "scopes[0].path: ",
            ),
            (json!([{"methods": ["GET"]}]), "scopes[0].path is required"),
            (
                json!([{"methods": ["GET"], "path": "/a", "x": 1}]),
                "scopes[0]: unknown field",
            ),
        ] {
            let e = parse_scopes(&v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        let ok = parse_scopes(
            &json!([{"methods": ["get", "HEAD", "GET"], "path": "/iwc/api/databases/**"}]),
        )
        .unwrap();
        assert_eq!(ok[0].methods, vec!["GET", "HEAD"]);
        for (v, want) in [
            (json!("10.0.0.0/8"), "networks must be"),
            (json!(["10.0.0.0/8", "10.0.0.1/8"]), "networks[1]: "),
            (json!(["10.0.0.0/33"]), "networks[0]: "),
            (json!([7]), "networks[0] must be"),
        ] {
            let e = parse_networks(&v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert_eq!(
            parse_networks(&json!(["2001:db8::/32", "127.0.0.1"])).unwrap(),
            vec!["2001:db8::/32", "127.0.0.1/32"]
        );
        for (v, want) in [
            (json!(5), "rate_limit must be"),
            (json!({"burst": 3}), "rate_limit.per_second is required"),
            (json!({"per_second": 0}), "rate_limit.per_second must be"),
            (json!({"per_second": 1.5}), "rate_limit.per_second must be"),
            (
                json!({"per_second": 1, "burst": -1}),
                "rate_limit.burst must be",
            ),
            (
                json!({"per_second": 1, "every": 2}),
                "rate_limit: unknown field",
            ),
        ] {
            let e = parse_rate_limit(&v).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert_eq!(
            parse_rate_limit(&json!({"per_second": 5})).unwrap(),
            Some(RateLimit {
                per_second: 5,
                burst: 5
            })
        );
        // A whole number written as a float is the same number.
        assert_eq!(
            parse_rate_limit(&json!({"per_second": 5.0, "burst": 10.0})).unwrap(),
            Some(RateLimit {
                per_second: 5,
                burst: 10
            })
        );
        assert!(parse_read_only(&json!("yes"))
            .unwrap_err()
            .contains("read_only"));
        assert!(parse_introspect(&json!(1))
            .unwrap_err()
            .contains("introspect"));
        assert_eq!(parse_introspect(&json!(null)), Ok(false));
    }

    #[test]
    fn whole_numbers_are_integers_however_written() {
        for (v, want) in [
            (json!(7), Some(7)),
            (json!(7.0), Some(7)),
            (json!(0), Some(0)),
            (json!(u64::MAX), Some(u64::MAX)),
            (json!(9_007_199_254_740_992.0), Some(9_007_199_254_740_992)),
            (json!(1e300), None),
            (json!(7.5), None),
            (json!(-1), None),
            (json!(-1.0), None),
            (json!("7"), None),
            (json!(null), None),
        ] {
            assert_eq!(whole_number(&v), want, "{v}");
        }
    }

    #[test]
    fn compiled_rules_are_alternatives_and_read_only_is_one_of_them() {
        let spec = RestrictionSpec {
            scopes: parse_scopes(
                &json!([{"methods": ["POST"], "path": "/iwc/api/databases/*/annotations"}]),
            )
            .unwrap(),
            read_only: true,
            ..Default::default()
        };
        let r = Restrictions::compile(&spec, Instant::now())
            .unwrap()
            .unwrap();
        assert!(r.allows(&Method::GET, "/anything/at/all"));
        assert!(r.allows(&Method::HEAD, "/"));
        assert!(r.allows(&Method::POST, "/iwc/api/databases/7/annotations"));
        assert!(!r.allows(&Method::POST, "/iwc/api/databases/7/other"));
        assert!(!r.allows(&Method::DELETE, "/iwc/api/databases/7/annotations"));
        let any = RestrictionSpec {
            scopes: parse_scopes(&json!([{"methods": ["*"], "path": "/a/**"}])).unwrap(),
            ..Default::default()
        };
        let r = Restrictions::compile(&any, Instant::now())
            .unwrap()
            .unwrap();
        assert!(r.allows(&Method::PATCH, "/a/b") && !r.allows(&Method::GET, "/b"));
        assert!(
            Restrictions::compile(&RestrictionSpec::default(), Instant::now())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn networks_bind_and_deny_all_refuses_everything() {
        let spec = RestrictionSpec {
            networks: parse_networks(&json!(["10.0.0.0/8", "2001:db8::/32"])).unwrap(),
            ..Default::default()
        };
        let r = Restrictions::compile(&spec, Instant::now())
            .unwrap()
            .unwrap();
        assert!(r.allows_ip("10.255.0.1".parse().unwrap()));
        assert!(r.allows_ip("::ffff:10.0.0.1".parse().unwrap()));
        assert!(r.allows_ip("2001:db8::1".parse().unwrap()));
        assert!(!r.allows_ip("11.0.0.1".parse().unwrap()));
        assert!(!r.allows_ip("2001:db9::1".parse().unwrap()));
        let none = Restrictions::deny_all(&spec);
        assert!(!none.allows_ip("10.0.0.1".parse().unwrap()));
        assert!(!none.allows_ip("::1".parse().unwrap()));
    }

    #[test]
    fn introspect_alone_is_kept_and_restricts_nothing() {
        let spec = RestrictionSpec {
            introspect: true,
            ..Default::default()
        };
        assert!(!spec.is_empty(), "stored, not dropped as full access");
        let r = Restrictions::compile(&spec, Instant::now())
            .unwrap()
            .unwrap();
        assert!(r.may_introspect());
        assert!(r.allows_ip("192.0.2.1".parse().unwrap()));
        assert!(!r.has_scopes() && r.allows(&Method::DELETE, "/any"));
        assert!(r.take(Instant::now()).is_ok());
        assert!(!Restrictions::deny_all(&spec).may_introspect());
        // Records written before the flag read as without it.
        let old: RestrictionSpec = serde_json::from_str(r#"{"read_only": true}"#).unwrap();
        assert!(!old.introspect);
    }
}

//! Header rewriting toward the upstream (`rewrite_request`).
//!
//! Input, one item per line:
//!   line 1: the client's address (`1.2.3.4:5`, `[::1]:5`); anything else is 10.0.0.1:4000
//!   line 2: the upstream `Host` value
//!   line 3: the client's `Host` (empty: none)
//!   line 4: identity headers `<id> <name>` (empty: off)
//!   then:   `name: value` client headers; `+name: value` configured upstream headers
//!
//! Checked: hop-by-hop headers, every header `Connection` names, names with
//! `_` (CGI folds them into their `-` twins), and the client's credentials,
//! forwarding, client-address, URL-rewrite and method-override claims never
//! reach the upstream; `X-Forwarded-Host` carries the client's `Host` only
//! when it is `host[:port]` (checked by a reference here); the gateway's own
//! headers have exactly its values; every other client header goes through
//! unchanged.
#![no_main]

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokengate::fuzzing::is_reserved;
use tokengate::rewrite_request;

/// The README's list (written out here, not taken from the crate).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// SECURITY.md's list of claims a client may not make (`x-forwarded-*` and
/// `x-tokengate-*` are prefixes, checked below).
const CLAIMS: &[&str] = &[
    "authorization",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The reference for a forwardable `Host`: a name of unreserved characters,
/// an IPv4 address or a bracketed IPv6 literal, then an optional port
/// (1-5 digits, at most 65535); 255 bytes at most.
fn host_ok(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((lit, after)) = rest.split_once(']') else {
            return false;
        };
        if lit.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            a => match a.strip_prefix(':') {
                Some(p) => ("[v6]", Some(p)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let name_ok = host == "[v6]"
        || (!host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)));
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.chars().all(|c| c.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65_535)
    });
    name_ok && port_ok
}

fn header(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(line[..colon].trim_ascii()).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let peer: SocketAddr = std::str::from_utf8(lines.next().unwrap_or_default())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([10, 0, 0, 1], 4000)));
    let Ok(upstream_host) = HeaderValue::from_bytes(lines.next().unwrap_or_default()) else {
        return;
    };
    let original_host = lines
        .next()
        .filter(|l| !l.is_empty())
        .and_then(|l| HeaderValue::from_bytes(l).ok());
    let identity = lines.next().filter(|l| !l.is_empty()).map(|l| {
        let sp = l.iter().position(|&b| b == b' ').unwrap_or(l.len());
        let id = std::str::from_utf8(&l[..sp])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1);
        let name = HeaderValue::from_bytes(l.get(sp + 1..).unwrap_or_default())
            .unwrap_or(HeaderValue::from_static("x"));
        (HeaderValue::from(id), name)
    });
    let mut client = HeaderMap::new();
    let mut extra = Vec::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix(b"+") {
            // What `validate()` lets through into `upstream.headers`.
            if let Some((n, v)) = header(rest).filter(|(n, _)| !is_reserved(n)) {
                extra.push((n, v));
            }
        } else if let Some((n, v)) = header(line) {
            client.append(n, v);
        }
    }

    // What the gateway sets, with the values it must have.
    let mut set = HeaderMap::new();
    for (n, v) in &extra {
        set.insert(n.clone(), v.clone()); // a later one replaces, as in the config
    }
    set.insert(http::header::HOST, upstream_host.clone());
    let ip = peer.ip().to_canonical().to_string();
    set.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_str(&ip).unwrap(),
    );
    set.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    if let Some(h) = original_host.as_ref().filter(|h| host_ok(h.as_bytes())) {
        set.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
    }
    if let Some((id, name)) = &identity {
        set.insert(HeaderName::from_static("x-tokengate-token-id"), id.clone());
        set.insert(
            HeaderName::from_static("x-tokengate-token-name"),
            name.clone(),
        );
    }
    // Names the client's Connection header lists (RFC 9110 §7.6.1). `close`
    // and `keep-alive` are skipped by design: connection options, not headers.
    let mut named = Vec::new();
    for v in client.get_all(http::header::CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t) {
                named.push(n);
            }
        }
    }
    let removed = |n: &HeaderName| {
        let s = n.as_str();
        HOP_BY_HOP.contains(&s)
            || CLAIMS.contains(&s)
            || s.contains('_')
            || s.starts_with("x-forwarded-")
            || s.starts_with("x-tokengate-")
            || named.contains(n)
    };

    let mut out = client.clone();
    rewrite_request(
        &mut out,
        original_host.clone(),
        peer,
        &upstream_host,
        &extra,
        identity,
    );

    for name in out.keys() {
        let got: Vec<&HeaderValue> = out.get_all(name).iter().collect();
        if let Some(want) = set.get(name) {
            assert_eq!(got, vec![want], "{name} must be the gateway's value only");
        } else {
            assert!(!removed(name), "{name} reached the upstream");
            let sent: Vec<&HeaderValue> = client.get_all(name).iter().collect();
            assert_eq!(got, sent, "{name} was altered");
        }
    }
    for name in set.keys() {
        assert!(out.contains_key(name), "{name} missing");
    }
    for name in client.keys() {
        if !removed(name) {
            assert!(out.contains_key(name), "{name} was dropped");
        }
    }
});

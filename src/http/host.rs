//! Which `Host` values (and HTTP/2 `:authority`s) are acceptable: `host` or
//! `host:port`, nothing else. RFC 9112 §3.2 wants a 400 for an invalid
//! one, and the value travels on as `X-Forwarded-Host`, where an upstream
//! may build links or pick a tenant from it.

use std::net::Ipv6Addr;

/// Longest accepted value: a DNS name (253) plus a port would fit; a few
/// more bytes for an IPv6 literal's brackets.
const MAX_HOST_LEN: usize = 255;

/// `reg-name / IPv4 / "[" IPv6 "]"`, then an optional `:port` (1–5 digits,
/// at most 65535). Stricter than RFC 3986 on purpose: a name may hold only
/// unreserved characters (letters, digits, `-._~`), no percent-encoding and
/// no sub-delimiters, so a comma can never split it into two values
/// downstream; no userinfo (`user@`), no IPvFuture, no zone id. Bytes, not
/// `&str`: a header value need not be UTF-8, and no allocation either way.
pub(crate) fn is_valid_host(value: &[u8]) -> bool {
    if value.is_empty() || value.len() > MAX_HOST_LEN {
        return false;
    }
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = value.get(1..end).unwrap_or_default();
        let ipv6 = std::str::from_utf8(literal)
            .ok()
            .is_some_and(|s| s.parse::<Ipv6Addr>().is_ok());
        if !ipv6 {
            return false;
        }
        match value.get(end + 1..).unwrap_or_default() {
            [] => return true,
            [b':', port @ ..] => (&[][..], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], value.get(colon + 1..)),
            None => (value, None),
        }
    };
    if !host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return false;
    }
    // Only the bracketed form may leave `host` empty (checked above).
    if host.is_empty() && value.first() != Some(&b'[') {
        return false;
    }
    port.is_none_or(valid_port)
}

fn valid_port(port: &[u8]) -> bool {
    (1..=5).contains(&port.len())
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65_535
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        for ok in [
            &b"gw.example"[..],
            b"gw.example:8443",
            b"10.0.0.1:443",
            b"[::1]",
            b"[::1]:8443",
            b"GW-1.Example_x~",
            b"localhost:0",
            b"h:65535",
        ] {
            assert!(is_valid_host(ok), "{}", String::from_utf8_lossy(ok));
        }
        let long = [b'a'; 256];
        for bad in [
            &b""[..],
            b":443",
            b"gw.example:",
            b"gw.example:80x",
            b"gw.example:99999",
            b"gw.example:65536",
            b"gw.example:000443",
            b"evil.example/path",
            b"user:pw@gw.example",
            b"user@gw.example",
            b"gw.example evil",
            b"a,b",
            b"gw%2eexample",
            b"[::1",
            b"[::1]x",
            b"[::1]:",
            b"[not-ipv6]:443",
            b"[fe80::1%25eth0]",
            b"[v1.x]",
            b"::1",
            b"gw\xff.example",
            &long[..],
        ] {
            assert!(!is_valid_host(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}

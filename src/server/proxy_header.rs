//! The PROXY protocol (HAProxy's, versions 1 and 2), read before the TLS
//! handshake when `public.proxy_protocol` is on: a load balancer in front
//! passes the client's address, which then stands for the client everywhere
//! (per-client limits, throttling, audit, usage, `X-Forwarded-For`).
//!
//! Only the header is read, never a byte of what follows (the TLS
//! ClientHello): version 2 says its length up front; version 1 is a text
//! line read up to its CRLF.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line, CRLF included (the specification's limit).
const V1_MAX: usize = 107;
/// Version 2's address block is at most this long here: TLVs beyond it are
/// refused rather than buffered (HAProxy sends a few dozen bytes).
const V2_MAX_LEN: usize = 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    #[error("connection closed before a PROXY header")]
    Closed,
    #[error("no PROXY protocol header (public.proxy_protocol is on)")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Reads a PROXY header. `Ok(Some(addr))` is the client's address,
/// `Ok(None)` a header that names none (version 2 `LOCAL`, version 1
/// `UNKNOWN`, or a non-IP family: the balancer's own health checks), in
/// which case the connection's own peer stands.
pub(crate) async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; 8];
    io.read_exact(&mut start)
        .await
        .map_err(|_| ProxyHeaderError::Closed)?;
    if start[..] == V2_SIGNATURE[..8] {
        read_v2(io, start).await
    } else if start.starts_with(b"PROXY ") {
        read_v1(io, start).await
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

async fn read_v2<R: AsyncRead + Unpin>(
    io: &mut R,
    start: [u8; 8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut rest = [0u8; 8];
    io.read_exact(&mut rest)
        .await
        .map_err(|_| ProxyHeaderError::Closed)?;
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&start);
    head[8..].copy_from_slice(&rest);
    if head[..12] != V2_SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0f);
    if version != 2 {
        return Err(ProxyHeaderError::Malformed("version is not 2"));
    }
    let family = head[13];
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > V2_MAX_LEN {
        return Err(ProxyHeaderError::Malformed("address block too long"));
    }
    let mut block = vec![0u8; len];
    io.read_exact(&mut block)
        .await
        .map_err(|_| ProxyHeaderError::Closed)?;
    match command {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        _ => return Err(ProxyHeaderError::Malformed("unknown command")),
    }
    parse_v2_addresses(family, &block)
}

/// The source address of a version 2 address block.
fn parse_v2_addresses(family: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let short = ProxyHeaderError::Malformed("address block too short for its family");
    match family >> 4 {
        // AF_INET: src(4) dst(4) sport(2) dport(2)
        1 => {
            let b = block.get(..12).ok_or(short)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[8], b[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // AF_INET6: src(16) dst(16) sport(2) dport(2)
        2 => {
            let b = block.get(..36).ok_or(short)?;
            let mut src = [0u8; 16];
            src.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(src)), port)))
        }
        // AF_UNSPEC, AF_UNIX: no IP to stand for the client.
        0 | 3 => Ok(None),
        _ => Err(ProxyHeaderError::Malformed("unknown address family")),
    }
}

async fn read_v1<R: AsyncRead + Unpin>(
    io: &mut R,
    start: [u8; 8],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(&start);
    // Byte by byte up to the CRLF: reading more would swallow the start of
    // the TLS handshake. A balancer sends the whole line at once, so these
    // reads return at once; the handshake deadline bounds a slow sender.
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed("version 1 line too long"));
        }
        let b = io.read_u8().await.map_err(|_| ProxyHeaderError::Closed)?;
        line.push(b);
    }
    parse_v1(&line[..line.len() - 2])
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>`, or `PROXY UNKNOWN …`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed("not text"))?;
    let mut parts = text.split(' ');
    let bad =
        ProxyHeaderError::Malformed("version 1 line is not PROXY TCP4|TCP6 src dst sport dport");
    if parts.next() != Some("PROXY") {
        return Err(bad);
    }
    let proto = parts.next().ok_or(bad.clone())?;
    if proto == "UNKNOWN" {
        return Ok(None);
    }
    let (src, _dst, sport, _dport) = match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(s), Some(d), Some(sp), Some(dp), None) => (s, d, sp, dp),
        _ => return Err(bad),
    };
    let ip: IpAddr = src.parse().map_err(|_| bad.clone())?;
    match (proto, ip) {
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => {}
        _ => return Err(bad),
    }
    let port: u16 = sport.parse().map_err(|_| bad)?;
    Ok(Some(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut io = bytes;
        let r = read(&mut io).await;
        (r, io.to_vec())
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[tokio::test]
    async fn version_2_gives_the_source_and_leaves_the_rest_unread() {
        let mut block = vec![203, 0, 113, 7, 10, 0, 0, 1];
        block.extend_from_slice(&51000u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        let mut bytes = v2(1, 0x11, &block);
        bytes.extend_from_slice(b"\x16\x03\x01rest");
        let (r, rest) = parse(&bytes).await;
        assert_eq!(r.unwrap(), Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01rest");

        let mut block6 = vec![0u8; 36];
        block6[..16].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        block6[32..34].copy_from_slice(&1234u16.to_be_bytes());
        let (r, _) = parse(&v2(1, 0x21, &block6)).await;
        assert_eq!(r.unwrap(), Some("[2001:db8::5]:1234".parse().unwrap()));
        let (r, _) = parse(&v2(0, 0x00, &[])).await;
        assert_eq!(r.unwrap(), None, "LOCAL: the balancer's own check");
        let (r, _) = parse(&v2(1, 0x11, &[1, 2, 3])).await;
        assert!(matches!(r, Err(ProxyHeaderError::Malformed(_))));
    }

    #[tokio::test]
    async fn version_1_lines() {
        let (r, rest) = parse(b"PROXY TCP4 198.51.100.4 10.0.0.1 40000 443\r\n\x16").await;
        assert_eq!(r.unwrap(), Some("198.51.100.4:40000".parse().unwrap()));
        assert_eq!(rest, b"\x16");
        let (r, _) = parse(b"PROXY TCP6 2001:db8::9 ::1 40000 443\r\n").await;
        assert_eq!(r.unwrap(), Some("[2001:db8::9]:40000".parse().unwrap()));
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.unwrap(), None);
        for bad in [
            &b"PROXY TCP4 2001:db8::9 ::1 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
        ] {
            assert!(matches!(
                parse(bad).await.0,
                Err(ProxyHeaderError::Malformed(_))
            ));
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
        assert!(matches!(
            parse(&long).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc").await.0,
            Err(ProxyHeaderError::Missing)
        );
        assert_eq!(parse(b"PRO").await.0, Err(ProxyHeaderError::Closed));
    }
}

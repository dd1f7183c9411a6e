//! Clients that send a path exactly as written: an HTTP/1.1 request line
//! written byte for byte (plain TCP to an upstream, TLS to the gateway), an
//! HTTP/2 `:path` through hyper's h2 client where `http::Uri` keeps the
//! string as it is, and through Python's `h2` (tests/attacks/h2_paths.py)
//! for everything else. A library client would normalise or refuse most of
//! the payloads before they left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one response may take before it counts as no answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A response head larger than this is not one the test needs.
const MAX_HEAD: usize = 64 * 1024;
/// Bodies are cut here: the markers are at the start of small files.
const MAX_BODY: usize = 256 * 1024;
/// HTTP/2 requests in flight at once on one connection.
const H2_IN_FLIGHT: usize = 16;

/// What came back for one payload.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Answer(Answer),
    /// No response: connection closed or reset, stream reset, timeout.
    NoAnswer(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn contains(&self, marker: &str) -> bool {
        self.body
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    }

    /// The gateway's JSON error code, if the body is one.
    pub(crate) fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["error"].as_str().map(str::to_owned)
    }
}

impl Outcome {
    pub(crate) fn answer(&self) -> Option<&Answer> {
        match self {
            Outcome::Answer(a) => Some(a),
            Outcome::NoAnswer(_) => None,
        }
    }
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where requests go: an upstream directly, or the gateway over TLS.
#[derive(Clone)]
pub(crate) enum Dial {
    Plain(SocketAddr),
    Tls(SocketAddr, tokio_rustls::TlsConnector),
    /// The gateway over TLS offering h2 (the same certificate as `Tls`).
    TlsH2(SocketAddr, tokio_rustls::TlsConnector),
}

impl Dial {
    /// A dialer for the gateway's public listener, trusting `cert`.
    pub(crate) fn gateway(addr: SocketAddr, cert: &std::path::Path, h2: bool) -> Dial {
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        let config =
            tokengate::tls::client_config(tokengate::tls::Trust::CaFile(cert), &[alpn]).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        if h2 {
            Dial::TlsH2(addr, connector)
        } else {
            Dial::Tls(addr, connector)
        }
    }

    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        match self {
            Dial::Plain(a) => Ok(Box::new(TcpStream::connect(a).await?)),
            Dial::Tls(a, c) | Dial::TlsH2(a, c) => {
                let tcp = TcpStream::connect(a).await?;
                let name = "localhost".try_into().unwrap();
                Ok(Box::new(c.connect(name, tcp).await?))
            }
        }
    }

    fn host(&self) -> String {
        match self {
            Dial::Plain(a) => a.to_string(),
            Dial::Tls(..) | Dial::TlsH2(..) => "localhost".into(),
        }
    }
}

/// One response off an HTTP/1.x connection, and whether the connection
/// can carry another request.
struct H1Response {
    answer: Answer,
    reusable: bool,
}

/// Reads one response: `Content-Length`, chunked, or until close. `None`
/// when the connection ended (or stalled) before a whole response.
async fn read_response(io: &mut (dyn Io + '_)) -> Option<H1Response> {
    let mut buf = Vec::new();
    // On the heap: the future stays small.
    let mut chunk = vec![0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let mut reusable =
        head.starts_with("http/1.1") && !header("connection").is_some_and(|c| c.contains("close"));
    let mut body = buf[head_end..].to_vec();
    let chunked = header("transfer-encoding").is_some_and(|t| t.contains("chunked"));
    if chunked {
        body = read_chunked(io, body).await?;
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len.min(MAX_BODY) {
            let n = io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        reusable &= len <= MAX_BODY;
    } else if status >= 200 && status != 204 && status != 304 {
        // Delimited by the end of the connection.
        reusable = false;
        while body.len() < MAX_BODY {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    }
    Some(H1Response {
        answer: Answer { status, body },
        reusable,
    })
}

/// Decodes a chunked body (`have` is what was read past the head).
async fn read_chunked(io: &mut (dyn Io + '_), mut have: Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    // On the heap: the future stays small.
    let mut chunk = vec![0u8; 8192];
    loop {
        // Bounded: each turn consumes a chunk or reads more, and both the
        // body and the buffer are capped.
        if body.len() > MAX_BODY || have.len() > MAX_BODY + MAX_HEAD {
            return None;
        }
        if let Some(i) = have.windows(2).position(|w| w == b"\r\n") {
            let size_line = String::from_utf8_lossy(&have[..i]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                return Some(body);
            }
            if have.len() >= i + 2 + size + 2 {
                body.extend_from_slice(&have[i + 2..i + 2 + size]);
                have.drain(..i + 2 + size + 2);
                continue;
            }
        }
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        have.extend_from_slice(&chunk[..n]);
    }
}

fn request(target: &[u8], host: &str, bearer: Option<&str>) -> Vec<u8> {
    let mut r = b"GET ".to_vec();
    r.extend_from_slice(target);
    r.extend_from_slice(format!(" HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    if let Some(t) = bearer {
        r.extend_from_slice(format!("Authorization: Bearer {t}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// One request on a fresh connection (readiness checks).
pub(crate) async fn h1_once(dial: &Dial, target: &[u8], bearer: Option<&str>) -> Option<Answer> {
    let mut io = dial.connect().await.ok()?;
    io.write_all(&request(target, &dial.host(), bearer))
        .await
        .ok()?;
    tokio::time::timeout(ANSWER_TIMEOUT, read_response(io.as_mut()))
        .await
        .ok()
        .flatten()
        .map(|r| r.answer)
}

/// Sends every target in turn as a raw HTTP/1.1 request line, reusing the
/// connection while the server keeps it open. A request that finds a
/// reused connection closed (the server's keep-alive ended) is sent once
/// more on a fresh one; any other failure is that payload's outcome.
pub(crate) async fn h1_all(dial: &Dial, targets: &[Vec<u8>], bearer: Option<&str>) -> Vec<Outcome> {
    let host = dial.host();
    let mut conn: Option<Box<dyn Io>> = None;
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        let req = request(target, &host, bearer);
        let mut outcome = Outcome::NoAnswer("not sent".into());
        // At most two attempts: a reused connection, then a fresh one.
        for _ in 0..2 {
            let reused = conn.is_some();
            let mut io = match conn.take() {
                Some(io) => io,
                None => match dial.connect().await {
                    Ok(io) => io,
                    Err(e) => {
                        outcome = Outcome::NoAnswer(format!("connect: {e}"));
                        break;
                    }
                },
            };
            let sent = io.write_all(&req).await.is_ok();
            let got = if sent {
                tokio::time::timeout(ANSWER_TIMEOUT, read_response(io.as_mut()))
                    .await
                    .ok()
                    .flatten()
            } else {
                None
            };
            match got {
                Some(r) => {
                    if r.reusable {
                        conn = Some(io);
                    }
                    outcome = Outcome::Answer(r.answer);
                    break;
                }
                None if reused => continue,
                None => {
                    outcome = Outcome::NoAnswer("connection closed without an answer".into());
                    break;
                }
            }
        }
        out.push(outcome);
    }
    out
}

/// Whether hyper's h2 client would send `target` as `:path` byte for byte
/// (`http::Uri` refuses some bytes and drops a `#fragment`).
pub(crate) fn hyper_keeps(target: &[u8]) -> bool {
    target.starts_with(b"/")
        && http::uri::PathAndQuery::try_from(target)
            .is_ok_and(|pq| pq.as_str().as_bytes() == target)
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_connect(dial: &Dial) -> Option<H2Sender> {
    let io = dial.connect().await.ok()?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(send)
}

async fn h2_one(mut send: H2Sender, target: Vec<u8>, bearer: Option<String>) -> Outcome {
    let path = String::from_utf8(target).unwrap();
    let mut req = http::Request::get(format!("https://localhost{path}"));
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Empty::new()).unwrap();
    let sent = tokio::time::timeout(ANSWER_TIMEOUT, async {
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok::<_, hyper::Error>(Answer { status, body })
    })
    .await;
    match sent {
        Ok(Ok(a)) => Outcome::Answer(a),
        Ok(Err(e)) => Outcome::NoAnswer(format!("h2: {e}")),
        Err(_) => Outcome::NoAnswer("h2: no answer in time".into()),
    }
}

/// Sends every target (each one [`hyper_keeps`]) over HTTP/2 through
/// hyper, `H2_IN_FLIGHT` at a time, on one connection while it lasts.
pub(crate) async fn h2_hyper_all(
    dial: &Dial,
    targets: &[Vec<u8>],
    bearer: Option<&str>,
) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(targets.len());
    let mut send: Option<H2Sender> = None;
    for batch in targets.chunks(H2_IN_FLIGHT) {
        if send.as_ref().is_none_or(|s| s.is_closed()) {
            send = h2_connect(dial).await;
        }
        let Some(s) = &send else {
            out.extend(
                batch
                    .iter()
                    .map(|_| Outcome::NoAnswer("h2: cannot connect".into())),
            );
            continue;
        };
        let mut set = tokio::task::JoinSet::new();
        for (i, t) in batch.iter().enumerate() {
            let (s, t, b) = (s.clone(), t.clone(), bearer.map(str::to_owned));
            set.spawn(async move { (i, h2_one(s, t, b).await) });
        }
        let mut answers = vec![Outcome::NoAnswer("h2: lost".into()); batch.len()];
        while let Some(r) = set.join_next().await {
            let (i, o) = r.unwrap();
            answers[i] = o;
        }
        out.extend(answers);
    }
    out
}

/// Sends every target as a raw `:path` with Python's `h2`, one stream at a
/// time (tests/attacks/h2_paths.py; a new connection after the gateway
/// ends one).
pub(crate) async fn h2_python_all(
    gateway: SocketAddr,
    cert: &std::path::Path,
    targets: &[Vec<u8>],
    bearer: &str,
) -> Vec<Outcome> {
    if targets.is_empty() {
        return Vec::new();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/attacks/h2_paths.py");
    let input = serde_json::json!({
        "port": gateway.port(),
        "cafile": cert,
        "token": bearer,
        "paths": targets.iter().map(|t| hex(t)).collect::<Vec<_>>(),
    });
    let mut child = tokio::process::Command::new(crate::common::python3())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {script}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    // Bounded: the script gives each stream 10 s and stops by itself.
    let out = tokio::time::timeout(
        ANSWER_TIMEOUT * 2
            + Duration::from_millis(50)
                .saturating_mul(u32::try_from(targets.len()).unwrap_or(u32::MAX)),
        child.wait_with_output(),
    )
    .await
    .expect("h2_paths.py finishes")
    .unwrap();
    assert!(
        out.status.success(),
        "h2_paths.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), targets.len(), "one result per path");
    results
        .into_iter()
        .map(
            |r| match r["status"].as_u64().and_then(|s| u16::try_from(s).ok()) {
                Some(status) => Outcome::Answer(Answer {
                    status,
                    body: unhex(r["body"].as_str().unwrap_or_default()),
                }),
                None => Outcome::NoAnswer(format!(
                    "h2 (python): {}",
                    r["error"].as_str().unwrap_or("no answer")
                )),
            },
        )
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

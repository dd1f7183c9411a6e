//! Reaching the admin API: over the gateway's Unix socket (no password) or
//! its TLS listener (as an account, with its password), one request at a
//! time, and the exit code an answer's status means.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{found, Connection, Failure, EXIT_AUTH, EXIT_FORBIDDEN, EXIT_INVALID, EXIT_NOT_FOUND};
use crate::admin::api::ApiError;
use crate::tls::{client_config, Trust};

/// The admin listener's address when nothing says otherwise.
const DEFAULT_ADMIN_URL: &str = "https://127.0.0.1:8444";

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client(conn: &Connection) -> Result<HttpsClient, Failure> {
    let local = PathBuf::from(crate::config::DEFAULT_CERT_PATH);
    let trust = if conn.insecure {
        Trust::Insecure
    } else if let Some(f) = &conn.ca_file {
        Trust::CaFile(f)
    } else {
        Trust::System {
            also: found_in_cwd(&local, "--ca-file").then_some(local.as_path()),
        }
    };
    let tls = client_config(trust, &[]).map_err(|e| match &conn.ca_file {
        Some(_) => Failure(EXIT_INVALID, format!("--ca-file {e}")),
        None => Failure::unreachable(format!(
            "{e}\n  hint: pass --ca-file with the gateway's certificate (certs/tokengate.crt), or --insecure"
        )),
    })?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        // `check_url` refused anything else already; this holds regardless.
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Calls the admin API; on a 2xx answer returns its body, otherwise the
/// failure the status means.
pub(super) async fn call(
    conn: &Connection,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, Failure> {
    let resp = match target(conn) {
        Target::Socket(socket) => call_local(&socket, method, path, body).await?,
        Target::Url(url) => call_tls(conn, &url, method, path, body).await?,
    };
    answer_bytes(resp, conn.user()).await
}

/// Where the CLI sends its requests.
pub(super) enum Target {
    Socket(PathBuf),
    Url(String),
}

pub(super) fn target(conn: &Connection) -> Target {
    if let Some(s) = &conn.socket {
        return Target::Socket(s.clone());
    }
    if let Some(u) = &conn.url {
        return Target::Url(u.clone());
    }
    let local = std::path::Path::new("data").join(crate::config::ADMIN_SOCKET_FILE);
    if found_in_cwd(&local, "--socket") {
        Target::Socket(local)
    } else {
        Target::Url(DEFAULT_ADMIN_URL.into())
    }
}

/// Whether a file found in the current directory (not named on the command
/// line) may be used; one that is there but not trusted is ignored, saying
/// why and how to use it anyway (`flag`).
fn found_in_cwd(path: &std::path::Path, flag: &str) -> bool {
    match found::usable(path) {
        Ok(usable) => usable,
        Err(why) => {
            eprintln!(
                "tokengate: ignoring ./{}: {why}\n  hint: name it ({flag} {}) to use it anyway",
                path.display(),
                path.display()
            );
            false
        }
    }
}

fn request(method: &str, uri: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("tokengate-cli/", env!("CARGO_PKG_VERSION")),
        )
}

/// The admin password goes with every request, so only `https://` will do
/// (scheme in any case). The URL itself is not repeated: it may hold
/// credentials of its own.
pub(super) fn check_url(url: &str) -> Result<(), Failure> {
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if https {
        Ok(())
    } else {
        Err(Failure(
            EXIT_INVALID,
            "the admin URL (--url or TOKENGATE_ADMIN_URL) must start with https://: the admin \
             password is sent with every request. On the gateway's host, --socket data/admin.sock \
             needs no password"
                .into(),
        ))
    }
}

/// One request over the admin Unix socket (plain HTTP/1.1, no password).
async fn call_local(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<http::Response<hyper::body::Incoming>, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Failure::unreachable(format!(
            "cannot reach the admin socket {}: {e}\n  hint: is tokengate running, and are you its user (or root)? Or use --url",
            socket.display()
        ))
    };
    let req = request(method, path)
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Failure(EXIT_INVALID, e.to_string()))?;
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        sender.send_request(req).await.map_err(|e| unreachable(&e))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| Failure::unreachable(format!("{}: no answer within 30 s", socket.display())))?
}

/// One request to the admin listener over TLS, as `--user` with its password.
async fn call_tls(
    conn: &Connection,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<http::Response<hyper::body::Incoming>, Failure> {
    let password = conn
        .password
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            Failure(
                EXIT_AUTH,
                format!(
                    "no password for {}: set TOKENGATE_ADMIN_PASSWORD (or pass --password), or run it at a terminal to be asked",
                    conn.user()
                ),
            )
        })?;
    let client = client(conn)?;
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{password}", conn.user()));
    let req = request(method, &url)
        .header("authorization", format!("Basic {auth}"))
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Failure(EXIT_INVALID, format!("--url {url}: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| Failure::unreachable(format!("{url}: no answer within 30 s")))?
        .map_err(|e| {
            let mut text = format!("cannot reach the admin API at {base}: {e}");
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                text.push_str(&format!(": {s}"));
                src = s.source();
            }
            if text.contains("certificate") || text.contains("UnknownIssuer") {
                text.push_str("\n  hint: pass --ca-file with the gateway's certificate (certs/tokengate.crt), or --insecure");
            } else {
                text.push_str("\n  hint: is tokengate running? Set TOKENGATE_ADMIN_URL or --url");
            }
            Failure::unreachable(text)
        })?;
    Ok(resp)
}

/// The body of a 2xx answer, or the failure its status means (`user`: who
/// the request was made as, for the wrong-password message).
async fn answer_bytes(
    resp: http::Response<hyper::body::Incoming>,
    user: &str,
) -> Result<Bytes, Failure> {
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::unreachable(format!("reading the answer: {e}")))?
        .to_bytes();
    let describe = |fallback: &str| {
        serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error_description)
            .unwrap_or_else(|_| fallback.to_owned())
    };
    match status {
        200..=299 => Ok(bytes),
        // The gateway's words: the same whether the name or the password
        // was wrong, or that the account is locked for a while.
        401 => Err(Failure(
            EXIT_AUTH,
            format!("{} (user {user})", describe("wrong user name or password")),
        )),
        // The account's role may not do this; the API names the role needed.
        403 => Err(Failure(
            EXIT_FORBIDDEN,
            describe("forbidden: the account's role may not do this"),
        )),
        429 => Err(Failure(
            EXIT_AUTH,
            describe("too many failed attempts; wait and retry"),
        )),
        404 => Err(Failure(EXIT_NOT_FOUND, describe("not found"))),
        // 409: in conflict with what exists (an account name taken, the
        // last admin); 422: a reload refused the configuration or
        // certificate it read.
        400 | 409 | 422 => Err(Failure(EXIT_INVALID, describe("the request was refused"))),
        _ => Err(Failure::unreachable(format!(
            "the admin API answered {status}: {}",
            describe("")
        ))),
    }
}

/// Reads an answer into its API type.
pub(super) fn answer<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| {
        Failure::unreachable(format!(
            "the admin API's answer is not what this CLI expects: {e}"
        ))
    })
}

pub(super) fn request_body<T: Serialize>(body: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(body).map_err(|e| Failure(EXIT_INVALID, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_admin_urls() {
        for ok in ["https://127.0.0.1:8444", "HTTPS://gw.example/"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:8444",
            "127.0.0.1:8444",
            "ftp://x",
            "https:/x",
            "",
            "é",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}

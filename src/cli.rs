//! `tokengate token …`: a command-line client of the admin API.
//!
//! Exit codes: 0 success; 1 the admin API could not be reached or failed;
//! 2 bad command line or a request the API refused as invalid; 3 wrong or
//! missing admin password (or too many failed attempts); 4 no such token.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use crate::clock::rfc3339;

pub const EXIT_UNREACHABLE: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_AUTH: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;

/// Where the admin API is and how to trust it.
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// Admin listener URL.
    #[arg(
        long,
        env = "TOKENGATE_ADMIN_URL",
        default_value = "https://127.0.0.1:8444",
        global = true
    )]
    pub url: String,
    /// Admin password (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long,
        env = "TOKENGATE_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<String>,
    /// PEM file to trust for the admin listener's certificate. Default: the
    /// system's roots plus ./certs/tokengate.crt when it exists.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the admin listener's certificate.
    #[arg(long, global = true, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// Print the API's JSON instead of a table or sentence.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a refresh token; its string is printed this once.
    Create {
        /// Who or what will use it.
        #[arg(long)]
        name: String,
        /// `90d` (from now), `2027-05-01`, an RFC 3339 time, or `never`. Default: the gateway's default (90 days).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List refresh tokens (never their strings).
    List,
    /// Delete refresh tokens by id, all in one transaction.
    Delete {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
}

struct Failure(u8, String);

impl Failure {
    fn unreachable(msg: impl Into<String>) -> Failure {
        Failure(EXIT_UNREACHABLE, msg.into())
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client(conn: &Connection) -> Result<HttpsClient, Failure> {
    let provider = crate::server::tls::provider();
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = if conn.insecure {
        builder.with_tls_config(
            crate::proxy::insecure_client_config(provider)
                .map_err(|e| Failure::unreachable(e.to_string()))?,
        )
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let local = PathBuf::from(crate::config::DEFAULT_CERT_PATH);
        let files: Vec<PathBuf> = match &conn.ca_file {
            Some(f) => vec![f.clone()],
            None => local.exists().then_some(local).into_iter().collect(),
        };
        for f in &files {
            let certs = CertificateDer::pem_file_iter(f)
                .map_err(|e| Failure(EXIT_INVALID, format!("--ca-file {}: {e}", f.display())))?;
            for c in certs {
                let c = c.map_err(|e| {
                    Failure(EXIT_INVALID, format!("--ca-file {}: {e}", f.display()))
                })?;
                let _ = roots.add(c);
            }
        }
        if conn.ca_file.is_none() {
            let native = rustls_native_certs_or_empty();
            roots.add_parsable_certificates(native);
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::unreachable(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        builder.with_tls_config(tls)
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The system's trust store; certificates it cannot read are skipped.
fn rustls_native_certs_or_empty() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    found.certs
}

async fn call(
    conn: &Connection,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), Failure> {
    let password = conn
        .password
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            Failure(
                EXIT_AUTH,
                "no admin password: set TOKENGATE_ADMIN_PASSWORD (or pass --password)".into(),
            )
        })?;
    let client = client(conn)?;
    let url = format!("{}{}", conn.url.trim_end_matches('/'), path);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
    let req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header("authorization", format!("Basic {auth}"))
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("tokengate-cli/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .map_err(|e| Failure(EXIT_INVALID, format!("--url {url}: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| Failure::unreachable(format!("{url}: no answer within 30 s")))?
        .map_err(|e| {
            let mut text = format!("cannot reach the admin API at {}: {e}", conn.url);
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
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::unreachable(format!("reading the answer: {e}")))?
        .to_bytes();
    let v: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    match status {
        200..=299 => Ok((status, v)),
        401 => Err(Failure(
            EXIT_AUTH,
            "the admin password was not accepted".into(),
        )),
        429 => Err(Failure(
            EXIT_AUTH,
            describe(&v, "too many failed attempts; wait and retry"),
        )),
        404 => Err(Failure(EXIT_NOT_FOUND, describe(&v, "not found"))),
        400 => Err(Failure(
            EXIT_INVALID,
            describe(&v, "the request was refused"),
        )),
        _ => Err(Failure::unreachable(format!(
            "the admin API answered {status}: {}",
            describe(&v, "")
        ))),
    }
}

fn describe(v: &Value, fallback: &str) -> String {
    v["error_description"]
        .as_str()
        .unwrap_or(fallback)
        .to_owned()
}

/// `90d`, `12h` → now + that; dates and RFC 3339 times and `never` pass through.
pub fn expires_arg(text: &str, now_unix: u64) -> Result<String, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok("never".into());
    }
    if let Ok(d) = humantime::parse_duration(t) {
        return Ok(rfc3339(now_unix.saturating_add(d.as_secs())));
    }
    if crate::clock::parse_rfc3339(t).is_some()
        || crate::clock::parse_rfc3339(&format!("{t}T00:00:00Z")).is_some()
    {
        return Ok(t.to_owned());
    }
    Err(format!(
        "--expires {t:?}: use a lifetime like 90d, a date like 2027-05-01, an RFC 3339 time, or never"
    ))
}

pub fn run(conn: Connection, cmd: TokenCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokengate: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    match rt.block_on(execute(&conn, cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("tokengate: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn execute(conn: &Connection, cmd: TokenCommand) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create { name, expires } => {
            let mut body = json!({ "name": name });
            if let Some(e) = expires {
                let now = crate::clock::Clock::new().unix();
                body["expires"] =
                    Value::String(expires_arg(&e, now).map_err(|m| Failure(EXIT_INVALID, m))?);
            }
            let (_, v) = call(conn, "POST", "/api/refresh-tokens", Some(body)).await?;
            if conn.json {
                println!("{v}");
            } else {
                let expiry = v["expires_at"]
                    .as_str()
                    .map(|e| format!("expires {e}"))
                    .unwrap_or("never expires".into());
                eprintln!("Created refresh token {} \"{}\" ({expiry}). Copy it now: it cannot be shown again.", v["id"], v["name"].as_str().unwrap_or(""));
                println!("{}", v["token"].as_str().unwrap_or(""));
            }
        }
        TokenCommand::List => {
            let (_, v) = call(conn, "GET", "/api/refresh-tokens", None).await?;
            if conn.json {
                println!("{v}");
            } else {
                print!("{}", table(v.as_array().map(Vec::as_slice).unwrap_or(&[])));
            }
        }
        TokenCommand::Delete { ids } => {
            let (_, v) = call(
                conn,
                "POST",
                "/api/refresh-tokens/delete",
                Some(json!({ "ids": ids })),
            )
            .await?;
            if conn.json {
                println!("{v}");
            } else {
                for d in v["deleted"].as_array().into_iter().flatten() {
                    println!(
                        "deleted {} \"{}\"",
                        d["id"],
                        d["name"].as_str().unwrap_or("")
                    );
                }
            }
            let missing: Vec<String> = v["not_found"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(Failure(
                    EXIT_NOT_FOUND,
                    format!("no refresh token with id {}", missing.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// A plain-text table of tokens for people.
pub fn table(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "No refresh tokens. Create one with: tokengate token create --name NAME\n".into();
    }
    let header = [
        "ID",
        "NAME",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "USES",
        "LAST CLIENT",
    ];
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let body: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r["id"].to_string(),
                s(&r["name"]).unwrap_or_default(),
                s(&r["status"]).unwrap_or_default(),
                s(&r["created_at"]).unwrap_or_default(),
                s(&r["expires_at"]).unwrap_or_else(|| "never".into()),
                s(&r["last_used_at"]).unwrap_or_else(|| "never".into()),
                r["use_count"].to_string(),
                s(&r["last_client_ip"]).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in &body {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_forms() {
        let now = 1_800_000_000;
        assert_eq!(expires_arg("never", now).unwrap(), "never");
        assert_eq!(expires_arg("90d", now).unwrap(), rfc3339(now + 90 * 86_400));
        assert_eq!(expires_arg("2027-05-01", now).unwrap(), "2027-05-01");
        assert_eq!(
            expires_arg("2027-05-01T00:00:00Z", now).unwrap(),
            "2027-05-01T00:00:00Z"
        );
        assert!(expires_arg("someday", now).is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            json!({"id": 1, "name": "a", "status": "active", "created_at": "2026-01-01T00:00:00Z",
            "expires_at": null, "last_used_at": null, "use_count": 0, "last_client_ip": null}),
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  NAME  STATUS"));
        assert!(lines[1].contains("never"));
        assert!(table(&[]).contains("No refresh tokens"));
    }
}

//! `tokengate token …`: a command-line client of the admin API.
//!
//! Exit codes: 0 success; 1 the admin API could not be reached or failed;
//! 2 bad command line or a request the API refused as invalid; 3 wrong or
//! missing admin password (or too many failed attempts); 4 no such token.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the CLI's answers go to stdout and its messages to stderr"
)]

mod found;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admin::api::{
    expiry_text, parse_expiry, ApiError, CreateToken, CreatedToken, DeleteTokens, DeletedTokens,
    EditToken, RateLimit, RestrictionSpec, RotateToken, RotatedToken, ScopeRule, TokenInfo,
};
use crate::tls::{client_config, Trust};

pub const EXIT_UNREACHABLE: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_AUTH: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;

/// The admin listener's address when nothing says otherwise.
const DEFAULT_ADMIN_URL: &str = "https://127.0.0.1:8444";

/// Where the admin API is and how to trust it.
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// Admin listener URL. Default: the admin socket ./data/admin.sock if it
    /// exists and you own it and ./data (neither writable by group or
    /// others), else https://127.0.0.1:8444.
    #[arg(
        long,
        env = "TOKENGATE_ADMIN_URL",
        global = true,
        conflicts_with = "socket"
    )]
    pub url: Option<String>,
    /// The gateway's admin Unix socket (`admin.socket`; default
    /// <data dir>/admin.sock). Needs no password: only the gateway's own
    /// user (or root) may use it, and no failed login elsewhere locks it.
    #[arg(long, env = "TOKENGATE_ADMIN_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// Admin password (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long,
        env = "TOKENGATE_ADMIN_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<String>,
    /// PEM file to trust for the admin listener's certificate. Default: the
    /// system's roots, plus ./certs/tokengate.crt if it exists and you own
    /// it and ./certs (neither writable by group or others).
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the admin listener's certificate.
    #[arg(long, global = true, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// Print the API's JSON instead of a table or sentence.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What a token may do (see the README's "Restricting tokens"); none of
/// them: full access.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RestrictArgs {
    /// A rule the token's requests must match: `"METHODS PATH"`, e.g.
    /// `"GET,HEAD /iwc/api/databases/**"` (`*` for any method; a path alone
    /// allows every method). Repeat for several rules.
    #[arg(long = "scope", value_name = "RULE")]
    pub scopes: Vec<String>,
    /// GET and HEAD only, on every path.
    #[arg(long)]
    pub read_only: bool,
    /// A client network (CIDR, IPv4 or IPv6) the token may be used from.
    /// Repeat for several.
    #[arg(long = "network", value_name = "CIDR")]
    pub networks: Vec<String>,
    /// Requests per second, shared by all of the token's access tokens.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<u32>,
    /// Requests allowed at once above the rate (default: the rate).
    #[arg(long, requires = "rate")]
    pub burst: Option<u32>,
}

impl RestrictArgs {
    fn scope_rules(&self) -> Result<Vec<ScopeRule>, Failure> {
        self.scopes.iter().map(|s| scope_arg(s)).collect()
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        self.rate.map(|per_second| RateLimit {
            per_second,
            burst: self.burst.unwrap_or(per_second),
        })
    }
}

/// `"GET,HEAD /path/**"` → a rule; `"/path"` alone → any method.
fn scope_arg(text: &str) -> Result<ScopeRule, Failure> {
    let t = text.trim();
    let (methods, path) = match t.split_once(char::is_whitespace) {
        Some((m, p)) => (
            m.split(',')
                .filter(|m| !m.is_empty())
                .map(|m| m.trim().to_ascii_uppercase())
                .collect(),
            p.trim(),
        ),
        None if t.starts_with('/') => (vec!["*".to_owned()], t),
        None => {
            return Err(Failure(
                EXIT_INVALID,
                format!("--scope {text:?}: write it as \"METHODS PATH\", e.g. \"GET,HEAD /iwc/api/databases/**\""),
            ))
        }
    };
    Ok(ScopeRule {
        methods,
        path: path.to_owned(),
    })
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
        #[command(flatten)]
        restrict: RestrictArgs,
    },
    /// List refresh tokens (never their strings).
    List {
        /// Only tokens that expire within this (`7d`, `12h`), e.g. to
        /// rotate or extend them before a script's credential lapses.
        #[arg(long, value_name = "WITHIN")]
        expiring: Option<String>,
    },
    /// Change a token's name, expiry or restrictions; its live access
    /// tokens follow from their next request. Only what is given changes.
    Edit {
        id: u64,
        #[arg(long)]
        name: Option<String>,
        /// As for create (`never` removes the expiry).
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        restrict: RestrictArgs,
        /// Remove every scope rule.
        #[arg(long, conflicts_with = "scopes")]
        no_scopes: bool,
        /// Allow writes again (clears --read-only).
        #[arg(long, conflicts_with = "read_only")]
        no_read_only: bool,
        /// Allow every client network.
        #[arg(long, conflicts_with = "networks")]
        no_networks: bool,
        /// Remove the rate limit.
        #[arg(long, conflicts_with = "rate")]
        no_rate_limit: bool,
        /// Remove every restriction.
        #[arg(long, conflicts_with_all = ["scopes", "read_only", "networks", "rate"])]
        full_access: bool,
    },
    /// Issue a new secret for a token (same id, name, restrictions and
    /// usage); the new string is printed this once.
    Rotate {
        id: u64,
        /// How long the old secret keeps working (`1h`, `2d`; at most 30
        /// days). Default 0: it stops now, and so do the access tokens
        /// issued under it.
        #[arg(long, default_value = "0")]
        grace: String,
    },
    /// Delete refresh tokens by id, all in one transaction.
    Delete {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
}

/// `tokengate cluster …`.
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Retire every access token of every replica at once (each replica
    /// draws a new boot; scripts exchange their refresh tokens again).
    /// With redb: this gateway's access tokens.
    Rotate,
}

/// What the CLI asks of the admin API.
enum Cmd {
    Token(TokenCommand),
    Cluster(ClusterCommand),
    Reload,
}

struct Failure(u8, String);

impl Failure {
    fn unreachable(msg: impl Into<String>) -> Failure {
        Failure(EXIT_UNREACHABLE, msg.into())
    }
}

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
async fn call(
    conn: &Connection,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, Failure> {
    let resp = match target(conn) {
        Target::Socket(socket) => call_local(&socket, method, path, body).await?,
        Target::Url(url) => call_tls(conn, &url, method, path, body).await?,
    };
    answer_bytes(resp).await
}

/// Where the CLI sends its requests.
enum Target {
    Socket(PathBuf),
    Url(String),
}

fn target(conn: &Connection) -> Target {
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
fn check_url(url: &str) -> Result<(), Failure> {
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

/// One request to the admin listener over TLS, with the admin password.
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
                "no admin password: set TOKENGATE_ADMIN_PASSWORD (or pass --password)".into(),
            )
        })?;
    let client = client(conn)?;
    let url = format!("{}{}", base.trim_end_matches('/'), path);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
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

/// The body of a 2xx answer, or the failure its status means.
async fn answer_bytes(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes, Failure> {
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
        401 => Err(Failure(
            EXIT_AUTH,
            "the admin password was not accepted".into(),
        )),
        429 => Err(Failure(
            EXIT_AUTH,
            describe("too many failed attempts; wait and retry"),
        )),
        404 => Err(Failure(EXIT_NOT_FOUND, describe("not found"))),
        // 422: a reload refused the configuration or certificate it read.
        400 | 422 => Err(Failure(EXIT_INVALID, describe("the request was refused"))),
        _ => Err(Failure::unreachable(format!(
            "the admin API answered {status}: {}",
            describe("")
        ))),
    }
}

/// Reads an answer into its API type.
fn answer<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| {
        Failure::unreachable(format!(
            "the admin API's answer is not what this CLI expects: {e}"
        ))
    })
}

fn request_body<T: Serialize>(body: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(body).map_err(|e| Failure(EXIT_INVALID, e.to_string()))
}

/// `--expires` as the user wrote it, in the API's canonical form.
fn expires_arg(text: &str, now_unix: u64) -> Result<String, String> {
    parse_expiry(text, now_unix)
        .map(expiry_text)
        .map_err(|e| format!("--expires: {e}"))
}

/// `--expires`, if given, in the wire's form.
fn expires_option(text: Option<String>) -> Result<Option<String>, Failure> {
    let now = crate::clock::Clock::new().unix();
    text.map(|e| expires_arg(&e, now))
        .transpose()
        .map_err(|m| Failure(EXIT_INVALID, m))
}

pub fn run(conn: Connection, cmd: TokenCommand) -> ExitCode {
    run_cmd(conn, Cmd::Token(cmd))
}

pub fn run_cluster(conn: Connection, cmd: ClusterCommand) -> ExitCode {
    run_cmd(conn, Cmd::Cluster(cmd))
}

/// `tokengate reload`: what SIGHUP does, with the outcome printed.
pub fn run_reload(conn: Connection) -> ExitCode {
    run_cmd(conn, Cmd::Reload)
}

fn run_cmd(conn: Connection, cmd: Cmd) -> ExitCode {
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

async fn execute(conn: &Connection, cmd: Cmd) -> Result<(), Failure> {
    // Before anything connects: the admin password would go with the request.
    if let Target::Url(url) = target(conn) {
        check_url(&url)?;
    }
    let cmd = match cmd {
        Cmd::Token(t) => t,
        Cmd::Reload => {
            let bytes = call(
                conn,
                "POST",
                "/api/reload",
                Some(request_body(&serde_json::json!({}))?),
            )
            .await?;
            let done: crate::reload::Reloaded = answer(&bytes)?;
            if conn.json {
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                let applied = if done.applied.is_empty() {
                    "nothing changed".to_owned()
                } else {
                    format!("applied {}", done.applied.join(", "))
                };
                println!(
                    "reloaded: {applied}; serving certificate SHA-256 {}",
                    done.certificate_sha256
                );
                if !done.restart_required.is_empty() {
                    println!(
                        "changed but needing a restart (started values stay in force): {}",
                        done.restart_required.join(", ")
                    );
                }
            }
            return Ok(());
        }
        Cmd::Cluster(ClusterCommand::Rotate) => {
            let bytes = call(
                conn,
                "POST",
                "/api/cluster/rotate",
                Some(request_body(&serde_json::json!({}))?),
            )
            .await?;
            let done: crate::admin::api::Rotated = answer(&bytes)?;
            if conn.json {
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                println!(
                    "retired {} boot(s): every access token is refused from now on; scripts exchange their refresh tokens again",
                    done.retired_boots
                );
            }
            return Ok(());
        }
    };
    match cmd {
        TokenCommand::Create {
            name,
            expires,
            restrict,
        } => {
            let expires = expires_option(expires)?;
            let body = request_body(&CreateToken {
                name,
                expires,
                restrictions: RestrictionSpec {
                    scopes: restrict.scope_rules()?,
                    read_only: restrict.read_only,
                    networks: restrict.networks.clone(),
                    rate_limit: restrict.rate_limit(),
                },
            })?;
            let bytes = call(conn, "POST", "/api/refresh-tokens", Some(body)).await?;
            let created: CreatedToken = answer(&bytes)?;
            if conn.json {
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                let expiry = created
                    .expires_at
                    .map(|e| format!("expires {e}"))
                    .unwrap_or("never expires".into());
                eprintln!(
                    "Created refresh token {} \"{}\" ({expiry}). Copy it now: it cannot be shown again.",
                    created.id, created.name
                );
                println!("{}", created.token);
            }
        }
        TokenCommand::List { expiring } => {
            let within = expiring
                .map(|w| {
                    crate::config::parse_duration(&w)
                        .map_err(|e| Failure(EXIT_INVALID, format!("--expiring: {e}")))
                })
                .transpose()?;
            let bytes = call(conn, "GET", "/api/refresh-tokens", None).await?;
            let mut tokens: Vec<TokenInfo> = answer(&bytes)?;
            if let Some(within) = within {
                let now = crate::clock::Clock::new().unix();
                tokens.retain(|t| {
                    let expires = t
                        .expires_at
                        .as_deref()
                        .and_then(crate::clock::parse_rfc3339)
                        .and_then(|e| u64::try_from(e).ok());
                    crate::api::expires_within(expires, now, within.as_secs())
                });
            }
            if conn.json {
                let text = serde_json::to_string(&tokens)
                    .map_err(|e| Failure::unreachable(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{}", table(&tokens));
            }
        }
        TokenCommand::Edit {
            id,
            name,
            expires,
            restrict,
            no_scopes,
            no_read_only,
            no_networks,
            no_rate_limit,
            full_access,
        } => {
            let expires = expires_option(expires)?;
            let edit = EditToken {
                name,
                expires,
                scopes: (!restrict.scopes.is_empty())
                    .then(|| restrict.scope_rules())
                    .transpose()?
                    .or((no_scopes || full_access).then(Vec::new)),
                read_only: if restrict.read_only {
                    Some(true)
                } else {
                    (no_read_only || full_access).then_some(false)
                },
                networks: (!restrict.networks.is_empty())
                    .then(|| restrict.networks.clone())
                    .or((no_networks || full_access).then(Vec::new)),
                rate_limit: match restrict.rate_limit() {
                    Some(r) => Some(Some(r)),
                    None => (no_rate_limit || full_access).then_some(None),
                },
            };
            if edit == EditToken::default() {
                return Err(Failure(
                    EXIT_INVALID,
                    "nothing to change: give --name, --expires or a restriction flag".into(),
                ));
            }
            let bytes = call(
                conn,
                "PATCH",
                &format!("/api/refresh-tokens/{id}"),
                Some(request_body(&edit)?),
            )
            .await?;
            let token: TokenInfo = answer(&bytes)?;
            if conn.json {
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                print!("{}", table(&[token]));
            }
        }
        TokenCommand::Rotate { id, grace } => {
            let grace = crate::config::parse_duration(&grace)
                .map_err(|e| Failure(EXIT_INVALID, format!("--grace: {e}")))?;
            let bytes = call(
                conn,
                "POST",
                &format!("/api/refresh-tokens/{id}/rotate"),
                Some(request_body(&RotateToken {
                    grace_seconds: grace.as_secs(),
                })?),
            )
            .await?;
            let rotated: RotatedToken = answer(&bytes)?;
            if conn.json {
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                let old = match &rotated.previous_token_valid_until {
                    Some(t) => format!("the old one keeps working until {t}"),
                    None => "the old one and its access tokens stopped working now".into(),
                };
                eprintln!(
                    "Rotated refresh token {} \"{}\": {old}. Copy the new one now: it cannot be shown again.",
                    rotated.token.id, rotated.token.name
                );
                println!("{}", rotated.token.token);
            }
        }
        TokenCommand::Delete { ids } => {
            let body = request_body(&DeleteTokens {
                ids: ids.into_iter().map(serde_json::Value::from).collect(),
            })?;
            let bytes = call(conn, "POST", "/api/refresh-tokens/delete", Some(body)).await?;
            let done: DeletedTokens = answer(&bytes)?;
            if conn.json {
                println!("{}", String::from_utf8_lossy(&bytes));
            } else {
                for d in &done.deleted {
                    println!("deleted {} \"{}\"", d.id, d.name);
                }
            }
            if !done.not_found.is_empty() {
                let missing: Vec<String> = done.not_found.iter().map(u64::to_string).collect();
                return Err(Failure(
                    EXIT_NOT_FOUND,
                    format!("no refresh token with id {}", missing.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// A token's restrictions in a few words: `full access`, or each kind set.
pub fn restrictions_text(r: &RestrictionSpec) -> String {
    let mut parts = Vec::new();
    if r.read_only {
        parts.push("read-only".to_owned());
    }
    for s in &r.scopes {
        parts.push(format!("{} {}", s.methods.join(","), s.path));
    }
    if !r.networks.is_empty() {
        parts.push(format!("from {}", r.networks.join(" ")));
    }
    if let Some(l) = r.rate_limit {
        parts.push(format!("{}/s burst {}", l.per_second, l.burst));
    }
    if parts.is_empty() {
        "full access".into()
    } else {
        parts.join("; ")
    }
}

/// A plain-text table of tokens for people.
fn table(rows: &[TokenInfo]) -> String {
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
        "RESTRICTIONS",
    ];
    let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.into());
    let body: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.name.clone(),
                if r.expiring_soon {
                    "expiring soon".into()
                } else {
                    r.status.clone()
                },
                r.created_at.clone(),
                or(&r.expires_at, "never"),
                or(&r.last_used_at, "never"),
                r.use_count.to_string(),
                or(&r.last_client_ip, "-"),
                restrictions_text(&r.restrictions),
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
    use crate::clock::rfc3339;

    #[test]
    fn expires_forms() {
        let now = 1_800_000_000;
        assert_eq!(expires_arg("never", now).unwrap(), "never");
        assert_eq!(expires_arg("90d", now).unwrap(), rfc3339(now + 90 * 86_400));
        assert_eq!(
            expires_arg("2027-05-01", now).unwrap(),
            "2027-05-01T00:00:00Z"
        );
        assert_eq!(
            expires_arg("2027-05-01T00:00:00Z", now).unwrap(),
            "2027-05-01T00:00:00Z"
        );
        assert!(expires_arg("someday", now).is_err());
        assert!(expires_arg("2020-01-01", now).is_err());
    }

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

    #[test]
    fn table_aligns_columns() {
        let rows = vec![TokenInfo {
            id: 1,
            name: "a".into(),
            status: "active".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            last_used_at: None,
            use_count: 0,
            last_client_ip: None,
            last_user_agent: None,
            expiring_soon: false,
            restrictions: Default::default(),
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  NAME  STATUS"));
        assert!(lines[1].contains("never"));
        assert!(lines[1].ends_with("full access"), "{t}");
        assert!(table(&[]).contains("No refresh tokens"));
    }

    #[test]
    fn scope_and_restriction_words() {
        let r = scope_arg("get,HEAD /iwc/api/databases/**").ok().unwrap();
        assert_eq!(r.methods, ["GET", "HEAD"]);
        assert_eq!(r.path, "/iwc/api/databases/**");
        let any = scope_arg("/status").ok().unwrap();
        assert_eq!(
            (any.methods, any.path.as_str()),
            (vec!["*".to_owned()], "/status")
        );
        assert!(scope_arg("GET").is_err());
        let spec = RestrictionSpec {
            scopes: vec![r],
            read_only: true,
            networks: vec!["10.0.0.0/8".into()],
            rate_limit: Some(RateLimit {
                per_second: 5,
                burst: 10,
            }),
        };
        assert_eq!(
            restrictions_text(&spec),
            "read-only; GET,HEAD /iwc/api/databases/**; from 10.0.0.0/8; 5/s burst 10"
        );
    }
}

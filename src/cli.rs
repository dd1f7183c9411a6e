//! `tokengate token …`, `tokengate user …`: a command-line client of the
//! admin API.
//!
//! Exit codes: 0 success; 1 the admin API could not be reached or failed;
//! 2 bad command line, or a request the API refused as invalid or in
//! conflict (an existing account name, the last admin); 3 wrong or missing
//! password (or too many failed attempts); 4 no such token or account;
//! 5 forbidden: the account's role may not do this.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the CLI's answers go to stdout and its messages to stderr"
)]

mod commands;
mod connect;
mod found;
mod prompt;
mod token_table;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::admin::api::{RateLimit, ScopeRule};
use connect::{check_url, target, Target};

pub const EXIT_UNREACHABLE: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_AUTH: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;
pub const EXIT_FORBIDDEN: u8 = 5;

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
    /// The account to act as over the admin listener [default: admin]. The
    /// socket always acts as `admin`.
    #[arg(long, env = "TOKENGATE_ADMIN_USER", global = true, value_name = "NAME")]
    pub user: Option<String>,
    /// The account's password (prefer the environment variable: flags show
    /// up in `ps`). Neither given: asked for on the terminal, without echo.
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
        /// It does not exchange before this: `2h` (from now), `2027-05-01`
        /// or an RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        not_before: Option<String>,
        /// It exchanges at most this many times (default: no limit).
        #[arg(long, value_name = "N")]
        max_uses: Option<u64>,
    },
    /// List refresh tokens (never their strings).
    List {
        /// Only tokens that expire within this (`7d`, `12h`), e.g. to
        /// rotate or extend them before a script's credential lapses.
        #[arg(long, value_name = "WITHIN")]
        expiring: Option<String>,
        /// Only tokens that break the lifetime policy (`tokens.max_lifetime`).
        #[arg(long)]
        violations: bool,
    },
    /// Change a token's name, expiry or restrictions; its live access
    /// tokens follow from their next request. Only what is given changes.
    Edit(EditArgs),
    /// Issue a new secret for a token (same id, name, restrictions and
    /// usage); the new string is printed this once.
    Rotate {
        /// The token's id (the ID column of `tokengate token list`).
        id: u64,
        /// How long the old secret keeps working (`1h`, `2d`; at most 30
        /// days). Default 0: it stops now, and so do the access tokens
        /// issued under it.
        #[arg(long, default_value = "0")]
        grace: String,
    },
    /// Suspend a token: its exchanges are refused and its access tokens
    /// end now, until `resume`.
    Suspend {
        /// The token's id (the ID column of `tokengate token list`).
        id: u64,
        /// Why (shown in the list and the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Let a suspended token exchange again (its access tokens from before
    /// the suspension stay ended).
    Resume {
        /// The token's id (the ID column of `tokengate token list`).
        id: u64,
    },
    /// Delete refresh tokens by id, all in one transaction.
    Delete {
        /// The tokens' ids (the ID column of `tokengate token list`).
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
    },
}

/// `tokengate token edit`'s arguments.
#[derive(clap::Args, Debug)]
pub struct EditArgs {
    /// The token's id (the ID column of `tokengate token list`).
    id: u64,
    /// A new name.
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
    /// It does not exchange before this (as for create).
    #[arg(long, value_name = "TIME")]
    not_before: Option<String>,
    /// Remove the not-before.
    #[arg(long, conflicts_with = "not_before")]
    no_not_before: bool,
    /// A new usage limit: this many exchanges from now on.
    #[arg(long, value_name = "N")]
    max_uses: Option<u64>,
    /// Remove the usage limit.
    #[arg(long, conflicts_with = "max_uses")]
    no_max_uses: bool,
}

/// `tokengate cluster …`.
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Retire every access token of every replica at once (each replica
    /// draws a new boot; scripts exchange their refresh tokens again).
    /// With redb: this gateway's access tokens.
    Rotate,
}

impl Connection {
    /// The account the requests act as over the admin listener.
    fn user(&self) -> &str {
        self.user
            .as_deref()
            .unwrap_or(crate::admin::password::ADMIN_USER)
    }
}

/// `tokengate user …`: the admin accounts (admin role only).
#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// List the accounts: name, role, where it signs in, enabled, last login.
    List,
    /// Create an account. Without --password-stdin a password is generated
    /// and printed this once.
    Create {
        /// 1 to 64 ASCII letters, digits and `._-@`.
        name: String,
        /// admin, manager, creator or viewer.
        #[arg(long, value_parser = parse_role)]
        role: crate::roles::Role,
        /// Read the password from the first line of standard input (at
        /// least 12 characters) instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change an account's role, enable or disable it, or set its password.
    /// Only what is given changes.
    Edit {
        name: String,
        /// admin, manager, creator or viewer; takes effect on the account's
        /// next request.
        #[arg(long, value_parser = parse_role)]
        role: Option<crate::roles::Role>,
        /// Refuse its logins and end its sessions at once.
        #[arg(long)]
        disable: bool,
        /// Allow its logins again.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// A new password, from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete an account; its sessions end at once. Its tokens stay.
    Delete { name: String },
}

fn parse_role(text: &str) -> Result<crate::roles::Role, String> {
    text.parse()
}

/// What the CLI asks of the admin API.
enum Cmd {
    Token(TokenCommand),
    User(UserCommand),
    Cluster(ClusterCommand),
    Reload,
}

struct Failure(u8, String);

impl Failure {
    fn unreachable(msg: impl Into<String>) -> Failure {
        Failure(EXIT_UNREACHABLE, msg.into())
    }
}

pub fn run(conn: Connection, cmd: TokenCommand) -> ExitCode {
    run_cmd(conn, Cmd::Token(cmd))
}

pub fn run_user(conn: Connection, cmd: UserCommand) -> ExitCode {
    run_cmd(conn, Cmd::User(cmd))
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
    match rt.block_on(execute(conn, cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("tokengate: {msg}");
            ExitCode::from(code)
        }
    }
}

/// Checks where the command goes and who it acts as, then runs it.
async fn execute(mut conn: Connection, cmd: Cmd) -> Result<(), Failure> {
    // Before anything connects: the password would go with the request.
    match target(&conn) {
        Target::Url(url) => {
            check_url(&url)?;
            users::check_name("--user", conn.user())?;
            conn.password = ask_password(&conn)?;
        }
        // The socket's file permissions are the proof, and they prove the
        // gateway's own user: it acts as `admin`, whatever was asked.
        Target::Socket(socket) => {
            if let Some(user) = &conn.user {
                eprintln!(
                    "tokengate: acting as admin over the admin socket {}; --user {user} applies to --url only",
                    socket.display()
                );
            }
        }
    }
    let conn = &conn;
    match cmd {
        Cmd::Reload => commands::reload(conn).await,
        Cmd::Cluster(ClusterCommand::Rotate) => commands::cluster_rotate(conn).await,
        Cmd::Token(TokenCommand::Create {
            name,
            expires,
            restrict,
            not_before,
            max_uses,
        }) => {
            let limits = commands::Limits {
                not_before,
                max_uses,
            };
            commands::create(conn, name, expires, &restrict, limits).await
        }
        Cmd::Token(TokenCommand::List {
            expiring,
            violations,
        }) => commands::list(conn, expiring, violations).await,
        Cmd::Token(TokenCommand::Suspend { id, reason }) => {
            commands::suspend(conn, id, reason).await
        }
        Cmd::Token(TokenCommand::Resume { id }) => commands::resume(conn, id).await,
        Cmd::Token(TokenCommand::Edit(args)) => commands::edit(conn, args).await,
        Cmd::Token(TokenCommand::Rotate { id, grace }) => commands::rotate(conn, id, &grace).await,
        Cmd::Token(TokenCommand::Delete { ids }) => commands::delete(conn, ids).await,
        Cmd::User(cmd) => users::run(conn, cmd).await,
    }
}

/// The password for the admin listener: the one given, else typed at the
/// terminal when stdin is one. (A new account password that
/// `--password-stdin` reads from a pipe leaves no terminal to ask.)
fn ask_password(conn: &Connection) -> Result<Option<String>, Failure> {
    if let Some(p) = conn.password.as_ref().filter(|p| !p.is_empty()) {
        return Ok(Some(p.clone()));
    }
    if !prompt::interactive() {
        // `call` says what is missing, as before.
        return Ok(None);
    }
    prompt::password(&format!("Password for {}: ", conn.user()))
        .map(Some)
        .map_err(|e| Failure(EXIT_AUTH, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::RestrictionSpec;

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
            token_table::restrictions_text(&spec),
            "read-only; GET,HEAD /iwc/api/databases/**; from 10.0.0.0/8; 5/s burst 10"
        );
    }
}

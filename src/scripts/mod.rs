//! The scripts' side of the gateway, on the script's machine:
//!
//! - `tokengate access-token` (`access_token`): a valid access token on
//!   stdout, cached until under 60 s remain;
//! - `tokengate agent` (`agent`): a local listener that adds a valid
//!   access token to every request it sends on to the gateway.
//!
//! Both are clients of the public listener only (the token endpoint and
//! the proxied API): they need a refresh token, never the admin password.
//!
//! `access-token` exit codes: 0 printed; 1 refused by the gateway (an
//! unknown, deleted or expired refresh token, or a throttle); 2 usage (a
//! bad argument, a refresh-token file group or others can read); 3 the
//! gateway could not be reached (or answered with a server error). The
//! agent exits 0 when stopped (SIGINT, SIGTERM), 1 when the gateway
//! refused its refresh token, 2 on a usage error.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: the token to stdout, failures to stderr"
)]

mod access_token;
mod agent;
mod gateway;

use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

/// Which gateway, with which refresh token.
#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// The gateway's public URL, e.g. https://gateway.example.com:8443.
    #[arg(long, env = "TOKENGATE_GATEWAY")]
    pub gateway: String,
    /// The file holding the refresh token (tgr_…). It must not be readable
    /// by group or others (chmod 600).
    #[arg(long, env = "TOKENGATE_REFRESH_TOKEN_FILE", value_name = "FILE")]
    pub refresh_token_file: PathBuf,
    /// PEM file with the certificate(s) to trust for the gateway. Default:
    /// the system's trust store.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// `tokengate access-token`'s arguments.
#[derive(clap::Args, Debug)]
pub struct AccessTokenArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Exchange now, even if the cached access token has time left.
    #[arg(long)]
    pub force: bool,
}

/// `tokengate agent`'s arguments.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Where clients connect: 127.0.0.1:PORT (or another loopback
    /// address), or unix:PATH (a socket only your user may use).
    #[arg(long, value_name = "ADDRESS")]
    pub listen: String,
    /// Allow a --listen address other than loopback. Anyone who reaches
    /// it acts with your refresh token.
    #[arg(long)]
    pub allow_remote: bool,
}

struct Failure(u8, String);

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("tokengate: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        })
}

fn finish<T>(result: Result<T, Failure>, ok: impl FnOnce(T)) -> ExitCode {
    match result {
        Ok(v) => {
            ok(v);
            ExitCode::SUCCESS
        }
        Err(Failure(code, msg)) => {
            eprintln!("tokengate: {msg}");
            ExitCode::from(code)
        }
    }
}

/// `tokengate access-token`: prints a valid access token.
pub fn run_access_token(args: AccessTokenArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    finish(rt.block_on(access_token::run(&args)), |t| println!("{t}"))
}

/// `tokengate agent`: runs until stopped, or until the gateway refuses
/// the refresh token.
pub fn run_agent(args: AgentArgs) -> ExitCode {
    // Several workers: one slow upstream call must not hold up the rest.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokengate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    finish(rt.block_on(agent::run(&args)), |()| {})
}

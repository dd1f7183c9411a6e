//! The `tokengate` binary: parse the command line, set up logging, load the
//! configuration, start the gateway, and stop it cleanly on SIGINT/SIGTERM.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: results to stdout, failures to stderr"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tokengate::config::LogFormat;
use tokengate::{Config, Gateway, StartOptions};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// `tokengate --version`: the release and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("TG_GIT_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "tokengate",
    version = VERSION,
    about = "TLS gateway adding DPA-style refresh/access tokens to an HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (default: config/tokengate.toml, if it exists).
        #[arg(long, env = "TOKENGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Try the whole flow with nothing set up: temporary data, a built-in
        /// sample upstream, a ready refresh token, and copy-paste commands.
        #[arg(long)]
        dev: bool,
    },
    /// Load and validate the configuration, print the result, and exit.
    CheckConfig {
        #[arg(long, env = "TOKENGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print an argon2 hash of a password read from stdin, for admin.password_hash.
    HashPassword,
    /// The PostgreSQL database (storage.backend = "postgres").
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Cluster-wide operations through a running gateway's admin API.
    Cluster {
        #[command(flatten)]
        conn: tokengate::cli::Connection,
        #[command(subcommand)]
        command: tokengate::cli::ClusterCommand,
    },
    /// Reload the running gateway's certificate and live settings, as
    /// SIGHUP does (through its admin API), and print what changed.
    Reload {
        #[command(flatten)]
        conn: tokengate::cli::Connection,
    },
    /// Manage refresh tokens through a running gateway's admin API.
    Token {
        #[command(flatten)]
        conn: tokengate::cli::Connection,
        #[command(subcommand)]
        command: tokengate::cli::TokenCommand,
    },
    /// Manage the admin accounts (name, role, enabled, password) through a
    /// running gateway's admin API; needs the admin role.
    User {
        #[command(flatten)]
        conn: tokengate::cli::Connection,
        #[command(subcommand)]
        command: tokengate::cli::UserCommand,
    },
    /// Print a valid access token (cached; exchanged when under 60 s
    /// remain), e.g. for curl -H "Authorization: Bearer $(tokengate access-token …)".
    ///
    /// Exit codes: 0 printed, 1 refused by the gateway, 2 usage, 3 gateway unreachable.
    AccessToken(tokengate::scripts::AccessTokenArgs),
    /// Listen locally and send every request on to the gateway with a valid
    /// access token: point any HTTP client's base URL at it.
    Agent(tokengate::scripts::AgentArgs),
    /// The audit log: check its hash chain (`tokengate audit verify FILE…`).
    Audit {
        #[command(subcommand)]
        command: tokengate::audit_verify::AuditCommand,
    },
    /// Print a shell completion script for this command line, for packagers.
    ///
    /// `tokengate completions bash > /usr/share/bash-completion/completions/tokengate`
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page tokengate(1), generated from this command line.
    Man {
        /// Write every page instead (tokengate.1, tokengate-serve.1,
        /// tokengate-token-create.1, …) into this directory.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Apply pending schema migrations and exit (every start does this too,
    /// under the same lock; this shows it done before a rollout).
    Migrate {
        #[arg(long, env = "TOKENGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs as its configuration says (`[log]`), so it sets up
    // logging once that is loaded; every other command logs plain text.
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logging(LogFormat::Text, "info");
    }

    match cli.command {
        Command::Token { conn, command } => tokengate::cli::run(conn, command),
        Command::User { conn, command } => tokengate::cli::run_user(conn, command),
        Command::Cluster { conn, command } => tokengate::cli::run_cluster(conn, command),
        Command::Reload { conn } => tokengate::cli::run_reload(conn),
        Command::AccessToken(args) => tokengate::scripts::run_access_token(args),
        Command::Agent(args) => tokengate::scripts::run_agent(args),
        Command::Audit { command } => tokengate::audit_verify::run_audit(command),
        Command::Serve { config, dev } => serve(config, dev),
        Command::Db {
            command: DbCommand::Migrate { config },
        } => db_migrate(config),
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                println!("configuration is valid\n{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tokengate: configuration error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tokengate",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { out_dir } => {
            let written = match &out_dir {
                Some(dir) => clap_mangen::generate_to(man_command(), dir),
                None => clap_mangen::Man::new(man_command()).render(&mut std::io::stdout()),
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tokengate: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashPassword => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err()
                || line.trim_end_matches(['\r', '\n']).is_empty()
            {
                eprintln!("tokengate: type the password on standard input");
                return ExitCode::from(2);
            }
            match tokengate::hash_password(line.trim_end_matches(['\r', '\n'])) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tokengate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The command line as the man pages show it: without `completions` and
/// `man`, which `--help` lists for everyone but which only generate these
/// files for packagers (no tokengate-man.1 page about writing man pages).
fn man_command() -> clap::Command {
    Cli::command()
        .mut_subcommand("completions", |c| c.hide(true))
        .mut_subcommand("man", |c| c.hide(true))
}

/// Changes the log filter of the running process (`log.level`).
type LogFilterHandle = reload::Handle<EnvFilter, Registry>;

/// Sets up the process log on stderr: `format` (`log.format`), filtered by
/// `TOKENGATE_LOG` when set and valid, else by `level` (`log.level`). The
/// filter sits behind a reload layer; the handle returned changes it.
fn init_logging(format: LogFormat, level: &str) -> LogFilterHandle {
    let filter = EnvFilter::try_from_env("TOKENGATE_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr),
        ),
        // Colour only for a person at a terminal; log files and journald get plain text.
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    handle
}

/// Applies a reloaded `log.level`, unless `TOKENGATE_LOG` set the filter
/// (the environment wins, at start and at every reload).
fn set_log_level(handle: &LogFilterHandle, level: &str) -> Result<(), String> {
    if std::env::var_os("TOKENGATE_LOG").is_some() {
        return Ok(());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| format!("log.level {level:?}: {e}"))?;
    handle.reload(filter).map_err(|e| e.to_string())
}

fn serve(config_path: Option<PathBuf>, dev: bool) -> ExitCode {
    let config = match Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            init_logging(LogFormat::Text, "info");
            eprintln!("tokengate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // Kept for `log.level` reloads.
    let log_filter = init_logging(config.log.format, &config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokengate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let password = std::env::var("TOKENGATE_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if dev {
        runtime.block_on(tokengate::serve_dev(config, password, wait_for_signal()))
    } else {
        runtime.block_on(async move {
            let opts = StartOptions {
                admin_password: password,
                // A reload reads the same file and environment again.
                config_source: Some(std::sync::Arc::new(move || {
                    Config::load(config_path.as_deref())
                })),
                reload_on_sighup: true,
                log_level: Some(std::sync::Arc::new(move |c: &Config| {
                    set_log_level(&log_filter, &c.log.level)
                })),
                ..StartOptions::default()
            };
            let gateway = match Gateway::start(config, opts).await {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("tokengate: cannot start: {e}");
                    return ExitCode::FAILURE;
                }
            };
            wait_for_signal().await;
            tracing::info!("shutting down: draining in-flight requests");
            gateway.shutdown().await;
            ExitCode::SUCCESS
        })
    }
}

fn db_migrate(config: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tokengate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let tokengate::config::StorageBackend::Postgres(pg) = &config.storage.backend else {
        eprintln!(
            "tokengate: storage.backend is \"redb\": there is no database schema to migrate (set storage.backend = \"postgres\")"
        );
        return ExitCode::from(2);
    };
    match tokengate::migrate_postgres(pg) {
        Ok(m) if m.from == m.to => {
            println!(
                "schema is up to date (version {}) at {}",
                m.to, pg.display_url
            );
            ExitCode::SUCCESS
        }
        Ok(m) => {
            println!(
                "migrated the schema from version {} to {} at {}",
                m.from, m.to, pg.display_url
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokengate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// jemalloc instead of glibc's allocator. Under HTTP/2 many objects of one
/// size are alive at once (10 streams per connection, each with its own
/// header maps, task and buffers), more than glibc's per-thread cache keeps
/// (7 per size): most `malloc`s took its slow path (~300 instructions,
/// `_int_malloc` sorting its bins). jemalloc's thread caches hold far more
/// per size class. Measured in benches/load/README.md ("jemalloc, and
/// HTTP/1.1's TLS read buffer given back between reads"). mimalloc was
/// tried before and dropped: it took more memory per idle connection.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

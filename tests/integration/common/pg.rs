//! A PostgreSQL for the tests: `TOKENGATE_TEST_POSTGRES_URL` when it is set
//! (its user needs CREATEDB; the tests connect with `sslmode = disable`, and
//! the URL must carry no `sslmode`), otherwise a throwaway server started from
//! Debian's packages (`/usr/lib/postgresql/<version>/bin`; tests/run.sh
//! installs them when missing).
//!
//! One server per test binary, started by the first test that asks for it;
//! every test gets a database of its own ([`TestDb`]), so tests run in
//! parallel without seeing each other's rows, and its `Drop` removes it.
//!
//! The throwaway server lives in a temp dir owned by the `postgres` user
//! (initdb refuses to run as root), listens on a free loopback port and on a
//! Unix socket in that dir, and trusts local connections. Rust never drops
//! statics, so its removal is left to a guardian shell started with it: the
//! guardian blocks reading a pipe whose only write end this process holds.
//! However the test binary ends (success, panic, kill -9), the kernel closes
//! that end, the guardian's read returns, and it stops the server
//! (immediate mode) and deletes the dir. No polling, nothing left behind.
//!
//! A test that stops PostgreSQL under the gateway (an outage) needs a server
//! of its own instead, which it can stop and start again on the same port:
//! [`PgServer`], a throwaway server made the same way (always from Debian's
//! binaries, whatever `TOKENGATE_TEST_POSTGRES_URL` says: a given server is
//! not the test's to stop).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The variable naming an existing server to use instead of a throwaway one.
pub const URL_VAR: &str = "TOKENGATE_TEST_POSTGRES_URL";

/// initdb + start + the first connection: seconds on a busy 2-core machine;
/// anything past this is a hang worth failing loudly on.
const START_TIMEOUT_SECS: u64 = 60;
/// Creating or dropping one test database.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The server this test binary uses: a URL with no database name in its
/// path, and (for a throwaway one) what keeps it alive.
struct Server {
    /// `postgres://user@host:port` (plus `?…` if the given URL had a query).
    base: String,
    /// The database the admin connection uses to create and drop others.
    admin_db: String,
    /// The throwaway server's self-signed certificate (for 127.0.0.1 and
    /// localhost), to test TLS against; `None` for a given server.
    tls_cert: Option<PathBuf>,
    /// The throwaway server (its guardian stops and removes it at process
    /// exit); `None` for a given server.
    _throwaway: Option<Throwaway>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// One test's own database on the shared server; dropped with the test.
pub struct TestDb {
    /// `postgres://…/<name>`: what `storage.postgres.url` is set to.
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates a fresh, empty database (starting the server on first use).
    /// Panics, naming what to do, when no PostgreSQL can be had.
    pub fn new() -> TestDb {
        let server = match SERVER.get_or_init(start_or_connect) {
            Ok(s) => s,
            Err(e) => panic!("no PostgreSQL for the tests: {e}"),
        };
        let name = format!(
            "tg_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin_url = with_db(&server.base, &server.admin_db);
        admin_sql(&admin_url, &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TestDb {
            url: with_db(&server.base, &name),
            name,
            admin_url,
        }
    }

    /// The server's certificate when it is a throwaway one with TLS (the
    /// tests of `sslmode` need it); `None` for `TOKENGATE_TEST_POSTGRES_URL`.
    pub fn tls_cert() -> Option<PathBuf> {
        match SERVER.get_or_init(start_or_connect) {
            Ok(s) => s.tls_cert.clone(),
            Err(e) => panic!("no PostgreSQL for the tests: {e}"),
        }
    }

    /// Runs one SQL statement (or several, `;`-separated) in this database.
    pub fn execute(&self, sql: &str) {
        admin_sql(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The first column of the first row of `sql`, as text.
    pub fn query_text(&self, sql: &str) -> Option<String> {
        let url = self.url.clone();
        let sql = sql.to_owned();
        on_own_runtime(async move {
            let client = connect(&url).await?;
            let rows = client.simple_query(&sql).await.map_err(|e| e.to_string())?;
            Ok(rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            }))
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for TestDb {
    #[allow(
        clippy::print_stderr,
        reason = "a leftover database is worth a line in the test output, not a panic in Drop"
    )]
    fn drop(&mut self) {
        // FORCE ends the connections a failed test may have left open.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin_sql(&self.admin_url, &sql) {
            eprintln!("test database {} not dropped: {e}", self.name);
        }
    }
}

fn start_or_connect() -> Result<Server, String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => external(url.trim()),
        _ => throwaway(),
    }
}

/// Splits the given URL into a base (no database) and its database, which
/// becomes the admin database.
fn external(url: &str) -> Result<Server, String> {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = head
        .split_once("://")
        .ok_or_else(|| format!("{URL_VAR} is not a postgres:// URL"))?;
    let (authority, db) = match rest.split_once('/') {
        Some((a, d)) if !d.is_empty() => (a, d),
        Some((a, _)) => (a, "postgres"),
        None => (rest, "postgres"),
    };
    let mut base = format!("{scheme}://{authority}");
    if let Some(q) = query {
        base.push('?');
        base.push_str(q);
    }
    Ok(Server {
        base,
        admin_db: db.to_owned(),
        tls_cert: None,
        _throwaway: None,
    })
}

/// `base` with `db` as its database name (before any query string).
fn with_db(base: &str, db: &str) -> String {
    match base.split_once('?') {
        Some((b, q)) => format!("{b}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// The newest installed version's binaries.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb".to_owned())
}

/// A command run as the `postgres` user when we are root (initdb and the
/// server refuse root), as ourselves otherwise.
fn as_owner(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn id_of(flag: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .map_err(|e| format!("id {flag} postgres: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "no `postgres` user (install the postgresql package)".to_owned())
}

/// The shared server of this test binary: a throwaway one.
fn throwaway() -> Result<Server, String> {
    // Nobody stops this one under the tests: commits need not wait for the WAL.
    let t = Throwaway::start(false, true)?;
    Ok(Server {
        base: format!("postgres://postgres@127.0.0.1:{}", t.port),
        admin_db: "postgres".into(),
        tls_cert: Some(t.tls_cert.clone()),
        _throwaway: Some(t),
    })
}

/// A PostgreSQL server in a temp dir owned by the `postgres` user, on a free
/// loopback port (and a Unix socket in that dir), trusting local connections.
struct Throwaway {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    /// Whether we run as root, so the server's commands run as `postgres`.
    root: bool,
    port: u16,
    /// The server's options (`pg_ctl -o`), the same at every start.
    options: String,
    tls_cert: PathBuf,
    /// Its stdin is held, never written: closing it (when this is dropped,
    /// or at process exit however it ends) makes the guardian stop the
    /// server and remove its directory.
    guardian: Child,
}

impl Throwaway {
    /// initdb and the first start. `durable`: every commit waits for its
    /// WAL to be written (`synchronous_commit = on`), so a commit the server
    /// acknowledged survives an immediate stop; otherwise the last ones may
    /// not, which is fine for a server nobody stops.
    /// With `tls`, it offers TLS (its own self-signed certificate); without,
    /// it answers a TLS request with "no", as a server without TLS does.
    fn start(durable: bool, tls: bool) -> Result<Throwaway, String> {
        let bin = bin_dir().map_err(|e| {
            format!("{e}; install Debian's postgresql (tests/run.sh does) or set {URL_VAR}")
        })?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = tempfile::Builder::new()
            .prefix("tokengate-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        if root {
            let (uid, gid) = (id_of("-u")?, id_of("-g")?);
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let data = dir.join("data");
        // The guardian first: from here on, whatever happens, the dir goes away.
        let stop = format!(
            "{}'{}' -D '{}' -m immediate -t 10 stop >/dev/null 2>&1; rm -rf '{}'",
            if root { "runuser -u postgres -- " } else { "" },
            bin.join("pg_ctl").display(),
            data.display(),
            dir.display()
        );
        let guardian = Command::new("sh")
            .arg("-c")
            .arg(format!("cat >/dev/null; {stop}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a ^C to the test run must not kill it before the cleanup.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cleanup guardian: {e}"))?;
        let mut initdb = as_owner(root, &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            // A throwaway cluster: durability only costs time here.
            .arg("--no-sync");
        run(initdb, "initdb")?;
        // TLS too, so that sslmode = require / verify-full can be tested.
        let (cert, key) = (dir.join("tls/server.crt"), dir.join("tls/server.key"));
        tokengate::tls::generate_self_signed(&cert, &key)
            .map_err(|e| format!("certificate: {e}"))?;
        if root {
            // The server reads its key only if it owns it (0600, as generated).
            let (uid, gid) = (id_of("-u")?, id_of("-g")?);
            for p in [&cert, &key] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        // fsync = off even when durable: an immediate stop kills the
        // server's processes, not the kernel, which still writes the pages.
        let synchronous_commit = if durable { "on" } else { "off" };
        let mut server = Throwaway {
            options: String::new(),
            port: 0,
            dir,
            data,
            bin,
            root,
            tls_cert: cert,
            guardian,
        };
        let mut last = String::new();
        // A spare port (no other test draws it), and a retry all the same.
        for _ in 0..3 {
            server.port = super::spare_port();
            server.options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit={synchronous_commit} -c full_page_writes=off \
                 -c max_connections=300 -c ssl={} -c ssl_cert_file={} -c ssl_key_file={}",
                server.port,
                server.dir.display(),
                if tls { "on" } else { "off" },
                server.tls_cert.display(),
                key.display()
            );
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `pg_ctl start`, waiting until the server accepts connections.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut start = as_owner(self.root, &self.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", &START_TIMEOUT_SECS.to_string(), "-o"])
            .arg(&self.options)
            .arg("start");
        run(start, "pg_ctl start").map_err(|e| format!("{e}\n{}", self.log()))
    }

    /// `pg_ctl stop -m immediate`: the server's processes end at once, as
    /// in a crash; the next start recovers from the WAL.
    fn pg_ctl_stop_immediate(&self) -> Result<(), String> {
        let mut stop = as_owner(self.root, &self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(&self.data)
            .args([
                "-m",
                "immediate",
                "-w",
                "-t",
                &START_TIMEOUT_SECS.to_string(),
            ])
            .arg("stop");
        run(stop, "pg_ctl stop -m immediate").map_err(|e| format!("{e}\n{}", self.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        // Closing its stdin sets the guardian off; waiting for it means the
        // server is gone and its dir removed when the drop returns.
        drop(self.guardian.stdin.take());
        let _ = self.guardian.wait();
    }
}

/// A PostgreSQL server of one test's own, which the test may stop (as in a
/// crash) and start again on the same port: for outages. Always a throwaway
/// server from Debian's binaries. Dropping it stops it and removes its files.
pub struct PgServer {
    server: Throwaway,
}

/// The database [`PgServer::url`] names.
const PG_SERVER_DB: &str = "tokengate";

impl PgServer {
    /// initdb, start, and create the database [`PgServer::url`] names.
    /// Commits are durable: what the server acknowledged survives
    /// [`PgServer::stop_immediate`].
    pub fn new() -> PgServer {
        Self::with_tls(true)
    }

    /// As [`PgServer::new`], offering no TLS at all (as many a private
    /// network's database does).
    pub fn without_tls() -> PgServer {
        Self::with_tls(false)
    }

    fn with_tls(tls: bool) -> PgServer {
        let server = Throwaway::start(true, tls)
            .unwrap_or_else(|e| panic!("no PostgreSQL server of the test's own: {e}"));
        let pg = PgServer { server };
        admin_sql(
            &format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port()),
            &format!("CREATE DATABASE {PG_SERVER_DB}"),
        )
        .unwrap_or_else(|e| panic!("CREATE DATABASE {PG_SERVER_DB}: {e}"));
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/tokengate` (no TLS needed: use
    /// `sslmode = disable`).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{PG_SERVER_DB}",
            self.port()
        )
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`);
    /// returns once its processes are gone and the port is closed.
    pub fn stop_immediate(&self) {
        self.server
            .pg_ctl_stop_immediate()
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the server again on the same port; returns once it accepts
    /// connections (after its crash recovery).
    pub fn start(&self) {
        self.server.pg_ctl_start().unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn admin_sql(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    on_own_runtime(async move {
        let client = connect(&url).await?;
        client.batch_execute(&sql).await.map_err(|e| e.to_string())
    })
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own:
/// callable from sync code, from `Drop`, and from inside a test's runtime
/// (which must not be blocked on by itself).
fn on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            tokio::time::timeout(ADMIN_TIMEOUT, f)
                .await
                .map_err(|_| format!("no answer within {ADMIN_TIMEOUT:?}"))?
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_owned())?
}

//! Cluster-mode replicas as operators run them: the built `tokengate`
//! binary, one process per replica, each with its own data directory, config
//! file, ports and audit file, all sharing one PostgreSQL database, one
//! server secret and one TLS certificate (so one client trusts them all).
//!
//! A replica listens on spare ports (`common::spare_port`) and its ports
//! are read from its "tokengate listening" log line; a restart binds the
//! same ports again, so a load balancer in front keeps finding it. Each boot's stdout
//! and stderr go to a file of their own (`boot-<n>.log`) for assertions and
//! failure messages. Replicas are killed (SIGKILL) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::process::{Child, Command};

use super::{eventually, poll_until, Resp, TestClient, ADMIN_PASSWORD};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// From spawn to ready (migrations, argon2 of the admin password, first
/// catch-up) on a busy 2-core machine; past this it is a hang.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the replicas of one test share: the database, the server secret,
/// the certificate, the upstream, and environment settings for all.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub db_url: String,
    pub upstream: SocketAddr,
    pub cert: PathBuf,
    key: PathBuf,
    /// The server secret every replica is given (`storage.secret_file`).
    pub secret: PathBuf,
    /// Settings every replica gets on top of the basics (variable, value).
    env: Vec<(String, String)>,
    /// TOML appended to every replica's configuration file (what the
    /// environment cannot say, such as `[[webhooks]]` entries).
    toml: String,
}

impl Cluster {
    /// A cluster on the PostgreSQL database `db_url` (no TLS to it: the
    /// replicas get `sslmode = disable`), proxying to `upstream`.
    pub fn new(db_url: &str, upstream: SocketAddr) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("certs/tokengate.crt");
        let key = dir.path().join("certs/tokengate.key");
        tokengate::tls::generate_self_signed(&cert, &key).unwrap();
        let secret = write_secret(&dir.path().join("secret"));
        Cluster {
            dir,
            db_url: db_url.to_owned(),
            upstream,
            cert,
            key,
            secret,
            env: Vec::new(),
            toml: String::new(),
        }
    }

    /// Appends `toml` to the configuration file of every replica started from now on.
    pub fn with_toml(mut self, toml: &str) -> Cluster {
        self.toml.push_str(toml);
        self
    }

    /// Adds `TOKENGATE_…` settings for every replica started from now on.
    pub fn with_env(mut self, key: &str, value: &str) -> Cluster {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A server secret other than the cluster's, in a file of its own.
    pub fn another_secret(&self) -> PathBuf {
        write_secret(&self.dir.path().join("another-secret"))
    }

    /// Starts replica `name` (`cluster.name`) and waits until it is ready;
    /// panics with its log if it exits or hangs instead.
    pub async fn start(&self, name: &str) -> Replica {
        let mut r = self.spawn(name, &[]).await;
        if let Err(e) = r.wait_ready().await {
            panic!("replica {name} did not start: {e}");
        }
        r
    }

    /// Starts the process of replica `name` with `extra` settings on top of
    /// the cluster's, without waiting for it.
    pub async fn spawn(&self, name: &str, extra: &[(&str, &str)]) -> Replica {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("TOKENGATE_STORAGE__BACKEND".into(), "postgres".into()),
            (
                "TOKENGATE_STORAGE__POSTGRES__URL".into(),
                self.db_url.clone(),
            ),
            (
                "TOKENGATE_STORAGE__POSTGRES__SSLMODE".into(),
                "disable".into(),
            ),
            (
                "TOKENGATE_STORAGE__SECRET_FILE".into(),
                self.secret.display().to_string(),
            ),
            ("TOKENGATE_CLUSTER__NAME".into(), name.into()),
            ("TOKENGATE_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ];
        env.extend(self.env.iter().cloned());
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut r = Replica {
            name: name.to_owned(),
            config: dir.join("tokengate.toml"),
            dir,
            env,
            toml: self.toml.clone(),
            upstream: self.upstream,
            cert: self.cert.clone(),
            key: self.key.clone(),
            child: None,
            boots: 0,
            addrs: None,
            client: None,
        };
        r.launch();
        r
    }
}

/// 32 random bytes, mode 0600, in a directory of its own (0700): the
/// server secret's file as an operator distributes it to every replica.
fn write_secret(dir: &Path) -> PathBuf {
    use std::io::Read;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut secret)
        .unwrap();
    let path = dir.join("secret.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &secret).unwrap();
    path
}

/// One replica process (and its successors after a restart).
pub struct Replica {
    pub name: String,
    dir: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
    toml: String,
    upstream: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    child: Option<Child>,
    /// Processes started so far; the current one logs to `boot-<boots>.log`.
    boots: usize,
    /// (public, admin), once the first boot has reported them.
    addrs: Option<(SocketAddr, SocketAddr)>,
    client: Option<TestClient>,
}

impl Replica {
    /// The configuration file: listeners (spare ports until the ports are
    /// known), TLS, upstream, this replica's data dir and audit file.
    fn write_config(&self) {
        let (public, admin) = match self.addrs {
            Some((p, a)) => (p.to_string(), a.to_string()),
            // Spare ports rather than 0: a restart binds them again, and
            // no other test's `bind(0)` can take them in between.
            None => (
                format!("127.0.0.1:{}", super::spare_port()),
                format!("127.0.0.1:{}", super::spare_port()),
            ),
        };
        let text = format!(
            r#"[public]
listen = "{public}"
workers = 1
shutdown_grace = "5s"
# The tests poll refused tokens; a failure budget is another test's subject.
auth_failures_per_minute = 0

[admin]
listen = "{admin}"

[upstream]
url = "http://{upstream}"
connect_timeout = "2s"
response_timeout = "5s"

# Echoed back by the test upstream: which replica proxied a call.
[upstream.headers]
X-Served-By = "{name}"

[storage]
path = "{data}"

[tls]
cert = "{cert}"
key = "{key}"

[audit]
destination = "{audit}"
"#,
            upstream = self.upstream,
            name = self.name,
            data = self.dir.join("data/tokengate.redb").display(),
            cert = self.cert.display(),
            key = self.key.display(),
            audit = self.audit_path().display(),
        );
        std::fs::write(&self.config, text + &self.toml).unwrap();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("boot-{}.log", self.boots))
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// Starts a new process (a new boot) with the current config.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.write_config();
        self.boots += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut c = Command::new(BIN);
        c.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(c.spawn().expect("the tokengate binary starts"));
    }

    /// The current boot's output so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the current process listens and answers `GET /readyz`
    /// with 200; `Err` (with the log) if it exits or hangs instead.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let known = self.addrs;
        let child = self.child.as_mut().expect("launched");
        // Some(Ok(addresses)) once listening (read from the log at the first
        // boot: port 0), Some(Err) once it exited.
        let listening = poll_until(START_TIMEOUT, || {
            let seen = match child.try_wait() {
                Ok(Some(status)) => Some(Err(format!("exited with {status} before listening"))),
                _ => {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    listening_addrs(&log).map(|found| Ok(known.unwrap_or(found)))
                }
            };
            async move { seen }
        })
        .await;
        let addrs = match listening {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                self.child = None;
                return Err(format!("{e}:\n{}", self.log()));
            }
            None => {
                return Err(format!(
                    "not listening after {START_TIMEOUT:?}:\n{}",
                    self.log()
                ))
            }
        };
        self.addrs = Some(addrs);
        // A fresh client each boot: no pooled connection to an earlier process.
        let client = TestClient::new(&self.cert, addrs.0, addrs.1);
        // Ready: caught up with the cluster. Some(Ok) on 200, Some(Err) once it exited.
        let last = std::sync::Mutex::new(String::new());
        let last_seen = &last;
        let child = self.child.as_mut().expect("launched");
        let ready = poll_until(START_TIMEOUT, || {
            let exited = child.try_wait().ok().flatten();
            let client = client.clone();
            async move {
                if let Some(status) = exited {
                    return Some(Err(format!("exited with {status} before ready")));
                }
                let r = client.get_with("/readyz", None).await;
                if r.status == StatusCode::OK {
                    return Some(Ok(()));
                }
                *last_seen.lock().unwrap() = format!("{} {}", r.status, r.text());
                None
            }
        })
        .await;
        match ready {
            Some(Ok(())) => {
                self.client = Some(client);
                Ok(())
            }
            Some(Err(e)) => {
                self.child = None;
                Err(format!("{e}:\n{}", self.log()))
            }
            None => Err(format!(
                "/readyz still {} after {START_TIMEOUT:?}:\n{}",
                last.lock().unwrap(),
                self.log()
            )),
        }
    }

    /// Waits (bounded) for the current process to exit by itself; returns
    /// its status and output. Panics if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let child = self.child.as_mut().expect("running");
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!(
                "replica {} still running after {timeout:?}:\n{}",
                self.name,
                self.log()
            ),
        };
        self.child = None;
        (status, self.log())
    }

    /// SIGTERM (a clean shutdown) and the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = super::signal_and_wait(&mut child, "-TERM").await;
        self.client = None;
        status
    }

    /// SIGKILL: the process ends at once, with no word to the cluster.
    /// Returns once it is gone.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = super::signal_and_wait(&mut child, "-KILL").await;
        assert!(!status.success(), "killed: {status}");
        self.client = None;
    }

    /// Starts this replica again with the same configuration and ports
    /// (after [`Replica::terminate`] or [`Replica::kill9`]), and waits
    /// until it is ready.
    pub async fn restart(&mut self) {
        self.launch();
        if let Err(e) = self.wait_ready().await {
            panic!("replica {} did not start again: {e}", self.name);
        }
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.addrs.expect("started").0
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.addrs.expect("started").1
    }

    /// `https://localhost:<admin port>`, for the CLI's `--url`.
    pub fn admin_url(&self) -> String {
        format!("https://localhost:{}", self.admin_addr().port())
    }

    /// A client of the running process (public and admin listeners).
    pub fn client(&self) -> &TestClient {
        self.client
            .as_ref()
            .unwrap_or_else(|| panic!("replica {} is not running", self.name))
    }

    /// A client of this replica whose connections come from `source`.
    pub fn client_from(&self, source: &str) -> TestClient {
        TestClient::with_source(
            &self.cert,
            self.public_addr(),
            self.admin_addr(),
            Some(source.parse().expect("an IP address")),
        )
    }

    /// Creates a refresh token through this replica's admin API; returns
    /// (id, token string). Panics unless the answer is 201.
    pub async fn create_token(&self, name: &str) -> (u64, String) {
        let r = self.try_create(name).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "create on {}: {}",
            self.name,
            r.text()
        );
        let v = r.json();
        (
            v["id"].as_u64().unwrap(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// `POST /api/refresh-tokens`, whatever the answer.
    pub async fn try_create(&self, name: &str) -> Resp {
        self.client()
            .admin_json(
                "POST",
                "/api/refresh-tokens",
                &serde_json::json!({ "name": name }),
            )
            .await
    }

    /// Trades a refresh token for an access token here; panics unless 200.
    pub async fn exchange(&self, refresh: &str) -> String {
        let r = self.try_exchange(refresh).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "exchange on {}: {}",
            self.name,
            r.text()
        );
        r.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// `POST /token` with a refresh grant, whatever the answer.
    pub async fn try_exchange(&self, refresh: &str) -> Resp {
        self.client()
            .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
            .await
    }

    /// A proxied call (`GET /whoami`) with `Authorization: Bearer <access>`.
    pub async fn call(&self, access: &str) -> Resp {
        self.client().api_get("/whoami", access).await
    }

    /// `DELETE /api/refresh-tokens/{id}`.
    pub async fn delete(&self, id: u64) -> Resp {
        self.client()
            .admin_call("DELETE", &format!("/api/refresh-tokens/{id}"))
            .await
    }

    /// `POST /api/refresh-tokens/delete` with `{"ids": ids}`.
    pub async fn delete_many(&self, ids: &[u64]) -> Resp {
        self.client()
            .admin_json(
                "POST",
                "/api/refresh-tokens/delete",
                &serde_json::json!({ "ids": ids }),
            )
            .await
    }

    /// `GET /api/refresh-tokens`: every token this replica lists.
    pub async fn list(&self) -> Vec<Value> {
        let r = self.client().admin_call("GET", "/api/refresh-tokens").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "list on {}: {}",
            self.name,
            r.text()
        );
        r.json().as_array().expect("a JSON array").clone()
    }

    /// `GET /readyz` on the public listener.
    pub async fn readyz(&self) -> Resp {
        self.client().get_with("/readyz", None).await
    }

    /// Every audit line this replica (all its boots) has written so far.
    pub fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an audit line is JSON"))
            .collect()
    }

    /// Waits until this replica's audit file holds a line `matching`.
    pub async fn audit_line(&self, what: &str, matching: impl Fn(&Value) -> bool) -> Value {
        eventually(Duration::from_secs(10), what, || {
            let found = self.audit_lines().into_iter().find(|l| matching(l));
            async move { found }
        })
        .await
    }
}

/// The addresses in a "tokengate listening public=… admin=…" log line.
fn listening_addrs(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = log.lines().find(|l| l.contains("tokengate listening"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.trim_matches('"').parse::<SocketAddr>().ok())
    };
    Some((field("public=")?, field("admin=")?))
}

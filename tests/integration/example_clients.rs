//! The client examples (`examples/python/`, `examples/curl/refreshing.sh`)
//! against the real binary: each keeps working across a gateway restart by
//! exchanging its refresh token again on the 401, trades again before the
//! access token expires, and stops with the gateway's reason once the refresh
//! token is deleted.
//!
//! `tests/run.sh` installs python3's `requests` and shellcheck when missing.

use crate::common;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
/// Generous: the first start generates a certificate and secrets.
const START: Duration = Duration::from_secs(30);
/// One answer of a client (a token exchange and a proxied call at most).
const ANSWER: Duration = Duration::from_secs(30);
/// The access-token lifetime the gateway runs with; the examples trade
/// again when a quarter of it, at most 60 s, is left: at 540 s.
const ACCESS_TTL: &str = "600";
const REFRESH_AFTER: u64 = 540;

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The `tokengate serve` binary on fixed (free) ports in `dir`, so a client
/// finds it again after a restart, as it would in production.
struct GatewayProcess {
    dir: tempfile::TempDir,
    public: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    child: Option<Child>,
    starts: usize,
}

impl GatewayProcess {
    async fn start(upstream: SocketAddr) -> GatewayProcess {
        let mut g = GatewayProcess {
            dir: tempfile::tempdir().unwrap(),
            public: common::dead_address().await,
            admin: common::dead_address().await,
            upstream,
            child: None,
            starts: 0,
        };
        g.spawn().await;
        g
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        // Its log, for a failing test's reader.
        let log =
            std::fs::File::create(self.dir.path().join(format!("gateway-{}.log", self.starts)))
                .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .current_dir(self.dir.path())
            .env_clear()
            .env("TOKENGATE_PUBLIC__LISTEN", self.public.to_string())
            .env("TOKENGATE_ADMIN__LISTEN", self.admin.to_string())
            .env(
                "TOKENGATE_UPSTREAM__URL",
                format!("http://{}", self.upstream),
            )
            .env("TOKENGATE_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .env("TOKENGATE_TOKENS__ACCESS_TTL", ACCESS_TTL)
            .env("TOKENGATE_AUDIT__DESTINATION", "off")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let (cert, public, admin) = (self.cert(), self.public, self.admin);
        let (cert, log) = (
            &cert,
            self.dir.path().join(format!("gateway-{}.log", self.starts)),
        );
        common::eventually_ok(START, "the gateway to listen", move || {
            let log = log.clone();
            async move {
                if !cert.exists() {
                    return Err("no certificate yet".to_owned());
                }
                for addr in [public, admin] {
                    tokio::net::TcpStream::connect(addr).await.map_err(|e| {
                        format!(
                            "{addr}: {e}; log: {}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        )
                    })?;
                }
                Ok(())
            }
        })
        .await;
    }

    /// SIGTERM (a clean stop, as systemd does it), then the same binary on
    /// the same ports and data again. Access tokens do not survive it.
    async fn restart(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = common::signal_and_wait(&mut child, "-TERM").await;
        assert!(status.success(), "{status:?}");
        self.spawn().await;
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("certs/tokengate.crt")
    }

    fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.public.port())
    }

    fn admin(&self) -> common::TestClient {
        common::TestClient::new(&self.cert(), self.public, self.admin)
    }

    /// Creates a refresh token through the admin API: (id, token).
    async fn create_token(&self, name: &str) -> (u64, String) {
        self.admin().create_token(name).await
    }

    async fn delete_token(&self, id: u64) {
        let r = self
            .admin()
            .admin_json(
                "POST",
                "/api/refresh-tokens/delete",
                &serde_json::json!({ "ids": [id] }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
}

/// A client example running with piped stdin/stdout; stderr is kept.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Client {
    fn spawn(mut cmd: Command, gw: &GatewayProcess, refresh_token: &str) -> Client {
        let mut child = cmd
            .env("TOKENGATE_URL", gw.base_url())
            .env("TOKENGATE_CACERT", gw.cert())
            .env("TOKENGATE_REFRESH_TOKEN", refresh_token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Client {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
        }
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next line of output, `None` once the client closed its stdout; on
    /// a timeout, the panic shows what the client said on stderr.
    async fn next_line(&mut self) -> Option<String> {
        match tokio::time::timeout(ANSWER, self.stdout.next_line()).await {
            Ok(line) => line.unwrap(),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!(
                    "no answer from the client within {ANSWER:?}; stderr:\n{}",
                    stderr_of(&mut self.child).await
                )
            }
        }
    }

    async fn json_line(&mut self) -> Value {
        let Some(line) = self.next_line().await else {
            panic!(
                "the client ended early; stderr:\n{}",
                stderr_of(&mut self.child).await
            )
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Closes stdin and waits for the exit: (exit code, stderr).
    async fn finish(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(ANSWER, self.child.wait())
            .await
            .expect("the client exits once its input ends")
            .unwrap();
        (status.code(), stderr_of(&mut self.child).await)
    }
}

/// Everything an exited (or killed) child wrote on stderr.
async fn stderr_of(child: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = tokio::time::timeout(ANSWER, e.read_to_string(&mut text)).await;
    }
    text
}

/// What one call of an example came to.
#[derive(Debug)]
enum Answer {
    /// The body of a 200 answer.
    Ok(String),
    /// Another status (the example's output, shown by a failing assertion).
    Failed(#[allow(dead_code, reason = "read through Debug")] String),
    /// The gateway refused the refresh token, for this reason.
    Refused(String),
}

/// Reads one call's outcome from an example's output (`None`: it closed it).
type Parse = fn(Option<String>) -> Answer;

/// The scenario both examples run: a call, a gateway restart, a call that
/// must succeed after a new exchange, then the refresh token deleted and a
/// call that must come to the refusal. Returns the exit code, stderr and the
/// refusal's reason.
async fn across_a_restart(cmd: Command, parse: Parse) -> (Option<i32>, String, String) {
    let up = common::upstream().await;
    let mut gw = GatewayProcess::start(up.addr).await;
    let (id, token) = gw.create_token("example client").await;
    let mut client = Client::spawn(cmd, &gw, &token);

    let echoed_path = |answer: Answer| match answer {
        Answer::Ok(body) => serde_json::from_str::<Value>(&body).unwrap()["path"].clone(),
        other => panic!("{other:?}"),
    };
    client.send("/before/restart").await;
    assert_eq!(
        echoed_path(parse(client.next_line().await)),
        "/before/restart"
    );

    gw.restart().await;
    client.send("/after/restart").await;
    assert_eq!(
        echoed_path(parse(client.next_line().await)),
        "/after/restart"
    );

    gw.delete_token(id).await;
    client.send("/after/delete").await;
    let why = match parse(client.next_line().await) {
        Answer::Refused(why) => why,
        other => panic!("after the delete: {other:?}"),
    };
    let (code, stderr) = client.finish().await;
    // Traded at the start and on the 401 after the restart; the 401 after
    // the delete led to the refused exchange. Both examples log these words.
    assert_eq!(
        stderr.matches("exchanged the refresh token").count(),
        2,
        "{stderr}"
    );
    assert_eq!(stderr.matches("answered 401").count(), 2, "{stderr}");
    (code, stderr, why)
}

/// tokengate_client.py prints a JSON line per call.
fn python_answer(line: Option<String>) -> Answer {
    let line = line.expect("a line per call");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    if v.get("error").is_some() {
        assert_eq!(v["error"], "invalid_grant", "{line}");
        return Answer::Refused(v["detail"].as_str().unwrap().to_owned());
    }
    let body = v["body"].as_str().unwrap().to_owned();
    match v["status"].as_u64() {
        Some(200) => Answer::Ok(body),
        _ => Answer::Failed(line),
    }
}

/// refreshing.sh prints each body on a line; a refused refresh token ends
/// it (the reason on stderr), closing its output.
fn curl_answer(line: Option<String>) -> Answer {
    match line {
        None => Answer::Refused("(on stderr)".to_owned()),
        // The echo upstream answers a JSON object naming the path.
        Some(body) if body.starts_with('{') && body.contains(r#""path""#) => Answer::Ok(body),
        Some(body) => Answer::Failed(body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_survives_a_restart_and_reports_a_deleted_token() {
    let mut cmd = Command::new(crate::common::python3());
    cmd.arg(example("examples/python/tokengate_client.py"));
    let (code, stderr, why) = across_a_restart(cmd, python_answer).await;
    assert!(why.contains("not valid"), "{why}");
    assert_eq!(code, Some(1), "a failed call fails the run: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_script_survives_a_restart_and_reports_a_deleted_token() {
    let mut cmd = Command::new("bash");
    cmd.arg(example("examples/curl/refreshing.sh"));
    let (code, stderr, _) = across_a_restart(cmd, curl_answer).await;
    assert_eq!(code, Some(2), "a refused refresh token: {stderr}");
    assert!(
        stderr.contains("refused the refresh token") && stderr.contains("not valid"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_refreshes_before_expiry_and_resends_a_body_after_a_401() {
    let up = common::upstream().await;
    let gw = GatewayProcess::start(up.addr).await;
    let (_, token) = gw.create_token("python driver").await;
    let mut cmd = Command::new(crate::common::python3());
    cmd.arg(example("tests/example_clients/python_driver.py"))
        .arg(gw.base_url())
        .arg(gw.cert())
        .arg((REFRESH_AFTER - 1).to_string())
        .arg(REFRESH_AFTER.to_string());
    let mut client = Client::spawn(cmd, &gw, &token);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let s = client.json_line().await;
        seen.push((s["status"].as_u64(), s["exchanges"].as_u64()));
    }
    // Traded at the first call, not a second before the margin, and at it.
    let expected = [(200, 1), (200, 1), (200, 2)].map(|(a, b)| (Some(a), Some(b)));
    assert_eq!(seen, expected);

    // Retire every access token (as a restart does), then POST a body: the
    // 401 makes the client trade again and send the same body once more.
    let r = gw
        .admin()
        .admin_json("POST", "/api/cluster/rotate", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    client.send("go").await;
    let replayed = client.json_line().await;
    assert_eq!(replayed["status"], 200, "{replayed}");
    assert_eq!(replayed["exchanges"], 3, "{replayed}");
    let echoed: Value = serde_json::from_str(replayed["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], "the same body twice");
    let (code, stderr) = client.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_script_trades_again_when_the_token_is_due() {
    let up = common::upstream().await;
    let gw = GatewayProcess::start(up.addr).await;
    let (_, token) = gw.create_token("curl").await;
    let script = example("examples/curl/refreshing.sh");
    // Within the token's life: one exchange for both calls. With a margin
    // longer than its life, the token is always due: one per call.
    for (margin, exchanges) in [(None, 1), (Some(ACCESS_TTL), 2)] {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(["/one", "/two"]);
        if let Some(m) = margin {
            cmd.env("TOKENGATE_REFRESH_MARGIN", m);
        }
        let mut client = Client::spawn(cmd, &gw, &token);
        for path in ["/one", "/two"] {
            match curl_answer(client.next_line().await) {
                Answer::Ok(body) => assert!(body.contains(path), "{body}"),
                other => panic!("{other:?}"),
            }
        }
        let (code, stderr) = client.finish().await;
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(
            stderr.matches("exchanged the refresh token").count(),
            exchanges,
            "margin {margin:?}: {stderr}"
        );
    }
}

#[test]
fn the_curl_script_is_shellcheck_clean() {
    let out = std::process::Command::new("shellcheck")
        .arg(example("examples/curl/refreshing.sh"))
        .output()
        .unwrap_or_else(|e| panic!("shellcheck: {e} (tests/run.sh installs it)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

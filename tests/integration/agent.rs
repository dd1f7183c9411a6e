//! `tokengate agent` (the binary) between an unmodified Python `requests`
//! client and a real gateway: the client never handles a token, and keeps
//! working, with zero failed requests, for more than three access-token
//! lifetimes, across a gateway restart and a rotation with grace. A
//! refused refresh token stops the agent with a clear message and a `502`
//! to the waiting request; where it may listen is checked.

use crate::common::{self, dead_address, eventually, upstream, TestClient, TestGateway};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokengate::{Gateway, StartOptions};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
/// Generous bounds for things to happen on a busy machine; nothing is timed.
const WAIT: Duration = Duration::from_secs(60);
/// The access-token lifetime of these tests: short, so that three pass quickly.
const ACCESS_TTL: u64 = 3;

/// Writes `token` to `file` as a rotation would: whole (a new file renamed
/// over the old one), mode 0600.
fn put_token(file: &Path, token: &str) {
    let tmp = file.with_extension("new");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

struct Agent {
    child: Child,
    listen: String,
    log: PathBuf,
}

impl Agent {
    async fn start(gw: &TestGateway, token_file: &Path, listen: &str, dir: &Path) -> Agent {
        let log = dir.join("agent.log");
        let child = Command::new(BIN)
            .arg("agent")
            .args(["--gateway", &gw.client.public])
            .arg("--refresh-token-file")
            .arg(token_file)
            .arg("--cacert")
            .arg(gw.file.tls.cert.as_ref().unwrap())
            .args(["--listen", listen])
            .env("TOKENGATE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Agent {
            child,
            listen: listen.to_owned(),
            log,
        }
    }

    async fn ready(&self) {
        let addr = self.listen.clone();
        eventually(WAIT, "the agent listens", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok() }
        })
        .await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn terminate(&mut self) -> Option<i32> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the agent stops")
            .unwrap();
        status.code()
    }
}

fn exchanges(gw: &TestGateway) -> usize {
    gw.audit_lines()
        .iter()
        .filter(|l| l["event"] == "token.exchanged")
        .count()
}

async fn exchanges_reach(gw: &TestGateway, n: usize, what: &str) {
    eventually(WAIT, what, || async { (exchanges(gw) >= n).then_some(()) }).await;
}

/// Stops `gw` and starts it again on the same ports and data (a restart:
/// every access token it issued is dead afterwards).
async fn restart_in_place(gw: &mut TestGateway) {
    let public = gw.gateway.as_ref().unwrap().public_addr;
    gw.stop().await;
    let mut file = gw.file.clone();
    file.public.listen = public.to_string();
    let g = Box::pin(Gateway::start(
        file.validate().unwrap(),
        StartOptions {
            admin_password: Some(common::ADMIN_PASSWORD.into()),
            clock: gw.clock.clone(),
            ..StartOptions::default()
        },
    ))
    .await
    .expect("the gateway starts again");
    gw.client = TestClient::new(
        gw.file.tls.cert.as_ref().unwrap(),
        g.public_addr,
        g.admin_addr,
    );
    gw.gateway = Some(g);
}

/// The client: plain `requests` with a base URL, GETs and POSTs with a
/// body, until the stop file appears and at least `min_seconds` passed;
/// prints how many succeeded and how many failed.
const CLIENT: &str = r#"
import json, os, sys, time, requests
base, stop, min_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = requests.Session()
ok, failed, errors, start = 0, 0, [], time.monotonic()
while not os.path.exists(stop) or time.monotonic() - start < min_seconds:
    try:
        r = s.get(base + "/api/items", params={"n": ok}, timeout=90)
        if r.status_code == 200 and r.json()["path"] == "/api/items" \
                and "authorization" not in r.json()["headers"]:
            ok += 1
        else:
            failed += 1
            errors.append(f"GET {r.status_code} {r.text[:300]}")
        r = s.post(base + "/api/items", json={"n": ok}, timeout=90)
        if r.status_code == 200 and json.loads(r.json()["body"]) == {"n": ok}:
            ok += 1
        else:
            failed += 1
            errors.append(f"POST {r.status_code} {r.text[:300]}")
    except Exception as e:
        failed += 1
        errors.append(repr(e))
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:5],
                  "seconds": time.monotonic() - start}))
"#;

#[tokio::test]
async fn an_unmodified_client_works_through_restarts_and_rotations() {
    let up = upstream().await;
    let public = dead_address().await;
    let mut gw = TestGateway::start_with(up.addr, |f| {
        f.public.listen = public.to_string();
        f.tokens.access_ttl = common::secs(ACCESS_TTL);
    })
    .await;
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "through the agent"}),
        )
        .await;
    let id = r.json()["id"].as_u64().unwrap();
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("refresh-token");
    put_token(&token_file, r.json()["token"].as_str().unwrap());
    let listen = dead_address().await.to_string();
    let mut agent = Agent::start(&gw, &token_file, &listen, work.path()).await;
    agent.ready().await;

    let stop = work.path().join("stop");
    let min_seconds = (4 * ACCESS_TTL).to_string();
    let client = Command::new(common::python3())
        .args(["-c", CLIENT, &format!("http://{listen}")])
        .arg(&stop)
        .arg(&min_seconds)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // One lifetime passes: the agent exchanged again ahead of expiry.
    exchanges_reach(&gw, 2, "a renewal ahead of expiry").await;
    // A restart: every access token dies; the gateway is away a moment.
    restart_in_place(&mut gw).await;
    let before = exchanges(&gw);
    exchanges_reach(&gw, before + 2, "exchanges after the restart").await;
    // A rotation with a short grace: the new secret goes into the file;
    // once the grace is over only it works, and the agent keeps going.
    let r = gw
        .client
        .admin_json(
            "POST",
            &format!("/api/refresh-tokens/{id}/rotate"),
            &json!({"grace_seconds": 2}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    put_token(&token_file, r.json()["token"].as_str().unwrap());
    let before = exchanges(&gw);
    exchanges_reach(&gw, before + 3, "exchanges past the grace").await;

    std::fs::write(&stop, "").unwrap();
    let out = tokio::time::timeout(WAIT, client.wait_with_output())
        .await
        .expect("the client finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        summary["failed"],
        0,
        "{summary}\nagent log:\n{}",
        agent.log()
    );
    assert!(summary["ok"].as_u64().unwrap() > 20, "{summary}");
    assert!(
        summary["seconds"].as_f64().unwrap() > (3 * ACCESS_TTL) as f64,
        "{summary}"
    );

    // Graceful on SIGTERM, and no token in its log.
    assert_eq!(agent.terminate().await, Some(0), "{}", agent.log());
    let log = agent.log();
    assert!(!log.contains("tga_") && !log.contains("tgr_"), "{log}");
    assert!(log.contains("access token obtained"), "{log}");
}

#[tokio::test]
async fn a_refused_refresh_token_stops_the_agent_with_a_502_naming_why() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, refresh) = gw.create_token("soon deleted").await;
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("refresh-token");
    put_token(&token_file, &refresh);
    let listen = dead_address().await.to_string();
    let mut agent = Agent::start(&gw, &token_file, &listen, work.path()).await;
    agent.ready().await;

    let send = |listen: String, head: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(&listen).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        common::read_raw_response(&mut s).await
    };
    let get = |listen: String| {
        send(
            listen,
            "GET /api/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
    };
    assert_eq!(get(listen.clone()).await.status, 200);
    // A web page cannot use the agent: a browser's request (Origin), or a
    // page on a name that resolves to the loopback (DNS rebinding: its
    // Host is that name), is refused before anything is sent on.
    let hits = up.hits();
    for head in [
        "GET /api/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ] {
        let r = send(listen.clone(), head).await;
        assert_eq!(r.status, 403, "{head}");
    }
    assert_eq!(up.hits(), hits, "nothing reached the upstream");
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{id}"))
        .await;
    assert!(r.status.is_success());
    // Its access token died with it; the new exchange is refused.
    let r = get(listen.clone()).await;
    assert_eq!(r.status, 502);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "refresh_token_refused");
    let said = body["error_description"].as_str().unwrap();
    assert!(
        said.contains("invalid_grant") && said.contains(&token_file.display().to_string()),
        "{said}"
    );
    let code = tokio::time::timeout(WAIT, agent.child.wait())
        .await
        .expect("the agent exits by itself")
        .unwrap()
        .code();
    assert_eq!(code, Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("refused the refresh token"), "{log}");
    assert!(!log.contains(&refresh), "{log}");
}

#[tokio::test]
async fn it_listens_on_loopback_or_a_private_socket_only() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("socket").await;
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("refresh-token");
    put_token(&token_file, &refresh);

    // Not loopback, without --allow-remote: refused before it listens.
    let out = Command::new(BIN)
        .args([
            "agent",
            "--gateway",
            &gw.client.public,
            "--listen",
            "0.0.0.0:0",
        ])
        .arg("--refresh-token-file")
        .arg(&token_file)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-remote"), "{err}");

    // A token file others may read: refused, naming the fix.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(BIN)
        .args([
            "agent",
            "--gateway",
            &gw.client.public,
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--refresh-token-file")
        .arg(&token_file)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A Unix socket only its user may use; a 2 MiB body streams through.
    let sock = work.path().join("agent.sock");
    let mut agent = Agent::start(
        &gw,
        &token_file,
        &format!("unix:{}", sock.display()),
        work.path(),
    )
    .await;
    let s = sock.clone();
    eventually(WAIT, "the socket", || {
        let s = s.clone();
        async move { tokio::net::UnixStream::connect(s).await.ok() }
    })
    .await;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let big = "x".repeat(2 * 1024 * 1024);
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: agent\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(big.as_bytes()).await.unwrap();
    let r = common::read_raw_response(&mut s).await;
    assert_eq!(r.status, 200, "{}", agent.log());
    let echoed: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echoed["path"], "/api/upload");
    assert_eq!(echoed["body"].as_str().unwrap().len(), big.len());
    assert_eq!(agent.terminate().await, Some(0));
    assert!(!sock.exists(), "the socket is removed at exit");
}

//! Hostile HTTP/2 clients against a real gateway: each test runs one attack
//! of `tests/attacks/h2_attacks.py` (raw frames over TLS with ALPN h2; the
//! script's doc says what each one sends) and fails with the script's output
//! when a normal client stopped being served during or after the attack, or
//! the gateway's memory grew by 100 MiB or more.
//!
//! The script reads the VmRSS of the gateway's process. Every other
//! integration test runs in this test binary's process too, so each attack
//! test runs this binary again, filtered to itself, in a child process where
//! its gateway is alone (and the upstream in another child, so the child's
//! RSS is the gateway's alone). The tests take turns (one lock): attacks
//! running side by side would share the CPU.
//!
//! Needs `python3` with the packages of `tests/attacks/requirements.txt`
//! (`tests/run.sh` installs them).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::TestGateway;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio::process::{Child, Command};

/// One attack at a time in this process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Seconds most attacks run (the script's cap is 15, plus closing).
const ATTACK_SECONDS: u32 = 8;

/// The large answer of `/big` (1 MiB, sixteen times the default HTTP/2 window).
static BIG: [u8; 1 << 20] = [0; 1 << 20];

/// The upstream these attacks need, beside what `common::upstream` does:
/// `/big` answers 1 MiB, and every answer copies the request's `x-echo`
/// header into its own (so a client can make response headers vary).
struct AttackUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AttackUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn attack_upstream() -> AttackUpstream {
    // A deep backlog: the gateway may open a thousand connections at once.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    AttackUpstream { addr, task }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::builder().header("content-type", "application/octet-stream");
    if let Some(v) = req.headers().get("x-echo") {
        resp = resp.header("x-echo", v.clone());
    }
    let body = if req.uri().path() == "/big" {
        Bytes::from_static(&BIG)
    } else {
        Bytes::from_static(b"ok")
    };
    Ok(resp.body(Full::new(body)).unwrap())
}

/// The upstream runs in a child process (this test binary, running
/// `upstream_child`), so this process's RSS is the gateway's alone.
struct ChildUpstream {
    addr: SocketAddr,
    _child: Child,
}

async fn child_upstream() -> ChildUpstream {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "hostile_h2::upstream_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the upstream child");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = line.strip_prefix("UPSTREAM ") {
                return a.parse::<SocketAddr>().unwrap();
            }
        }
        panic!("the upstream child exited without listening");
    })
    .await
    .expect("the upstream child listens within 30 s");
    ChildUpstream {
        addr,
        _child: child,
    }
}

const CHILD_ENV: &str = "TOKENGATE_HOSTILE_H2_UPSTREAM";

/// Not a test: the upstream of the tests above, in a process of its own.
/// It serves until its standard input closes (the parent exited or dropped it).
#[test]
#[ignore = "not a test: the attack tests run it as their upstream process"]
fn upstream_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(attack_upstream());
    println!("UPSTREAM {}", up.addr);
    // The runtime's worker serves; this thread waits for the parent to go.
    let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
    drop(up);
}

/// Starts a gateway, runs `attack` against its public listener, and fails
/// with everything the script printed unless it passed.
async fn attack(name: &str, seconds: u32) {
    attack_with(name, seconds, |_| {}).await;
}

/// `attack` against a gateway with `tweak` applied to its configuration.
async fn attack_with(
    name: &str,
    seconds: u32,
    tweak: impl FnOnce(&mut tokengate::config::FileConfig),
) {
    let _turn = SERIAL.lock().await;
    if std::env::var_os(ALONE_ENV).is_none() {
        return alone(name).await;
    }
    let up = child_upstream().await;
    let gw = TestGateway::start_with(up.addr, tweak).await;
    let (_, refresh) = gw.create_token("h2 attacks").await;
    let access = gw.exchange(&refresh).await;
    let port = gw.gateway.as_ref().unwrap().public_addr.port().to_string();
    let cert = gw.file.tls.cert.clone().unwrap();
    let pid = std::process::id().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/attacks/h2_attacks.py");
    let started = Instant::now();
    let run = tokio::process::Command::new(crate::common::python3())
        .arg(script)
        .args(["--port", &port, "--pid", &pid, "--attack", name])
        .arg("--cafile")
        .arg(&cert)
        .args(["--token", &access, "--duration", &seconds.to_string()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("{name}: the attack script ran past 120 s"))
        .unwrap_or_else(|e| panic!("cannot run python3 {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{stdout}{stderr}({name}: {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}{stderr}",
        out.status
    );
    // The gateway itself still answers this process's own client.
    let r = gw.client.get_with("/healthz", None).await;
    assert_eq!(r.status, http::StatusCode::OK, "{name}: /healthz after");
}

/// Set in the child process that runs one attack test alone.
const ALONE_ENV: &str = "TOKENGATE_HOSTILE_H2_ALONE";

/// Runs the test `hostile_h2::{name}` (each attack test is named after its
/// attack) in a child process of this test binary with [`ALONE_ENV`] set:
/// there it runs the attack against a gateway that has the process to
/// itself. Fails with the child's output unless that one test passed.
async fn alone(name: &str) {
    let test = format!("hostile_h2::{name}");
    let run = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE_ENV, "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .unwrap_or_else(|_| panic!("{test}: the child process ran past 300 s"))
        .unwrap_or_else(|e| panic!("cannot run {test} in a child process: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} in its own process ({}):\n{stdout}{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset() {
    attack("rapid_reset", ATTACK_SECONDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood() {
    attack("continuation_flood", ATTACK_SECONDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood() {
    attack("settings_flood", ATTACK_SECONDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood() {
    attack("ping_flood", ATTACK_SECONDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window() {
    // 32 connections x 128 streams held at window 0, each stream holding an
    // upstream connection and ~26 KiB. With the send deadline alone, RSS grew
    // by 100-130 MiB (it used to fail the bound now and then); the
    // per-client stream share (public.max_streams_per_client, 256) answers
    // the rest 429 at once: growth ~19 MiB. A short public.send_timeout
    // shows the deadline at work within the attack.
    attack_with("zero_window", 15, |f| {
        f.public.send_timeout = tokengate::config::HumanDuration(Duration::from_secs(2));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bomb() {
    attack("hpack_bomb", ATTACK_SECONDS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_table_size() {
    attack("header_table_size", ATTACK_SECONDS).await;
}

//! Test helpers: a gateway on port 0 with real TLS and a real redb file in a
//! temp dir, a local upstream that echoes what it received, and a TLS client
//! that trusts the gateway's certificate.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokengate::clock::Clock;
use tokengate::config::FileConfig;
use tokengate::{Gateway, StartOptions};
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A loopback port of the test's own, for a child process to listen on: a
/// socket bound to it and not listening (connections are refused until the
/// child listens). Unlike a port bound, read and freed again, no other
/// test's listener can take it before the child has it.
pub fn bound_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// Runs `spawn` with `socket` inheritable by the process it starts, under
/// the descriptor number `spawn` is given; close-on-exec again after, so
/// other tests' children do not inherit it.
pub fn with_inherited<T>(socket: &tokio::net::TcpSocket, spawn: impl FnOnce(i32) -> T) -> T {
    use rustix::io::{fcntl_setfd, FdFlags};
    use std::os::fd::AsRawFd;
    fcntl_setfd(socket, FdFlags::empty()).unwrap();
    let spawned = spawn(socket.as_raw_fd());
    fcntl_setfd(socket, FdFlags::CLOEXEC).unwrap();
    spawned
}

/// The Python interpreter of the tests that run Python (the attack and scan
/// clients, the example clients, schemathesis, `http.server`): the tests'
/// own virtual environment, `target/test-venv`, when it exists (tests/run.sh
/// creates it and installs tests/requirements.txt there), else `python3`
/// from `PATH`.
pub fn python3() -> PathBuf {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The first pause between two checks in [`eventually`]; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two checks in [`eventually`].
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// Waits until `check` yields `Some`, and returns what it yielded; panics
/// naming `what` if that has not happened within `timeout`.
///
/// Every test that waits for something to happen waits through this, on the
/// condition it needs, instead of sleeping a guessed amount: the tests run on
/// shared, noisy machines, where a guess is either too short (a flaky
/// failure) or needlessly long. `timeout` is only a generous upper bound for
/// reporting a hang; no test asserts how long anything took.
///
/// `check` runs at once, then after pauses of 5 ms doubling to 100 ms, and
/// once more at the deadline. A check still running at the deadline (after at
/// least one full pause) counts as "not yet".
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(timeout, || {
        let c = check();
        async move { c.await.ok_or(()) }
    })
    .await
    {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// [`eventually`] for checks that say why they are not satisfied yet: waits
/// until `check` yields `Ok`; on timeout, the panic names `what` and shows the
/// last `Err`.
pub async fn eventually_ok<T, E, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match poll(timeout, check).await {
        Ok(v) => v,
        Err(Some(last)) => panic!("timed out after {timeout:?} waiting for {what}; last: {last:?}"),
        Err(None) => {
            panic!("timed out after {timeout:?} waiting for {what}; the last check never finished")
        }
    }
}

/// [`eventually`] without the panic, for callers that gather their own
/// report on failure: `None` once `timeout` has passed.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(timeout, || {
        let c = check();
        async move { c.await.ok_or(()) }
    })
    .await
    .ok()
}

/// The loop behind the `eventually` family: `Ok` as soon as a check passes,
/// else the last check's error (`None` if it was still running at the deadline).
async fn poll<T, E, F, Fut>(timeout: Duration, mut check: F) -> Result<T, Option<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match tokio::time::timeout(left.max(MAX_PAUSE), check()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => Some(e),
            Err(_) => None,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(last);
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// How often [`within_bound`] checks: a bound of 1 s is measured to 2 %,
/// and the replicas under test are not flooded.
const BOUND_POLL: Duration = Duration::from_millis(20);

/// Checks every 20 ms until `check` passes, and returns how long after
/// `since` that was; panics naming `what`, the time and the last failure
/// if it has not passed by `since + bound`.
///
/// Unlike [`eventually`], here the time is the assertion: `bound` is a
/// promise the product states (docs/cluster.md: a delete is enforced everywhere
/// within 1 s; a dead replica's tokens die within `cluster.node_timeout`;
/// a replica out of touch with the database answers 503 after
/// `cluster.max_staleness`), counted from the event the promise counts from
/// (a delete's acknowledgement, a kill), not from the first check. A check
/// that passes only after the deadline does not count.
#[allow(
    clippy::print_stderr,
    reason = "the measured time, for whoever reads the test's output"
)]
pub async fn within_bound<F, Fut>(
    since: tokio::time::Instant,
    bound: Duration,
    what: &str,
    mut check: F,
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = since + bound;
    let mut last = String::from("not checked");
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, check()).await {
            Ok(Ok(())) if tokio::time::Instant::now() <= deadline => {
                let took = since.elapsed();
                eprintln!("{what}: after {took:?} (bound {bound:?})");
                return took;
            }
            Ok(Ok(())) => last = "passed, but only after the deadline".to_owned(),
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("a check was still running at the deadline; before: {last}"),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            panic!(
                "{what}: not within {bound:?} (gave up {:?} after); last: {last}",
                since.elapsed()
            );
        }
        tokio::time::sleep(BOUND_POLL.min(left)).await;
    }
}

/// A gateway plus everything it needs, torn down with the test.
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub dir: Arc<tempfile::TempDir>,
    pub clock: Clock,
    pub client: TestClient,
    pub file: FileConfig,
}

/// The configuration every test starts from: loopback, port 0, temp data dir.
pub fn test_config(dir: &std::path::Path, upstream: SocketAddr) -> FileConfig {
    let mut f = FileConfig::default();
    f.public.listen = "127.0.0.1:0".into();
    f.admin.listen = "127.0.0.1:0".into();
    f.public.shutdown_grace = tokengate::config::HumanDuration(Duration::from_secs(5));
    f.upstream.url = format!("http://{upstream}");
    f.upstream.response_timeout = tokengate::config::HumanDuration(Duration::from_secs(2));
    f.upstream.connect_timeout = tokengate::config::HumanDuration(Duration::from_secs(2));
    f.storage.path = dir.join("data/tokengate.redb");
    f.tls.cert = Some(dir.join("certs/test.crt"));
    f.tls.key = Some(dir.join("certs/test.key"));
    f.audit.destination = dir.join("audit.jsonl").display().to_string();
    f
}

impl TestGateway {
    /// Starts a gateway in front of `upstream` with the default test configuration.
    pub async fn start(upstream: SocketAddr) -> TestGateway {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(
        upstream: SocketAddr,
        tweak: impl FnOnce(&mut FileConfig),
    ) -> TestGateway {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut file = test_config(dir.path(), upstream);
        tweak(&mut file);
        let cert = file.tls.cert.clone().unwrap();
        let key = file.tls.key.clone().unwrap();
        if !cert.exists() {
            tokengate::tls::generate_self_signed(&cert, &key).expect("test certificate");
        }
        Self::start_in(dir, file, Clock::new()).await
    }

    async fn start_in(dir: Arc<tempfile::TempDir>, file: FileConfig, clock: Clock) -> TestGateway {
        let config = file.clone().validate().expect("valid test config");
        let cert_path = config.tls.cert.clone();
        // Boxed: start-up's future is large, and every caller's would hold it.
        let gateway = Box::pin(Gateway::start(
            config,
            StartOptions {
                // A test that sets admin.password_hash gets it (argon2), not the plain password.
                admin_password: file
                    .admin
                    .password_hash
                    .is_none()
                    .then(|| ADMIN_PASSWORD.into()),
                clock: clock.clone(),
                ..StartOptions::default()
            },
        ))
        .await
        .expect("gateway starts");
        let client = TestClient::new(&cert_path, gateway.public_addr, gateway.admin_addr);
        TestGateway {
            gateway: Some(gateway),
            dir,
            clock,
            client,
            file,
        }
    }

    /// Stops this gateway and starts a new process-equivalent on the same data dir.
    pub async fn restart(mut self) -> TestGateway {
        self.stop().await;
        let mut file = self.file.clone();
        // The old ports are free again, but port 0 keeps tests independent.
        file.public.listen = "127.0.0.1:0".into();
        file.admin.listen = "127.0.0.1:0".into();
        Self::start_in(self.dir.clone(), file, self.clock.clone()).await
    }

    pub async fn stop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }

    /// Every audit line written so far (flushed first).
    pub fn audit_lines(&self) -> Vec<Value> {
        self.state().flush_audit(Duration::from_secs(5));
        let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// A client of this gateway whose connections come from `source`.
    pub fn client_from(&self, source: &str) -> TestClient {
        let g = self.gateway.as_ref().expect("running");
        TestClient::with_source(
            self.file.tls.cert.as_ref().expect("test certificate"),
            g.public_addr,
            g.admin_addr,
            Some(source.parse().expect("an IP address")),
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Creates a refresh token through the admin API; returns (id, token string).
    pub async fn create_token(&self, name: &str) -> (u64, String) {
        self.client.create_token(name).await
    }

    /// Trades a refresh token for an access token at `/token`.
    pub async fn exchange(&self, refresh: &str) -> String {
        let r = self
            .client
            .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        // Best effort: a test that panicked still releases its ports.
        if let Some(g) = self.gateway.take() {
            drop(g);
        }
    }
}

/// A collected response.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A TLS client trusting the gateway's certificate (HTTP/1.1, and one for HTTP/2).
#[derive(Clone)]
pub struct TestClient {
    h1: HttpsClient,
    h2: HttpsClient,
    pub public: String,
    pub admin: String,
}

fn tls_client(cert: &std::path::Path, h2: bool, source: Option<IpAddr>) -> HttpsClient {
    // The gateway's own client-config builder (the one the CLI uses).
    let config = tokengate::tls::client_config(tokengate::tls::Trust::CaFile(cert), &[]).unwrap();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_local_address(source);
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(h2);
    builder.build(connector)
}

impl TestClient {
    pub fn new(cert: &std::path::Path, public: SocketAddr, admin: SocketAddr) -> TestClient {
        Self::with_source(cert, public, admin, None)
    }

    /// A client whose connections come from `source` (any of 127.0.0.0/8
    /// works on Linux), so a test can be several clients at once.
    pub fn with_source(
        cert: &std::path::Path,
        public: SocketAddr,
        admin: SocketAddr,
        source: Option<IpAddr>,
    ) -> TestClient {
        TestClient {
            h1: tls_client(cert, false, source),
            h2: tls_client(cert, true, source),
            public: format!("https://localhost:{}", public.port()),
            admin: format!("https://localhost:{}", admin.port()),
        }
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Resp {
        collect(
            self.h1
                .request(req)
                .await
                .expect("request reaches the gateway"),
        )
        .await
    }

    pub async fn send_h2(&self, req: Request<Full<Bytes>>) -> Resp {
        collect(
            self.h2
                .request(req)
                .await
                .expect("request reaches the gateway"),
        )
        .await
    }

    pub fn public_req(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.public, path))
    }

    /// GET `path` on the public listener with `Authorization: <scheme> <token>`.
    pub async fn get_with(&self, path: &str, authorization: Option<&str>) -> Resp {
        let mut b = self.public_req("GET", path);
        if let Some(a) = authorization {
            b = b.header("authorization", a);
        }
        self.send(b.body(Full::default()).unwrap()).await
    }

    pub async fn api_get(&self, path: &str, access: &str) -> Resp {
        self.get_with(path, Some(&format!("Bearer {access}"))).await
    }

    pub async fn token_form(&self, body: &str) -> Resp {
        let req = self
            .public_req("POST", "/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.send(req).await
    }

    pub fn admin_req(&self, method: &str, path: &str) -> http::request::Builder {
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}"));
        Request::builder()
            .method(method)
            .uri(format!("{}{}", self.admin, path))
            .header("authorization", format!("Basic {auth}"))
    }

    pub async fn admin_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let req = self
            .admin_req(method, path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.send(req).await
    }

    /// Creates a refresh token through the admin API; returns (id, token string).
    pub async fn create_token(&self, name: &str) -> (u64, String) {
        let r = self
            .admin_json(
                "POST",
                "/api/refresh-tokens",
                &serde_json::json!({ "name": name }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let v = r.json();
        (
            v["id"].as_u64().unwrap(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// GET on the admin listener with no credentials at all.
    pub async fn admin_get_anonymous(&self, path: &str) -> Resp {
        let req = Request::get(format!("{}{}", self.admin, path))
            .body(Full::default())
            .unwrap();
        self.send(req).await
    }

    pub async fn admin_call(&self, method: &str, path: &str) -> Resp {
        self.send(self.admin_req(method, path).body(Full::default()).unwrap())
            .await
    }
}

pub async fn collect(r: http::Response<Incoming>) -> Resp {
    let (parts, body) = r.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// The stand-in for the upstream API: plain HTTP on port 0, echoing what it
/// received as JSON. `/slow` answers after 10 s (for timeouts); `/pause`
/// answers only once the test calls [`Upstream::release_paused`] (for
/// requests that must still be in flight at a moment the test chooses).
pub struct Upstream {
    pub addr: SocketAddr,
    pause: Arc<PauseGate>,
    task: tokio::task::JoinHandle<()>,
}

/// Where `/pause` requests wait until the test releases them.
struct PauseGate {
    /// `/pause` requests received and not answered yet.
    waiting: AtomicUsize,
    /// Every request that reached this upstream, so a test can tell that a
    /// refused request never did.
    hits: AtomicUsize,
    released: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    /// How many `/pause` requests have arrived and are being held.
    pub fn paused(&self) -> usize {
        self.pause.waiting.load(Ordering::SeqCst)
    }

    /// How many requests have reached this upstream so far.
    pub fn hits(&self) -> usize {
        self.pause.hits.load(Ordering::SeqCst)
    }

    /// Answers every `/pause` request, held now or arriving later.
    pub fn release_paused(&self) {
        self.pause.released.send_replace(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream() -> Upstream {
    spawn_echo(None).await
}

/// Serves `echo` on a fresh loopback port, over TLS when an acceptor is given.
async fn spawn_echo(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pause = Arc::new(PauseGate {
        waiting: AtomicUsize::new(0),
        hits: AtomicUsize::new(0),
        released: tokio::sync::watch::channel(false).0,
    });
    let gate = pause.clone();
    // The accept loop of this test double (not a polling loop): it blocks in
    // `accept` until the test connects.
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let tls = tls.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| echo(req, gate.clone()));
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => http.serve_connection(TokioIo::new(tcp), svc).await,
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    Upstream { addr, pause, task }
}

async fn echo(
    req: Request<Incoming>,
    pause: Arc<PauseGate>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    pause.hits.fetch_add(1, Ordering::SeqCst);
    if req.uri().path() == "/slow" {
        // A deliberately slow upstream: this double simulates one that answers
        // long after any response timeout a test configures.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    if req.uri().path() == "/pause" {
        let mut released = pause.released.subscribe();
        pause.waiting.fetch_add(1, Ordering::SeqCst);
        let _ = released.wait_for(|r| *r).await;
        pause.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let entry = headers
            .entry(k.as_str().to_owned())
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = entry {
            a.push(Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let out = serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let resp = http::Response::builder()
        .header("content-type", "application/json")
        .header("connection", "keep-alive, x-upstream-private")
        .header("x-upstream-private", "hop")
        .header("keep-alive", "timeout=5")
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(out.to_string())))
        .unwrap();
    Ok(resp)
}

/// An address where nothing listens: a [`spare_port`] on loopback.
pub async fn dead_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], spare_port()))
}

/// A loopback port nothing listens on, for a server a test starts later
/// (or starts again on the same port), and for "nothing listens here".
///
/// Not a port the kernel hands out (bind to port 0, then release): that
/// one comes from the ephemeral range, where every other test's `bind(0)`
/// and outgoing connection draw theirs, so one may take it before our
/// server binds it (session 34 saw this with HAProxy and a webhook
/// receiver). This one comes from below that range (10000 up to its
/// start), which only this function draws from: each port is handed out
/// once per test binary, from a start that differs between processes, and
/// checked free by binding it. Where the range leaves too little room
/// below it, the kernel's choice is the fallback.
pub fn spare_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const FROM: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = below.saturating_sub(FROM);
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    if span >= 1_000 {
        let start = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = u16::try_from(FROM + (start + n) % span).unwrap();
            if free(port) {
                return port;
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl TestGateway {
    pub fn state(&self) -> &tokengate::State {
        &self.gateway.as_ref().expect("running").state
    }

    /// A raw TLS connection to the public listener offering one ALPN
    /// protocol, for tests that need their own connections.
    pub async fn tls_connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.public_addr())
            .await
            .expect("connect");
        self.tls_over(tcp, alpn).await
    }

    /// A raw TLS connection to the admin listener (HTTP/1.1).
    pub async fn tls_connect_admin(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let addr = self.gateway.as_ref().expect("running").admin_addr;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        self.tls_over(tcp, b"http/1.1").await
    }

    /// TLS to the public listener over a TCP connection the test made itself
    /// (from another source address, or after a PROXY header).
    pub async fn tls_over(
        &self,
        tcp: TcpStream,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let cert = self.file.tls.cert.as_ref().expect("test certificate");
        let config = tokengate::tls::client_config(tokengate::tls::Trust::CaFile(cert), &[alpn])
            .expect("client TLS config");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        connector
            .connect("localhost".try_into().expect("server name"), tcp)
            .await
            .expect("TLS handshake")
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.gateway.as_ref().expect("running").public_addr
    }

    /// Open connections on the public listener, all workers together.
    pub fn open_connections(&self) -> usize {
        self.gateway
            .as_ref()
            .expect("running")
            .connections_per_worker()
            .iter()
            .sum()
    }
}

/// The echo upstream over TLS, with a fresh self-signed certificate written to
/// `dir` (`upstream.crt`, `upstream.key`).
pub async fn upstream_tls(dir: &std::path::Path) -> Upstream {
    let cert = dir.join("upstream.crt");
    let key = dir.join("upstream.key");
    tokengate::tls::generate_self_signed(&cert, &key).unwrap();
    let tls = tokengate::tls::server_config(&tokengate::config::TlsConfig {
        cert,
        key,
        generate_if_missing: false,
        watch_interval: None,
    })
    .unwrap()
    .0;
    spawn_echo(Some(tokio_rustls::TlsAcceptor::from(tls))).await
}

/// Sends `signal` (e.g. "-TERM") to a child and waits (bounded) for its exit.
pub async fn signal_and_wait(
    child: &mut tokio::process::Child,
    signal: &str,
) -> std::process::ExitStatus {
    let pid = child.id().expect("child running").to_string();
    std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits within 30 s")
        .unwrap()
}

pub mod haproxy;
pub mod pg;
pub mod replica;
pub mod servers;
pub mod webdriver;

/// One HTTP/1.1 response read off a raw connection: the head (status line
/// and headers, lower-cased names) and a body framed by `Content-Length`.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads exactly one response (head + `Content-Length` body) within 10 s.
pub async fn read_raw_response<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> RawResponse {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = r.read(&mut chunk).await.expect("read the response head");
            assert!(
                n > 0,
                "connection closed before a full response head: {buf:?}"
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut resp = RawResponse {
            status,
            head,
            body: buf[head_end..].to_vec(),
        };
        let len: usize = resp
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("Content-Length");
        while resp.body.len() < len {
            let n = r.read(&mut chunk).await.expect("read the response body");
            assert!(n > 0, "connection closed before the whole body arrived");
            resp.body.extend_from_slice(&chunk[..n]);
        }
        resp
    })
    .await
    .expect("a whole response within 10 s")
}

/// A TCP connection to `to` from the loopback address `from`.
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// True once the peer closed (EOF or reset); false while it is open.
pub fn closed_by_peer(s: &std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// A configuration duration of `s` seconds.
pub fn secs(s: u64) -> tokengate::config::HumanDuration {
    tokengate::config::HumanDuration(Duration::from_secs(s))
}

/// Runs the `tokengate` binary's `check-config` in `dir` with only `env`
/// set: whether it passed, and what it printed (stdout, then stderr).
pub fn check_config(dir: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"));
    c.arg("check-config").current_dir(dir).env_clear();
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `tokengate serve` in `dir` with a clean environment listening on
/// `public` and `admin` in front of `upstream`, stderr piped, killed if
/// dropped; callers add their own variables and spawn it.
pub fn serve_command(
    dir: &std::path::Path,
    public: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokengate"));
    c.arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("TOKENGATE_PUBLIC__LISTEN", public.to_string())
        .env("TOKENGATE_ADMIN__LISTEN", admin.to_string())
        .env("TOKENGATE_UPSTREAM__URL", format!("http://{upstream}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    c
}

/// What a child wrote to its piped stream until it closed.
pub async fn read_all(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    stream
        .expect("piped")
        .read_to_string(&mut text)
        .await
        .unwrap();
    text
}

/// Waits until a `tokengate serve` started in `dir` has written its
/// certificate (`certs/tokengate.crt`, returned) and listens on `public`.
pub async fn wait_for_serve(dir: &std::path::Path, public: SocketAddr) -> PathBuf {
    let cert = dir.join("certs/tokengate.crt");
    let cert_path = &cert;
    eventually_ok(
        Duration::from_secs(30),
        "the gateway to write its certificate and listen",
        move || async move {
            if !cert_path.exists() {
                return Err("no certificate yet".to_owned());
            }
            TcpStream::connect(public)
                .await
                .map(drop)
                .map_err(|e| format!("public listener: {e}"))
        },
    )
    .await;
    cert
}

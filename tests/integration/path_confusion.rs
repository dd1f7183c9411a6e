//! Path confusion, differentially: the same generated payloads (a few
//! hundred spellings of "leave `/public` for `/secret.txt`") against real
//! static file servers, first directly (to prove the corpus fools them),
//! then through the gateway in two set-ups:
//!
//! - **scoped**: `upstream.url` is the server's root, the token may only
//!   `GET /public/**`;
//! - **base path**: `upstream.url` ends in `/public`, the token is
//!   unrestricted, so anything outside `/public` is outside the base path.
//!
//! Each payload is sent as a raw HTTP/1.1 request line over TLS and as a raw
//! HTTP/2 `:path`. The test passes when no response through the gateway
//! holds the secret marker (in `secret.txt` and in the docroot's
//! `index.html`), the gateway answers every payload (a stream reset is
//! allowed only for a `:path` that is not a valid URI) and none with a 5xx
//! or a 429 (a refusal is a 4xx; a throttle would hide a verdict), the
//! corpus does fool the server when sent to it directly, the legitimate
//! spellings of `/public/ok.txt` still work, and the server still serves
//! after the run (a crashed upstream would hide leaks).
//!
//! Needs nginx, apache2, caddy, tomcat10, lighttpd, node and python3 with
//! the packages of tests/attacks/requirements.txt (tests/run.sh installs
//! them). One test per server; each takes a few seconds to tens of seconds.

mod corpus;
mod origins;
mod raw;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use crate::common::TestGateway;
use http::StatusCode;
use origins::{Kind, Server, OK_MARKER, SECRET_MARKER};
use raw::{Dial, Outcome};
use serde_json::json;

/// The legitimate spellings of `/public/ok.txt` (scoped set-up) and of
/// `/ok.txt` under the base path: each must still reach the file.
const LEGIT_SCOPED: &[&str] = &[
    "/public/ok.txt",
    "/public/./ok.txt",
    "/public/a/../ok.txt",
    "/public/ok.txt?x=1",
];
const LEGIT_BASE: &[&str] = &["/ok.txt", "/./ok.txt", "/a/../ok.txt", "/ok.txt?x=1"];

/// Examples shown per kind of finding in a failure message.
const EXAMPLES: usize = 12;

/// A gateway in front of the server, with an access token for it.
struct Gate {
    name: &'static str,
    gw: TestGateway,
    access: String,
    cert: PathBuf,
}

impl Gate {
    /// `base` is appended to the server's URL in `upstream.url`; `scope`
    /// restricts the token to `GET scope`.
    async fn start(
        name: &'static str,
        upstream: SocketAddr,
        base: &str,
        scope: Option<&str>,
    ) -> Gate {
        let url = format!("http://{upstream}{base}");
        let gw = TestGateway::start_with(upstream, |f| {
            f.upstream.url = url;
            // One worker is plenty for one client; fewer threads on a
            // 2-core machine running several of these at once.
            f.public.workers = 1;
            // Off: a throttled answer would hide the verdict on a payload.
            f.public.auth_failures_per_minute = 0;
            // Generous: a 504 or 502 counts as a wrong answer here, and a
            // real server on a loaded machine (Tomcat starting its JIT, a
            // small listen backlog resending a SYN after 1 s) may be slow.
            f.upstream.response_timeout =
                tokengate::config::HumanDuration(std::time::Duration::from_secs(30));
            f.upstream.connect_timeout =
                tokengate::config::HumanDuration(std::time::Duration::from_secs(10));
        })
        .await;
        let mut body = json!({ "name": name });
        if let Some(path) = scope {
            body["scopes"] = json!([{ "methods": ["GET"], "path": path }]);
        }
        let r = gw
            .client
            .admin_json("POST", "/api/refresh-tokens", &body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let refresh = r.json()["token"].as_str().unwrap().to_owned();
        let access = gw.exchange(&refresh).await;
        let cert = gw.file.tls.cert.clone().unwrap();
        Gate {
            name,
            gw,
            access,
            cert,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.gw.public_addr()
    }

    async fn h1(&self, targets: &[Vec<u8>]) -> Vec<Outcome> {
        let dial = Dial::gateway(self.addr(), &self.cert, false);
        raw::h1_all(&dial, targets, Some(&self.access)).await
    }

    /// Over HTTP/2: hyper where `http::Uri` keeps the path, Python's h2
    /// for the rest; outcomes in the order of `targets`.
    async fn h2(&self, targets: &[Vec<u8>]) -> Vec<Outcome> {
        let (keep, other): (Vec<usize>, Vec<usize>) =
            (0..targets.len()).partition(|&i| raw::hyper_keeps(&targets[i]));
        let pick = |ix: &[usize]| ix.iter().map(|&i| targets[i].clone()).collect::<Vec<_>>();
        let (via_hyper, via_python) = (pick(&keep), pick(&other));
        let dial = Dial::gateway(self.addr(), &self.cert, true);
        let (a, b) = tokio::join!(
            raw::h2_hyper_all(&dial, &via_hyper, Some(&self.access)),
            raw::h2_python_all(self.addr(), &self.cert, &via_python, &self.access),
        );
        let mut out = vec![Outcome::NoAnswer("not sent".into()); targets.len()];
        for (i, o) in keep.into_iter().zip(a).chain(other.into_iter().zip(b)) {
            out[i] = o;
        }
        out
    }
}

/// What one route (set-up × protocol) did with the corpus.
#[derive(Default)]
struct Tally {
    leaks: Vec<String>,
    server_errors: Vec<String>,
    throttled: Vec<String>,
    /// No answer where one is owed: over HTTP/1.1 a refusal is a 4xx, and
    /// so is a well-formed `:path` over HTTP/2 (only a `:path` that is not
    /// a valid URI, sent through Python, may be answered by a stream reset).
    unanswered: Vec<String>,
    statuses: BTreeMap<String, usize>,
}

impl Tally {
    fn of(sent: &[Vec<u8>], outcomes: &[Outcome]) -> Tally {
        let mut t = Tally::default();
        for (p, o) in sent.iter().zip(outcomes) {
            let shown = corpus::show(p);
            let key = match o {
                Outcome::NoAnswer(why) => {
                    if !why.starts_with("h2 (python)") {
                        t.unanswered.push(format!("{shown}: {why}"));
                    }
                    format!("no answer: {}", why.chars().take(60).collect::<String>())
                }
                Outcome::Answer(a) => {
                    if a.contains(SECRET_MARKER) {
                        t.leaks.push(format!("{shown} -> {}", a.status));
                    }
                    if a.status >= 500 {
                        let why = a.error_code().unwrap_or_else(|| "upstream page".into());
                        t.server_errors
                            .push(format!("{shown} -> {} ({why})", a.status));
                    }
                    if a.status == 429 {
                        t.throttled.push(shown);
                    }
                    match a.error_code() {
                        Some(code) if a.status >= 400 => format!("{} {code}", a.status),
                        _ => a.status.to_string(),
                    }
                }
            };
            *t.statuses.entry(key).or_default() += 1;
        }
        t
    }
}

fn examples(list: &[String]) -> String {
    let mut s: String = list
        .iter()
        .take(EXAMPLES)
        .map(|l| format!("\n      {l}"))
        .collect();
    if list.len() > EXAMPLES {
        let _ = write!(s, "\n      … and {} more", list.len() - EXAMPLES);
    }
    s
}

/// Sends the legitimate spellings over both protocols; the failures.
async fn legit(gate: &Gate, paths: &[&str]) -> Vec<String> {
    let targets: Vec<Vec<u8>> = paths.iter().map(|p| p.as_bytes().to_vec()).collect();
    let (h1, h2) = tokio::join!(gate.h1(&targets), gate.h2(&targets));
    let mut failed = Vec::new();
    for (proto, outcomes) in [("HTTP/1.1", h1), ("HTTP/2", h2)] {
        for (p, o) in paths.iter().zip(outcomes) {
            let ok = o
                .answer()
                .is_some_and(|a| a.status == 200 && a.contains(OK_MARKER));
            if !ok {
                failed.push(format!("{} {proto} {p}: {o:?}", gate.name));
            }
        }
    }
    failed
}

#[allow(
    clippy::print_stderr,
    reason = "the per-route summary, for whoever reads the test's output"
)]
async fn differential(kind: Kind) {
    let started = Instant::now();
    let server = Server::start(kind).await;
    let payloads = corpus::payloads();
    let based: Vec<Vec<u8>> = payloads.iter().map(|p| corpus::under_base(p)).collect();
    let (scoped, base) = tokio::join!(
        Gate::start("scoped", server.addr, "", Some("/public/**")),
        Gate::start("base path", server.addr, "/public", None),
    );
    let ready = started.elapsed();

    let direct_dial = Dial::Plain(server.addr);
    let (direct, scoped_h1, scoped_h2, base_h1, base_h2) = tokio::join!(
        raw::h1_all(&direct_dial, &payloads, None),
        scoped.h1(&payloads),
        scoped.h2(&payloads),
        base.h1(&based),
        base.h2(&based),
    );

    let mut failures = String::new();
    // Every finding in full, for whoever has to fix them (the failure
    // message shows the first few of each kind).
    let mut findings = String::new();
    let mut summary = format!(
        "{kind:?}: {} payloads, ready in {ready:?}, all sent after {:?}\n",
        payloads.len(),
        started.elapsed()
    );

    // The corpus must be able to fool this server on its own: payloads
    // that a standards-following reading keeps inside /public, yet that
    // read the secret when sent straight to the server.
    let direct_leaks: Vec<String> = payloads
        .iter()
        .zip(&direct)
        .filter(|(p, o)| {
            corpus::looks_inside_public(p) && o.answer().is_some_and(|a| a.contains(SECRET_MARKER))
        })
        .map(|(p, _)| corpus::show(p))
        .collect();
    let _ = writeln!(
        summary,
        "  direct: {} payloads that look inside /public read the secret{}",
        direct_leaks.len(),
        examples(&direct_leaks)
    );
    if direct_leaks.is_empty() {
        let _ = writeln!(
            failures,
            "the corpus never fooled {kind:?} directly: it proves nothing about the gateway"
        );
    }

    for (route, sent, outcomes) in [
        ("scoped, HTTP/1.1", &payloads, &scoped_h1),
        ("scoped, HTTP/2", &payloads, &scoped_h2),
        ("base path, HTTP/1.1", &based, &base_h1),
        ("base path, HTTP/2", &based, &base_h2),
    ] {
        let t = Tally::of(sent, outcomes);
        let _ = writeln!(summary, "  {route}: {:?}", t.statuses);
        for (what, list) in [
            ("secret", &t.leaks),
            ("5xx", &t.server_errors),
            ("429", &t.throttled),
            ("no answer", &t.unanswered),
        ] {
            for l in list {
                let _ = writeln!(findings, "{route}\t{what}\t{l}");
            }
        }
        if !t.leaks.is_empty() {
            let _ = writeln!(
                failures,
                "{kind:?} {route}: {} payloads read the secret through the gateway:{}",
                t.leaks.len(),
                examples(&t.leaks)
            );
        }
        if !t.server_errors.is_empty() {
            let _ = writeln!(
                failures,
                "{kind:?} {route}: {} payloads got a 5xx (a malformed path is a 4xx):{}",
                t.server_errors.len(),
                examples(&t.server_errors)
            );
        }
        if !t.unanswered.is_empty() {
            let _ = writeln!(
                failures,
                "{kind:?} {route}: {} payloads got no answer (a refusal is a 4xx):{}",
                t.unanswered.len(),
                examples(&t.unanswered)
            );
        }
        if !t.throttled.is_empty() {
            let _ = writeln!(
                failures,
                "{kind:?} {route}: {} payloads were throttled (429), so never judged:{}",
                t.throttled.len(),
                examples(&t.throttled)
            );
        }
    }

    // After the corpus: the legitimate paths still work through both
    // gateways, and the server is still up (a crashed server leaks nothing).
    let (a, b) = tokio::join!(legit(&scoped, LEGIT_SCOPED), legit(&base, LEGIT_BASE));
    for f in a.iter().chain(&b) {
        let _ = writeln!(failures, "{kind:?}: a legitimate path failed: {f}");
    }
    let alive = raw::h1_once(&direct_dial, b"/public/ok.txt", None).await;
    if !alive.is_some_and(|a| a.contains(OK_MARKER)) {
        let _ = writeln!(
            failures,
            "{kind:?} no longer serves /public/ok.txt after the run; its output:\n{}",
            server.log()
        );
    }
    let _ = writeln!(summary, "  done in {:?}", started.elapsed());
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("path_confusion-{kind:?}.tsv"));
    if findings.is_empty() {
        // No stale list from an earlier run.
        let _ = std::fs::remove_file(&file);
    } else {
        std::fs::write(&file, &findings).unwrap();
        let _ = writeln!(failures, "every finding: {}", file.display());
    }
    eprintln!("{summary}");
    assert!(failures.is_empty(), "{summary}\n{failures}");
}

// Each run is boxed: it joins five clients' futures, too large for the
// stack (clippy::large_futures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_static() {
    Box::pin(differential(Kind::Nginx)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_proxy_pass_with_a_uri() {
    Box::pin(differential(Kind::NginxProxy)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_httpd() {
    Box::pin(differential(Kind::Apache)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_file_server() {
    Box::pin(differential(Kind::Caddy)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tomcat_default_servlet() {
    Box::pin(differential(Kind::Tomcat)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lighttpd() {
    Box::pin(differential(Kind::Lighttpd)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_server() {
    Box::pin(differential(Kind::Python)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_whatwg_url_static_server() {
    Box::pin(differential(Kind::Node)).await;
}

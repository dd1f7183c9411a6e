//! Signed webhooks, received by a real receiver: a Python HTTP server that
//! verifies every delivery with the Standard Webhooks library
//! (`standardwebhooks` from PyPI) and writes what it got to a file.
//!
//! - every event type the lifecycle produces today arrives, verified, with
//!   the token's id and name and never a token string; `token.expiring`
//!   once, again after an extension out of the window and back;
//! - suspend and resume, a leak report naming a live refresh token and a
//!   live access token, and the sweep revoking an unused token each arrive
//!   once, verified, naming the token and never holding a token string;
//!   with two replicas sweeping one database, still once;
//! - a receiver down at first gets the events once it is up (retries);
//! - events pending at a restart are delivered after it (redb and
//!   PostgreSQL), and an expiry warning sent is not sent again;
//! - two replicas on one PostgreSQL deliver each event once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use tokengate::config::{FileConfig, HumanDuration, WebhookSection};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::common::pg::TestDb;
use crate::common::replica::Cluster;
use crate::common::{
    bound_port, eventually, eventually_ok, python3, secs, upstream, with_inherited, TestGateway,
};

/// Generous bounds for a busy 2-core machine; no test asserts a duration.
const WAIT: Duration = Duration::from_secs(60);

/// The receiver: verifies with the reference library, answers 204 (or 400
/// for a bad signature, which the gateway then retries), appends one JSON
/// line per request.
const RECEIVER: &str = r#"
import json, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook

port, secret, out, fd = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
hook = Webhook(secret)

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload, ok = hook.verify(body, headers), True
        except Exception as e:
            payload, ok = repr(e), False
        line = {"verified": ok, "id": headers.get("webhook-id"), "payload": payload,
                "raw": body.decode("utf-8", "replace"),
                "content_type": headers.get("content-type")}
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.send_response(204 if ok else 400)
        self.end_headers()

    def log_message(self, *args):
        pass

# The test's socket, already bound to the port (inherited as `fd`).
sock = socket.socket(fileno=fd)
sock.listen(64)
server = ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=False)
server.socket.close()
server.socket = sock
server.server_name, server.server_port = "127.0.0.1", port
print("ready", flush=True)
server.serve_forever()
"#;

/// A Standard Webhooks secret (24 random-looking bytes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Receiver {
    dir: tempfile::TempDir,
    /// The receiver's socket (`bound_port`), bound from the start and
    /// listening only once the receiver runs: while it is down,
    /// connections to the port are refused.
    socket: tokio::net::TcpSocket,
    port: u16,
    child: Option<Child>,
}

impl Receiver {
    /// A receiver on a port of its own, not started yet (down).
    fn new() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("receiver.py"), RECEIVER).unwrap();
        let (socket, port) = bound_port();
        Receiver {
            dir,
            socket,
            port,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// The secret's file, 0600, as the gateway requires.
    fn secret_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("hook.secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn section(&self) -> WebhookSection {
        WebhookSection {
            url: self.url(),
            secret_file: Some(self.secret_file()),
            events: vec!["*".into()],
            retry_initial: HumanDuration(Duration::from_millis(200)),
            ..WebhookSection::default()
        }
    }

    /// The same endpoint as a replica's `[[webhooks]]` entry.
    fn toml(&self) -> String {
        format!(
            "\n[[webhooks]]\nurl = \"{}\"\nsecret_file = \"{}\"\nevents = [\"*\"]\nretry_initial = \"200ms\"\n",
            self.url(),
            self.secret_file().display()
        )
    }

    fn configure(&self, f: &mut FileConfig) {
        f.webhooks = vec![self.section()];
    }

    async fn start(&mut self) {
        let mut child = with_inherited(&self.socket, |fd| {
            Command::new(python3())
                .arg(self.dir.path().join("receiver.py"))
                .arg(self.port.to_string())
                .arg(SECRET)
                .arg(self.dir.path().join("received.jsonl"))
                .arg(fd.to_string())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
        })
        .expect("python3 runs the receiver");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(WAIT, lines.next_line()).await;
        assert!(
            matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
            "the receiver did not start (is standardwebhooks installed? tests/run.sh): {ready:?}"
        );
        self.child = Some(child);
    }

    /// Every request received so far.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The verified deliveries, one per webhook-id (the first of each).
    fn events(&self) -> Vec<Value> {
        let all = self.received();
        for r in &all {
            assert_eq!(r["verified"], true, "a delivery failed verification: {r}");
            assert_eq!(r["content_type"], "application/json");
        }
        let mut seen = BTreeSet::new();
        all.into_iter()
            .filter(|r| seen.insert(r["id"].as_str().unwrap().to_owned()))
            .map(|r| r["payload"].clone())
            .collect()
    }

    /// Waits until `n` events of `type` (for token `id`) have arrived.
    async fn wait_for(&self, kind: &str, id: u64, n: usize) -> Vec<Value> {
        eventually(WAIT, &format!("{n} × {kind} for token {id}"), || async {
            let found: Vec<Value> = self
                .events()
                .into_iter()
                .filter(|e| e["type"] == kind && e["data"]["id"] == id)
                .collect();
            (found.len() >= n).then_some(found)
        })
        .await
    }

    fn count(&self, kind: &str, id: u64) -> usize {
        self.events()
            .iter()
            .filter(|e| e["type"] == kind && e["data"]["id"] == id)
            .count()
    }
}

/// A sample of the gateway's scrape.
async fn metric(client: &crate::common::TestClient, name: &str) -> u64 {
    let text = client.admin_call("GET", "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the scrape:\n{text}"))
}

async fn patch(gw: &crate::common::TestClient, id: u64, body: Value) {
    let r = gw
        .admin_json("PATCH", &format!("/api/refresh-tokens/{id}"), &body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

async fn create(gw: &crate::common::TestClient, name: &str, expires: &str) -> (u64, String) {
    let r = gw
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": name, "expires": expires}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let v = r.json();
    (
        v["id"].as_u64().unwrap(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn every_lifecycle_event_arrives_signed_and_never_holds_a_token_string() {
    let up = upstream().await;
    let mut rx = Receiver::new();
    rx.start().await;
    let gw = TestGateway::start_with(up.addr, |f| rx.configure(f)).await;
    let c = &gw.client;
    let mut secrets = Vec::new();

    let (a, s) = create(c, "nightly", "90d").await;
    secrets.push(s);
    let created = rx.wait_for("token.created", a, 1).await;
    let d = &created[0]["data"];
    assert_eq!(d["name"], "nightly");
    assert_eq!(d["user"], "admin");
    assert!(d["expires_at"].as_str().unwrap().ends_with('Z'), "{d}");
    assert!(created[0]["timestamp"].as_str().unwrap().ends_with('Z'));

    patch(c, a, json!({"name": "nightly report"})).await;
    let edited = rx.wait_for("token.edited", a, 1).await;
    assert_eq!(edited[0]["data"]["name"], "nightly report");

    let r = c
        .admin_json(
            "POST",
            &format!("/api/refresh-tokens/{a}/rotate"),
            &json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    secrets.push(r.json()["token"].as_str().unwrap().to_owned());
    rx.wait_for("token.rotated", a, 1).await;
    secrets.push(gw.exchange(secrets.last().unwrap()).await);

    // Inside the expiring-soon window from the start: warned once.
    let (b, s) = create(c, "short", "3d").await;
    secrets.push(s);
    let warned = rx.wait_for("token.expiring", b, 1).await;
    let d = &warned[0]["data"];
    assert_eq!(d["name"], "short");
    let left = d["expires_in"].as_u64().unwrap();
    assert!(left > 2 * 86_400 && left <= 3 * 86_400, "{d}");
    // An edit inside the window does not warn again; one that takes it
    // out re-arms the warning, and coming back warns once more.
    patch(c, b, json!({"name": "short-lived"})).await;
    patch(c, b, json!({"expires": "30d"})).await;
    patch(c, b, json!({"expires": "2d"})).await;
    rx.wait_for("token.edited", b, 3).await;
    rx.wait_for("token.expiring", b, 2).await;
    let (z, _) = create(c, "marker", "90d").await;
    rx.wait_for("token.created", z, 1).await;
    assert_eq!(rx.count("token.expiring", b), 2, "{:?}", rx.events());
    assert_eq!(rx.count("token.expiring", a), 0, "90 days away");

    let r = c
        .admin_call("DELETE", &format!("/api/refresh-tokens/{a}"))
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let deleted = rx.wait_for("token.deleted", a, 1).await;
    assert_eq!(deleted[0]["data"]["name"], "nightly report");
    // A holder revoking its own token (RFC 7009) is a deletion too.
    let revoke = c
        .public_req("POST", "/token/revoke")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            "token={}",
            secrets[3]
        ))))
        .unwrap();
    assert_eq!(c.send(revoke).await.status, StatusCode::OK);
    let by_holder = rx.wait_for("token.deleted", b, 1).await;
    assert_eq!(by_holder[0]["data"]["actor"], "client");

    // Every delivery verified (events() checks), each with its own id,
    // and no body holds a token string or even a token prefix.
    let all = rx.received();
    let ids: BTreeSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "one delivery per event here: {all:?}");
    assert!(ids.iter().all(|id| id.starts_with("msg_")), "{ids:?}");
    for r in &all {
        let raw = r["raw"].as_str().unwrap();
        for s in &secrets {
            assert!(!raw.contains(s.as_str()), "a token string in {raw}");
        }
        assert!(!raw.contains("tgr_") && !raw.contains("tga_"), "{raw}");
    }
    let delivered = eventually(WAIT, "the scrape's delivery count", || async {
        let n = metric(c, "tokengate_webhook_deliveries_total").await;
        (n >= all.len() as u64).then_some(n)
    })
    .await;
    assert_eq!(delivered, all.len() as u64);
    assert_eq!(
        metric(c, "tokengate_webhook_failed_attempts_total").await,
        0
    );
    eventually(WAIT, "an empty outbox", || async {
        (metric(c, "tokengate_webhook_outbox_depth").await == 0).then_some(())
    })
    .await;
}

/// `POST path` on the admin API with a JSON body; must answer 200.
async fn post(gw: &crate::common::TestClient, path: &str, body: Value) -> Value {
    let r = gw.admin_json("POST", path, &body).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    r.json()
}

/// Every delivery so far verified (`events` checks), each under its own
/// webhook-id, and no body holding one of `secrets` or a token prefix.
fn assert_no_token_text(rx: &Receiver, secrets: &[String]) {
    rx.events();
    let all = rx.received();
    let ids: BTreeSet<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "one delivery per event here: {all:?}");
    for r in &all {
        let raw = r["raw"].as_str().unwrap();
        for s in secrets {
            assert!(!raw.contains(s.as_str()), "a token string in {raw}");
        }
        assert!(!raw.contains("tgr_") && !raw.contains("tga_"), "{raw}");
    }
}

/// Waits until everything staged so far has been delivered: a marker
/// created now (its answer waits for every staged event to reach the
/// outbox) has arrived, the outbox is empty and the scrape counts as many
/// deliveries as the receiver got.
async fn settle(rx: &Receiver, c: &crate::common::TestClient) {
    let (marker, _) = create(c, "marker", "90d").await;
    rx.wait_for("token.created", marker, 1).await;
    eventually(WAIT, "every staged event delivered", || async {
        let depth = metric(c, "tokengate_webhook_outbox_depth").await;
        let delivered = metric(c, "tokengate_webhook_deliveries_total").await;
        (depth == 0 && delivered == rx.received().len() as u64).then_some(())
    })
    .await;
}

#[tokio::test]
async fn suspend_resume_and_leak_reports_arrive_signed_once_each() {
    let up = upstream().await;
    let mut rx = Receiver::new();
    rx.start().await;
    let gw = TestGateway::start_with(up.addr, |f| rx.configure(f)).await;
    let c = &gw.client;
    let mut secrets = Vec::new();

    // Suspended by an administrator with a reason, then resumed.
    let (a, s) = create(c, "ci-deploy", "90d").await;
    secrets.push(gw.exchange(&s).await);
    secrets.push(s);
    post(
        c,
        &format!("/api/refresh-tokens/{a}/suspend"),
        json!({"reason": "found in a CI log"}),
    )
    .await;
    let suspended = rx.wait_for("token.suspended", a, 1).await;
    let d = &suspended[0]["data"];
    assert_eq!(d["name"], "ci-deploy", "{d}");
    assert_eq!(d["reason"], "found in a CI log", "{d}");
    assert_eq!(d["user"], "admin", "{d}");
    assert_eq!(d["audit_event"], "refresh_token.suspended", "{d}");
    assert!(d["expires_at"].as_str().unwrap().ends_with('Z'), "{d}");
    assert!(suspended[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    post(c, &format!("/api/refresh-tokens/{a}/resume"), json!({})).await;
    let resumed = rx.wait_for("token.resumed", a, 1).await;
    let d = &resumed[0]["data"];
    assert_eq!(d["name"], "ci-deploy", "{d}");
    assert_eq!(d["user"], "admin", "{d}");
    assert!(d.get("reason").is_none(), "a resume has no reason: {d}");

    // A report naming a live refresh token, a live access token (of
    // another refresh token) and a string that is no token.
    let (r, refresh) = create(c, "leaked-refresh", "90d").await;
    let (x, issuer) = create(c, "leaked-access", "90d").await;
    let access = gw.exchange(&issuer).await;
    secrets.extend([refresh.clone(), issuer, access.clone()]);
    let reporter = gw.client_from("127.0.0.7");
    let body = json!({"tokens": [refresh, access, "tgr_notatoken"]}).to_string();
    let req = reporter
        .public_req("POST", "/token/leaked")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let answer = reporter.send(req).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());

    let leaked = rx.wait_for("token.reported_leaked", r, 1).await;
    let d = &leaked[0]["data"];
    assert_eq!(d["name"], "leaked-refresh", "{d}");
    assert_eq!(d["token_type"], "refresh_token", "{d}");
    assert_eq!(d["client_ip"], "127.0.0.7", "{d}");
    assert_eq!(d["actor"], "client", "{d}");
    assert_eq!(d["reason"], "reported leaked", "{d}");
    // The report suspends the refresh token: that is a suspension too,
    // by the reporter.
    let by_report = rx.wait_for("token.suspended", r, 1).await;
    let d = &by_report[0]["data"];
    assert_eq!(d["name"], "leaked-refresh", "{d}");
    assert_eq!(d["reason"], "reported leaked", "{d}");
    assert_eq!(d["via"], "report", "{d}");
    assert_eq!(d["client_ip"], "127.0.0.7", "{d}");
    // A leaked access token is news about the refresh token that issued it.
    let leaked = rx.wait_for("token.reported_leaked", x, 1).await;
    let d = &leaked[0]["data"];
    assert_eq!(d["name"], "leaked-access", "{d}");
    assert_eq!(d["token_type"], "access_token", "{d}");
    assert_eq!(d["client_ip"], "127.0.0.7", "{d}");

    settle(&rx, c).await;
    for (kind, id, n) in [
        ("token.suspended", a, 1),
        ("token.resumed", a, 1),
        ("token.reported_leaked", r, 1),
        ("token.suspended", r, 1),
        ("token.reported_leaked", x, 1),
        // Only the access token was revoked; its refresh token stays live.
        ("token.suspended", x, 0),
        ("token.resumed", r, 0),
    ] {
        assert_eq!(rx.count(kind, id), n, "{kind} for {id}: {:?}", rx.events());
    }
    assert_no_token_text(&rx, &secrets);
    assert_eq!(
        metric(c, "tokengate_webhook_failed_attempts_total").await,
        0
    );
}

#[tokio::test]
async fn an_unused_token_revoked_by_the_sweep_arrives_once() {
    let up = upstream().await;
    let mut rx = Receiver::new();
    rx.start().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        rx.configure(f);
        // Room for the exchange below to come first on a busy machine.
        f.tokens.revoke_unused_after = Some(secs(5));
        f.tokens.sweep_interval = secs(1);
    })
    .await;
    let c = &gw.client;
    let (idle, s) = create(c, "idle", "90d").await;
    let secrets = vec![gw.exchange(&s).await, s];
    let revoked = rx.wait_for("token.revoked_unused", idle, 1).await;
    let d = &revoked[0]["data"];
    assert_eq!(d["name"], "idle", "{d}");
    assert_eq!(d["actor"], "system", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("tokens.revoke_unused_after")),
        "{d}"
    );
    assert_eq!(d["audit_event"], "refresh_token.revoked_unused", "{d}");
    // A token created after that revocation is revoked by a later sweep:
    // once its event is here, sweeps after the first have run, and none
    // revoked the idle token again.
    let (later, _) = create(c, "later", "90d").await;
    rx.wait_for("token.revoked_unused", later, 1).await;
    eventually(WAIT, "every staged event delivered", || async {
        let depth = metric(c, "tokengate_webhook_outbox_depth").await;
        let delivered = metric(c, "tokengate_webhook_deliveries_total").await;
        (depth == 0 && delivered == rx.received().len() as u64).then_some(())
    })
    .await;
    assert_eq!(
        rx.count("token.revoked_unused", idle),
        1,
        "{:?}",
        rx.events()
    );
    assert_eq!(rx.count("token.created", idle), 1);
    assert_no_token_text(&rx, &secrets);
}

#[tokio::test]
async fn a_receiver_down_at_first_gets_the_events_after_retries() {
    let up = upstream().await;
    let mut rx = Receiver::new();
    let gw = TestGateway::start_with(up.addr, |f| rx.configure(f)).await;
    let c = &gw.client;
    let (a, _) = create(c, "early", "90d").await;
    eventually(WAIT, "a failed attempt", || async {
        (metric(c, "tokengate_webhook_failed_attempts_total").await >= 2).then_some(())
    })
    .await;
    assert_eq!(metric(c, "tokengate_webhook_outbox_depth").await, 1);
    assert!(rx.received().is_empty());
    rx.start().await;
    rx.wait_for("token.created", a, 1).await;
    eventually(WAIT, "an empty outbox", || async {
        (metric(c, "tokengate_webhook_outbox_depth").await == 0).then_some(())
    })
    .await;
    assert_eq!(metric(c, "tokengate_webhook_deliveries_total").await, 1);
    assert_eq!(metric(c, "tokengate_webhook_dropped_total").await, 0);
    let ids: BTreeSet<String> = rx
        .received()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);
}

/// Events pending when the gateway stops are delivered after its restart;
/// an expiry warning sent before a restart is not sent again after it.
async fn pending_events_survive_a_restart(db: Option<&TestDb>) {
    let up = upstream().await;
    let mut rx = Receiver::new();
    let gw = TestGateway::start_with(up.addr, |f| {
        rx.configure(f);
        if let Some(db) = db {
            f.storage.backend = "postgres".into();
            f.storage.postgres.url = db.url.clone();
            f.storage.postgres.sslmode = "disable".into();
        }
    })
    .await;
    let (a, _) = create(&gw.client, "before", "90d").await;
    let (b, _) = create(&gw.client, "soon", "2d").await;
    eventually(
        WAIT,
        "both events and the warning in the outbox",
        || async {
            (metric(&gw.client, "tokengate_webhook_outbox_depth").await == 3).then_some(())
        },
    )
    .await;
    let gw = gw.restart().await;
    rx.start().await;
    rx.wait_for("token.created", a, 1).await;
    rx.wait_for("token.created", b, 1).await;
    rx.wait_for("token.expiring", b, 1).await;
    let gw = gw.restart().await;
    // A change after the restart wakes the sweep; its event is delivered
    // in the same round as any warning that sweep would queue.
    let (z, _) = create(&gw.client, "after", "90d").await;
    rx.wait_for("token.created", z, 1).await;
    assert_eq!(rx.count("token.expiring", b), 1, "{:?}", rx.events());
}

/// `Gateway::shutdown` returns with the redb file closed, so the same
/// process may open it again at once (a restart, a backup, a migration).
/// Session 35's stressed run: a restart failed with "already open" because
/// an outbox write, cut short by the drain, still held the store on the
/// blocking pool, or had the last handle and was still closing the file
/// (3 failures in 10 runs on a loaded machine, each free 10 ms later).
/// Here deliveries to a receiver that is down keep the outbox busy while
/// each gateway stops.
#[tokio::test]
async fn shutdown_returns_with_the_data_file_closed() {
    let up = upstream().await;
    let rx = Receiver::new();
    let mut gw = TestGateway::start_with(up.addr, |f| rx.configure(f)).await;
    let path = gw.file.storage.path.clone();
    for round in 0..10 {
        for i in 0..3 {
            create(&gw.client, &format!("r{round}-{i}"), "2d").await;
        }
        gw.stop().await;
        match tokengate::RefreshStore::open(&path) {
            Ok(store) => assert_eq!(store.len(), 3 * (round + 1)),
            Err(e) => panic!("round {round}: the data file is still held: {e}"),
        }
        gw = gw.restart().await;
    }
}

#[tokio::test]
async fn pending_events_survive_a_restart_redb() {
    Box::pin(pending_events_survive_a_restart(None)).await;
}

#[tokio::test]
async fn pending_events_survive_a_restart_postgres() {
    let db = TestDb::new();
    Box::pin(pending_events_survive_a_restart(Some(&db))).await;
}

#[tokio::test]
async fn two_replicas_deliver_each_event_once() {
    let db = TestDb::new();
    let up = upstream().await;
    let mut rx = Receiver::new();
    rx.start().await;
    let cluster = Cluster::new(&db.url, up.addr).with_toml(&rx.toml());
    let one = cluster.start("one").await;
    let two = cluster.start("two").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = if i % 2 == 0 { &one } else { &two };
        // Every token in the window: both replicas' sweeps see each.
        let (id, _) = create(r.client(), &format!("t{i}"), "2d").await;
        ids.push(id);
    }
    for id in &ids {
        rx.wait_for("token.created", *id, 1).await;
        rx.wait_for("token.expiring", *id, 1).await;
    }
    for r in [&one, &two] {
        eventually_ok(WAIT, "an empty outbox", || async {
            match metric(r.client(), "tokengate_webhook_outbox_depth").await {
                0 => Ok(()),
                n => Err(n),
            }
        })
        .await;
    }
    let all = rx.received();
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &all {
        *per_id
            .entry(r["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), 12, "6 created and 6 expiring: {per_id:?}");
    assert_eq!(all.len(), 12, "each delivered once: {per_id:?}");
    let delivered = metric(one.client(), "tokengate_webhook_deliveries_total").await
        + metric(two.client(), "tokengate_webhook_deliveries_total").await;
    assert_eq!(delivered, 12);
}

#[tokio::test]
async fn two_replicas_deliver_a_suspension_and_an_unused_revocation_once() {
    let db = TestDb::new();
    let up = upstream().await;
    let mut rx = Receiver::new();
    rx.start().await;
    let cluster = Cluster::new(&db.url, up.addr)
        .with_toml(&rx.toml())
        .with_env("TOKENGATE_TOKENS__REVOKE_UNUSED_AFTER", "5s")
        .with_env("TOKENGATE_TOKENS__SWEEP_INTERVAL", "1s");
    let one = cluster.start("one").await;
    let two = cluster.start("two").await;
    let (idle, s) = create(one.client(), "idle", "90d").await;
    // Suspended on the other replica, once the change feed has brought it.
    let path = format!("/api/refresh-tokens/{idle}/suspend");
    eventually(WAIT, "a suspension on the second replica", || async {
        let r = two
            .client()
            .admin_json("POST", &path, &json!({"reason": "rotating keys"}))
            .await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    let suspended = rx.wait_for("token.suspended", idle, 1).await;
    assert_eq!(suspended[0]["data"]["reason"], "rotating keys");
    assert_eq!(suspended[0]["data"]["name"], "idle");
    // Both replicas sweep; the one whose delete found the token tells.
    let revoked = rx.wait_for("token.revoked_unused", idle, 1).await;
    assert_eq!(revoked[0]["data"]["name"], "idle");
    let (later, _) = create(two.client(), "later", "90d").await;
    rx.wait_for("token.revoked_unused", later, 1).await;
    for r in [&one, &two] {
        eventually_ok(WAIT, "an empty outbox", || async {
            match metric(r.client(), "tokengate_webhook_outbox_depth").await {
                0 => Ok(()),
                n => Err(n),
            }
        })
        .await;
    }
    for (kind, id) in [
        ("token.created", idle),
        ("token.suspended", idle),
        ("token.revoked_unused", idle),
        ("token.created", later),
        ("token.revoked_unused", later),
    ] {
        assert_eq!(rx.count(kind, id), 1, "{kind} for {id}: {:?}", rx.events());
    }
    assert_no_token_text(&rx, &[s]);
    let delivered = metric(one.client(), "tokengate_webhook_deliveries_total").await
        + metric(two.client(), "tokengate_webhook_deliveries_total").await;
    assert_eq!(delivered, rx.received().len() as u64);
}

#[test]
fn a_plain_http_remote_url_or_a_bad_secret_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::new();
    let secret = rx.secret_file();
    let write = |name: &str, body: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let cases = [
        (
            format!("[[webhooks]]\nurl = \"http://hooks.example.com/x\"\nsecret_file = \"{}\"\n", secret.display()),
            "webhooks[0].url",
        ),
        (
            format!("[[webhooks]]\nurl = \"https://hooks.example.com/x\"\nsecret_file = \"{}\"\nevents = [\"token.made\"]\n", secret.display()),
            "unknown event type",
        ),
        (
            "[[webhooks]]\nurl = \"https://hooks.example.com/x\"\nsecret_file = \"/nonexistent/hook.secret\"\n".to_owned(),
            "webhooks[0].secret_file",
        ),
    ];
    for (i, (toml, says)) in cases.iter().enumerate() {
        let path = write(&format!("c{i}.toml"), toml);
        let (ok, out) = check_config(&path);
        assert!(!ok && out.contains(says), "{says:?} not in {out}");
    }
    let good = write(
        "good.toml",
        &format!(
            "[[webhooks]]\nurl = \"https://hooks.example.com/x\"\nsecret_file = \"{}\"\nevents = [\"token.created\", \"token.expiring\"]\n",
            secret.display()
        ),
    );
    let (ok, out) = check_config(&good);
    assert!(ok, "{out}");
    // The path may be the endpoint's credential (chat services put it there).
    assert!(
        out.contains("webhooks[0].url = https://hooks.example.com/…"),
        "{out}"
    );
    assert!(!out.contains("hooks.example.com/x"), "{out}");
    assert!(!out.contains("MfKQ"), "the secret is never shown: {out}");
}

/// `tokengate check-config --config FILE` in an empty directory.
fn check_config(config: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

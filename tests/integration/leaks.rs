//! Leaked-token reports (`POST /token/leaked`) and the scanner rules in
//! docs/secret-scanning/: live, dead and malformed strings get the same
//! answer; a live refresh token is suspended and a live access token
//! revoked, audited with the reporter's address; the hourly limit; a report
//! on one replica holds on the other; the real detect-secrets (PyPI) with
//! the shipped plugin finds a token the gateway made and ignores a
//! wrong-checksum string; the gitleaks rules' regexes match the format.
//!
//! The scanner tests need the tests' Python environment (tests/run.sh
//! installs detect-secrets there).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common;
use crate::common::pg::TestDb;
use crate::common::replica::{Cluster, Replica};
use crate::common::{eventually_ok, upstream, within_bound, Resp, TestClient, TestGateway};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use serde_json::{json, Value};

const PLUGIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/secret-scanning/tokengate_detect_secrets.py"
);
const GITLEAKS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/secret-scanning/gitleaks.toml"
);
/// What docs/cluster.md promises for a revocation, and so for these.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

async fn report_raw(client: &TestClient, content_type: &str, body: impl Into<Bytes>) -> Resp {
    let req = client
        .public_req("POST", "/token/leaked")
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap();
    client.send(req).await
}

async fn report(client: &TestClient, tokens: &[&str]) -> Resp {
    report_raw(
        client,
        "application/json",
        json!({ "tokens": tokens }).to_string(),
    )
    .await
}

/// The answer minus what differs between any two answers (the date).
fn answer(r: &Resp) -> (StatusCode, BTreeMap<String, String>, Bytes) {
    let headers = r
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::DATE)
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    (r.status, headers, r.body.clone())
}

/// `s` with its checksum's last character changed: the right shape, a
/// wrong checksum.
fn wrong_checksum(s: &str) -> String {
    let (head, last) = s.split_at(s.len() - 1);
    format!("{head}{}", if last == "A" { "B" } else { "A" })
}

fn events(lines: &[Value], name: &str) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| l["event"] == name)
        .cloned()
        .collect()
}

#[tokio::test]
async fn live_dead_and_malformed_strings_get_the_same_answer() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    // Expired: a token of one hour, two hours ago.
    let r = gw
        .client
        .admin_json(
            "POST",
            "/api/refresh-tokens",
            &json!({"name": "expired", "expires": "1h"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let expired = r.json()["token"].as_str().unwrap().to_owned();
    let expired_access = gw.exchange(&expired).await;
    gw.clock.advance(Duration::from_secs(2 * 3600));
    // Deleted, with an access token of its own.
    let (deleted_id, deleted) = gw.create_token("deleted").await;
    let deleted_access = gw.exchange(&deleted).await;
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{deleted_id}"))
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    // Live: one refresh token reported, and another one's access token.
    let (live_id, live) = gw.create_token("live").await;
    let live_access = gw.exchange(&live).await;
    let (other_id, other) = gw.create_token("other").await;
    let other_access = gw.exchange(&other).await;
    let other_second = gw.exchange(&other).await;

    let never_minted = tokengate::new_refresh_token().unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("unknown well-formed refresh token", never_minted),
        ("deleted refresh token", deleted.clone()),
        ("expired refresh token", expired.clone()),
        ("access token of a deleted token", deleted_access.clone()),
        ("expired access token", expired_access.clone()),
        ("wrong checksum", wrong_checksum(&live)),
        (
            "access token with a wrong MAC",
            wrong_checksum(&other_access),
        ),
        ("not a token", "hello".to_owned()),
        ("empty", String::new()),
        ("live refresh token", live.clone()),
        ("live access token", other_access.clone()),
    ];
    let reporter = gw.client_from("127.0.0.7");
    let mut first: Option<(&str, _)> = None;
    for (what, s) in &cases {
        // Twice the same string: N counts what was received.
        let r = report(&reporter, &[s, s]).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{what}: {}", r.text());
        assert_eq!(r.json(), json!({"received": 2}), "{what}");
        let a = answer(&r);
        match &first {
            None => first = Some((what, a)),
            Some((w, f)) => assert_eq!(&a, f, "{what} is answered unlike {w}"),
        }
    }
    // Never forwarded.
    assert_eq!(up.hits(), 0);

    // The live refresh token is suspended: no exchange, its access token dead.
    let ex = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={live}"))
        .await;
    assert_eq!(ex.status, StatusCode::BAD_REQUEST, "{}", ex.text());
    assert_eq!(ex.json()["error"], "invalid_grant");
    assert_eq!(
        gw.client.api_get("/x", &live_access).await.status,
        StatusCode::UNAUTHORIZED
    );
    let listed = gw
        .client
        .admin_call("GET", "/api/refresh-tokens")
        .await
        .json();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == live_id)
        .cloned()
        .unwrap_or_else(|| panic!("the suspended token is still listed: {listed}"));
    assert_eq!(row["suspended"], true, "{row}");
    assert_eq!(row["suspended_reason"], "reported leaked", "{row}");
    // The reported access token is revoked, and only it: its refresh
    // token and its sibling still work.
    assert_eq!(
        gw.client.api_get("/x", &other_access).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        gw.client.api_get("/x", &other_second).await.status,
        StatusCode::OK
    );
    gw.exchange(&other).await;

    // The audit names the reporter and the tokens, never a token string,
    // and only the live ones.
    let lines = gw.audit_lines();
    let refresh = events(&lines, "refresh_token.reported_leaked");
    assert_eq!(refresh.len(), 1, "{refresh:?}");
    assert_eq!(refresh[0]["token_id"], live_id);
    assert_eq!(refresh[0]["client_ip"], "127.0.0.7");
    // The suspension's own line is the reporter's, not an administrator's.
    let suspended = events(&lines, "refresh_token.suspended");
    assert_eq!(suspended.len(), 1, "{suspended:?}");
    assert_eq!(suspended[0]["token_id"], live_id);
    assert_eq!(suspended[0]["actor"], "client");
    assert_eq!(suspended[0]["via"], "report");
    assert_eq!(suspended[0]["client_ip"], "127.0.0.7");
    assert_eq!(suspended[0]["reason"], "reported leaked");
    let access = events(&lines, "access_token.reported_leaked");
    assert_eq!(access.len(), 1, "{access:?}");
    assert_eq!(access[0]["token_id"], other_id);
    assert_eq!(access[0]["client_ip"], "127.0.0.7");
    let all = serde_json::to_string(&lines).unwrap();
    for (what, s) in &cases {
        assert!(
            s.len() < 5 || !all.contains(s.as_str()),
            "{what} in the audit"
        );
    }
}

#[tokio::test]
async fn malformed_reports_are_invalid_requests() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let c = &gw.client;
    let hundred: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    let too_many: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    let r = report_raw(
        c,
        "application/json",
        json!({ "tokens": hundred }).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json(), json!({"received": 100}));
    for (what, ctype, body) in [
        ("not JSON", "application/json", "tokens=x".to_owned()),
        ("an array", "application/json", r#"["tgr_x"]"#.to_owned()),
        (
            "no tokens",
            "application/json",
            r#"{"token": "x"}"#.to_owned(),
        ),
        (
            "a string",
            "application/json",
            r#"{"tokens": "x"}"#.to_owned(),
        ),
        (
            "a number",
            "application/json",
            r#"{"tokens": [1]}"#.to_owned(),
        ),
        (
            "101 strings",
            "application/json",
            json!({ "tokens": too_many }).to_string(),
        ),
        (
            "a long string",
            "application/json",
            json!({ "tokens": ["x".repeat(257)] }).to_string(),
        ),
        (
            "a form",
            "application/x-www-form-urlencoded",
            "tokens=x".to_owned(),
        ),
    ] {
        let r = report_raw(c, ctype, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_request", "{what}");
    }
    let big = json!({ "tokens": vec!["x".repeat(200); 400] }).to_string();
    let r = report_raw(c, "application/json", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let r = c.get_with("/token/leaked", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow").as_deref(), Some("POST"));
}

#[tokio::test]
async fn each_client_may_report_sixty_times_an_hour() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("t").await;
    let busy = gw.client_from("127.0.0.9");
    for i in 0..60 {
        // Good and bad requests alike count.
        let r = if i % 2 == 0 {
            report(&busy, &["nothing"]).await
        } else {
            report_raw(&busy, "application/json", "{").await
        };
        assert_ne!(r.status, StatusCode::TOO_MANY_REQUESTS, "request {i}");
    }
    let r = report(&busy, &[&refresh]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_requests");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&after), "{after}");
    // A refused report is not acted on.
    gw.exchange(&refresh).await;
    // Another address has its own hour; the token endpoint is not limited.
    let r = report(&gw.client_from("127.0.0.10"), &["nothing"]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // An hour later, the busy client may report again.
    gw.clock.advance(Duration::from_secs(3600));
    let r = report(&busy, &["nothing"]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
}

/// A report on beta suspends a refresh token and revokes an access token
/// made on alpha, and alpha enforces both within the revocation bound.
#[tokio::test]
async fn a_report_on_one_replica_holds_on_the_other() {
    let db = TestDb::new();
    let up = upstream().await;
    let cluster = Cluster::new(&db.url, up.addr);
    let (a, b) = (cluster.start("alpha").await, cluster.start("beta").await);
    let (_, leaked) = a.create_token("leaked").await;
    let leaked_access = a.exchange(&leaked).await;
    let (_, other) = a.create_token("other").await;
    let other_access = a.exchange(&other).await;
    for r in [&a, &b] {
        for t in [&leaked_access, &other_access] {
            eventually_ok(
                Duration::from_secs(30),
                "both replicas accept the tokens",
                || ok(r, t),
            )
            .await;
        }
    }

    let r = report(&b.client_from("127.0.0.11"), &[&leaked, &other_access]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let acked = tokio::time::Instant::now();
    within_bound(
        acked,
        REVOCATION_BOUND,
        "alpha refuses the exchange",
        || exchange_refused(&a, &leaked),
    )
    .await;
    within_bound(
        acked,
        REVOCATION_BOUND,
        "alpha refuses its access token",
        || refused(&a, &leaked_access),
    )
    .await;
    within_bound(
        acked,
        REVOCATION_BOUND,
        "alpha refuses the reported access token",
        || refused(&a, &other_access),
    )
    .await;
    exchange_refused(&b, &leaked).await.unwrap();
    refused(&b, &other_access).await.unwrap();
    // The other token is otherwise untouched.
    a.exchange(&other).await;
    let line = b
        .audit_line("refresh_token.reported_leaked", |l| {
            l["event"] == "refresh_token.reported_leaked"
        })
        .await;
    assert_eq!(line["client_ip"], "127.0.0.11");
}

async fn ok(r: &Replica, access: &str) -> Result<(), String> {
    let c = r.call(access).await;
    if c.status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{}: {} {}", r.name, c.status, c.text()))
    }
}

async fn refused(r: &Replica, access: &str) -> Result<(), String> {
    match r.call(access).await.status {
        StatusCode::UNAUTHORIZED => Ok(()),
        s => Err(format!("{} answers {s}", r.name)),
    }
}

async fn exchange_refused(r: &Replica, refresh: &str) -> Result<(), String> {
    let e = r.try_exchange(refresh).await;
    if e.status == StatusCode::BAD_REQUEST && e.json()["error"] == "invalid_grant" {
        Ok(())
    } else {
        Err(format!("{}: {} {}", r.name, e.status, e.text()))
    }
}

/// The real detect-secrets with the shipped plugin, over a directory
/// holding tokens the gateway made and strings of their shape that fail
/// the check.
#[tokio::test]
async fn detect_secrets_finds_real_tokens_and_ignores_wrong_checksums() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("scanned").await;
    let access = gw.exchange(&refresh).await;
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("settings.py", format!("API_TOKEN = \"{refresh}\"\n")),
        (
            "run.sh",
            format!("curl -H 'Authorization: Bearer {access}' x\n"),
        ),
        (
            "typo.py",
            format!("API_TOKEN = \"{}\"\n", wrong_checksum(&refresh)),
        ),
        // Too long by one: no token of this format.
        ("long.txt", format!("{refresh}A\n")),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = tokio::process::Command::new(common::python3())
        .args([
            "-m",
            "detect_secrets",
            "scan",
            "--all-files",
            "--plugin",
            PLUGIN,
        ])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "detect-secrets: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let scan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String)> = Vec::new();
    for (file, results) in scan["results"].as_object().unwrap() {
        for r in results.as_array().unwrap() {
            let kind = r["type"].as_str().unwrap();
            if kind.starts_with("tokengate") {
                let name = std::path::Path::new(file).file_name().unwrap();
                found.push((name.to_string_lossy().into_owned(), kind.to_owned()));
            }
        }
    }
    found.sort();
    assert_eq!(
        found,
        vec![
            ("run.sh".to_owned(), "tokengate access token".to_owned()),
            (
                "settings.py".to_owned(),
                "tokengate refresh token".to_owned()
            ),
        ],
        "{scan}"
    );
    let plugins = scan["plugins_used"].to_string();
    assert!(
        plugins.contains("TokengateRefreshTokenDetector"),
        "{plugins}"
    );
}

/// The gitleaks rules, loaded from the TOML and applied with Python's `re`
/// (their patterns use only what RE2 and Python share) to the same samples.
#[tokio::test]
async fn the_gitleaks_rules_match_the_token_format() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("scanned").await;
    let access = gw.exchange(&refresh).await;
    let script = r#"
import json, re, sys, tomllib
rules = {r["id"]: r for r in tomllib.load(open(sys.argv[1], "rb"))["rules"]}
out = {}
for rid, r in rules.items():
    rx = re.compile(r["regex"])
    out[rid] = {s: [m.group(r["secretGroup"]) for m in rx.finditer(s)] for s in sys.argv[2:]}
    out[rid]["keywords"] = r["keywords"]
print(json.dumps(out))
"#;
    let samples = [
        format!("TOKEN=\"{refresh}\""),
        format!("Authorization: Bearer {access}"),
        format!("{refresh}A"),
        format!("x{refresh}"),
        format!("{access}-"),
        refresh.replace("tgr_", "tgx_"),
    ];
    let out = tokio::process::Command::new(common::python3())
        .args(["-c", script, GITLEAKS])
        .args(&samples)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &m["tokengate-refresh-token"];
    let a = &m["tokengate-access-token"];
    assert_eq!(r["keywords"], json!(["tgr_"]));
    assert_eq!(a["keywords"], json!(["tga_"]));
    assert_eq!(r[&samples[0]], json!([refresh]));
    assert_eq!(a[&samples[1]], json!([access]));
    for s in &samples[2..] {
        assert_eq!(r[s], json!([]), "refresh rule on {s}");
        assert_eq!(a[s], json!([]), "access rule on {s}");
    }
    assert_eq!(r[&samples[1]], json!([]));
    assert_eq!(a[&samples[0]], json!([]));
}

//! Logs for machines and for people: `log.format = "json"` from the real
//! binary (and `TOKENGATE_LOG` still choosing the filter), and the access
//! log: one line per request with its fields, never a token or a query,
//! in a file created 0600.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common;
use crate::common::{eventually_ok, upstream, TestGateway, ADMIN_PASSWORD};
use http::StatusCode;
use serde_json::Value;

/// The access log's lines once it holds `n` of them.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    eventually_ok(Duration::from_secs(10), "access log lines", || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            Ok(lines)
        } else {
            Err(text)
        }
    })
    .await
}

#[tokio::test]
async fn json_access_lines_carry_the_fields_and_never_a_token() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/access.log");
    let gw = TestGateway::start_with(up.addr, |f| {
        f.log.access = log.display().to_string();
        f.log.format = "json".into();
    })
    .await;
    let (id, refresh) = gw.create_token("log bot").await;
    let access = gw.exchange(&refresh).await;
    let ok = gw
        .client
        .api_get("/api/items?secret=hunter2&x=1", &access)
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let refused = gw.client.get_with("/api/items", None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    let text = lines(&log, 3).await.join("\n");
    assert_eq!(
        std::fs::metadata(&log).unwrap().mode() & 0o777,
        0o600,
        "the access log is private"
    );
    for secret in [&refresh, &access, "hunter2", "secret=", "Bearer", "bearer"] {
        assert!(
            !text.contains(secret),
            "{secret} in the access log:\n{text}"
        );
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let exchange = &lines[0];
    assert_eq!(exchange["path"], "/token");
    assert_eq!(exchange["method"], "POST");
    assert_eq!(exchange["status"], 200);
    assert!(exchange["upstream_duration_ms"].is_null());

    let proxied = &lines[1];
    assert_eq!(proxied["path"], "/api/items", "no query string");
    assert_eq!(proxied["method"], "GET");
    assert_eq!(proxied["status"], 200);
    assert_eq!(proxied["client_ip"], "127.0.0.1");
    assert_eq!(proxied["token_id"], id);
    assert_eq!(proxied["token_name"], "log bot");
    assert_eq!(proxied["bytes"], ok.body.len() as u64, "body bytes sent");
    let time = proxied["time"].as_str().unwrap();
    assert!(tokengate::clock::parse_rfc3339(time).is_some(), "{time}");
    let duration = proxied["duration_ms"].as_f64().unwrap();
    let upstream = proxied["upstream_duration_ms"].as_f64().unwrap();
    assert!(upstream > 0.0 && duration >= upstream, "{proxied}");

    let anonymous = &lines[2];
    assert_eq!(anonymous["status"], 401);
    assert!(anonymous["token_id"].is_null() && anonymous["token_name"].is_null());
    assert_eq!(anonymous["bytes"], refused.body.len() as u64);
}

#[tokio::test]
async fn text_access_lines_are_one_readable_line_each() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start_with(up.addr, |f| {
        f.log.access = log.display().to_string();
    })
    .await;
    let (id, refresh) = gw.create_token("text bot").await;
    let access = gw.exchange(&refresh).await;
    gw.client.api_get("/api/a%22b?q=secret", &access).await;
    let lines = lines(&log, 2).await;
    let line = &lines[1];
    assert!(
        line.contains(r#" 127.0.0.1 GET "/api/a%22b" 200 "#),
        "{line}"
    );
    assert!(
        line.contains(&format!(r#"token_id={id} token_name="text bot""#)),
        "{line}"
    );
    assert!(line.contains(" upstream="), "{line}");
    assert!(
        !line.contains("secret") && !line.contains(&access),
        "{line}"
    );
}

#[tokio::test]
async fn the_binary_logs_json_and_honours_tokengate_log() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let public = common::dead_address().await;
    let admin = common::dead_address().await;
    let mut child = common::serve_command(dir.path(), public, admin, up.addr)
        .env("TOKENGATE_AUDIT__DESTINATION", "off")
        .env("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("TOKENGATE_LOG__FORMAT", "json")
        .env("TOKENGATE_LOG__ACCESS", "stdout")
        // The filter variable still wins over log.level (default info).
        .env("TOKENGATE_LOG", "debug")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let cert = common::wait_for_serve(dir.path(), public).await;
    let client = common::TestClient::new(&cert, public, admin);
    let (_, refresh) = client.create_token("json").await;
    let r = client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(client.api_get("/x", &access).await.status, StatusCode::OK);
    let status = common::signal_and_wait(&mut child, "-TERM").await;
    assert!(status.success(), "{status:?}");

    let stderr = common::read_all(child.stderr.take()).await;
    let events: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        events.iter().any(|e| e["message"] == "tokengate listening"),
        "{stderr}"
    );
    assert!(events.iter().any(|e| e["level"] == "DEBUG"), "{stderr}");
    assert!(!stderr.contains(&refresh) && !stderr.contains(&access));

    let stdout = common::read_all(child.stdout.take()).await;
    let access_lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(access_lines.len(), 2, "{stdout}");
    assert_eq!(access_lines[1]["path"], "/x");
    assert_eq!(access_lines[1]["token_name"], "json");
    assert!(!stdout.contains(&refresh) && !stdout.contains(&access));
}

#[test]
fn log_settings_come_from_the_environment_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| common::check_config(dir.path(), env);
    let (ok, out) = run(&[
        ("TOKENGATE_LOG", "warn"),
        ("TOKENGATE_LOG__LEVEL", "debug"),
        ("TOKENGATE_LOG__FORMAT", "json"),
        ("TOKENGATE_METRICS__LISTEN", "9464"),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("log.level = debug"), "{out}");
    assert!(out.contains("log.format = json"), "{out}");
    assert!(out.contains("metrics.listen = 9464"), "{out}");
    let (ok, out) = run(&[("TOKENGATE_LOG__FORMAT", "yaml")]);
    assert!(!ok && out.contains("log.format"), "{out}");
    let (ok, out) = run(&[("TOKENGATE_METRICS__ENABLED", "maybe")]);
    assert!(
        !ok && out.to_lowercase().contains("metrics.enabled"),
        "{out}"
    );
}

/// `;` path parameters carry session ids (Java's `;jsessionid=`): the
/// access log never shows them, whether the path was refused (the strict
/// default) or let through (`public.path_parameters`), and an allowed one
/// reaches the upstream while the scope is matched without it.
#[tokio::test]
async fn path_parameters_never_reach_the_access_log() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start_with(up.addr, |f| {
        f.log.access = log.display().to_string();
        f.log.format = "json".into();
        f.public.path_parameters = vec!["jsessionid".into()];
    })
    .await;
    let (_, refresh) = gw.create_token("java client").await;
    let access = gw.exchange(&refresh).await;
    let allowed = gw
        .client
        .api_get("/app/page;jsessionid=SESSIONAAA", &access)
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text());
    assert_eq!(allowed.json()["path"], "/app/page;jsessionid=SESSIONAAA");
    for refused in [
        "/app;jsessionid=SESSIONBBB/page",
        "/app/page;other=SESSIONCCC",
        "/app/page;jsessionid=SESSIONDDD%2f..",
    ] {
        let r = gw.client.api_get(refused, &access).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{refused}");
        assert_eq!(r.json()["error"], "invalid_path", "{refused}");
    }
    let lines = lines(&log, 5).await;
    let text = lines.join("\n");
    assert!(
        !text.contains("SESSION"),
        "a session id was logged:\n{text}"
    );
    let paths: Vec<String> = lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        paths[1..],
        ["/app/page", "/app/page", "/app/page", "/app/page"],
        "{text}"
    );
}

//! `tokengate token …` against a running gateway: create, list, delete, the
//! JSON output, and the documented exit codes.

mod common;

use common::{upstream, TestGateway, ADMIN_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(gw: &TestGateway, password: &str, args: &[&str]) -> Out {
    let ca = gw.file.tls.cert.clone().unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("token")
        .args(args)
        .arg("--ca-file")
        .arg(&ca)
        .env_clear()
        .env("TOKENGATE_ADMIN_URL", &gw.client.admin)
        .env("TOKENGATE_ADMIN_PASSWORD", password)
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn create_list_delete() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;

    let o = cli(
        &gw,
        ADMIN_PASSWORD,
        &["create", "--name", "nightly report", "--expires", "30d"],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let token = o.stdout.trim().to_owned();
    assert!(token.starts_with("tgr_"), "{}", o.stdout);
    assert!(o.stderr.contains("cannot be shown again"));
    // The printed token works.
    gw.exchange(&token).await;

    let o = cli(
        &gw,
        ADMIN_PASSWORD,
        &[
            "create",
            "--name",
            "forever",
            "--expires",
            "never",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["expires_at"], serde_json::Value::Null);

    let o = cli(&gw, ADMIN_PASSWORD, &["list"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST USED"),
        "{}",
        o.stdout
    );
    assert!(
        lines[1].contains("nightly report") && lines[1].contains("127.0.0.1"),
        "{}",
        o.stdout
    );
    assert!(
        lines[2].contains("forever") && lines[2].contains("never"),
        "{}",
        o.stdout
    );
    assert!(!o.stdout.contains("tgr_"));

    let o = cli(&gw, ADMIN_PASSWORD, &["list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);

    let o = cli(&gw, ADMIN_PASSWORD, &["delete", "1", "2"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("deleted 1 \"nightly report\"") && o.stdout.contains("deleted 2"),
        "{}",
        o.stdout
    );
    let r = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={token}"))
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn exit_codes_say_what_went_wrong() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;

    let o = cli(&gw, ADMIN_PASSWORD, &["delete", "42"]).await;
    assert_eq!(o.code, 4, "{}", o.stderr);
    assert!(o.stderr.contains("no refresh token with id 42"));

    let o = cli(&gw, "wrong", &["list"]).await;
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("password"));

    let o = cli(
        &gw,
        ADMIN_PASSWORD,
        &["create", "--name", "x", "--expires", "someday"],
    )
    .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--expires"));

    let o = cli(
        &gw,
        ADMIN_PASSWORD,
        &["create", "--name", "x", "--expires", "2001-01-01"],
    )
    .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("not in the future"), "{}", o.stderr);

    // Nothing listening there.
    let dead = common::dead_address().await;
    let out = tokio::process::Command::new(BIN)
        .args(["token", "list", "--url", &format!("https://{dead}")])
        .env_clear()
        .env("TOKENGATE_ADMIN_PASSWORD", "x")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));

    // The gateway's certificate not trusted: exit 1 with a hint.
    let out = tokio::process::Command::new(BIN)
        .args(["token", "list"])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("TOKENGATE_ADMIN_URL", &gw.client.admin)
        .env("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ca-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …and --insecure gets through.
    let out = tokio::process::Command::new(BIN)
        .args(["token", "list", "--insecure"])
        .env_clear()
        .env("TOKENGATE_ADMIN_URL", &gw.client.admin)
        .env("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No password at all.
    let out = tokio::process::Command::new(BIN)
        .args(["token", "list"])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

//! `tokengate token …` against a running gateway: create, list, delete, the
//! JSON output, and the documented exit codes.

use std::time::Duration;

use crate::common;
use crate::common::{upstream, TestGateway, ADMIN_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with a clean environment plus `env`.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Out {
    run_in(&std::env::temp_dir(), args, env).await
}

/// Runs the binary in `dir` with a clean environment plus `env`.
async fn run_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut c = tokio::process::Command::new(BIN);
    c.args(args).env_clear().current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `tokengate token ARGS` against `gw`, trusting its certificate.
async fn cli(gw: &TestGateway, password: &str, args: &[&str]) -> Out {
    let ca = gw.file.tls.cert.clone().unwrap().display().to_string();
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--ca-file", &ca]);
    run(
        &all,
        &[
            ("TOKENGATE_ADMIN_URL", &gw.client.admin),
            ("TOKENGATE_ADMIN_PASSWORD", password),
        ],
    )
    .await
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

/// Issue 13 items 4-6 from the command line: create with restrictions,
/// edit, rotate, and list the tokens that expire soon.
#[tokio::test]
async fn restrict_edit_rotate_and_list_expiring() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let json = |o: &Out| -> serde_json::Value {
        assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
        serde_json::from_str(&o.stdout).unwrap()
    };

    let v = json(
        &cli(
            &gw,
            ADMIN_PASSWORD,
            &[
                "create",
                "--name",
                "report",
                "--expires",
                "3d",
                "--scope",
                "GET,HEAD /iwc/api/databases/**",
                "--network",
                "127.0.0.0/8",
                "--rate",
                "5",
                "--burst",
                "10",
                "--json",
            ],
        )
        .await,
    );
    let id = v["id"].as_u64().unwrap().to_string();
    assert_eq!(
        v["scopes"],
        serde_json::json!([{"methods": ["GET", "HEAD"], "path": "/iwc/api/databases/**"}])
    );
    assert_eq!(v["networks"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(
        v["rate_limit"],
        serde_json::json!({"per_second": 5, "burst": 10})
    );
    let refresh = v["token"].as_str().unwrap().to_owned();
    let o = cli(
        &gw,
        ADMIN_PASSWORD,
        &["create", "--name", "later", "--read-only"],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    // The table shows restrictions at a glance and flags the one expiring.
    let o = cli(&gw, ADMIN_PASSWORD, &["list"]).await;
    assert!(
        o.stdout.lines().next().unwrap().contains("RESTRICTIONS"),
        "{}",
        o.stdout
    );
    let report = o.stdout.lines().find(|l| l.contains("report")).unwrap();
    assert!(report.contains("expiring soon"), "{report}");
    assert!(
        report.contains("GET,HEAD /iwc/api/databases/**"),
        "{report}"
    );
    assert!(report.contains("5/s burst 10"), "{report}");
    let later = o.stdout.lines().find(|l| l.contains("later")).unwrap();
    assert!(
        later.contains("read-only") && !later.contains("expiring"),
        "{later}"
    );
    // --expiring keeps only what expires within the window.
    let v = json(&cli(&gw, ADMIN_PASSWORD, &["list", "--expiring", "7d", "--json"]).await);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["report"]);
    let v = json(&cli(&gw, ADMIN_PASSWORD, &["list", "--expiring", "1d", "--json"]).await);
    assert_eq!(v, serde_json::json!([]));
    let stats = gw.client.admin_call("GET", "/api/stats").await.json();
    assert_eq!(stats["refresh_tokens_expiring_soon"], 1);

    // Edit: a new expiry and no rate limit; the rest stays.
    let v = json(
        &cli(
            &gw,
            ADMIN_PASSWORD,
            &["edit", &id, "--expires", "60d", "--no-rate-limit", "--json"],
        )
        .await,
    );
    assert_eq!(v["rate_limit"], serde_json::Value::Null);
    assert_eq!(v["networks"], serde_json::json!(["127.0.0.0/8"]));
    assert_eq!(v["expiring_soon"], false);
    let o = cli(&gw, ADMIN_PASSWORD, &["edit", &id]).await;
    assert_eq!(o.code, 2, "nothing to change: {}", o.stderr);
    let o = cli(&gw, ADMIN_PASSWORD, &["edit", "9999", "--name", "x"]).await;
    assert_eq!(o.code, 4, "{}", o.stderr);
    let o = cli(
        &gw,
        ADMIN_PASSWORD,
        &["edit", &id, "--scope", "GET relative/path"],
    )
    .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("scopes[0].path"), "{}", o.stderr);

    // Rotate with a grace period: a new string printed, both work for now.
    let o = cli(&gw, ADMIN_PASSWORD, &["rotate", &id, "--grace", "1h"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let new = o.stdout.trim().to_owned();
    assert!(new.starts_with("tgr_") && new != refresh, "{}", o.stdout);
    assert!(o.stderr.contains("keeps working until"), "{}", o.stderr);
    gw.exchange(&new).await;
    gw.exchange(&refresh).await;
    // And at once: the previous string stops.
    let o = cli(&gw, ADMIN_PASSWORD, &["rotate", &id]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("stopped working now"), "{}", o.stderr);
    let r = gw
        .client
        .token_form(&format!("grant_type=refresh_token&refresh_token={new}"))
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    gw.exchange(o.stdout.trim()).await;
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
    let dead = format!("https://{}", common::dead_address().await);
    let o = run(
        &["token", "list", "--url", &dead],
        &[("TOKENGATE_ADMIN_PASSWORD", "x")],
    )
    .await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("cannot reach the admin API"));

    // The gateway's certificate not trusted: exit 1 with a hint; --insecure gets through.
    let env = [
        ("TOKENGATE_ADMIN_URL", gw.client.admin.as_str()),
        ("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD),
    ];
    let o = run(&["token", "list"], &env).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("--ca-file"), "{}", o.stderr);
    let o = run(&["token", "list", "--insecure"], &env).await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    // No password at all.
    assert_eq!(run(&["token", "list"], &[]).await.code, 3);
}

#[tokio::test]
async fn the_admin_socket_works_without_a_password_and_cannot_be_locked_from_the_network() {
    use std::os::unix::fs::PermissionsExt;
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let socket = gw.data_dir().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "owner only");
    // A network client guesses wrong until it is throttled ...
    let mut throttled = false;
    for _ in 0..30 {
        let o = cli(&gw, "wrong", &["list"]).await;
        if o.stderr.contains("too many") {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the TCP listener throttles wrong guesses");
    let o = cli(&gw, ADMIN_PASSWORD, &["list"]).await;
    assert_eq!(
        o.code, 3,
        "the administrator is locked out over TCP: {}",
        o.stderr
    );
    // ... and the administrator on the host still manages tokens, no password needed.
    let sock = socket.display().to_string();
    let o = run(
        &["token", "create", "--name", "via socket", "--socket", &sock],
        &[],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.trim().starts_with("tgr_"));
    let o = run(&["token", "list", "--json", "--socket", &sock], &[]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let listed: Vec<tokengate::api::TokenInfo> = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "via socket");
    // Another user cannot use it (as root here: run the CLI as `nobody`).
    let runuser = ["/usr/sbin/runuser", "/sbin/runuser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let root = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if let (Some(runuser), true) = (runuser, root) {
        let out = tokio::process::Command::new(runuser)
            .args([
                "-u", "nobody", "--", BIN, "token", "list", "--socket", &sock,
            ])
            .env_clear()
            .output()
            .await
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The CLI sends the admin password with every request, so it refuses any
/// admin URL that is not `https://` before it connects anywhere.
#[tokio::test]
async fn plain_http_admin_urls_are_refused_before_connecting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for url in [
        format!("http://{addr}"),
        format!("HTTP://{addr}/"),
        format!("{addr}"),
        format!("ftp://{addr}"),
    ] {
        for how in ["flag", "env"] {
            let o = match how {
                "flag" => {
                    run(
                        &["token", "list", "--url", &url],
                        &[("TOKENGATE_ADMIN_PASSWORD", "s3cret")],
                    )
                    .await
                }
                _ => {
                    run(
                        &["token", "delete", "1"],
                        &[
                            ("TOKENGATE_ADMIN_URL", url.as_str()),
                            ("TOKENGATE_ADMIN_PASSWORD", "s3cret"),
                        ],
                    )
                    .await
                }
            };
            assert_eq!(o.code, 2, "{url} ({how}): {}", o.stderr);
            assert!(o.stderr.contains("https://"), "{url}: {}", o.stderr);
            assert!(!o.stderr.contains("s3cret"), "{}", o.stderr);
        }
    }
    // Nothing ever connected: the listener has no connection waiting (the
    // CLI has exited, so one it made would be queued by now).
    let waiting = tokio::time::timeout(Duration::ZERO, listener.accept()).await;
    assert!(waiting.is_err(), "the CLI connected to a plain-HTTP URL");
}

/// Unasked, the CLI uses ./data/admin.sock and ./certs/tokengate.crt only
/// when the user owns them and their directory and nobody else can write
/// there: otherwise anyone who could put them there would receive the CLI's
/// commands or vouch for their own server. Named (--socket, --ca-file),
/// they are used as they are.
#[tokio::test]
async fn files_in_the_current_directory_are_used_only_when_they_are_the_users_own() {
    use std::os::unix::fs::PermissionsExt;
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    gw.create_token("seen").await;
    // The gateway's own directory: data/admin.sock (0600, in a 0700
    // directory), and its certificate as certs/tokengate.crt.
    let cwd = gw.dir.path();
    let certs = cwd.join("certs");
    std::fs::copy(
        gw.file.tls.cert.as_ref().unwrap(),
        certs.join("tokengate.crt"),
    )
    .unwrap();
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = gw.data_dir();
    let chmod = |p: &std::path::Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let list = |o: &Out| -> Vec<String> {
        serde_json::from_str::<Vec<tokengate::api::TokenInfo>>(&o.stdout)
            .map(|v| v.into_iter().map(|t| t.name).collect())
            .unwrap_or_default()
    };

    // The user's own socket, found: used.
    let o = run_in(cwd, &["token", "list", "--json"], &[]).await;
    assert_eq!(
        (o.code, list(&o)),
        (0, vec!["seen".to_owned()]),
        "{}",
        o.stderr
    );

    // Its directory writable by the group: ignored, saying why (and the
    // default URL, where no gateway listens with this password, fails).
    chmod(&data, 0o770);
    let o = run_in(cwd, &["token", "list", "--json"], &[]).await;
    assert_ne!(o.code, 0, "{}", o.stdout);
    assert!(
        o.stderr.contains("ignoring ./data/admin.sock")
            && o.stderr.contains("writable by group or others"),
        "{}",
        o.stderr
    );
    // Named, it is the user's choice.
    let o = run_in(
        cwd,
        &["token", "list", "--json", "--socket", "data/admin.sock"],
        &[],
    )
    .await;
    assert_eq!(
        (o.code, list(&o)),
        (0, vec!["seen".to_owned()]),
        "{}",
        o.stderr
    );
    chmod(&data, 0o700);

    // Owned by someone else (possible to arrange only as root).
    if running_as_root(&data) {
        std::os::unix::fs::chown(&data, Some(65534), None).unwrap();
        let o = run_in(cwd, &["token", "list", "--json"], &[]).await;
        std::os::unix::fs::chown(&data, Some(0), None).unwrap();
        assert_ne!(o.code, 0, "{}", o.stdout);
        assert!(
            o.stderr.contains("ignoring ./data/admin.sock") && o.stderr.contains("uid 65534"),
            "{}",
            o.stderr
        );
    }

    // The certificate: trusted when it is the user's own, in a directory
    // nobody else can write ...
    let url = gw.client.admin.clone();
    let pw = [("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let o = run_in(cwd, &["token", "list", "--json", "--url", &url], &pw).await;
    assert_eq!(
        (o.code, list(&o)),
        (0, vec!["seen".to_owned()]),
        "{}",
        o.stderr
    );
    // ... not when anyone could have put it there ...
    chmod(&certs, 0o777);
    let o = run_in(cwd, &["token", "list", "--json", "--url", &url], &pw).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(
        o.stderr.contains("ignoring ./certs/tokengate.crt")
            && o.stderr.contains("writable by group or others"),
        "{}",
        o.stderr
    );
    // ... unless named.
    let o = run_in(
        cwd,
        &[
            "token",
            "list",
            "--json",
            "--url",
            &url,
            "--ca-file",
            "certs/tokengate.crt",
        ],
        &pw,
    )
    .await;
    assert_eq!(
        (o.code, list(&o)),
        (0, vec!["seen".to_owned()]),
        "{}",
        o.stderr
    );
    chmod(&certs, 0o755);
}

/// Whether the tests run as root (the owner of a directory this process created).
fn running_as_root(created: &std::path::Path) -> bool {
    std::fs::metadata(created)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[tokio::test]
async fn list_expiring_with_no_match_says_so() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let never = cli(&gw, ADMIN_PASSWORD, &["create", "--name", "forever"]).await;
    assert_eq!(never.code, 0, "{}", never.stderr);

    let o = cli(&gw, ADMIN_PASSWORD, &["list", "--expiring", "7d"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "No refresh token expires within 7 days.\n");
    // Without --expiring, the token is listed.
    let all = cli(&gw, ADMIN_PASSWORD, &["list"]).await;
    assert!(all.stdout.contains("forever"), "{}", all.stdout);
}

//! `tokengate access-token` (the binary) against a running gateway: the
//! token it prints works, its cache spares the second exchange (counted in
//! the gateway's audit log, not timed), `--force` exchanges anyway, the
//! cache is private, and each failure has its exit code.

use crate::common::{dead_address, upstream, TestGateway};
use http::StatusCode;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

struct Helper {
    dir: tempfile::TempDir,
    refresh_file: PathBuf,
}

impl Helper {
    fn new(refresh: &str) -> Helper {
        let dir = tempfile::tempdir().unwrap();
        let refresh_file = dir.path().join("refresh-token");
        std::fs::write(&refresh_file, format!("{refresh}\n")).unwrap();
        std::fs::set_permissions(&refresh_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Helper { dir, refresh_file }
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Runs `tokengate access-token` with `args` after the usual ones.
    async fn run(&self, gateway: &str, cacert: &Path, extra: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(BIN)
            .arg("access-token")
            .args(["--gateway", gateway])
            .arg("--refresh-token-file")
            .arg(&self.refresh_file)
            .arg("--cacert")
            .arg(cacert)
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn exchanges(gw: &TestGateway) -> usize {
    gw.audit_lines()
        .iter()
        .filter(|l| l["event"] == "token.exchanged")
        .count()
}

fn cert(gw: &TestGateway) -> PathBuf {
    gw.file.tls.cert.clone().unwrap()
}

#[tokio::test]
async fn prints_a_working_token_and_exchanges_only_when_needed() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (_, refresh) = gw.create_token("curl script").await;
    let h = Helper::new(&refresh);
    let url = gw.client.public.clone();

    let (code, first, err) = h.run(&url, &cert(&gw), &[]).await;
    assert_eq!(code, 0, "{err}");
    let first = first.trim_end().to_owned();
    assert!(first.starts_with("tga_"), "{first}");
    assert_eq!(gw.client.api_get("/x", &first).await.status, StatusCode::OK);
    assert_eq!(exchanges(&gw), 1);

    // The second call is served from the cache: no exchange at the gateway.
    let (code, second, _) = h.run(&url, &cert(&gw), &[]).await;
    assert_eq!(code, 0);
    assert_eq!(second.trim_end(), first);
    assert_eq!(exchanges(&gw), 1, "the cache spared an exchange");

    // --force exchanges anyway.
    let (code, forced, _) = h.run(&url, &cert(&gw), &["--force"]).await;
    assert_eq!(code, 0);
    assert_ne!(forced.trim_end(), first);
    assert_eq!(exchanges(&gw), 2);

    // The cache: one 0600 file in a 0700 directory, named without the token.
    let cache = h.runtime_dir().join("tokengate");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(!name.contains(&refresh) && !name.contains("tgr_"), "{name}");

    // Less than 60 s left (the cache says so): exchanged again.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let mut cached: serde_json::Value = serde_json::from_str(&text).unwrap();
    let soon = cached["expires_at"].as_u64().unwrap() - 900 + 30;
    cached["expires_at"] = soon.into();
    std::fs::write(&files[0], cached.to_string()).unwrap();
    let (code, renewed, _) = h.run(&url, &cert(&gw), &[]).await;
    assert_eq!(code, 0);
    assert_ne!(renewed.trim_end(), forced.trim_end());
    assert_eq!(exchanges(&gw), 3);
}

#[tokio::test]
async fn each_failure_has_its_exit_code() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let (id, refresh) = gw.create_token("t").await;
    let h = Helper::new(&refresh);
    let url = gw.client.public.clone();

    // A refresh-token file others can read: refused, naming it and the fix.
    std::fs::set_permissions(&h.refresh_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = h.run(&url, &cert(&gw), &[]).await;
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains(&h.refresh_file.display().to_string()) && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(exchanges(&gw), 0, "nothing was sent");
    std::fs::set_permissions(&h.refresh_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Usage: a gateway URL that is not https, a missing argument.
    let (code, _, err) = h.run("http://localhost:1", &cert(&gw), &[]).await;
    assert_eq!(code, 2, "{err}");
    let out = tokio::process::Command::new(BIN)
        .args(["access-token", "--gateway", &url])
        .env_remove("TOKENGATE_REFRESH_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // Unreachable: nothing listens there.
    let dead = format!("https://localhost:{}", dead_address().await.port());
    let (code, out, err) = h.run(&dead, &cert(&gw), &[]).await;
    assert_eq!(code, 3, "{err}");
    assert!(out.is_empty());

    // Refused: the refresh token was deleted.
    let r = gw
        .client
        .admin_call("DELETE", &format!("/api/refresh-tokens/{id}"))
        .await;
    assert!(r.status.is_success(), "{}", r.text());
    let (code, out, err) = h.run(&url, &cert(&gw), &[]).await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("invalid_grant"), "{err}");
    assert!(!err.contains(&refresh), "the token is never printed: {err}");
}

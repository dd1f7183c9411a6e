//! Live reload: a certificate swapped on disk under load (no failed
//! request, the new one served, open connections and access tokens kept),
//! bad files refused with the old settings kept, live settings applied
//! through `POST /api/reload`, and the binary's SIGHUP and `tokengate reload`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common;
use crate::common::{TestGateway, ADMIN_PASSWORD};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokengate::config::{FileConfig, HumanDuration};
use tokengate::{Gateway, StartOptions};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// A client that trusts every certificate in `bundle` and never resumes a
/// session, so each connection is a full handshake that shows the
/// certificate served.
fn connector(bundle: &Path) -> tokio_rustls::TlsConnector {
    let mut config =
        tokengate::tls::client_config(tokengate::tls::Trust::CaFile(bundle), &[b"http/1.1"])
            .unwrap();
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The leaf certificate of a PEM file, DER.
fn leaf(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// One HTTP/1.1 keep-alive connection over TLS; also what certificate it got.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    served: Vec<u8>,
}

async fn connect(tls: &tokio_rustls::TlsConnector, addr: std::net::SocketAddr) -> Conn {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tls
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Conn { send, served }
}

impl Conn {
    /// GET `path` with the bearer token; the status, or None if the
    /// connection failed.
    async fn get(&mut self, path: &str, access: &str) -> Option<StatusCode> {
        self.send.ready().await.ok()?;
        let req = Request::get(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {access}"))
            .body(Empty::new())
            .unwrap();
        let resp = self.send.send_request(req).await.ok()?;
        let status = resp.status();
        resp.into_body().collect().await.ok()?;
        Some(status)
    }
}

/// Writes `from`'s files over `to`'s the way certbot and cert-manager do:
/// a new file renamed into place, certificate first, then key.
fn swap_in(from: (&Path, &Path), to: (&Path, &Path)) {
    for (src, dst) in [(from.0, to.0), (from.1, to.1)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

fn new_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    tokengate::tls::generate_self_signed(&c, &k).unwrap();
    (c, k)
}

fn bundle(dir: &Path, certs: &[&Path]) -> PathBuf {
    let path = dir.join("trust.pem");
    let text: String = certs
        .iter()
        .map(|c| std::fs::read_to_string(c).unwrap())
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_under_load_is_served_without_a_failed_request() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.tls.watch_interval = HumanDuration(Duration::from_millis(200));
    })
    .await;
    let (cert, key) = (
        gw.file.tls.cert.clone().unwrap(),
        gw.file.tls.key.clone().unwrap(),
    );
    let spare = tempfile::tempdir().unwrap();
    let (new_cert, new_key) = new_pair(spare.path(), "renewed");
    let (old_leaf, new_leaf) = (leaf(&cert), leaf(&new_cert));
    assert_ne!(old_leaf, new_leaf);
    let tls = connector(&bundle(spare.path(), &[&cert, &new_cert]));
    let (_, refresh) = gw.create_token("reload-under-load").await;
    let access = gw.exchange(&refresh).await;
    let addr = gw.public_addr();

    // A keep-alive connection made before the swap, used throughout.
    let mut kept = connect(&tls, addr).await;
    assert_eq!(kept.served, old_leaf);
    assert_eq!(kept.get("/api/before", &access).await, Some(StatusCode::OK));

    // Load: new connections (each a full handshake) and requests on them,
    // from two tasks, until told to stop; every outcome is counted.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let served_new = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (tls, access, stop, failed, served_new, new_leaf) = (
            tls.clone(),
            access.clone(),
            stop.clone(),
            failed.clone(),
            served_new.clone(),
            new_leaf.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut requests = 0usize;
            // Bounded in count as well as by the stop flag.
            while !stop.load(Ordering::Relaxed) && requests < 20_000 {
                let mut c = connect(&tls, addr).await;
                if c.served == new_leaf {
                    served_new.fetch_add(1, Ordering::Relaxed);
                }
                for _ in 0..3 {
                    requests += 1;
                    if c.get("/api/load", &access).await != Some(StatusCode::OK) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            requests
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    swap_in((&new_cert, &new_key), (&cert, &key));

    let counter = served_new.clone();
    common::eventually(
        Duration::from_secs(20),
        "new handshakes to present the new certificate",
        move || {
            let n = counter.load(Ordering::Relaxed);
            async move { (n >= 20).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        total += t.await.unwrap();
    }
    assert!(total > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {total} requests under load"
    );
    // The connection from before the swap still works, with the same
    // access token: nobody was logged out.
    assert_eq!(kept.get("/api/after", &access).await, Some(StatusCode::OK));
    // And a fresh connection now gets the new certificate.
    assert_eq!(connect(&tls, addr).await.served, new_leaf);
    let lines = gw.audit_lines();
    assert!(
        lines.iter().any(|l| l["event"] == "config.reloaded"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_bad_certificate_is_refused_and_the_old_one_stays() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| {
        f.tls.watch_interval = HumanDuration(Duration::from_millis(100));
    })
    .await;
    let cert = gw.file.tls.cert.clone().unwrap();
    let key = gw.file.tls.key.clone().unwrap();
    let old_leaf = leaf(&cert);
    let spare = tempfile::tempdir().unwrap();
    let (other_cert, _) = new_pair(spare.path(), "other");
    let tls = connector(&bundle(spare.path(), &[&cert, &other_cert]));
    let saved_cert = std::fs::read(&cert).unwrap();

    // A certificate that is not PEM at all; then one whose key is another's.
    for (bad, says) in [
        (b"not a certificate".to_vec(), "tls.cert"),
        (std::fs::read(&other_cert).unwrap(), "do not fit together"),
    ] {
        std::fs::write(&cert, &bad).unwrap();
        let r = gw
            .client
            .admin_json("POST", "/api/reload", &serde_json::json!({}))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
        assert_eq!(r.json()["error"], "reload_refused");
        let text = r.json()["error_description"].as_str().unwrap().to_owned();
        assert!(text.contains(says), "{text}");
        if says == "tls.cert" {
            assert!(text.contains(&cert.display().to_string()), "{text}");
        }
        // The watch sees the change too, and refuses it as well: the old
        // certificate is still what new connections get.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(connect(&tls, gw.public_addr()).await.served, old_leaf);
    }
    // The watch's refusal: polled for, since a loaded machine may take
    // longer than the sleeps above to notice a change.
    common::eventually(
        Duration::from_secs(10),
        "the watch refuses a bad certificate",
        || {
            let found = gw
                .audit_lines()
                .iter()
                .any(|l| l["event"] == "config.reload_failed" && l["actor"] == "file change");
            async move { found.then_some(()) }
        },
    )
    .await;
    let lines = gw.audit_lines();
    assert!(lines
        .iter()
        .any(|l| l["event"] == "config.reload_failed" && l["actor"] == "admin API"));

    // Put the original back: served again (same leaf), and a reload succeeds.
    std::fs::write(&cert, &saved_cert).unwrap();
    let r = gw
        .client
        .admin_json("POST", "/api/reload", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(key.exists());
    assert_eq!(connect(&tls, gw.public_addr()).await.served, old_leaf);
}

/// A gateway whose reloads read `file` (a test's stand-in for the
/// configuration file), started in this process.
async fn gateway_reading(file: Arc<Mutex<FileConfig>>) -> (Gateway, common::TestClient) {
    let start = file.lock().unwrap().clone();
    let cert = start.tls.cert.clone().unwrap();
    tokengate::tls::generate_self_signed(&cert, start.tls.key.as_ref().unwrap()).unwrap();
    let source = file.clone();
    let gateway = Gateway::start(
        start.validate().unwrap(),
        StartOptions {
            admin_password: Some(ADMIN_PASSWORD.into()),
            config_source: Some(Arc::new(move || source.lock().unwrap().clone().validate())),
            ..StartOptions::default()
        },
    )
    .await
    .unwrap();
    let client = common::TestClient::new(&cert, gateway.public_addr, gateway.admin_addr);
    (gateway, client)
}

#[tokio::test]
async fn live_settings_apply_and_the_rest_is_named_as_needing_a_restart() {
    let up = common::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(Mutex::new(common::test_config(dir.path(), up.addr)));
    let (gateway, client) = gateway_reading(file.clone()).await;

    // Nothing changed: nothing applied, nothing to restart for.
    let r = client
        .admin_json("POST", "/api/reload", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["applied"], serde_json::json!([]));
    assert_eq!(r.json()["restart_required"], serde_json::json!([]));

    // A lower failed-authentication budget takes effect at once; a new
    // listen address cannot, and is named.
    {
        let mut f = file.lock().unwrap();
        f.public.auth_failures_per_minute = 2;
        f.public.listen = "127.0.0.1:1".into();
    }
    let r = client
        .admin_json("POST", "/api/reload", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["applied"],
        serde_json::json!(["public.auth_failures_per_minute"])
    );
    assert_eq!(
        r.json()["restart_required"],
        serde_json::json!(["public.listen"])
    );
    // A real token with its MAC tag damaged: a guess, which the budget counts.
    let (_, refresh) = client.create_token("budget").await;
    let r = client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    let mut forged = r.json()["access_token"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec();
    let at = forged.len() - 2;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for _ in 0..2 {
        let r = client.api_get("/api/x", &forged).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = client.api_get("/api/x", &forged).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the new budget of 2"
    );

    // An invalid value: refused with the key named, and the budget in
    // force stays 2 (a fresh client address gets its two failures).
    file.lock().unwrap().public.auth_failures_per_minute = 2_000_000;
    let r = client
        .admin_json("POST", "/api/reload", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let text = r.json()["error_description"].as_str().unwrap().to_owned();
    assert!(text.contains("public.auth_failures_per_minute"), "{text}");
    let other = common::TestClient::with_source(
        file.lock().unwrap().tls.cert.as_ref().unwrap(),
        gateway.public_addr,
        gateway.admin_addr,
        Some("127.0.0.7".parse().unwrap()),
    );
    for _ in 0..2 {
        assert_eq!(
            other.api_get("/api/x", &forged).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        other.api_get("/api/x", &forged).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The upstream's extra headers change live, for every worker: the next
    // request carries the new one (from a client the budget has not blocked).
    file.lock()
        .unwrap()
        .upstream
        .headers
        .insert("X-Env".into(), "blue".into());
    file.lock().unwrap().public.auth_failures_per_minute = 2;
    let r = client
        .admin_json("POST", "/api/reload", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["applied"], serde_json::json!(["upstream.headers"]));
    let fresh = common::TestClient::with_source(
        file.lock().unwrap().tls.cert.as_ref().unwrap(),
        gateway.public_addr,
        gateway.admin_addr,
        Some("127.0.0.9".parse().unwrap()),
    );
    let r = fresh
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = fresh.api_get("/api/echo", &access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-env"][0], "blue", "{}", r.text());
    // Every reload is counted: three that applied, one refused.
    let scrape = client.admin_call("GET", "/metrics").await.text();
    for line in [
        "tokengate_reloads_total{kind=\"config\",result=\"success\"} 3",
        "tokengate_reloads_total{kind=\"config\",result=\"failure\"} 1",
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line} in:\n{scrape}");
    }
    // Only POST reloads.
    let r = client.admin_call("GET", "/api/reload").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    gateway.shutdown().await;
}

/// The binary: SIGHUP reloads a swapped certificate (the file watch is off,
/// so only the signal can have done it), and `tokengate reload` reports a
/// changed setting. Neither restarts: the access token stays valid.
#[tokio::test]
async fn sighup_and_the_reload_command_reload_the_running_binary() {
    let up = common::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let public = common::dead_address().await;
    let admin = common::dead_address().await;
    let (cert, key) = new_pair(dir.path(), "served");
    let (new_cert, new_key) = new_pair(dir.path(), "renewed");
    let config = dir.path().join("tokengate.toml");
    // `log.level` starts at warn: the SIGHUP reload's info line is not
    // logged; the second reload turns info on, and its own line shows.
    let write_config = |budget: u32, level: &str| {
        std::fs::write(
            &config,
            format!(
                "[public]\nlisten = \"{public}\"\nauth_failures_per_minute = {budget}\n\
                 [log]\nlevel = \"{level}\"\n\
                 [admin]\nlisten = \"{admin}\"\n\
                 [upstream]\nurl = \"http://{}\"\n\
                 [tls]\ncert = \"{}\"\nkey = \"{}\"\nwatch_interval = 0\n",
                up.addr,
                cert.display(),
                key.display()
            ),
        )
        .unwrap()
    };
    write_config(100, "warn");
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env_clear()
        .env("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::eventually_ok(
        Duration::from_secs(30),
        "the gateway to listen",
        move || async move {
            TcpStream::connect(admin)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let client = common::TestClient::new(&cert, public, admin);
    let (_, refresh) = client.create_token("sighup").await;
    let r = client
        .token_form(&format!("grant_type=refresh_token&refresh_token={refresh}"))
        .await;
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let tls = connector(&bundle(dir.path(), &[&cert, &new_cert]));
    let (old_leaf, new_leaf) = (leaf(&cert), leaf(&new_cert));
    assert_eq!(connect(&tls, public).await.served, old_leaf);

    swap_in((&new_cert, &new_key), (&cert, &key));
    // The watch is off: still the old certificate until the signal.
    assert_eq!(connect(&tls, public).await.served, old_leaf);
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let tls2 = tls.clone();
    common::eventually(
        Duration::from_secs(20),
        "SIGHUP to bring the new certificate in",
        move || {
            let (tls, new_leaf) = (tls2.clone(), new_leaf.clone());
            async move { (connect(&tls, public).await.served == new_leaf).then_some(()) }
        },
    )
    .await;
    let mut c = connect(&tls, public).await;
    assert_eq!(c.get("/api/after-hup", &access).await, Some(StatusCode::OK));

    // `tokengate reload` through the admin listener: a changed budget.
    write_config(50, "info");
    let trust = bundle(dir.path(), &[&cert, &new_cert]);
    let reload = || {
        tokio::process::Command::new(BIN)
            .args(["reload", "--url", &format!("https://{admin}"), "--ca-file"])
            .arg(&trust)
            .env_clear()
            .env("TOKENGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .output()
    };
    let out = reload().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("applied log.level, public.auth_failures_per_minute"),
        "{stdout}"
    );
    // A broken file: exit code 2 and the error, the gateway unchanged.
    std::fs::write(&config, "[public\n").unwrap();
    let out = reload().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokengate.toml"), "{stderr}");
    assert_eq!(c.get("/api/after-bad", &access).await, Some(StatusCode::OK));

    let status = common::signal_and_wait(&mut child, "-TERM").await;
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    // Reloaded log level: only the second reload's info line was logged.
    let reloaded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("configuration reloaded"))
        .collect();
    assert_eq!(reloaded.len(), 1, "{log}");
    assert!(reloaded[0].contains("admin API"), "{log}");
    assert!(log.contains("reload refused"), "{log}");
    assert!(!log.contains(&refresh) && !log.contains(&access));
}

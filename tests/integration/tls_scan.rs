//! TLS scan of both listeners with sslyze (`tests/attacks/tls_scan.py`): no
//! protocol below TLS 1.2, no CBC and no non-forward-secret cipher suites, no
//! insecure renegotiation, no TLS compression. OCSP stapling, HSTS and the
//! rest of what the scan sees are printed, not asserted.
//!
//! Needs `python3` with the packages of `tests/attacks/requirements.txt`
//! (`tests/run.sh` installs them).

use std::time::{Duration, Instant};

use crate::common::{upstream, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_and_admin_listeners_pass_the_tls_scan() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let g = gw.gateway.as_ref().unwrap();
    let public = format!("public={}", g.public_addr.port());
    let admin = format!("admin={}", g.admin_addr.port());
    let cert = gw.file.tls.cert.clone().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/attacks/tls_scan.py");
    let started = Instant::now();
    let run = tokio::process::Command::new(crate::common::python3())
        .arg(script)
        .args(["--port", &public, "--port", &admin])
        .arg("--cafile")
        .arg(&cert)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the TLS scan finishes within 300 s")
        .unwrap_or_else(|e| panic!("cannot run python3 {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{stdout}{stderr}(TLS scan: {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "TLS scan failed ({}):\n{stdout}{stderr}",
        out.status
    );
    // Both listeners were scanned, and every asserted check printed "ok".
    for listener in ["public", "admin"] {
        assert!(
            stdout.contains(&format!("== {listener} listener")),
            "{stdout}"
        );
    }
    assert_eq!(stdout.matches("  ok  ").count(), 2 * 8, "{stdout}");
}

//! A real HAProxy (Debian's `haproxy`; tests/run.sh installs it) in front of
//! one gateway or several replicas: TCP mode, TLS passed through to the
//! gateways, round robin over the backends, killed when dropped.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::eventually;

/// HAProxy's frontend address; the process is killed when this is dropped.
pub struct Haproxy {
    pub addr: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

/// Starts HAProxy balancing new connections over `backends` in turn
/// (`balance roundrobin`, no health checks: a backend the test stopped
/// stays in the rotation, as the test decides). With `send_proxy`, each
/// backend connection starts with a PROXY v2 header naming the client.
/// Returns once the frontend accepts connections.
pub async fn haproxy(backends: &[SocketAddr], send_proxy: bool) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    // A free port for the frontend: HAProxy cannot report one it picked.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = if send_proxy { " send-proxy-v2" } else { "" };
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server g{} {b}{proxy}\n", i + 1))
        .collect();
    let cfg = format!(
        "global\n  maxconn 4000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
         frontend fe\n  bind {addr}\n  default_backend gw\n\
         backend gw\n  balance roundrobin\n{servers}"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    // /usr/sbin is not on every user's PATH.
    let bin = if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    };
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy (Debian package haproxy; tests/run.sh installs it)");
    eventually(
        Duration::from_secs(10),
        "HAProxy listening",
        || async move { TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await;
    Haproxy {
        addr,
        _child: child,
        _dir: dir,
    }
}

//! A real HAProxy (Debian's `haproxy`; tests/run.sh installs it) in front of
//! one gateway or several replicas, killed when dropped: TCP mode with TLS
//! passed through to the gateways (with or without PROXY v2 headers), or
//! HTTP mode terminating TLS and adding `X-Forwarded-For`.

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
    let mode = if send_proxy {
        Mode::TcpSendProxy
    } else {
        Mode::Tcp
    };
    haproxy_in(backends, mode).await
}

/// How HAProxy stands in front of the gateways.
pub enum Mode {
    /// Layer 4: TLS passes through; the gateway sees HAProxy's address.
    Tcp,
    /// Layer 4 with a PROXY v2 header naming the client on each connection.
    TcpSendProxy,
    /// Layer 7: HAProxy terminates TLS with this certificate and key (PEM
    /// files), adds `X-Forwarded-For` (`option forwardfor`), and opens TLS
    /// of its own to the gateways (not verified: a test certificate).
    Http {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

/// Starts HAProxy in `mode` in front of `backends` (round robin).
pub async fn haproxy_in(backends: &[SocketAddr], mode: Mode) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    // HAProxy cannot report a port it picked: the frontend listens on a
    // socket bound here, handed over as `fd@N` (no other test can take the
    // port in between).
    let (socket, port) = super::bound_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mode_name, bind, frontend, server) = match &mode {
        Mode::Tcp => ("tcp", String::new(), "", ""),
        Mode::TcpSendProxy => ("tcp", String::new(), "", " send-proxy-v2"),
        Mode::Http { cert, key } => {
            // HAProxy wants the certificate and its key in one file.
            let pem = dir.path().join("frontend.pem");
            let both = [std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()].join(&b'\n');
            std::fs::write(&pem, both).unwrap();
            (
                "http",
                format!(" ssl crt {} alpn http/1.1", pem.display()),
                "  option forwardfor\n",
                " ssl verify none alpn http/1.1",
            )
        }
    };
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server g{} {b}{server}\n", i + 1))
        .collect();
    let cfg = format!(
        "global\n  maxconn 4000\n\
         defaults\n  mode {mode_name}\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
         frontend fe\n  bind fd@@FD@{bind}\n{frontend}  default_backend gw\n\
         backend gw\n  balance roundrobin\n{servers}"
    );
    let path = dir.path().join("haproxy.cfg");
    // /usr/sbin is not on every user's PATH.
    let bin = if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    };
    let child = super::with_inherited(&socket, |fd| {
        std::fs::write(&path, cfg.replace("@FD@", &fd.to_string())).unwrap();
        Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
    })
    .expect("haproxy (Debian package haproxy; tests/run.sh installs it)");
    // HAProxy holds the socket now; the port is freed when it exits.
    drop(socket);
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

//! `tokengate serve --dev`: the whole flow on a fresh machine with nothing
//! configured. A temporary data directory and self-signed certificate, a
//! built-in sample upstream answering DPA-like JSON, a ready refresh token,
//! and a banner with copy-paste commands. Everything is removed at exit.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the banner with copy-paste commands goes to stdout, failures to stderr"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{AuditDestination, Config};
use crate::gateway::{Gateway, StartOptions};

/// Runs the gateway in dev mode until `stop` resolves, then stops it and
/// removes everything it made.
pub async fn run(
    mut config: Config,
    password: Option<String>,
    stop: impl std::future::Future<Output = ()>,
) -> ExitCode {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("tokengate: dev mode: {what}: {e}");
        ExitCode::FAILURE
    };
    let dir = match DevDir::create() {
        Ok(d) => d,
        Err(e) => return fail("cannot create a temporary directory", &e),
    };
    let upstream = match sample_upstream().await {
        Ok(a) => a,
        Err(e) => return fail("cannot start the sample upstream", &e),
    };
    adapt(&mut config, &dir.0, upstream);
    let password = match password
        .map(Ok)
        .unwrap_or_else(crate::secrets::generate_password)
    {
        Ok(p) => p,
        Err(e) => return fail("cannot generate a password", &e),
    };
    let cert = config.tls.cert.clone();
    let opts = StartOptions {
        admin_password: Some(password.clone()),
        reload_on_sighup: true,
        ..StartOptions::default()
    };
    let gateway = match Gateway::start(config, opts).await {
        Ok(g) => g,
        Err(e) => return fail("cannot start", &e),
    };
    let state = &gateway.state;
    let now = state.view.clock.unix();
    let expires = Some(now + state.startup_config.tokens.refresh_ttl.as_secs());
    let refresh = match state
        .lifecycle
        .mint("dev", now, expires, &Default::default())
        .await
    {
        Ok((_, token)) => token,
        Err(e) => return fail("cannot create the sample refresh token", &e),
    };
    println!(
        "{}",
        banner(
            gateway.public_addr,
            gateway.admin_addr,
            &cert,
            &password,
            &refresh,
            &dir.0
        )
    );
    stop.await;
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
    drop(dir);
    ExitCode::SUCCESS
}

/// A private temporary directory, removed when dropped.
struct DevDir(PathBuf);

impl DevDir {
    fn create() -> std::io::Result<DevDir> {
        let mut suffix = [0u8; 6];
        crate::secrets::random_bytes(&mut suffix)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("tokengate-dev-{hex}"));
        crate::secrets::create_private_dir(&dir)?;
        Ok(DevDir(dir))
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Points the configuration at the dev directory and the sample upstream.
/// Listeners on the default wildcard address are narrowed to loopback: a dev
/// gateway has a printed password and a ready token, and is nobody else's.
fn adapt(config: &mut Config, dir: &Path, upstream: SocketAddr) {
    config.storage.path = dir.join("data/tokengate.redb");
    // Temporary data means all of it: a dev gateway never touches a
    // configured database or secret.
    config.storage.backend = crate::config::StorageBackend::Redb;
    config.storage.secret_file = dir.join("data").join(crate::secrets::SECRET_FILE);
    if config.admin.socket.is_some() {
        config.admin.socket = Some(dir.join("data").join(crate::config::ADMIN_SOCKET_FILE));
    }
    config.tls = crate::config::TlsConfig {
        cert: dir.join("certs/tokengate.crt"),
        key: dir.join("certs/tokengate.key"),
        generate_if_missing: true,
        watch_interval: config.tls.watch_interval,
    };
    if config.public.listen.ip().is_unspecified() {
        config
            .public
            .listen
            .set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    if config.audit == AuditDestination::Stdout {
        // Keep stdout for the banner.
        config.audit = AuditDestination::Stderr;
    }
    if let Ok(url) = format!("http://{upstream}").parse() {
        config.upstream.urls = vec![url];
    }
    config.upstream.ca_file = None;
    config.upstream.insecure_skip_verify = false;
}

/// Starts the sample upstream on an ephemeral loopback port.
async fn sample_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(sample))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// DPA-like answers for a couple of well-known paths; anything else is echoed.
async fn sample(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/iwc/api/databases/monitor-information" => json!({"data": [
            {"dbId": 1, "name": "PRODSQL01", "ip": "10.0.0.11", "port": "1433", "databaseType": "SQL Server",
             "databaseVersion": "15.0.4153.1", "monitoringState": "Monitoring", "agListenerName": null},
            {"dbId": 2, "name": "ORAFIN", "ip": "10.0.0.12", "port": "1521", "databaseType": "Oracle",
             "databaseVersion": "19.0.0.0.0", "monitoringState": "Monitoring", "agListenerName": null}
        ]}),
        "/iwc/api/databases/1/monitor-information" => json!({"data":
            {"dbId": 1, "name": "PRODSQL01", "monitoringState": "Monitoring", "oldestMonitoringDate": "2026-01-01T00:00:00Z"}}),
        path => json!({
            "message": "tokengate dev sample upstream: this request passed the gateway",
            "method": req.method().as_str(),
            "path": path,
            "query": req.uri().query(),
            "authorization_seen": req.headers().contains_key(http::header::AUTHORIZATION),
            "x_forwarded_for": req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        }),
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Shell-quotes a path for the printed commands.
fn q(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The banner: where everything is, and commands to paste as they are.
fn banner(
    public: SocketAddr,
    admin: SocketAddr,
    cert: &Path,
    password: &str,
    refresh: &str,
    dir: &Path,
) -> String {
    let ca = q(cert);
    let gw = format!("https://{public}");
    let adm = format!("https://{admin}");
    format!(
        r#"
tokengate is running in dev mode (temporary data in {dir}, removed at exit)

  Admin page      {adm}/   (user: admin   password: {password})
  Public API      {gw}
  Certificate     {cert}   (self-signed; trust it with --cacert)
  Refresh token   {refresh}

Trade the refresh token for an access token (DPA's token endpoint):

curl --cacert {ca} {gw}/iwc/api/security/oauth/token -d grant_type=refresh_token -d refresh_token={refresh}

Or keep it in a variable and call the API through the gateway:

ACCESS=$(curl -s --cacert {ca} {gw}/iwc/api/security/oauth/token -d grant_type=refresh_token -d refresh_token={refresh} | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
curl --cacert {ca} -H "Authorization: bearer $ACCESS" {gw}/iwc/api/databases/monitor-information

Manage tokens from the command line:

TOKENGATE_ADMIN_PASSWORD={password} {exe} token list --url {adm} --ca-file {ca}

Press Ctrl-C to stop.
"#,
        dir = dir.display(),
        cert = cert.display(),
        exe = std::env::current_exe()
            .map(|p| q(&p))
            .unwrap_or_else(|_| "tokengate".into()),
    )
}

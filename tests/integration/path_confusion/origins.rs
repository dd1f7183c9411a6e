//! Real static file servers as upstreams, each on a free loopback port with
//! its configuration in a temp dir, serving the same docroot, killed with
//! the test (`kill_on_drop`; every server runs as a single foreground
//! process, so killing it leaves nothing behind).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::raw::{h1_once, Dial};

/// What a file the scope allows holds.
pub(crate) const OK_MARKER: &str = "OK-MARKER-7c1f";
/// What every file outside `/public` holds: `secret.txt` and the docroot's
/// `index.html` (so a path that resolves to `/` is caught too).
pub(crate) const SECRET_MARKER: &str = "SECRET-MARKER-e93a";

/// The servers under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// nginx with a static `root`.
    Nginx,
    /// nginx with `proxy_pass http://…/` (a URI: nginx forwards its own
    /// normalised, re-encoded path) in front of a static nginx.
    NginxProxy,
    Apache,
    Caddy,
    Tomcat,
    Lighttpd,
    Python,
    Node,
}

/// A running server; killed when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// The back-end of [`Kind::NginxProxy`]: a static nginx.
    back: Option<Box<Server>>,
    _child: tokio::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The docroot every server serves: `public/ok.txt`, the directories the
/// payloads climb out of (`public/a`, `public/x`, …), and the secrets.
pub(crate) fn write_docroot(root: &Path) {
    for d in ["public/a/b", "public/x/y"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("public/ok.txt"), format!("{OK_MARKER}\n")).unwrap();
    std::fs::write(root.join("secret.txt"), format!("{SECRET_MARKER}\n")).unwrap();
    std::fs::write(
        root.join("index.html"),
        format!("<p>{SECRET_MARKER} (the docroot's index)</p>\n"),
    )
    .unwrap();
}

/// Every file readable by any user: Apache drops to `www-data`.
fn open_up(dir: &Path) {
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "chmod -R a+rX {}", dir.display());
}

/// A port free on 127.0.0.1 that no other test will take before the
/// server binds it itself (`common::spare_port`).
fn free_port() -> u16 {
    crate::common::spare_port()
}

impl Server {
    pub(crate) async fn start(kind: Kind) -> Server {
        let back = match kind {
            Kind::NginxProxy => Some(Box::new(Box::pin(Server::start(Kind::Nginx)).await)),
            _ => None,
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let docroot = d.join("docroot");
        write_docroot(&docroot);
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = d.join("server.log");
        let mut cmd = command(kind, &d, &docroot, port, back.as_ref().map(|b| b.addr));
        open_up(&d);
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        wait_ready(kind, addr, &mut child, &log).await;
        Server {
            addr,
            back,
            _child: child,
            log,
            _dir: dir,
        }
    }

    /// What the server wrote so far (for failure messages).
    pub(crate) fn log(&self) -> String {
        let own = std::fs::read_to_string(&self.log).unwrap_or_default();
        match &self.back {
            Some(b) => format!("{own}\n(back-end:)\n{}", b.log()),
            None => own,
        }
    }
}

/// Waits until the server answers `/public/ok.txt` with the marker
/// (Tomcat's JVM takes seconds); fails at once if it exits instead.
async fn wait_ready(kind: Kind, addr: SocketAddr, child: &mut tokio::process::Child, log: &Path) {
    let dial = Dial::Plain(addr);
    let ready = crate::common::poll_until(Duration::from_secs(60), || {
        let exited = child.try_wait().ok().flatten();
        let dial = dial.clone();
        async move {
            if let Some(status) = exited {
                return Some(Err(status));
            }
            let r = h1_once(&dial, b"/public/ok.txt", None).await?;
            (r.status == 200 && r.contains(OK_MARKER)).then_some(Ok(()))
        }
    })
    .await;
    let why = match ready {
        Some(Ok(())) => return,
        Some(Err(status)) => format!("exited ({status})"),
        None => "did not serve /public/ok.txt within 60 s".to_owned(),
    };
    panic!(
        "{kind:?} on {addr} {why}; its output:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Debian puts the servers in /usr/sbin, which a non-root PATH may lack.
fn sbin(name: &str) -> PathBuf {
    let p = Path::new("/usr/sbin").join(name);
    if p.exists() {
        p
    } else {
        PathBuf::from(name)
    }
}

fn command(
    kind: Kind,
    dir: &Path,
    docroot: &Path,
    port: u16,
    back: Option<SocketAddr>,
) -> tokio::process::Command {
    let d = dir.display();
    let root = docroot.display();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    match kind {
        Kind::Nginx | Kind::NginxProxy => {
            // `master_process off`: one process, so kill_on_drop kills it all.
            let server = match back {
                // A URI in `proxy_pass`: nginx decodes, resolves `..` and
                // merges slashes, then sends its own re-encoded path.
                Some(b) => format!(
                    "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://{b}/; }} }}"
                ),
                None => format!("server {{ listen 127.0.0.1:{port}; root {root}; }}"),
            };
            let conf = write(
                "nginx.conf",
                format!(
                    "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                     error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
                     http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                     proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                     uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  {server}\n}}\n"
                ),
            );
            let mut c = tokio::process::Command::new(sbin("nginx"));
            c.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log"));
            c.arg("-c").arg(conf);
            c
        }
        Kind::Apache => {
            // `-X`: one process, in the foreground. Apache will not serve as
            // root, hence `www-data` and the world-readable docroot.
            let m = "/usr/lib/apache2/modules";
            let conf = write(
                "apache.conf",
                format!(
                    "ServerRoot {d}\nDefaultRuntimeDir {d}\nPidFile {d}/apache.pid\n\
                     LoadModule mpm_event_module {m}/mod_mpm_event.so\n\
                     LoadModule authz_core_module {m}/mod_authz_core.so\n\
                     LoadModule mime_module {m}/mod_mime.so\n\
                     LoadModule dir_module {m}/mod_dir.so\n\
                     Listen 127.0.0.1:{port}\nServerName 127.0.0.1\nErrorLog {d}/error.log\n\
                     User www-data\nGroup www-data\nTypesConfig /etc/mime.types\n\
                     DocumentRoot {root}\nDirectoryIndex index.html\n\
                     <Directory {root}>\n  Require all granted\n</Directory>\n"
                ),
            );
            let mut c = tokio::process::Command::new(sbin("apache2"));
            c.arg("-X").arg("-f").arg(conf);
            c
        }
        Kind::Caddy => {
            let conf = write(
                "Caddyfile",
                format!(
                    "{{\n\tadmin off\n\tauto_https off\n\
                     \tstorage file_system {d}/caddy\n\tservers {{\n\t\tprotocols h1\n\t}}\n}}\n\
                     http://:{port} {{\n\tbind 127.0.0.1\n\troot * {root}\n\tfile_server\n}}\n"
                ),
            );
            let mut c = tokio::process::Command::new("caddy");
            c.arg("run").arg("--config").arg(conf);
            c.args(["--adapter", "caddyfile"]);
            c.env("HOME", dir)
                .env("XDG_DATA_HOME", dir)
                .env("XDG_CONFIG_HOME", dir);
            c
        }
        Kind::Lighttpd => {
            let conf = write(
                "lighttpd.conf",
                format!(
                    "server.document-root = \"{root}\"\nserver.bind = \"127.0.0.1\"\n\
                     server.port = {port}\nserver.errorlog = \"{d}/error.log\"\n\
                     index-file.names = (\"index.html\")\n\
                     mimetype.assign = (\".txt\" => \"text/plain\", \".html\" => \"text/html\")\n"
                ),
            );
            let mut c = tokio::process::Command::new(sbin("lighttpd"));
            c.arg("-D").arg("-f").arg(conf);
            c
        }
        Kind::Python => {
            let mut c = tokio::process::Command::new(crate::common::python3());
            c.args(["-m", "http.server", "--bind", "127.0.0.1"]);
            c.arg(port.to_string()).arg("--directory").arg(docroot);
            c
        }
        Kind::Node => {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/integration/path_confusion/node_static.js"
            );
            let mut c = tokio::process::Command::new("node");
            c.arg(script).arg(port.to_string()).arg(docroot);
            c
        }
        Kind::Tomcat => tomcat(dir, port),
    }
}

/// Debian's Tomcat 10 (CATALINA_HOME=/usr/share/tomcat10) with its own
/// CATALINA_BASE: a connector on `port`, the docroot as the ROOT webapp
/// served by the DefaultServlet (the stock conf/web.xml maps it). The JVM
/// is started directly, not through catalina.sh, so that killing the
/// child kills Tomcat.
fn tomcat(dir: &Path, port: u16) -> tokio::process::Command {
    let home = Path::new("/usr/share/tomcat10");
    let base = dir.join("tomcat");
    for d in ["conf", "logs", "temp", "work", "webapps"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::copy(home.join("etc/web.xml"), base.join("conf/web.xml")).unwrap();
    write_docroot(&base.join("webapps/ROOT"));
    std::fs::write(
        base.join("conf/server.xml"),
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="{port}" address="127.0.0.1" protocol="HTTP/1.1" connectionTimeout="20000"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
    </Engine>
  </Service>
</Server>
"#
        ),
    )
    .unwrap();
    let mut c = tokio::process::Command::new("java");
    c.arg(format!("-Dcatalina.home={}", home.display()))
        .arg(format!("-Dcatalina.base={}", base.display()))
        .arg(format!("-Djava.io.tmpdir={}", base.join("temp").display()))
        // Start-up speed over peak speed: the test sends a few thousand requests.
        .args(["-XX:TieredStopAtLevel=1", "-Xmx256m", "-cp"])
        .arg(format!(
            "{0}/bin/bootstrap.jar:{0}/bin/tomcat-juli.jar",
            home.display()
        ))
        .args(["org.apache.catalina.startup.Bootstrap", "start"]);
    c
}

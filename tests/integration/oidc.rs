//! Single sign-on against a real, certified OpenID provider: panva's
//! `oidc-provider` under Node (tests/oidc/provider.js, installed by
//! `tests/run.sh` with `npm ci`), over HTTPS with a CA this test generates,
//! with accounts whose claims the test chooses. Chromium signs in through
//! the page's "Sign in with …" button and the provider's login form.
//!
//! The harness owns the provider's signing key, so it can answer the token
//! request with an ID token the gateway must refuse: another audience,
//! expired, another issuer, a bad signature, an unknown key id, or the ID
//! token of an earlier sign-in (its nonce is not this sign-in's).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::common::webdriver::{Browser, ENTER};
use crate::common::{dead_address, eventually, upstream, TestGateway};

const CLIENT_ID: &str = "tokengate-admin";
const CLIENT_SECRET: &str = "the client secret the provider and the gateway share";

/// The test provider: a Node process reading commands on stdin.
struct Provider {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    issuer: String,
    /// The CA (PEM) that issued the provider's certificate.
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

/// A CA and a certificate for 127.0.0.1 it issued: (CA PEM, cert PEM, key PEM).
fn test_ca() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        "tokengate test identity provider CA",
    );
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

impl Provider {
    async fn start() -> Provider {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            root.join("node_modules/oidc-provider").is_dir(),
            "tests/oidc/node_modules is missing: run `bash tests/run.sh` (or `npm ci --prefix tests/oidc`)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = test_ca();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = write("ca.pem", &ca);
        let cert = write("provider.crt", &cert);
        let key = write("provider.key", &key);
        let mut child = tokio::process::Command::new("node")
            .arg(root.join("provider.js"))
            .current_dir(&root)
            .env("CERT_FILE", &cert)
            .env("KEY_FILE", &key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (tests/run.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .expect("the provider starts within 30 s")
            .unwrap()
            .expect("the provider says where it listens");
        let issuer = first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .to_owned();
        Provider {
            _child: child,
            stdin,
            stdout,
            issuer,
            ca,
            _dir: dir,
        }
    }

    async fn command(&mut self, cmd: Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        // oidc-provider writes notices to stdout too: the answer is the
        // first line that is one.
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let line = self.stdout.next_line().await.unwrap().unwrap_or_default();
                if line == "ok" || line.starts_with("error") || line.is_empty() {
                    return line;
                }
            }
        })
        .await
        .expect("the provider answers");
        assert_eq!(answer, "ok", "provider command {cmd}");
    }
}

/// `[admin.oidc]` for `issuer`, trusting `ca`, the secret in a 0600 file.
fn sso_config(f: &mut tokengate::config::FileConfig, dir: &Path, issuer: &str, ca: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let secret = dir.join("oidc-client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = &mut f.admin.oidc;
    o.issuer = issuer.to_owned();
    o.client_id = CLIENT_ID.to_owned();
    o.client_secret_file = Some(secret);
    o.ca_file = Some(ca.to_owned());
    o.display_name = "Test Identity".to_owned();
    o.roles = [
        ("dba-team".to_owned(), "manager".to_owned()),
        ("ops".to_owned(), "admin".to_owned()),
    ]
    .into();
}

/// `GET /api/session` from inside the gateway's page (the refusal page's
/// policy allows no requests): its status and body.
async fn page_session(browser: &Browser, admin: &str) -> Value {
    browser.goto(&format!("{admin}/")).await;
    browser
        .eval(
            "return fetch('/api/session', {headers: {'X-Requested-With': 'tokengate-ui'}, cache: 'no-store'})\
             .then(async r => ({status: r.status, body: r.ok ? await r.json() : null}))",
        )
        .await
}

/// The HTTP status of the page the browser shows.
async fn page_status(browser: &Browser) -> Value {
    browser
        .eval("return performance.getEntriesByType('navigation')[0].responseStatus")
        .await
}

/// Opens the gateway's page without any cookie of its own and clicks
/// "Sign in with …".
async fn click_sign_in(browser: &Browser, admin: &str) {
    browser.goto(&format!("{admin}/")).await;
    browser.delete_cookies().await;
    browser.goto(&format!("{admin}/")).await;
    let button = browser.wait_visible("#sso-button").await;
    assert_eq!(browser.text(&button).await, "Sign in with Test Identity");
    browser.click(&button).await;
}

/// The provider's login form (any password): signs in as `login`.
async fn provider_login(browser: &Browser, login: &str) {
    let name = browser.wait_visible("input[name=login]").await;
    browser.type_into(&name, login).await;
    let password = browser.wait_visible("input[name=password]").await;
    browser
        .type_into(&password, "whatever the provider asks")
        .await;
    browser.type_into(&password, ENTER).await;
}

/// An audit line `event` naming `person` in one of its fields.
fn audit_names(gw: &TestGateway, event: &str, person: &str) -> Option<Value> {
    gw.audit_lines().into_iter().find(|l| {
        l["event"] == event
            && l.as_object()
                .is_some_and(|o| o.values().any(|v| v.as_str() == Some(person)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_sign_in_through_a_real_provider_and_forged_tokens_are_refused() {
    let mut idp = Provider::start().await;
    idp.command(json!({"accounts": {
        "alice": {"email": "alice@example.com", "email_verified": true, "name": "Alice", "groups": ["staff", "dba-team"]},
        "bob": {"email": "bob@example.com", "email_verified": true, "name": "Bob", "groups": ["staff"]},
    }}))
    .await;
    let up = upstream().await;
    let (issuer, ca) = (idp.issuer.clone(), idp.ca.clone());
    let keep = tempfile::tempdir().unwrap();
    let gw = TestGateway::start_with(up.addr, |f| sso_config(f, keep.path(), &issuer, &ca)).await;
    // The browser opens the page by address: the redirect URL is built from that Host.
    let admin = gw.client.admin.replace("localhost", "127.0.0.1");
    idp.command(json!({"client": {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [format!("{admin}/auth/oidc/callback")],
    }}))
    .await;
    // Discovery runs in the background: wait until the button leads somewhere.
    eventually(
        Duration::from_secs(20),
        "discovery at the provider",
        || async {
            let r = gw.client.admin_get_anonymous("/auth/oidc/login").await;
            (r.status == StatusCode::SEE_OTHER).then_some(())
        },
    )
    .await;
    let info = gw.client.admin_get_anonymous("/auth/oidc/info").await;
    assert_eq!(
        info.json(),
        json!({"display_name": "Test Identity", "login_url": "/auth/oidc/login"})
    );

    let browser = Browser::start().await;

    // A mapped group: the page, as a manager, signed in with single sign-on.
    click_sign_in(&browser, &admin).await;
    provider_login(&browser, "alice").await;
    browser.wait_visible("#tokens-view").await;
    let s = page_session(&browser, &admin).await;
    assert_eq!(s["status"], 200, "{s}");
    assert_eq!(s["body"]["user"], "alice@example.com", "{s}");
    assert_eq!(s["body"]["role"], "manager", "{s}");
    assert_eq!(s["body"]["via"], "oidc", "{s}");
    assert!(
        audit_names(&gw, "admin.login", "alice@example.com").is_some(),
        "the audit's admin.login line names the person: {:?}",
        gw.audit_lines()
    );
    // The sign-in's cookie is spent; the session cookie is set.
    let cookies = browser.cookie_names().await;
    assert!(
        cookies.iter().any(|c| c == "__Host-tg_session"),
        "{cookies:?}"
    );
    assert!(
        !cookies.iter().any(|c| c == "__Host-tg_oidc"),
        "{cookies:?}"
    );

    // The person is an account now: source oidc, the mapped role.
    let users = gw.client.admin_call("GET", "/api/users").await;
    assert_eq!(users.status, StatusCode::OK);
    let alice = users
        .json()
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "alice@example.com").cloned())
        .unwrap_or_else(|| panic!("alice is listed: {}", users.json()));
    assert_eq!(alice["source"], "oidc", "{alice}");
    assert_eq!(alice["role"], "manager", "{alice}");
    let line = audit_names(&gw, "admin.login", "alice@example.com").unwrap();
    assert_eq!(line["via"], "oidc", "{line}");

    // The role is taken afresh at each sign-in: alice moves to ops.
    idp.command(json!({"accounts": {
        "alice": {"email": "alice@example.com", "email_verified": true, "name": "Alice", "groups": ["ops"]},
        "bob": {"email": "bob@example.com", "email_verified": true, "name": "Bob", "groups": ["staff"]},
    }}))
    .await;
    click_sign_in(&browser, &admin).await;
    browser.wait_visible("#tokens-view").await;
    let s = page_session(&browser, &admin).await;
    assert_eq!(s["body"]["role"], "admin", "{s}");

    // A disabled account is refused at the next sign-in, with a page.
    let r = gw
        .client
        .admin_json(
            "PATCH",
            "/api/users/alice@example.com",
            &json!({"disabled": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    click_sign_in(&browser, &admin).await;
    let reason = browser.wait_visible("#sso-reason").await;
    let text = browser.text(&reason).await;
    assert!(text.contains("disabled"), "{text}");
    assert_eq!(page_status(&browser).await, 403);
    assert_eq!(page_session(&browser, &admin).await["status"], 401);
    let r = gw
        .client
        .admin_json(
            "PATCH",
            "/api/users/alice@example.com",
            &json!({"disabled": false}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());

    // Forged or foreign ID tokens: refused, with no session, a page that
    // says why and an audit line. The provider still knows alice, so each
    // sign-in goes straight back to the gateway.
    for (mode, says) in [
        ("wrong_audience", "invalid audiences"),
        ("expired", "expired"),
        ("wrong_issuer", "invalid issuer"),
        ("bad_signature", "signature verification failed"),
        ("unknown_kid", "a key the identity provider does not list"),
        ("replayed_nonce", "nonce mismatch"),
    ] {
        idp.command(json!({ "tamper": mode })).await;
        click_sign_in(&browser, &admin).await;
        let reason = browser.wait_visible("#sso-reason").await;
        let text = browser.text(&reason).await;
        assert!(
            text.starts_with("The ID token was refused"),
            "{mode}: {text}"
        );
        assert!(text.to_lowercase().contains(says), "{mode}: {text}");
        assert_eq!(page_status(&browser).await, 403, "{mode}");
        let cookies = browser.cookie_names().await;
        assert!(
            !cookies.iter().any(|c| c == "__Host-tg_session"),
            "{mode}: no session cookie: {cookies:?}"
        );
        assert_eq!(
            page_session(&browser, &admin).await["status"],
            401,
            "{mode}"
        );
        let failed = gw
            .audit_lines()
            .into_iter()
            .rev()
            .find(|l| l["event"] == "admin.login_failed");
        let failed = failed.unwrap_or_else(|| panic!("{mode}: an admin.login_failed line"));
        let why = failed["reason"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            why.starts_with("oidc") && why.contains(says),
            "{mode}: {failed}"
        );
    }

    // No mapped group and no default role: a page that says so, no session.
    // (A fresh sign-in at the provider: its session for alice is dropped.)
    browser
        .goto(&format!("{issuer}/.well-known/openid-configuration"))
        .await;
    browser.delete_cookies().await;
    click_sign_in(&browser, &admin).await;
    provider_login(&browser, "bob").await;
    let reason = browser.wait_visible("#sso-reason").await;
    let text = browser.text(&reason).await;
    assert!(
        text.contains("bob@example.com") && text.contains("no role"),
        "{text}"
    );
    assert_eq!(page_status(&browser).await, 403);
    assert_eq!(page_session(&browser, &admin).await["status"], 401);
    assert!(
        audit_names(&gw, "admin.login_failed", "bob@example.com").is_some(),
        "{:?}",
        gw.audit_lines()
    );
    browser.quit().await;
}

#[tokio::test]
async fn the_gateway_starts_and_passwords_work_while_the_provider_is_down() {
    let up = upstream().await;
    let down = dead_address().await;
    let keep = tempfile::tempdir().unwrap();
    let ca = keep.path().join("ca.pem");
    std::fs::write(&ca, test_ca().0).unwrap();
    let issuer = format!("https://{down}");
    let gw = TestGateway::start_with(up.addr, |f| sso_config(f, keep.path(), &issuer, &ca)).await;
    // The password keeps working.
    let r = gw.client.admin_call("GET", "/api/session").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The button is offered, and says clearly that sign-on is not ready.
    let info = gw.client.admin_get_anonymous("/auth/oidc/info").await;
    assert_eq!(info.status, StatusCode::OK);
    let r = gw.client.admin_get_anonymous("/auth/oidc/login").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("not available yet"), "{}", r.text());
    // A callback nobody started: refused, audited, no session.
    let r = gw
        .client
        .admin_get_anonymous("/auth/oidc/callback?code=stolen&state=guessed")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("sign-in cookie is missing"),
        "{}",
        r.text()
    );
    let set = r.header("set-cookie").unwrap_or_default();
    assert!(!set.contains("__Host-tg_session="), "{set}");
    assert!(gw
        .audit_lines()
        .iter()
        .any(|l| l["event"] == "admin.login_failed"
            && l["reason"].as_str().unwrap_or_default().starts_with("oidc")));
    // Made-up callbacks count as failed logins: a flood of them is slowed down.
    let mut throttled = None;
    for _ in 0..10 {
        let r = gw
            .client
            .admin_get_anonymous("/auth/oidc/callback?code=stolen&state=guessed")
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(r.text());
            break;
        }
    }
    let page = throttled.expect("callbacks without a sign-in are throttled");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
}

#[tokio::test]
async fn without_a_provider_configured_the_endpoints_are_not_there() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    for path in ["/auth/oidc/info", "/auth/oidc/login", "/auth/oidc/callback"] {
        let r = gw.client.admin_get_anonymous(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
}

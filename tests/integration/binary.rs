//! The `tokengate` binary: configuration from file and environment (names the
//! bad key), first-start generation of certificate, secret and admin password,
//! a clean exit on SIGTERM, `--version` with the git revision, and the shell
//! completions and man pages generated from the command line.

use crate::common;
use crate::common::check_config;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

#[test]
fn environment_overrides_and_errors_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check_config(
        dir.path(),
        &[
            ("TOKENGATE_PUBLIC__LISTEN", "127.0.0.1:9443"),
            ("TOKENGATE_UPSTREAM__URL", "http://127.0.0.1:9000/base"),
            ("TOKENGATE_STORAGE__PATH", "/tmp/x/t.redb"),
            ("TOKENGATE_ADMIN_PASSWORD", "not a config key"),
            ("API_ACCESS_TOKEN_EXPIRATION", "300"),
            ("API_REFRESH_TOKEN_EXPIRATION", "30"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("127.0.0.1:9443"), "{out}");
    assert!(out.contains("127.0.0.1:9000/base"), "{out}");
    assert!(
        !out.contains("not a config key"),
        "the admin password is never printed: {out}"
    );
    assert!(out.contains("tokens.access_ttl = 300s"), "{out}");
    assert!(out.contains("tokens.refresh_ttl = 2592000s"), "{out}");

    // tokengate's own variable wins over DPA's name.
    let (ok, out) = check_config(
        dir.path(),
        &[
            ("API_ACCESS_TOKEN_EXPIRATION", "300"),
            ("TOKENGATE_TOKENS__ACCESS_TTL", "10m"),
        ],
    );
    assert!(ok && out.contains("tokens.access_ttl = 600s"), "{out}");

    let (ok, out) = check_config(dir.path(), &[("TOKENGATE_PUBLIC__LISTN", "x")]);
    assert!(!ok);
    assert!(out.contains("listn"), "{out}");
    let (ok, out) = check_config(dir.path(), &[("TOKENGATE_PUBLIC__LISTEN", "nowhere")]);
    assert!(!ok);
    assert!(out.contains("public.listen"), "{out}");
    let (ok, out) = check_config(dir.path(), &[("API_ACCESS_TOKEN_EXPIRATION", "15 minutes")]);
    assert!(!ok);
    assert!(out.contains("API_ACCESS_TOKEN_EXPIRATION"), "{out}");
}

#[test]
fn the_config_file_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::write(
        dir.path().join("config/tokengate.toml"),
        "[tokens]\naccess_ttl = \"2m\"\n",
    )
    .unwrap();
    let (ok, out) = check_config(dir.path(), &[]);
    assert!(ok && out.contains("tokens.access_ttl = 120s"), "{out}");
    std::fs::write(
        dir.path().join("config/tokengate.toml"),
        "[tokens]\naccess_tll = \"2m\"\n",
    )
    .unwrap();
    let (ok, out) = check_config(dir.path(), &[]);
    assert!(!ok && out.contains("access_tll"), "{out}");
    // The shipped default file is valid and matches the built-in defaults.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&shipped)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent.toml"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

/// `upstream.urls` from the environment is a TOML-style list; with
/// `upstream.url` set too, the error names both.
#[test]
fn upstream_urls_come_from_the_environment_as_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let urls = (
        "TOKENGATE_UPSTREAM__URLS",
        r#"["http://10.0.0.1:8124","http://10.0.0.2:8124"]"#,
    );
    let (ok, out) = check_config(dir.path(), &[urls]);
    assert!(ok, "{out}");
    assert!(
        out.contains(r#"upstream.urls = ["http://10.0.0.1:8124","http://10.0.0.2:8124"]"#),
        "{out}"
    );
    let (ok, out) = check_config(
        dir.path(),
        &[urls, ("TOKENGATE_UPSTREAM__URL", "http://10.0.0.3")],
    );
    assert!(
        !ok && out.contains("upstream.urls: upstream.url is set too"),
        "{out}"
    );
    let (ok, out) = check_config(dir.path(), &[("TOKENGATE_UPSTREAM__URLS", "[]")]);
    assert!(
        !ok && out.contains("upstream.urls: must list at least one server"),
        "{out}"
    );
}

#[test]
fn postgres_settings_from_the_environment_never_show_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check_config(
        dir.path(),
        &[
            ("TOKENGATE_STORAGE__BACKEND", "postgres"),
            (
                "TOKENGATE_STORAGE__POSTGRES__URL",
                "postgres://tg:s3cret-pw@db.example:5432/tokens",
            ),
            ("TOKENGATE_STORAGE__POSTGRES__SSLMODE", "require"),
            ("TOKENGATE_STORAGE__SECRET_FILE", "/etc/tg/secret.key"),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("storage.backend = postgres"), "{out}");
    assert!(
        out.contains("storage.postgres.url = postgres://tg:(hidden)@db.example:5432/tokens"),
        "{out}"
    );
    assert!(
        out.contains("storage.secret_file = /etc/tg/secret.key"),
        "{out}"
    );
    assert!(!out.contains("s3cret-pw"), "{out}");
    // A bad value names the variable's key, still without the password.
    let (ok, out) = check_config(
        dir.path(),
        &[
            ("TOKENGATE_STORAGE__BACKEND", "postgres"),
            (
                "TOKENGATE_STORAGE__POSTGRES__URL",
                "postgres://tg:s3cret-pw@db.example:nope/tokens",
            ),
        ],
    );
    assert!(!ok && out.contains("storage.postgres.url"), "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");
}

#[tokio::test]
async fn first_start_generates_what_it_needs_and_sigterm_exits_cleanly() {
    let up = common::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let public = common::dead_address().await;
    let admin = common::dead_address().await;
    let mut child = common::serve_command(dir.path(), public, admin, up.addr)
        .spawn()
        .unwrap();

    // Wait until the generated certificate exists and the listener answers.
    let cert = common::wait_for_serve(dir.path(), public).await;
    let client = common::TestClient::new(&cert, public, admin);
    let r = client.get_with("/healthz", None).await;
    assert_eq!(r.status, http::StatusCode::OK);

    let mode = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().mode() & 0o777;
    assert_eq!(mode("certs/tokengate.key"), 0o600);
    assert_eq!(mode("data/secret.key"), 0o600);
    assert_eq!(mode("data/admin.hash"), 0o600);
    assert!(dir.path().join("data/tokengate.redb").exists());

    // SIGTERM: drain and exit 0.
    let status = common::signal_and_wait(&mut child, "-TERM").await;
    assert!(status.success(), "exit status {status:?}");

    // The generated password was printed once, and works against the hash kept.
    let stderr = common::read_all(child.stderr.take()).await;
    let password = stderr
        .lines()
        .skip_while(|l| !l.contains("generated admin password"))
        .nth(2)
        .map(str::trim)
        .expect("password printed")
        .to_owned();
    assert_eq!(password.len(), 24);
    let hash = std::fs::read_to_string(dir.path().join("data/admin.hash")).unwrap();
    assert!(!hash.contains(&password), "only a hash is kept");
    let auth = tokengate::Passwords::new(
        tokengate::AdminCredential::Hash(hash.trim().to_owned()),
        b"k",
    );
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"))
    );
    assert!(auth.check(Some(basic.as_bytes())).await);
    assert!(!stderr.contains("tgr_") && !stderr.contains("tga_"));
}

/// What build.rs should have recorded: `TG_REVISION` when the build
/// set it, else the checkout's short commit id, else "unknown".
fn expected_revision() -> String {
    if let Some(r) = option_env!("TG_REVISION").filter(|r| !r.is_empty()) {
        return r.to_owned();
    }
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).env_clear().output().unwrap();
    assert!(
        out.status.success(),
        "tokengate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_release_and_the_git_revision() {
    let revision = expected_revision();
    let expected = format!("tokengate {} (git {revision})", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        assert_eq!(stdout_of(&[flag]).trim_end(), expected, "{flag}");
    }
    // In a git checkout (CI's and every developer's), the revision is real.
    if std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".git")
        .exists()
        && revision != "unknown"
    {
        assert!(
            revision.len() >= 7 && revision.bytes().all(|b| b.is_ascii_hexdigit()),
            "{revision}"
        );
    }
}

/// The subcommands of the man pages and the completions (the generators,
/// `completions` and `man`, are listed by `--help` but left out of the man pages).
const SUBCOMMANDS: [&str; 10] = [
    "serve",
    "check-config",
    "hash-password",
    "db",
    "cluster",
    "token",
    "user",
    "access-token",
    "agent",
    "audit",
];

#[test]
fn shell_completions_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout_of(&["completions", shell]);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
        assert!(script.contains("ca-file"), "{shell}: options of `token`");
    }
    // The bash script loads and registers a completion for `tokengate`, and
    // completes `tokengate to` to `token`.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokengate.bash");
    std::fs::write(&file, stdout_of(&["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            r#"source "$1" && complete -p tokengate \
               && COMP_WORDS=(tokengate to) COMP_CWORD=1 COMP_LINE="tokengate to" COMP_POINT=12 \
               && _tokengate tokengate to tokengate && printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("-F _tokengate") && l.ends_with(" tokengate")),
        "{text}"
    );
    assert_eq!(
        text.lines().skip(1).collect::<Vec<_>>(),
        ["token"],
        "{text}"
    );
    // An unknown shell is refused.
    let out = Command::new(BIN)
        .args(["completions", "cmd.exe"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn man_pages_cover_the_subcommands() {
    let page = stdout_of(&["man"]);
    assert!(page.contains(".TH tokengate 1"), "{page}");
    assert!(
        page.contains(&expected_revision()),
        "version in the title: {page}"
    );
    for sub in SUBCOMMANDS {
        // roff escapes the hyphen: check\-config.
        assert!(
            page.contains(&format!("tokengate\\-{}", sub.replace('-', "\\-"))),
            "tokengate(1) lists {sub}: {page}"
        );
    }
    assert!(!page.contains("completions"), "hidden subcommands stay out");

    // --out-dir writes a page per subcommand, down to `token create`.
    let dir = tempfile::tempdir().unwrap();
    stdout_of(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    for name in [
        "tokengate.1",
        "tokengate-serve.1",
        "tokengate-token-create.1",
        "tokengate-token-delete.1",
        "tokengate-user-create.1",
        "tokengate-db-migrate.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".SH SYNOPSIS"), "{name}: {text}");
    }
    let create = std::fs::read_to_string(dir.path().join("tokengate-token-create.1")).unwrap();
    assert!(create.contains("\\-\\-expires"), "{create}");
    let user = std::fs::read_to_string(dir.path().join("tokengate-user-create.1")).unwrap();
    assert!(user.contains("\\-\\-password\\-stdin"), "{user}");
    assert!(!dir.path().join("tokengate-man.1").exists());
    assert!(!dir.path().join("tokengate-completions.1").exists());
}

/// `cargo run` hands the binary cargo's environment, build-script variables
/// included (`cargo run --release -- serve --dev` is the README's first
/// command): none of them may look like a configuration key.
#[test]
fn the_environment_cargo_gives_is_accepted() {
    // Cargo hands build-script variables to tests as it does to `cargo run`:
    // this test sees what the README's first command would.
    assert!(
        std::env::var_os("TG_GIT_REVISION").is_some(),
        "cargo set build.rs's rustc-env variable for the test"
    );
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config with the test's environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The trusted hops must fit together, or neither `check-config` nor
/// `serve` goes on: PROXY headers with nobody listed to send them (anyone
/// could choose their address), and `public.trusted_proxies` without PROXY
/// headers (its old meaning, "believe their X-Forwarded-For", let a client
/// behind a TCP balancer choose its address). Each error names both keys;
/// the second says where an HTTP balancer goes now.
#[tokio::test]
async fn trusted_hops_that_do_not_fit_stop_check_config_and_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let proxy_alone = [("TOKENGATE_PUBLIC__PROXY_PROTOCOL", "true")];
    let (ok, out) = check_config(dir.path(), &proxy_alone);
    assert!(!ok, "{out}");
    assert!(
        out.contains("public.proxy_protocol") && out.contains("public.trusted_proxies"),
        "{out}"
    );
    let list_alone = [("TOKENGATE_PUBLIC__TRUSTED_PROXIES", r#"["10.0.0.2"]"#)];
    let (ok, out) = check_config(dir.path(), &list_alone);
    assert!(!ok, "{out}");
    for key in [
        "public.proxy_protocol",
        "public.trusted_proxies",
        "public.trusted_forwarders",
    ] {
        assert!(out.contains(key), "{out}");
    }
    let (ok, out) = check_config(
        dir.path(),
        &[("TOKENGATE_PUBLIC__TRUSTED_FORWARDERS", r#"["10.0.0.0/8"]"#)],
    );
    assert!(ok, "{out}");
    assert!(out.contains("10.0.0.0/8"), "{out}");

    // `serve` refuses the same, before it listens.
    let up = common::upstream().await;
    for env in [&proxy_alone, &list_alone] {
        let public = common::dead_address().await;
        let admin = common::dead_address().await;
        let mut cmd = common::serve_command(dir.path(), public, admin, up.addr);
        for (k, v) in env.iter() {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("serve exits instead of serving")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("public.proxy_protocol") && stderr.contains("public.trusted_proxies"),
            "{stderr}"
        );
    }
}

#[test]
fn help_lists_every_subcommand_and_names_the_ids() {
    let help = stdout_of(&["--help"]);
    for sub in SUBCOMMANDS.iter().chain(&["reload", "completions", "man"]) {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "--help lists {sub}: {help}"
        );
    }
    // The <ID> of the commands that take one says what it is.
    for sub in ["edit", "rotate", "delete"] {
        let help = stdout_of(&["token", sub, "--help"]);
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with("<ID>") && l.contains("ID column")),
            "token {sub} --help: {help}"
        );
    }
}

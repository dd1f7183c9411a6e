//! `tokengate user …` and `--user NAME` against a running gateway: the
//! accounts' commands, a generated password printed once, each role's
//! refusals with the documented exit code and message, and the password
//! prompt at a terminal.

use std::process::Stdio;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::common::{upstream, TestGateway, ADMIN_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
/// The documented exit codes (src/cli.rs).
const EXIT_INVALID: i32 = 2;
const EXIT_AUTH: i32 = 3;
const EXIT_NOT_FOUND: i32 = 4;
const EXIT_FORBIDDEN: i32 = 5;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `tokengate ARGS --ca-file …` against `gw` as `user` with `password`,
/// `stdin` on its standard input (a pipe, never a terminal).
async fn as_user(gw: &TestGateway, user: &str, password: &str, args: &[&str], stdin: &str) -> Out {
    let ca = gw.file.tls.cert.clone().unwrap().display().to_string();
    let mut c = tokio::process::Command::new(BIN);
    c.args(args)
        .args(["--ca-file", &ca, "--user", user])
        .env_clear()
        .env("TOKENGATE_ADMIN_URL", &gw.client.admin)
        .env("TOKENGATE_ADMIN_PASSWORD", password)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn as_admin(gw: &TestGateway, args: &[&str]) -> Out {
    as_user(gw, "admin", ADMIN_PASSWORD, args, "").await
}

fn ok(o: &Out) {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
}

fn json_of(o: &Out) -> Value {
    ok(o);
    serde_json::from_str(&o.stdout).unwrap()
}

#[tokio::test]
async fn user_create_list_edit_delete() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;

    // No password given: one is generated and printed once, alone on stdout.
    let o = as_admin(&gw, &["user", "create", "alice", "--role", "manager"]).await;
    ok(&o);
    let generated = o.stdout.trim().to_owned();
    assert_eq!(o.stdout.lines().count(), 1, "{}", o.stdout);
    assert!(generated.len() >= 12, "{generated:?}");
    assert!(o.stderr.contains("cannot be shown again"), "{}", o.stderr);
    // It works, and is never printed again.
    ok(&as_user(&gw, "alice", &generated, &["token", "list"], "").await);
    let o = as_admin(&gw, &["user", "list"]).await;
    ok(&o);
    assert!(!o.stdout.contains(&generated));
    let o = as_admin(&gw, &["user", "list", "--json"]).await;
    assert!(!o.stdout.contains(&generated));

    // A password from stdin: nothing printed but the sentence.
    let o = as_user(
        &gw,
        "admin",
        ADMIN_PASSWORD,
        &[
            "user",
            "create",
            "bob",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        "bob's long password\n",
    )
    .await;
    ok(&o);
    assert_eq!(o.stdout.trim(), "created user bob (viewer)");
    ok(&as_user(&gw, "bob", "bob's long password", &["token", "list"], "").await);

    // The table, and the API's JSON.
    let o = as_admin(&gw, &["user", "list"]).await;
    ok(&o);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("ROLE")
            && lines[0].contains("LAST LOGIN"),
        "{}",
        o.stdout
    );
    let bob = lines
        .iter()
        .find(|l| l.starts_with("bob "))
        .expect("bob listed");
    assert!(
        bob.contains("viewer") && bob.contains("local") && bob.contains("enabled"),
        "{bob}"
    );
    let v = json_of(&as_admin(&gw, &["user", "list", "--json"]).await);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    for n in ["admin", "alice", "bob"] {
        assert!(names.contains(&n), "{names:?}");
    }

    // An existing name: a conflict, exit code 2, in the API's words.
    let o = as_admin(&gw, &["user", "create", "alice", "--role", "viewer"]).await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);
    assert!(o.stderr.contains("alice"), "{}", o.stderr);
    // Bad names and roles never reach the API.
    let o = as_admin(&gw, &["user", "create", "a b", "--role", "viewer"]).await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);
    assert!(o.stderr.contains("letters, digits"), "{}", o.stderr);
    let o = as_admin(&gw, &["user", "create", "carol", "--role", "boss"]).await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);
    assert!(
        o.stderr.contains("admin, manager, creator or viewer"),
        "{}",
        o.stderr
    );
    let o = as_user(
        &gw,
        "admin",
        ADMIN_PASSWORD,
        &[
            "user",
            "create",
            "carol",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        "",
    )
    .await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);
    assert!(o.stderr.contains("--password-stdin"), "{}", o.stderr);

    // Edit: role, disable, enable, password; only what is given changes.
    let v = json_of(&as_admin(&gw, &["user", "edit", "bob", "--role", "creator", "--json"]).await);
    assert_eq!(
        (v["role"].clone(), v["disabled"].clone()),
        (json!("creator"), json!(false))
    );
    let o = as_admin(&gw, &["user", "edit", "bob", "--disable"]).await;
    ok(&o);
    assert!(
        o.stdout.contains("creator") && o.stdout.contains("disabled"),
        "{}",
        o.stdout
    );
    let o = as_user(&gw, "bob", "bob's long password", &["token", "list"], "").await;
    assert_eq!(o.code, EXIT_AUTH, "{}", o.stderr);
    assert!(
        o.stderr.contains("wrong user name or password"),
        "{}",
        o.stderr
    );
    ok(&as_admin(&gw, &["user", "edit", "bob", "--enable"]).await);
    let o = as_user(
        &gw,
        "admin",
        ADMIN_PASSWORD,
        &["user", "edit", "bob", "--password-stdin"],
        "bob's newer password\n",
    )
    .await;
    ok(&o);
    ok(&as_user(&gw, "bob", "bob's newer password", &["token", "list"], "").await);
    assert_eq!(
        as_user(&gw, "bob", "bob's long password", &["token", "list"], "")
            .await
            .code,
        EXIT_AUTH
    );
    let o = as_admin(&gw, &["user", "edit", "bob"]).await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);
    assert!(o.stderr.contains("nothing to change"), "{}", o.stderr);
    let o = as_admin(&gw, &["user", "edit", "bob", "--disable", "--enable"]).await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);

    // The last admin stays: a conflict, in words.
    let o = as_admin(&gw, &["user", "edit", "admin", "--disable"]).await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);

    // Delete; then it is gone.
    let o = as_admin(&gw, &["user", "delete", "bob"]).await;
    ok(&o);
    assert_eq!(o.stdout.trim(), "deleted user bob");
    let o = as_admin(&gw, &["user", "delete", "bob"]).await;
    assert_eq!(o.code, EXIT_NOT_FOUND, "{}", o.stderr);
    let o = as_admin(&gw, &["user", "edit", "nobody", "--role", "viewer"]).await;
    assert_eq!(o.code, EXIT_NOT_FOUND, "{}", o.stderr);
    assert_eq!(
        as_user(&gw, "bob", "bob's newer password", &["token", "list"], "")
            .await
            .code,
        EXIT_AUTH
    );
}

#[tokio::test]
async fn the_user_option_with_a_manager_and_a_viewer() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let mpw = "manager's long password";
    let vpw = "viewer's long password";
    for (name, role, pw) in [("mia", "manager", mpw), ("vic", "viewer", vpw)] {
        let o = as_user(
            &gw,
            "admin",
            ADMIN_PASSWORD,
            &["user", "create", name, "--role", role, "--password-stdin"],
            &format!("{pw}\n"),
        )
        .await;
        ok(&o);
    }
    let (_, before) = gw.create_token("from before").await;

    // The manager creates a token; the list names who made each.
    let o = as_user(&gw, "mia", mpw, &["token", "create", "--name", "mia's"], "").await;
    ok(&o);
    let token = o.stdout.trim().to_owned();
    gw.exchange(&token).await;
    let o = as_user(&gw, "mia", mpw, &["token", "list"], "").await;
    ok(&o);
    assert!(
        o.stdout.lines().next().unwrap().contains("CREATED BY"),
        "{}",
        o.stdout
    );
    let row = o.stdout.lines().find(|l| l.contains("mia's")).unwrap();
    assert!(row.contains(" mia "), "{row}");
    let row = o
        .stdout
        .lines()
        .find(|l| l.contains("from before"))
        .unwrap();
    assert!(row.contains(" admin "), "{row}");
    let v = json_of(&as_user(&gw, "mia", mpw, &["token", "list", "--json"], "").await);
    let by: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap(),
                t["created_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        by.contains(&("mia's", "mia")) && by.contains(&("from before", "admin")),
        "{by:?}"
    );

    // What a manager may not do: exit code 5, the role needed named.
    for args in [&["reload"][..], &["cluster", "rotate"], &["user", "list"]] {
        let o = as_user(&gw, "mia", mpw, args, "").await;
        assert_eq!(o.code, EXIT_FORBIDDEN, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains("needs the role admin") && o.stderr.contains("mia, manager"),
            "{args:?}: {}",
            o.stderr
        );
    }

    // The viewer reads, and is refused every change; nothing changes.
    let o = as_user(&gw, "vic", vpw, &["token", "list"], "").await;
    ok(&o);
    assert!(
        o.stdout.contains("mia's") && o.stdout.contains("from before"),
        "{}",
        o.stdout
    );
    for args in [
        &["token", "create", "--name", "vic's"][..],
        &["token", "delete", "1"],
        &["token", "rotate", "1"],
        &["token", "edit", "1", "--name", "renamed"],
    ] {
        let o = as_user(&gw, "vic", vpw, args, "").await;
        assert_eq!(o.code, EXIT_FORBIDDEN, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains("needs the role") && o.stderr.contains("vic, viewer"),
            "{args:?}: {}",
            o.stderr
        );
    }
    let o = as_user(&gw, "vic", vpw, &["token", "create", "--name", "x"], "").await;
    assert!(o.stderr.contains("needs the role creator"), "{}", o.stderr);
    gw.exchange(&before).await;
    let v = json_of(&as_admin(&gw, &["token", "list", "--json"]).await);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        !names.contains(&"renamed") && !names.contains(&"vic's"),
        "{names:?}"
    );

    // A wrong password, or an account that does not exist: the same answer.
    for (user, pw) in [("vic", "not vic's password"), ("nobody", vpw)] {
        let o = as_user(&gw, user, pw, &["token", "list"], "").await;
        assert_eq!(o.code, EXIT_AUTH, "{}", o.stderr);
        assert!(
            o.stderr.contains("wrong user name or password"),
            "{}",
            o.stderr
        );
    }
    // The socket acts as admin whoever is named, and says so: its file
    // permissions prove the gateway's own user, not an account.
    let sock = gw.data_dir().join("admin.sock").display().to_string();
    let mut c = tokio::process::Command::new(BIN);
    c.args(["user", "list", "--socket", &sock, "--user", "vic"])
        .env_clear()
        .current_dir(std::env::temp_dir());
    let o = c.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("acting as admin over the admin socket"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("vic"));

    // A name that is not one is refused before anything is sent.
    let o = as_user(&gw, "vic:x", vpw, &["token", "list"], "").await;
    assert_eq!(o.code, EXIT_INVALID, "{}", o.stderr);
    assert!(o.stderr.contains("--user"), "{}", o.stderr);
}

/// At a terminal, with no password given, the CLI asks for it without
/// echoing what is typed, and uses it; with neither a terminal nor a
/// password it says what is missing.
#[tokio::test]
async fn the_password_is_asked_for_at_a_terminal_without_echo() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let ca = gw.file.tls.cert.clone().unwrap().display().to_string();
    // A pseudo-terminal from Python's standard library: the CLI's stdin is
    // the terminal, what it prints comes back, and the password is typed
    // once the prompt shows.
    let script = r#"
import os, pty, select, signal, sys
argv, password = sys.argv[1:-1], sys.argv[-1]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
seen, typed = b"", False
while True:
    r, _, _ = select.select([fd], [], [], 30)
    if not r:
        # Stuck (no prompt, or waiting for input that never comes): end it
        # rather than hang the test.
        os.kill(pid, signal.SIGKILL)
        break
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    if not typed and b"Password for mia: " in seen:
        os.write(fd, password.encode() + b"\n")
        typed = True
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let pw = "manager's long password";
    ok(&as_user(
        &gw,
        "admin",
        ADMIN_PASSWORD,
        &[
            "user",
            "create",
            "mia",
            "--role",
            "manager",
            "--password-stdin",
        ],
        &format!("{pw}\n"),
    )
    .await);
    gw.create_token("listed").await;
    let out = tokio::process::Command::new(crate::common::python3())
        .args([
            "-c",
            script,
            BIN,
            "token",
            "list",
            "--user",
            "mia",
            "--ca-file",
            &ca,
            pw,
        ])
        .env_clear()
        .env("TOKENGATE_ADMIN_URL", &gw.client.admin)
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{terminal}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(terminal.contains("Password for mia: "), "{terminal}");
    assert!(terminal.contains("listed"), "the command ran: {terminal}");
    assert!(
        !terminal.contains(pw),
        "the password was echoed: {terminal}"
    );

    // No terminal and no password: the clear error, exit code 3.
    let o = as_user(&gw, "mia", "", &["token", "list"], "").await;
    assert_eq!(o.code, EXIT_AUTH, "{}", o.stderr);
    assert!(
        o.stderr.contains("no password for mia") && o.stderr.contains("TOKENGATE_ADMIN_PASSWORD"),
        "{}",
        o.stderr
    );
}

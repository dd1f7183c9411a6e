//! `tokengate serve --dev` as a newcomer uses it: start it, paste the printed
//! commands into a shell as they are, and see the whole flow work.

use crate::common;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_commands_work_as_pasted() {
    let public = common::dead_address().await;
    let admin = common::dead_address().await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--dev"])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENGATE_PUBLIC__LISTEN", public.to_string())
        .env("TOKENGATE_ADMIN__LISTEN", admin.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let read = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let done = l.contains("Press Ctrl-C");
            banner.push(l);
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("banner printed");
    let text = banner.join("\n");
    assert!(text.contains(&format!("https://{admin}/")), "{text}");
    assert!(text.contains("password: "), "{text}");
    let dir = text
        .split("temporary data in ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("temp dir named")
        .to_owned();
    assert!(std::path::Path::new(&dir).is_dir());

    // Paste every command line into one shell, exactly as printed.
    let script: String = banner
        .iter()
        .filter(|l| {
            l.starts_with("curl ")
                || l.starts_with("ACCESS=")
                || l.starts_with("TOKENGATE_ADMIN_PASSWORD=")
        })
        .map(|l| format!("{l}\necho\n"))
        .collect();
    assert_eq!(script.matches("\necho\n").count(), 4, "{text}");
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""token_type":"bearer""#), "{stdout}");
    assert!(
        stdout.contains("PRODSQL01"),
        "the sample upstream answered through the gateway: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("1 ") && l.contains("dev")),
        "token list: {stdout}"
    );

    // Ctrl-C (SIGINT): exits 0 and removes its temporary data.
    let status = common::signal_and_wait(&mut child, "-INT").await;
    assert!(status.success());
    assert!(
        !std::path::Path::new(&dir).exists(),
        "temporary data removed"
    );
}

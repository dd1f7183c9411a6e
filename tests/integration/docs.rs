//! The documentation held to the code, so it cannot drift:
//!
//! - `docs/configuration.md` documents exactly the keys `tokengate
//!   check-config` lists (the configuration's own key list, derived from its
//!   serialised form), each with its `TOKENGATE_…` variable;
//! - the audit-event table of `docs/operations.md` lists exactly the events
//!   the code emits (the `"namespace.name"` literals of `src/`), and its
//!   webhook table exactly the webhook event types (those of
//!   `src/config/webhooks.rs`, which the audit scan leaves out);
//! - every Markdown table renders as one (a blank line inside a table turns
//!   its remaining rows into raw pipes);
//! - the README's token-lifecycle walkthrough works as written against
//!   `serve --dev`, the README's first command.
//!
//! Plain std: no helpers from `tests/common`, no extra dependencies.

use crate::common;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A directory of its own under the system's temporary directory, removed
/// when dropped: `check-config` must not find a `config/tokengate.toml`.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tokengate-docs-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every configuration key, as `tokengate check-config` lists them for the
/// built-in defaults (no file, no environment): `key = value` lines.
fn config_keys() -> BTreeSet<String> {
    let dir = TempDir::new("keys");
    let out = Command::new(BIN)
        .arg("check-config")
        .current_dir(&dir.0)
        .env_clear()
        .output()
        .expect("tokengate check-config runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check-config failed: {text}");
    let keys: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .collect();
    assert!(
        keys.len() > 50 && keys.contains("public.listen"),
        "check-config lists the keys: {text}"
    );
    keys
}

/// The cells of a Markdown table row (`| a | b |`), trimmed; `None` for any
/// other line.
fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split(" | ").map(str::trim).collect())
}

/// The `code spans` of a piece of Markdown.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// A configuration key as the documentation writes it: `section.key`.
fn looks_like_key(s: &str) -> bool {
    s.contains('.')
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn configuration_md_documents_every_key_and_no_other() {
    let code = config_keys();
    let doc = read("docs/configuration.md");
    let mut documented = BTreeSet::new();
    let mut without_env = Vec::new();
    for line in doc.lines() {
        let Some(row) = cells(line) else { continue };
        // A key row names its key(s) in the first cell.
        let keys: Vec<&str> = code_spans(row[0]).filter(|s| looks_like_key(s)).collect();
        for key in keys {
            // The environment form: TOKENGATE_<SECTION>__<KEY>, levels joined by `__`.
            let env = format!("TOKENGATE_{}", key.to_ascii_uppercase().replace('.', "__"));
            if !line.contains(&format!("`{env}")) {
                without_env.push(format!("{key} (expected `{env}`)"));
            }
            documented.insert(key.to_owned());
        }
    }
    let missing = difference(&code, &documented);
    let extra = difference(&documented, &code);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md and the configuration disagree.\n\
         keys the configuration has but the document does not: {missing:?}\n\
         keys the document has but the configuration does not: {extra:?}"
    );
    assert!(
        without_env.is_empty(),
        "docs/configuration.md: rows without their environment variable: {without_env:?}"
    );
}

/// The namespaces of audit events (`admin.login`, `token.exchanged`, …).
/// A literal `"<namespace>.<name>"` in `src/` outside tests is an event,
/// unless it is a configuration key or one of `NOT_EVENTS`.
const EVENT_NAMESPACES: &[&str] = &["admin", "auth", "config", "refresh_token", "token"];

/// Literals of that shape that are file names, not events.
const NOT_EVENTS: &[&str] = &["admin.hash", "admin.sock"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of a source file that are not comments and not inside a
/// `#[cfg(test)] mod … { … }` block (rustfmt puts its closing brace at the
/// `mod` line's indentation).
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() == "#[cfg(test)]" {
            if let Some(next) = lines.get(i + 1) {
                let module = next.trim_start();
                if module.starts_with("mod ") && module.trim_end().ends_with('{') {
                    let end = format!("{}}}", &next[..next.len() - module.len()]);
                    i += 2;
                    while i < lines.len() && lines[i] != end {
                        i += 1;
                    }
                    i += 1;
                    continue;
                }
            }
        }
        if !line.trim_start().starts_with("//") {
            out.push((i + 1, line));
        }
        i += 1;
    }
    out
}

fn is_event_name(s: &str) -> bool {
    s.split_once('.').is_some_and(|(ns, name)| {
        EVENT_NAMESPACES.contains(&ns)
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    })
}

/// The file that names the webhook event types (`token.created`, …):
/// they share the audit events' shape, and are checked on their own.
const WEBHOOK_TYPES_FILE: &str = "src/config/webhooks.rs";

/// The event-shaped literals of one file's code.
fn event_literals(text: &str) -> BTreeSet<String> {
    code_lines(text)
        .into_iter()
        .flat_map(|(_, line)| line.split('"').skip(1).step_by(2))
        .filter(|l| is_event_name(l))
        .map(str::to_owned)
        .collect()
}

/// Every event the code emits, with where.
fn emitted_events(config_keys: &BTreeSet<String>) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&repo("src"), &mut files);
    files.retain(|f| *f != repo(WEBHOOK_TYPES_FILE));
    let mut events = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (_, line) in code_lines(&text) {
            // String literals: every other piece between double quotes.
            for literal in line.split('"').skip(1).step_by(2) {
                if is_event_name(literal)
                    && !config_keys.contains(literal)
                    && !NOT_EVENTS.contains(&literal)
                {
                    events.insert(literal.to_owned());
                }
            }
        }
    }
    events
}

/// The events in the first column of the table under `## Audit log`.
fn documented_events(doc: &str) -> BTreeSet<String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Audit log"))
        .expect("docs/operations.md has an \"## Audit log\" section");
    section
        .lines()
        .filter_map(cells)
        .filter_map(|row| code_spans(row[0]).next().map(str::to_owned))
        .filter(|s| is_event_name(s))
        .collect()
}

#[test]
fn operations_md_lists_every_audit_event_and_no_other() {
    let code = emitted_events(&config_keys());
    assert!(
        code.contains("token.exchanged") && code.len() >= 10,
        "the scan of src/ finds the events: {code:?}"
    );
    let documented = documented_events(&read("docs/operations.md"));
    let missing = difference(&code, &documented);
    let extra = difference(&documented, &code);
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/operations.md's audit-event table and the code disagree.\n\
         events the code emits but the table lacks: {missing:?}\n\
         events the table lists but the code never emits: {extra:?}"
    );
}

#[test]
fn operations_md_lists_every_webhook_event_type_and_no_other() {
    let code = event_literals(&read(WEBHOOK_TYPES_FILE));
    assert!(
        code.contains("token.created") && code.len() >= 9,
        "the scan of {WEBHOOK_TYPES_FILE} finds the types: {code:?}"
    );
    let doc = read("docs/operations.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Webhooks"))
        .expect("docs/operations.md has a \"## Webhooks\" section");
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(cells)
        .filter_map(|row| code_spans(row[0]).next().map(str::to_owned))
        .filter(|s| is_event_name(s))
        .collect();
    assert_eq!(
        code, documented,
        "docs/operations.md's webhook table and {WEBHOOK_TYPES_FILE} disagree"
    );
}

#[test]
fn the_event_scan_skips_comments_and_test_modules() {
    let src = "\
fn a() { emit(\"admin.login\"); }
// emit(\"admin.commented\");
#[cfg(test)]
mod tests {
    fn t() { emit(\"admin.in_test\"); }
}
fn b() { emit(\"token.after\"); }
";
    let found: Vec<&str> = code_lines(src)
        .into_iter()
        .flat_map(|(_, l)| l.split('"').skip(1).step_by(2))
        .filter(|s| is_event_name(s))
        .collect();
    assert_eq!(found, ["admin.login", "token.after"]);
}

/// Every table (a run of `|` lines outside code blocks) starts with a header
/// row and its `|---|` separator; a row cut off by a blank line would start
/// a "table" with no separator, which renders as raw pipes.
fn broken_tables(text: &str) -> Vec<usize> {
    let mut broken = Vec::new();
    let mut in_code = false;
    let mut previous_was_row = false;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            previous_was_row = false;
            continue;
        }
        let is_row = !in_code && line.trim_start().starts_with('|');
        if is_row && !previous_was_row {
            let separator = lines.get(i + 1).is_some_and(|next| {
                let t = next.trim();
                t.starts_with('|')
                    && t.contains("---")
                    && t.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
            });
            if !separator {
                broken.push(i + 1);
            }
        }
        previous_was_row = is_row;
    }
    broken
}

#[test]
fn every_table_renders_as_a_table() {
    let mut files = vec![
        "README.md".to_owned(),
        "SECURITY.md".to_owned(),
        "deploy/README.md".to_owned(),
    ];
    for entry in std::fs::read_dir(repo("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    let broken: Vec<String> = files
        .iter()
        .flat_map(|f| {
            broken_tables(&read(f))
                .into_iter()
                .map(move |line| format!("{f}:{line}"))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "table rows without a header and separator (a blank line inside a table?): {broken:?}"
    );
    assert_eq!(
        broken_tables("| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n"),
        [5]
    );
}

/// The dev gateway, stopped with SIGINT (so it removes its temporary data)
/// however the test ends.
struct DevGateway(Child);

impl Drop for DevGateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value after `label` on the banner line holding it, up to the next space.
fn banner_value<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .split(label)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the banner shows {label:?}: {banner}"))
}

#[test]
fn the_readme_walkthrough_works_as_written_after_serve_dev() {
    let readme = read("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("The token lifecycle"))
        .expect("README.md has \"## The token lifecycle …\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its walkthrough in a ```sh block");

    let (public, admin) = (common::spare_port(), common::spare_port());
    let mut child = Command::new(BIN)
        .args(["serve", "--dev"])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENGATE_PUBLIC__LISTEN", format!("127.0.0.1:{public}"))
        .env("TOKENGATE_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tokengate serve --dev starts");
    let stdout = child.stdout.take().unwrap();
    let _gateway = DevGateway(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    while !banner.contains("Press Ctrl-C") {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("serve --dev printed its banner ({e}): {banner}"));
        banner.push_str(&line);
        banner.push('\n');
    }
    let cert = banner_value(&banner, "Certificate ");
    let password = banner_value(&banner, "password: ").trim_end_matches(')');

    // The walkthrough's first lines are to be filled in from the banner (and
    // name the default ports): set them as the banner says, run the rest as
    // written.
    let preset = [
        ("CA=", format!("CA='{cert}'")),
        (
            "export TOKENGATE_ADMIN_PASSWORD=",
            format!("export TOKENGATE_ADMIN_PASSWORD='{password}'"),
        ),
        ("ADMIN=", format!("ADMIN=https://127.0.0.1:{admin}")),
        ("GW=", format!("GW=https://127.0.0.1:{public}")),
    ];
    let mut script = String::new();
    let mut replaced = 0;
    for line in block.lines() {
        match preset.iter().find(|(prefix, _)| line.starts_with(prefix)) {
            Some((_, value)) => {
                script.push_str(value);
                replaced += 1;
            }
            None => script.push_str(line),
        }
        script.push('\n');
    }
    assert_eq!(
        replaced,
        preset.len(),
        "the walkthrough sets CA, the password, ADMIN and GW first:\n{block}"
    );

    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stdout}\n{stderr}"
    );
    for (step, expected) in [
        ("1. create", r#""name":"nightly report","token":"tgr_"#),
        ("2. exchange", r#""token_type":"bearer""#),
        ("3. the API through the gateway", "PRODSQL01"),
        ("4. delete", "\n204\n"),
        ("4. the access token refused", r#""error":"invalid_token""#),
        ("4. the refresh token refused", r#""error":"invalid_grant""#),
    ] {
        assert!(
            stdout.contains(expected),
            "step {step}: expected {expected:?} in the output:\n{stdout}\n{stderr}"
        );
    }
}

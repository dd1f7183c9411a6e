//! The tamper-evident audit log: a real gateway's audit file is one hash
//! chain across restarts, a torn end and a rotation (copy, then truncate);
//! `tokengate audit verify` accepts it and names the first broken line of
//! every tampered copy (edited, deleted, swapped, inserted, cut in the
//! middle, torn at the end), with exit 1; usage errors exit 2.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{upstream, TestGateway};

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// `tokengate audit verify ARGS…`: exit code and stdout + stderr.
fn verify(args: &[&Path]) -> (i32, String) {
    verify_with(&[], args)
}

fn verify_with(opts: &[&str], files: &[&Path]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(opts)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

fn sha256_hex(line: &str) -> String {
    Sha256::digest(line.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn seq(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// Some audit lines: two tokens created, exchanges, one refused.
async fn events(gw: &TestGateway, name: &str) {
    let (_, refresh) = gw.create_token(name).await;
    gw.exchange(&refresh).await;
    let refused = gw
        .client
        .token_form("grant_type=refresh_token&refresh_token=tgr_nothing")
        .await;
    assert!(refused.status.is_client_error());
    gw.audit_lines();
}

/// A copy of `lines` (each written with its newline) as `name` in `dir`.
fn copy(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_audit_file_is_one_chain_across_restarts_and_every_tampering_is_named() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let file = gw.dir.path().join("audit.jsonl");
    events(&gw, "before restart").await;
    let before = lines_of(&file);
    assert!(before.len() >= 3, "{before:?}");
    let first: Value = serde_json::from_str(&before[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], "0".repeat(64));

    let gw = gw.restart().await;
    events(&gw, "after restart").await;
    let after = lines_of(&file);
    assert!(after.len() > before.len());
    assert_eq!(after[..before.len()], before[..], "lines are only appended");
    // The chain continues: seq keeps counting, and the first line written
    // after the restart links to the last one before it.
    let next: Value = serde_json::from_str(&after[before.len()]).unwrap();
    assert_eq!(next["seq"], seq(before.last().unwrap()) + 1);
    assert_eq!(next["prev"], sha256_hex(before.last().unwrap()));
    for (i, line) in after.iter().enumerate() {
        assert_eq!(seq(line), i as u64 + 1, "{line}");
    }

    // A crash in the middle of a write leaves part of a line: the next
    // start cuts it off and the chain goes on from the last whole line.
    let whole = lines_of(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend_from_slice(br#"{"seq":99,"prev":"0123"#);
    std::fs::write(&file, bytes).unwrap();
    let gw = gw.restart().await;
    events(&gw, "after a crash").await;
    let lines = lines_of(&file);
    assert_eq!(lines[..whole.len()], whole[..]);
    assert_eq!(seq(&lines[whole.len()]), whole.len() as u64 + 1);

    // verify: the chain holds, and the last seq and hash are printed.
    let last = lines.last().unwrap();
    let (code, out) = verify(&[&file]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{} lines", lines.len())), "{out}");
    let anchor = format!("{}:{}", seq(last), sha256_hex(last));
    assert!(out.contains(&anchor), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Line 3 (seq 3) of each copy is where the tampering is.
    let mut edited = lines.clone();
    edited[2] = edited[2].replacen("\"event\":\"", "\"event\":\"x", 1);
    assert_ne!(edited[2], lines[2]);
    let mut deleted = lines.clone();
    deleted.remove(2);
    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let mut inserted = lines.clone();
    inserted.insert(
        2,
        r#"{"time":"2027-01-01T00:00:00.000Z","event":"admin.login","actor":"admin","user":"mallory"}"#.into(),
    );
    // A forged line with the right seq and prev: the next line shows it.
    let mut forged = lines.clone();
    let seq3 = lines[2].replacen("\"event\":\"", "\"event\":\"x", 1);
    forged.insert(2, seq3);
    let mut middle = lines.clone();
    middle.drain(2..4);
    let cut_mid = {
        // Bytes cut out from inside line 3 to inside line 5.
        let text = format!("{}\n", lines.join("\n"));
        let from = lines[..2].iter().map(|l| l.len() + 1).sum::<usize>() + 5;
        let to = lines[..4].iter().map(|l| l.len() + 1).sum::<usize>() + 30;
        let path = d.join("cut.jsonl");
        std::fs::write(&path, format!("{}{}", &text[..from], &text[to..])).unwrap();
        path
    };
    let torn = {
        let text = format!("{}\n", lines.join("\n"));
        let path = d.join("torn.jsonl");
        std::fs::write(&path, &text[..text.len() - 20]).unwrap();
        path
    };
    let cases: Vec<(PathBuf, usize, Option<u64>, &str)> = vec![
        (copy(d, "edited.jsonl", &edited), 3, Some(3), "edited"),
        (copy(d, "deleted.jsonl", &deleted), 3, Some(4), "missing"),
        (copy(d, "swapped.jsonl", &swapped), 3, Some(4), "missing"),
        (copy(d, "inserted.jsonl", &inserted), 3, None, "without seq"),
        (copy(d, "forged.jsonl", &forged), 3, Some(3), "inserted"),
        (copy(d, "middle.jsonl", &middle), 3, Some(5), "missing"),
        (cut_mid, 3, None, "not a JSON line"),
        (torn, lines.len(), None, "torn"),
    ];
    for (path, line, seq, word) in cases {
        let (code, out) = verify(&[&path]);
        assert_eq!(code, 1, "{}: {out}", path.display());
        let at = format!("{}:{line}", path.display());
        assert!(out.contains(&at), "expected {at}: {out}");
        if let Some(seq) = seq {
            assert!(out.contains(&format!("{at} (seq {seq})")), "{out}");
        }
        assert!(out.contains(word), "expected {word}: {out}");
    }

    // An anchor shows lines cut off at the end, which the chain alone cannot.
    let short = copy(d, "short.jsonl", &lines[..lines.len() - 2]);
    assert_eq!(verify(&[&short]).0, 0);
    let (code, out) = verify_with(&["--anchor", &anchor], &[&short]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cut off"), "{out}");
    assert_eq!(verify_with(&["--anchor", &anchor], &[&file]).0, 0);
}

#[tokio::test]
async fn a_rotated_log_continues_the_chain_in_the_next_file() {
    let up = upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let file = gw.dir.path().join("audit.jsonl");
    events(&gw, "first file").await;
    // logrotate's copytruncate: copy the file away, then empty it; the
    // gateway keeps appending to the emptied file.
    let rotated = gw.dir.path().join("audit.jsonl.1");
    std::fs::copy(&file, &rotated).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    events(&gw, "second file").await;
    let old = lines_of(&rotated);
    let new = lines_of(&file);
    assert_eq!(seq(&new[0]), seq(old.last().unwrap()) + 1);

    let (code, out) = verify(&[&rotated, &file]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{} lines in 2 files", old.len() + new.len())),
        "{out}"
    );
    // In the wrong order, or the newer file alone, the chain does not hold…
    let (code, out) = verify(&[&file, &rotated]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{}:1", file.display())), "{out}");
    assert_eq!(verify(&[&file]).0, 1);
    // …but the newer file verifies after the head the older one ended with.
    let (_, out) = verify(&[&rotated]);
    let head = out
        .lines()
        .find_map(|l| l.strip_prefix("last: "))
        .unwrap()
        .to_owned();
    let (code, out) = verify_with(&["--after", &head], &[&file]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn usage_errors_and_unreadable_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let (code, out) = verify(&[&missing]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("missing.jsonl"), "{out}");
    assert_eq!(verify(&[]).0, 2, "no file named");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (code, out) = verify_with(&["--anchor", "nonsense"], &[&empty]);
    assert_eq!(code, 2, "{out}");
    let (code, out) = verify(&[&empty]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 lines"), "{out}");
}

//! Records the git revision the binary is built from, for `tokengate --version`.
//!
//! The revision is `TG_REVISION` when set (for a build without
//! `.git`, such as the container image's), else `git rev-parse --short HEAD`
//! when the source is a git checkout and git works, else `unknown`. Nothing
//! else (no date, no host, no dirty flag) goes in, so the same commit always
//! builds the same string.
//!
//! Neither variable starts with `TOKENGATE_`: cargo also sets `rustc-env`
//! variables in the environment of `cargo run`, and tokengate refuses any
//! `TOKENGATE_` variable that is not a configuration key.
#![allow(
    clippy::print_stdout,
    reason = "a build script talks to cargo on stdout"
)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TG_REVISION");
    let revision = std::env::var("TG_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=TG_GIT_REVISION={revision}");
}

/// The short commit id of HEAD, and the files whose change moves it, so cargo
/// reruns this script after a commit, checkout or reset (not on every build).
fn git_revision() -> Option<String> {
    let revision = git(&["rev-parse", "--short", "HEAD"])?;
    // HEAD names the branch; the branch's ref (loose or packed) names the
    // commit; HEAD's reflog is appended to whenever either moves. Paths that
    // do not exist are left out: cargo would rerun the script on every build.
    let mut watched = vec![
        "HEAD".to_owned(),
        "logs/HEAD".to_owned(),
        "packed-refs".to_owned(),
    ];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]).map(PathBuf::from) {
            if path.exists() {
                println!("cargo::rerun-if-changed={}", path.display());
            }
        }
    }
    Some(revision)
}

/// One line of git's output, or `None` when git is missing or fails (not a
/// checkout, a repository owned by another user, …).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

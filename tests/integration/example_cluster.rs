//! `examples/cluster/run.sh --check`: the cluster example (PostgreSQL, two
//! replicas, HAProxy, all on loopback) runs the commands it prints and checks
//! the answers, including a delete on replica B refused on replica A; and
//! when it is done, nothing it started is still running and its temporary
//! directory is gone.
//!
//! `tests/run.sh` installs PostgreSQL and HAProxy when missing (the script
//! itself would, too).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// PostgreSQL's initdb, two replica starts and the checks take seconds; a
/// first `apt-get install` of missing tools takes minutes.
const TIMEOUT: Duration = Duration::from_secs(600);

/// Collects everything `r` produces, line by line, into a shared string.
/// Never joined: a leftover process holding the pipe must not hang the test,
/// it must fail it (below).
fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let mut t = t.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

/// The processes whose command line mentions `dir` (every process the
/// script starts names its work dir: `postgres -D …`, `tokengate serve
/// --config …`, `haproxy -f …`, `python3 -m http.server --directory …`).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may end between read_dir and this read.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

#[test]
fn the_cluster_example_passes_its_checks_and_leaves_nothing_behind() {
    // The script's temp dir goes in here (TMPDIR), so "removed" is checkable.
    // PostgreSQL runs as `postgres` when we are root: it must be able to
    // reach its own directory inside.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster/run.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .env("TOKENGATE_BIN", env!("CARGO_BIN_EXE_tokengate"))
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());

    let started = Instant::now();
    let mut terminated = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT && !terminated {
            // SIGTERM: the script's trap still stops what it started.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            terminated = true;
        }
        if started.elapsed() > TIMEOUT + Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The pipes' last lines may still be in flight.
    std::thread::sleep(Duration::from_millis(200));
    let out = stdout.lock().unwrap().clone();
    let err = stderr.lock().unwrap().clone();
    let all = format!("--- stdout\n{out}\n--- stderr\n{err}");

    assert!(!terminated, "run.sh --check took over {TIMEOUT:?}\n{all}");
    assert!(status.success(), "run.sh --check failed: {status}\n{all}");
    assert!(out.contains("run.sh --check: all checks passed"), "{all}");
    assert!(!out.contains("FAIL"), "{all}");

    // What it started and where.
    let work: PathBuf = err
        .lines()
        .find_map(|l| l.strip_prefix("== work dir: "))
        .unwrap_or_else(|| panic!("no work dir line\n{all}"))
        .into();
    assert!(work.starts_with(tmp.path()), "{}\n{all}", work.display());
    let pids: Vec<u32> = err
        .lines()
        .find_map(|l| l.strip_prefix("== pids: "))
        .unwrap_or_else(|| panic!("no pids line\n{all}"))
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(
        pids.len(),
        5,
        "upstream, two replicas, HAProxy, PostgreSQL\n{all}"
    );

    // Nothing left: no process it started, no process using its dir, no dir.
    for pid in &pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&*work.to_string_lossy()),
            "process {pid} ({}) is still running\n{all}",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
    }
    let left = processes_mentioning(&work);
    assert!(left.is_empty(), "still running: {left:#?}\n{all}");
    assert!(!work.exists(), "{} was not removed\n{all}", work.display());
    let rest: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(rest.is_empty(), "left in TMPDIR: {rest:?}\n{all}");
}

//! `deploy/`: the systemd unit passes `systemd-analyze verify` and keeps the
//! sandboxing it promises (and `systemd-analyze security` agrees); the
//! container image definition is multi-stage, non-root, with its data on a
//! volume. The image itself is not built here: see deploy/README.md.
//!
//! `tests/run.sh` installs `systemd` (for `systemd-analyze`) when missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");
/// Where the unit expects the binary (deploy/README.md installs it there).
const INSTALLED_BIN: &str = "/usr/local/bin/tokengate";
/// The data directory: the unit's working directory, writable, nothing else is.
const DATA_DIR: &str = "/var/lib/tokengate";
/// `systemd-analyze security` rates exposure 0.0 (locked down) to 10.0; the
/// unit is at 1.6 (a network service that binds port 443 cannot do without
/// the network, its capability or host users). 2.0 leaves no room for a
/// directive to go missing unnoticed.
const MAX_EXPOSURE: &str = "20";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// The shipped unit with ExecStart= pointing at the binary under test, as
/// `tokengate.service` in a temp dir (verify checks the binary exists and
/// takes the unit's name from the file name).
fn unit_under_test() -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(deploy("tokengate.service")).unwrap();
    assert_eq!(
        text.matches(&format!("ExecStart={INSTALLED_BIN} ")).count(),
        1,
        "one ExecStart= running {INSTALLED_BIN}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.service");
    std::fs::write(
        &path,
        text.replace(
            &format!("ExecStart={INSTALLED_BIN} "),
            &format!("ExecStart={BIN} "),
        ),
    )
    .unwrap();
    (dir, path)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    systemd_analyze_with(args, unit, &[])
}

fn systemd_analyze_with(args: &[&str], unit: &Path, env: &[(&str, &Path)]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e} (install Debian's `systemd`; tests/run.sh does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `[Service]`'s settings: every value of each key, in order.
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = String::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("key=value");
            keys.entry(k.trim().to_owned())
                .or_default()
                .push(v.trim().to_owned());
        }
    }
    keys
}

/// The shell lines of deploy/README.md's systemd install steps: the first
/// ```sh block of its "## systemd" section, comments dropped.
fn install_steps() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("README.md")).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("systemd"))
        .expect("a \"## systemd\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its install steps in a ```sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The unit names `man:tokengate(1)`, so the install steps install the man
/// pages (`tokengate man`) where `man` looks; done as they say (into a temp
/// dir on MANPATH), `systemd-analyze verify` finds the page and has no
/// remark at all.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit_text = std::fs::read_to_string(deploy("tokengate.service")).unwrap();
    assert!(unit_text.contains("Documentation=man:tokengate(1)"));
    let steps = install_steps();
    let man = steps
        .iter()
        .find(|l| l.contains("tokengate man --out-dir "))
        .unwrap_or_else(|| {
            panic!("the install steps do not install the man page Documentation= names: {steps:#?}")
        });
    let out_dir = man
        .split("--out-dir ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    // Where man looks without being told: a man1 directory of its default path.
    let (root, section) = out_dir.rsplit_once('/').unwrap();
    assert_eq!(section, "man1", "{man}");
    assert!(
        ["/usr/local/share/man", "/usr/share/man", "/usr/local/man"].contains(&root),
        "{man}: not on man's default path"
    );
    // The binary is installed (on PATH) before its man page is made.
    let install_bin = steps
        .iter()
        .position(|l| {
            l.contains(&format!(
                "install -m 0755 target/release/tokengate {INSTALLED_BIN}"
            ))
        })
        .expect("the install steps install the binary");
    let install_man = steps.iter().position(|l| l == man).unwrap();
    assert!(install_bin < install_man, "{steps:#?}");

    // As the step says, into a temp dir that MANPATH names.
    let manpath = tempfile::tempdir().unwrap();
    let man1 = manpath.path().join("man1");
    std::fs::create_dir(&man1).unwrap();
    let made = Command::new(BIN)
        .args(["man", "--out-dir"])
        .arg(&man1)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert!(man1.join("tokengate.1").is_file());

    let (_dir, unit) = unit_under_test();
    let (ok, out) = systemd_analyze_with(&["verify"], &unit, &[("MANPATH", manpath.path())]);
    assert!(ok, "systemd-analyze verify failed:\n{out}");
    // verify only warns (exit 0) about unknown keys and bad values.
    assert!(
        !out.contains("tokengate.service"),
        "systemd-analyze verify has remarks:\n{out}"
    );
}

#[test]
fn the_systemd_unit_is_sandboxed() {
    let text = std::fs::read_to_string(deploy("tokengate.service")).unwrap();
    let service = service_section(&text);
    let one = |key: &str| -> &str {
        match service.get(key).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{key}= once in [Service], found {other:?}"),
        }
    };
    let words = |key: &str| -> Vec<String> {
        service
            .get(key)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split_whitespace().map(str::to_owned))
            .collect()
    };
    assert_eq!(one("User"), "tokengate");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(words("SystemCallFilter")[0], "@system-service");
    let families = words("RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.iter().any(|f| f == family), "{families:?}");
    }
    // The data directory is the working directory and the one writable path.
    assert_eq!(one("WorkingDirectory"), DATA_DIR);
    assert_eq!(words("ReadWritePaths"), [DATA_DIR]);
    assert_eq!(
        format!("/var/lib/{}", one("StateDirectory")),
        DATA_DIR,
        "systemd creates it for User="
    );
    // The admin password comes from a root-only file, never the unit.
    assert!(
        one("EnvironmentFile").ends_with("/etc/tokengate/tokengate.env"),
        "{service:?}"
    );
    assert!(
        !service.values().flatten().any(|v| v.contains("PASSWORD")),
        "no secret in the unit: {service:?}"
    );
    // `systemctl reload` is SIGHUP, which reloads without a restart (a
    // restart would log every script out).
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID", "{service:?}");
    // ExecStart's command line is one this binary accepts.
    let exec = one("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args.first(), Some(&"serve"), "{exec}");
    let help = Command::new(BIN)
        .args(&args[..1])
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().skip(1).filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag),
            "`tokengate serve` has no {flag}: {help}"
        );
    }

    let (_dir, unit) = unit_under_test();
    let (ok, out) = systemd_analyze(
        &[
            "security",
            "--offline=yes",
            &format!("--threshold={MAX_EXPOSURE}"),
        ],
        &unit,
    );
    assert!(ok, "exposure above {MAX_EXPOSURE}/100:\n{out}");
    assert!(out.contains("Overall exposure level"), "{out}");
}

#[test]
fn the_container_image_is_multi_stage_non_root_with_a_data_volume() {
    let text = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let instructions: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.starts_with(' '))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim().to_owned()))
        .collect();
    let all = |name: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    assert_eq!(
        all("FROM"),
        ["rust:1-bookworm AS build", "debian:bookworm-slim"],
        "builder, then runtime"
    );
    let from_stage: Vec<&str> = all("COPY")
        .into_iter()
        .filter(|c| c.starts_with("--from=build "))
        .collect();
    assert_eq!(
        from_stage,
        ["--from=build /usr/local/bin/tokengate /usr/local/bin/tokengate"],
        "only the binary leaves the builder"
    );
    let user = all("USER");
    assert_eq!(user, ["tokengate"], "runs as its own user");
    assert_eq!(all("VOLUME"), [DATA_DIR]);
    assert_eq!(all("WORKDIR").last(), Some(&DATA_DIR));
    assert_eq!(all("EXPOSE"), ["8443"]);
    assert!(text.contains("cargo build --release --locked"), "{text}");
    // The image runs the same command line as the unit.
    let unit = std::fs::read_to_string(deploy("tokengate.service")).unwrap();
    assert!(
        unit.contains("tokengate serve --config /etc/tokengate/tokengate.toml"),
        "{unit}"
    );
    assert_eq!(
        all("CMD"),
        [r#"["serve", "--config", "/etc/tokengate/tokengate.toml"]"#]
    );

    // The build context leaves out the build output (gigabytes) and local secrets.
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .unwrap();
    for entry in ["target", "data", "certs/*.key"] {
        assert!(ignore.lines().any(|l| l == entry), "{entry}: {ignore}");
    }
}

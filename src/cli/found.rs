//! Files the CLI finds in the current directory without being told
//! (`./data/admin.sock`, `./certs/tokengate.crt`). Named ones (`--socket`,
//! `--ca-file`) are the user's choice. A found one is used only when the
//! user owns it and its directory and neither is writable by group or
//! others: in a shared or world-writable directory (`/tmp`, a colleague's
//! checkout) anyone could have put it there, to receive the CLI's commands
//! or to vouch for their own server.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether `path` (relative to the current directory) may be used unasked:
/// `Ok(false)` when it is absent, `Err(why)` when it is there but not
/// trusted.
pub(super) fn usable(path: &Path) -> Result<bool, String> {
    let file = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::metadata(dir_path).map_err(|e| format!("{}: {e}", dir_path.display()))?;
    let euid = rustix::process::geteuid().as_raw();
    judge(
        euid,
        &[
            (path, file.uid(), file.mode()),
            (dir_path, dir.uid(), dir.mode()),
        ],
    )?;
    Ok(true)
}

/// The decision, from each path's owner and mode: every one owned by
/// `euid`, none writable by group or others.
fn judge(euid: u32, paths: &[(&Path, u32, u32)]) -> Result<(), String> {
    for &(path, uid, mode) in paths {
        if uid != euid {
            return Err(format!(
                "{} is owned by uid {uid}, not by you (uid {euid})",
                path.display()
            ));
        }
        if mode & 0o022 != 0 {
            return Err(format!(
                "{} is writable by group or others (mode {:o})",
                path.display(),
                mode & 0o7777
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_files_in_own_directories_that_nobody_else_can_write() {
        let f = Path::new("data/admin.sock");
        let d = Path::new("data");
        assert!(judge(1000, &[(f, 1000, 0o140600), (d, 1000, 0o40700)]).is_ok());
        assert!(judge(1000, &[(f, 1000, 0o100644), (d, 1000, 0o40755)]).is_ok());
        // Someone else's file, or someone else's directory.
        let e = judge(1000, &[(f, 1001, 0o140600), (d, 1000, 0o40700)]).unwrap_err();
        assert!(
            e.contains("data/admin.sock") && e.contains("uid 1001"),
            "{e}"
        );
        let e = judge(1000, &[(f, 1000, 0o140600), (d, 0, 0o40700)]).unwrap_err();
        assert!(e.starts_with("data is owned"), "{e}");
        // Writable by group or others: anyone could swap it.
        for mode in [0o40770, 0o40702, 0o41777] {
            let e = judge(1000, &[(f, 1000, 0o140600), (d, 1000, mode)]).unwrap_err();
            assert!(e.contains("writable by group or others"), "{e}");
        }
        let e = judge(0, &[(f, 0, 0o100666), (d, 0, 0o40700)]).unwrap_err();
        assert!(e.contains("mode 666"), "{e}");
    }
}

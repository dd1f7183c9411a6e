//! `tokengate access-token`: a valid access token on stdout, for
//! `curl -H "Authorization: Bearer $(tokengate access-token …)"` and
//! credential-helper hooks.
//!
//! The token is cached in a file of its own (mode 0600, in a 0700
//! directory under `$XDG_RUNTIME_DIR/tokengate`, else the user's cache
//! directory), named by a SHA-256 of the gateway URL and the refresh token
//! (never the token itself), written atomically (a temporary file renamed
//! over it), so a script calling this on every request exchanges only when
//! under 60 s remain.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gateway::{self, ExchangeFailure};
use super::{AccessTokenArgs, Failure, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE};

/// A cached token with less left than this is exchanged again: enough
/// for the request the caller is about to make.
pub(crate) const MIN_LEFT: Duration = Duration::from_secs(60);

/// What the cache file holds.
#[derive(Serialize, Deserialize)]
struct Cached {
    access_token: String,
    /// Unix seconds.
    expires_at: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) async fn run(args: &AccessTokenArgs) -> Result<String, Failure> {
    let base = gateway::base_url(&args.gateway.gateway).map_err(|e| Failure(EXIT_USAGE, e))?;
    let refresh = gateway::read_refresh_token(&args.gateway.refresh_token_file)
        .map_err(|e| Failure(EXIT_USAGE, e))?;
    let dir = cache_dir().map_err(|e| Failure(EXIT_USAGE, e))?;
    let file = dir.join(cache_name(&base, &refresh));
    if !args.force {
        if let Some(c) = read_cache(&file) {
            if c.expires_at > unix_now() + MIN_LEFT.as_secs() {
                return Ok(c.access_token);
            }
        }
    }
    let client =
        gateway::client(args.gateway.cacert.as_deref()).map_err(|e| Failure(EXIT_USAGE, e))?;
    let fresh = gateway::exchange(&client, &base, &refresh)
        .await
        .map_err(|e| match e {
            ExchangeFailure::Refused { code, text } => Failure(
                EXIT_REFUSED,
                format!(
                    "the gateway refused the refresh token in {}: {code}: {text}",
                    args.gateway.refresh_token_file.display()
                ),
            ),
            ExchangeFailure::Unreachable(why) => Failure(
                EXIT_UNREACHABLE,
                format!("cannot reach the gateway at {base}: {why}"),
            ),
        })?;
    let cached = Cached {
        expires_at: unix_now() + fresh.expires_in,
        access_token: fresh.access_token,
    };
    // A cache that cannot be written costs an exchange next time, not this token.
    if let Err(e) = write_cache(&file, &cached) {
        tracing::warn!(file = %file.display(), error = %e, "access-token cache not written");
    }
    Ok(cached.access_token)
}

/// `$XDG_RUNTIME_DIR/tokengate` (memory, the user's own, gone at logout),
/// else `$XDG_CACHE_HOME/tokengate` or `~/.cache/tokengate`: created 0700,
/// and refused if another user owns it or others may enter it.
fn cache_dir() -> Result<PathBuf, String> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = env("XDG_RUNTIME_DIR")
        .or_else(|| env("XDG_CACHE_HOME"))
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .ok_or("no directory for the access-token cache: set XDG_RUNTIME_DIR or HOME")?;
    let dir = base.join("tokengate");
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(format!(
                "{} belongs to another user: it cannot hold your access tokens",
                dir.display()
            ));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The cache file's name: a SHA-256 of the gateway and the refresh token,
/// so one user's several tokens and gateways never share a file, and the
/// name gives neither away.
fn cache_name(base: &str, refresh: &str) -> String {
    let mut h = Sha256::new();
    h.update(base.as_bytes());
    h.update([0]);
    h.update(refresh.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

fn read_cache(file: &Path) -> Option<Cached> {
    let bytes = std::fs::read(file).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `file` whole or not at all: a temporary file (0600, created
/// new) in the same directory, renamed over it.
fn write_cache(file: &Path, c: &Cached) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(
        ".tmp-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(&serde_json::to_vec(c).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_name_hides_the_token_and_tells_gateways_apart() {
        let a = cache_name("https://a", "tgr_secret");
        assert!(!a.contains("tgr_secret"));
        assert_eq!(a.len(), 64 + 5);
        assert_ne!(a, cache_name("https://b", "tgr_secret"));
        assert_ne!(a, cache_name("https://a", "tgr_other"));
        assert_eq!(a, cache_name("https://a", "tgr_secret"));
    }

    #[test]
    fn the_cache_is_written_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.json");
        let c = Cached {
            access_token: "tga_x".into(),
            expires_at: 5,
        };
        write_cache(&f, &c).unwrap();
        write_cache(&f, &c).unwrap();
        assert_eq!(read_cache(&f).unwrap().access_token, "tga_x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing left behind but the file itself.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! Secrets kept on disk: the server secret that keys refresh-token hashes
//! (`storage.secret_file`, by default in the data directory), and the admin
//! password hash (in the data directory, the directory of `storage.path`).
//! Both are created at first start, mode 0600.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;

pub(crate) const SECRET_FILE: &str = "secret.key";
pub(crate) const ADMIN_HASH_FILE: &str = "admin.hash";
const SECRET_LEN: usize = 32;

/// Fills `buf` from the operating system's CSPRNG.
///
/// A failing OS RNG leaves no safe way to mint secrets; it is reported, never papered over.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: expected {SECRET_LEN} bytes of secret, found {found} (delete it to start over; every refresh token is lost)")]
    BadSecret { path: PathBuf, found: usize },
    #[error("{path}: not an argon2 PHC string ({detail})")]
    BadHash { path: PathBuf, detail: String },
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("argon2: {0}")]
    Argon(String),
    #[error(transparent)]
    Dir(#[from] DirError),
}

/// Which private directory a [`DirError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRole {
    /// The directory of `storage.path`: admin hash, admin socket, the redb
    /// file and, by default, the server secret.
    Data,
    /// The directory of `storage.secret_file`.
    Secret,
}

impl DirRole {
    fn name(self) -> &'static str {
        match self {
            DirRole::Data => "data directory",
            DirRole::Secret => "server secret directory",
        }
    }

    fn holds(self) -> &'static str {
        match self {
            DirRole::Data => "the server secret and the token database",
            DirRole::Secret => "the server secret (storage.secret_file)",
        }
    }
}

/// Why a directory cannot hold secrets.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{} {}: {source}", role.name(), path.display())]
    Io {
        role: DirRole,
        path: PathBuf,
        source: io::Error,
    },
    /// Whoever can write the directory can replace `secret.key`, `admin.hash`
    /// or the database with their own, so it must be the owner's alone.
    #[error(
        "{} {} can be written by group or others (mode {mode:04o}); it holds {}: run `chmod 700 {}`",
        role.name(),
        path.display(),
        role.holds(),
        path.display()
    )]
    TooOpen {
        role: DirRole,
        path: PathBuf,
        mode: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and parents) as 0700 if missing. An existing directory is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The data directory, created 0700 if missing; an existing one that group
/// or others may write is refused (the sticky bit does not help: it stops
/// deleting others' files, not creating a file before we do).
pub(crate) fn private_data_dir(dir: &Path) -> Result<(), DirError> {
    private_dir(dir, DirRole::Data)
}

/// `dir`, created 0700 if missing; refused if group or others may write it.
fn private_dir(dir: &Path, role: DirRole) -> Result<(), DirError> {
    let io = |source| DirError::Io {
        role,
        path: dir.to_owned(),
        source,
    };
    create_private_dir(dir).map_err(io)?;
    // Follows a symlink: what matters is the directory the files land in.
    let mode = fs::metadata(dir).map_err(io)?.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(DirError::TooOpen {
            role,
            path: dir.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Makes an existing file readable by its owner only.
pub(crate) fn restrict_file(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

/// Writes a new file with mode 0600 from the first byte; fails if it exists,
/// so two processes can never both think they created it.
pub(crate) fn write_new_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Loads the server secret from `path` (`storage.secret_file`), creating it
/// on first start. Its directory is created 0700 if missing; an existing one
/// that group or others may write is refused, as for the data directory
/// (whoever can write it can put their own secret there).
///
/// Replicas of a cluster must share one secret: a replica that generates its
/// own is refused by the database's fingerprint check, so generating here is
/// safe for the first replica and loudly wrong for any other.
pub(crate) fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    private_dir(dir, DirRole::Secret)?;
    let path = path.to_owned();
    match fs::File::open(&path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(io_err(&path))?;
            if buf.len() != SECRET_LEN {
                return Err(SecretError::BadSecret {
                    path,
                    found: buf.len(),
                });
            }
            let mode = f.metadata().map_err(io_err(&path))?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:04o}", mode & 0o7777), "the server secret was open to group or others; tightened to 0600");
            }
            restrict_file(&path).map_err(io_err(&path))?;
            Ok(buf)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; SECRET_LEN];
            random_bytes(&mut secret).map_err(SecretError::Random)?;
            write_new_private(&path, &secret).map_err(io_err(&path))?;
            tracing::info!(path = %path.display(), "generated a new server secret");
            Ok(secret)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// A keyed fingerprint of the server secret: HMAC-SHA256 under the secret
/// of a fixed label. A database stores it to recognise the secret replicas
/// must share; it reveals nothing that helps recover or use the secret.
pub(crate) fn fingerprint(secret: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(b"tokengate server secret fingerprint v1");
    mac.finalize().into_bytes().into()
}

/// Hashes a password as an argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, SecretError> {
    let mut salt = [0u8; 16];
    random_bytes(&mut salt).map_err(SecretError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| SecretError::Argon(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| SecretError::Argon(e.to_string()))
}

/// A new random admin password: 24 base62 characters (≈143 bits).
pub(crate) fn generate_password() -> Result<String, SecretError> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(24);
    let mut pool = [0u8; 64];
    while out.len() < 24 {
        random_bytes(&mut pool).map_err(SecretError::Random)?;
        for b in pool.iter().filter(|&&b| b < 248) {
            if out.len() < 24 {
                out.push(ALPHABET[(*b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// Where the admin password comes from, decided once at start.
pub(crate) enum AdminPasswordSource {
    /// `TOKENGATE_ADMIN_PASSWORD`: kept in memory only.
    Environment(String),
    /// `admin.password_hash` in the configuration file.
    ConfigHash(String),
    /// Neither: the hash file in the data directory, generated on first start.
    DataDir,
}

/// The admin password's argon2 hash, or the plain password from the environment.
pub enum AdminCredential {
    Plain(String),
    Hash(String),
}

/// Resolves the admin credential. On a first start with nothing configured, a
/// password is generated, printed once (to stderr, not to the log), and only
/// its hash is kept.
#[allow(
    clippy::print_stderr,
    reason = "a generated password is shown once, on stderr, never in the log"
)]
pub(crate) fn resolve_admin(
    source: AdminPasswordSource,
    data_dir: &Path,
) -> Result<AdminCredential, SecretError> {
    match source {
        AdminPasswordSource::Environment(p) => Ok(AdminCredential::Plain(p)),
        AdminPasswordSource::ConfigHash(h) => Ok(AdminCredential::Hash(h)),
        AdminPasswordSource::DataDir => {
            let path = data_dir.join(ADMIN_HASH_FILE);
            match fs::read_to_string(&path) {
                Ok(text) => {
                    let h = text.trim().to_owned();
                    argon2::PasswordHash::new(&h).map_err(|e| SecretError::BadHash {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                    restrict_file(&path).map_err(io_err(&path))?;
                    Ok(AdminCredential::Hash(h))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    private_data_dir(data_dir)?;
                    let password = generate_password()?;
                    let hash = hash_password(&password)?;
                    write_new_private(&path, format!("{hash}\n").as_bytes())
                        .map_err(io_err(&path))?;
                    eprintln!(
                        "\n  tokengate: generated admin password (shown once, only its hash is kept in {}):\n\n      {password}\n\n  Log in to the admin listener as user `admin`. To choose your own, set TOKENGATE_ADMIN_PASSWORD\n  or admin.password_hash; to generate a new one, delete {} and restart.\n",
                        path.display(),
                        path.display()
                    );
                    Ok(AdminCredential::Hash(hash))
                }
                Err(e) => Err(io_err(&path)(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn secret_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        let a = load_or_create_secret(&d.join(SECRET_FILE)).unwrap();
        let b = load_or_create_secret(&d.join(SECRET_FILE)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        let mode = fs::metadata(d.join(SECRET_FILE)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The missing directory was created for it, the owner's alone.
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_data_dir_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o770, 0o1777, 0o720] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create_secret(&dir.path().join(SECRET_FILE))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&dir.path().display().to_string()), "{e}");
            assert!(e.contains("chmod 700"), "{e}");
            assert!(!dir.path().join(SECRET_FILE).exists());
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o750)).unwrap();
        assert!(load_or_create_secret(&dir.path().join(SECRET_FILE)).is_ok());
    }

    #[test]
    fn too_open_secret_files_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRET_FILE);
        let secret = load_or_create_secret(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_secret(&path).unwrap(), secret);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn truncated_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SECRET_FILE), b"short").unwrap();
        assert!(matches!(
            load_or_create_secret(&dir.path().join(SECRET_FILE)),
            Err(SecretError::BadSecret { found: 5, .. })
        ));
    }

    #[test]
    fn generated_admin_password_keeps_only_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cred = resolve_admin(AdminPasswordSource::DataDir, dir.path()).unwrap();
        let AdminCredential::Hash(h) = cred else {
            panic!("expected a hash")
        };
        assert!(h.starts_with("$argon2id$"));
        let on_disk = fs::read_to_string(dir.path().join(ADMIN_HASH_FILE)).unwrap();
        assert_eq!(on_disk.trim(), h);
        let mode = fs::metadata(dir.path().join(ADMIN_HASH_FILE))
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // A second start reuses it rather than generating another.
        let AdminCredential::Hash(h2) =
            resolve_admin(AdminPasswordSource::DataDir, dir.path()).unwrap()
        else {
            panic!()
        };
        assert_eq!(h, h2);
    }
}

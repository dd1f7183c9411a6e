//! rustls server configuration: TLS 1.2 and 1.3 only (rustls has nothing older),
//! ALPN `h2` and `http/1.1`, session tickets and a session cache for clients
//! that reconnect often.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {path}: {detail}")]
    Cert { path: PathBuf, detail: String },
    #[error("tls.key {path}: {detail}")]
    Key { path: PathBuf, detail: String },
    #[error("certificate and key do not fit together: {0}")]
    Mismatch(rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Writes a self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
/// The key file is created 0600.
pub fn generate_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    for p in [cert, key] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| TlsError::Generate(format!("{}: {e}", dir.display())))?;
        }
    }
    crate::secrets::write_new_private(key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| TlsError::Generate(format!("{}: {e}", key.display())))?;
    std::fs::write(cert, ck.cert.pem())
        .map_err(|e| TlsError::Generate(format!("{}: {e}", cert.display())))?;
    Ok(())
}

/// The listeners' certificate and key, swapped in place by a reload: every
/// handshake asks for it, so new connections present the new pair while
/// connections already open keep the one they were made with.
#[derive(Debug)]
pub struct LiveCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl LiveCert {
    /// Makes `pair` the one served from the next handshake on.
    pub fn install(&self, pair: CertPair) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = pair.0;
    }

    /// The fingerprint of the pair in force.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A certificate chain and its key, read and checked, not yet served: a
/// reload prepares everything before it changes anything.
#[derive(Debug)]
pub struct CertPair(Arc<CertifiedKey>);

impl CertPair {
    /// Reads `cfg`'s files; fails unless both parse and fit together.
    pub fn load(cfg: &TlsConfig) -> Result<CertPair, TlsError> {
        load_pair(cfg).map(|k| CertPair(Arc::new(k)))
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole pair: a writer only ever
        // stores a complete one.
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// SHA-256 of the leaf certificate (DER), as `openssl x509 -fingerprint
/// -sha256` shows it: how a log line or the reload answer says which
/// certificate is served, without printing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    fn of(key: &CertifiedKey) -> Fingerprint {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.end_entity_cert().map(|c| c.as_ref()).unwrap_or(&[]));
        let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
        Fingerprint(hex.join(":"))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads and checks the configured pair: the certificate chain, the key, and
/// that the key is the certificate's.
fn load_pair(cfg: &TlsConfig) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| TlsError::Cert {
            path: cfg.cert.clone(),
            detail: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cfg.cert.clone(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cfg.cert.clone(),
            detail: "no PEM certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| TlsError::Key {
        path: cfg.key.clone(),
        detail: e.to_string(),
    })?;
    let signer = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: cfg.key.clone(),
            detail: e.to_string(),
        })?;
    let pair = CertifiedKey::new(certs, signer);
    match pair.keys_match() {
        // A key type whose public half rustls cannot derive: the handshake
        // itself is the check then, as with `with_single_cert`.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(pair),
        Err(e @ rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch(e)),
        Err(e) => Err(TlsError::Cert {
            path: cfg.cert.clone(),
            detail: e.to_string(),
        }),
    }
}

/// Loads the configured pair; with nothing configured and no files yet, first
/// generates a self-signed pair so the default set-up runs. The pair is
/// served through the returned `LiveCert`, which a reload swaps.
pub fn server_config(cfg: &TlsConfig) -> Result<(Arc<ServerConfig>, Arc<LiveCert>), TlsError> {
    if cfg.generate_if_missing && !cfg.cert.exists() && !cfg.key.exists() {
        generate_self_signed(&cfg.cert, &cfg.key)?;
        tracing::warn!(
            cert = %cfg.cert.display(),
            key = %cfg.key.display(),
            "no TLS certificate configured: generated a self-signed one; set tls.cert and tls.key for production"
        );
    }
    let live = Arc::new(LiveCert {
        current: RwLock::new(Arc::new(load_pair(cfg)?)),
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(live.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order of cipher suites, not the client's: see `server_provider`.
    config.ignore_client_order = true;
    // Resumption saves a full handshake for clients that reconnect per
    // request. One ticketer for the whole process: every worker serves from
    // this one `ServerConfig`, and a reload swaps the certificate inside
    // `LiveCert` without rebuilding it, so a ticket from any worker, issued
    // before or after a reload, resumes on every worker. Its key rotates
    // every 6 hours and a ticket is accepted for 12 (the current key and the
    // previous one); tickets are not shared between processes, so a client
    // that resumes on another replica gets a full handshake.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    // One ticket per handshake (rustls sends 2 by default): a client that
    // reconnects uses one and gets one back, as OpenSSL servers do on
    // resumption, and each ticket costs a key derivation, an encryption,
    // three reads of the system RNG and a few hundred bytes on the wire.
    config.send_tls13_tickets = 1;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    // No 0-RTT: early data is replayable.
    config.max_early_data_size = 0;
    Ok((Arc::new(config), live))
}

/// The listeners' crypto provider: ring's, with its cipher suites reordered
/// so that AES-128-GCM comes first (in TLS 1.3, with SHA-256). rustls lists
/// AES-256-GCM-SHA384 first, and OpenSSL-based clients ask for it first, but
/// the TLS 1.3 key schedule is some thirty HMACs per handshake, a resumed
/// one included: with SHA-384 each is twice the 128-byte SHA-512 blocks,
/// and CPUs with SHA extensions accelerate SHA-256 only. Under callgrind
/// that was about a fifth of a resumed connection's instructions. Every
/// suite stays offered; only the choice among those a client offers changes.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    let order = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let mut provider = rustls::crypto::ring::default_provider();
    // Whatever else ring's defaults hold stays, after these.
    let rest: Vec<_> = provider
        .cipher_suites
        .iter()
        .filter(|s| !order.iter().any(|o| o.suite() == s.suite()))
        .copied()
        .collect();
    provider.cipher_suites = order
        .into_iter()
        .filter(|o| {
            provider
                .cipher_suites
                .iter()
                .any(|s| s.suite() == o.suite())
        })
        .chain(rest)
        .collect();
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_comes_first_and_every_suite_of_ring_stays() {
        let ours: Vec<_> = server_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            ours[0],
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            "{ours:?}"
        );
        let mut ring: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        ring.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, ring);
    }
}

//! rustls server configuration: TLS 1.2 and 1.3 only (rustls has nothing older),
//! ALPN `h2` and `http/1.1`, session tickets and a session cache for clients
//! that reconnect often.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

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

/// Loads the configured pair; with nothing configured and no files yet, first
/// generates a self-signed pair so the default set-up runs.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    if cfg.generate_if_missing && !cfg.cert.exists() && !cfg.key.exists() {
        generate_self_signed(&cfg.cert, &cfg.key)?;
        tracing::warn!(
            cert = %cfg.cert.display(),
            key = %cfg.key.display(),
            "no TLS certificate configured: generated a self-signed one; set tls.cert and tls.key for production"
        );
    }
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
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption saves a full handshake for clients that reconnect per request.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    // No 0-RTT: early data is replayable.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

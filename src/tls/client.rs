//! The one place a rustls client configuration is built: which certificates
//! to trust, TLS 1.2 and 1.3 only, and the ALPN protocols to offer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Which server certificates a client accepts.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// Only certificates issued by the CAs in this PEM file.
    CaFile(&'a Path),
    /// The system's trust store, plus the certificates in `also` if given.
    System { also: Option<&'a Path> },
    /// Any certificate (signatures are still checked). Only for an explicit,
    /// loudly logged setting.
    Insecure,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("no certificate to trust: the system trust store is empty and no CA file was given")]
    NoRoots,
    #[error("TLS client set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration trusting `trust` and offering `alpn` (in order).
pub fn client_config(trust: Trust<'_>, alpn: &[&[u8]]) -> Result<ClientConfig, ClientTlsError> {
    let provider = super::provider();
    let mut config = match trust {
        Trust::Insecure => super::insecure::client_config(provider)?,
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            add_pem(&mut roots, path)?;
            if roots.is_empty() {
                return Err(ClientTlsError::CaFile {
                    path: path.to_owned(),
                    detail: "no PEM certificate found".into(),
                });
            }
            with_roots(provider, roots)?
        }
        Trust::System { also } => {
            let mut roots = RootCertStore::empty();
            // Certificates the system store holds but rustls cannot parse are skipped.
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if let Some(path) = also {
                add_pem(&mut roots, path)?;
            }
            if roots.is_empty() {
                return Err(ClientTlsError::NoRoots);
            }
            with_roots(provider, roots)?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn with_roots(
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: RootCertStore,
) -> Result<ClientConfig, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn add_pem(roots: &mut RootCertStore, path: &Path) -> Result<(), ClientTlsError> {
    let err = |detail: String| ClientTlsError::CaFile {
        path: path.to_owned(),
        detail,
    };
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        crate::tls::generate_self_signed(&cert, &key).unwrap();
        let c = client_config(Trust::CaFile(&cert), &[b"h2", b"http/1.1"]).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            client_config(Trust::CaFile(&empty), &[]),
            Err(ClientTlsError::CaFile { .. })
        ));
        assert!(client_config(Trust::CaFile(&dir.path().join("none")), &[]).is_err());
        assert!(client_config(Trust::Insecure, &[]).is_ok());
    }
}

//! TLS set-up, both ways, on ring as the one crypto provider (passed
//! explicitly, so no process-wide default is needed):
//!
//! - `server`: the listeners' rustls configuration, and a self-signed
//!   certificate for the default set-up.
//! - `client`: the one client configuration builder, used toward the
//!   upstream, by the CLI toward the admin listener, and by the tests.

mod client;
mod insecure;
mod server;

pub use client::{client_config, ClientTlsError, Trust};
pub use server::{generate_self_signed, server_config, CertPair, Fingerprint, LiveCert, TlsError};

use std::sync::Arc;

/// The one crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

//! TLS to PostgreSQL through rustls (no OpenSSL): tokio-postgres's
//! `MakeTlsConnect` over the crate's own client configuration builder.
//!
//! Written here rather than taken from tokio-postgres-rustls, whose
//! channel-binding support pulls in an X.509 parser and a second SHA-2
//! stack. Without channel binding, SCRAM still authenticates both ways, and
//! with `verify-full` rustls has already checked the server's certificate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::TlsConnector;

use crate::config::{PostgresConfig, SslMode};
use crate::tls::{client_config, Trust};

/// What to set when TLS to PostgreSQL failed, from the error's text (the
/// only form tokio-postgres gives): a server without TLS needs `sslmode`
/// disabled, an unverifiable certificate needs its CA.
pub(super) fn hint(error: &str) -> Option<&'static str> {
    if error.contains("server does not support TLS") {
        Some(
            "the server offers no TLS: set storage.postgres.sslmode = \"disable\" \
             (or sslmode=disable in storage.postgres.url) if the network to it is trusted",
        )
    } else if error.contains("invalid peer certificate") {
        Some(
            "set storage.postgres.ca_file (or sslrootcert in storage.postgres.url) to the \
             server's CA, or storage.postgres.sslmode = \"require\" to encrypt without verifying",
        )
    } else {
        None
    }
}

/// Makes a TLS connector per connection (the host name is per connection).
#[derive(Clone)]
pub(super) struct RustlsMakeTls {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsMakeTls {
    /// The client configuration `sslmode` asks for; `None` for `disable`.
    pub(super) fn new(pg: &PostgresConfig) -> Result<Option<RustlsMakeTls>, String> {
        let trust = match (pg.sslmode, &pg.ca_file) {
            (SslMode::Disable, _) => return Ok(None),
            // libpq's `require`: encrypted, the server not verified.
            (SslMode::Require, _) => Trust::Insecure,
            (SslMode::VerifyFull, Some(ca)) => Trust::CaFile(ca),
            (SslMode::VerifyFull, None) => Trust::System { also: None },
        };
        let config = client_config(trust, &[]).map_err(|e| match &pg.ca_file {
            Some(_) => format!("ca_file: {e}"),
            None => format!("sslmode = \"verify-full\": {e}"),
        })?;
        Ok(Some(RustlsMakeTls {
            config: Arc::new(config),
        }))
    }
}

impl<S> MakeTlsConnect<S> for RustlsMakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?}: {e}")))?;
        Ok(RustlsConnect {
            connector: TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

pub(super) struct RustlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS session to PostgreSQL. Boxed: the rustls state is large and the
/// connection's future moves it around.
pub(super) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

//! TLS session resumption on the public listener, seen from a rustls client
//! that keeps its session tickets: a session minted by one worker resumes on
//! another (one ticket key for all of them), a certificate reload keeps the
//! ticket key, and a ticket offered to another gateway (another replica of a
//! cluster, with keys of its own) falls back to a full handshake that works.
//! Also what a handshake costs the gateway: one ticket per handshake, and
//! AES-128-GCM (SHA-256 key schedule) even for a client that asks for
//! AES-256-GCM first.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, HandshakeKind, NamedGroup};
use tokio::net::TcpStream;

use crate::common::{self, TestGateway};

/// A client that trusts the certificates in `ca` and keeps the session
/// tickets it receives (rustls' default in-memory store, keyed by server
/// name: every connection below is to "localhost").
fn resuming_client(ca: &Path) -> tokio_rustls::TlsConnector {
    let config = tokengate::tls::client_config(tokengate::tls::Trust::CaFile(ca), &[b"http/1.1"])
        .expect("client TLS config");
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// rustls' in-memory session store, counting the TLS 1.3 tickets received.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(name, group);
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value);
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name);
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value);
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// An open HTTP/1.1 connection over TLS and how its handshake went.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    kind: HandshakeKind,
    suite: CipherSuite,
}

async fn connect(tls: &tokio_rustls::TlsConnector, addr: std::net::SocketAddr) -> Conn {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = tls
        .connect("localhost".try_into().expect("server name"), tcp)
        .await
        .expect("TLS handshake");
    let tls = stream.get_ref().1;
    let kind = tls
        .handshake_kind()
        .expect("a finished handshake has a kind");
    let suite = tls
        .negotiated_cipher_suite()
        .expect("a finished handshake has a suite")
        .suite();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    Conn { send, kind, suite }
}

impl Conn {
    /// `GET /healthz`. Reading the answer also reads the session tickets the
    /// gateway sent after the handshake (they come before it), so the client
    /// holds them from here on.
    async fn health(&mut self) -> StatusCode {
        let req = Request::get("/healthz")
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        let resp = self.send.send_request(req).await.expect("response");
        let status = resp.status();
        resp.into_body().collect().await.expect("body");
        status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_minted_by_one_worker_resumes_on_another() {
    let up = common::upstream().await;
    let gw = TestGateway::start_with(up.addr, |f| f.public.workers = 2).await;
    let tls = resuming_client(gw.file.tls.cert.as_ref().unwrap());

    let mut first = connect(&tls, gw.public_addr()).await;
    assert_eq!(first.kind, HandshakeKind::Full);
    assert_eq!(first.health().await, StatusCode::OK);

    // The first connection stays open on its worker, so the balancer serves
    // the second on the other one; it resumes the first one's session there.
    let mut second = connect(&tls, gw.public_addr()).await;
    assert_eq!(second.health().await, StatusCode::OK);
    let gateway = gw.gateway.as_ref().unwrap();
    assert_eq!(gateway.connections_per_worker(), vec![1, 1]);
    assert_eq!(second.kind, HandshakeKind::Resumed);

    // And back: the second worker's ticket resumes wherever the next lands.
    drop(first);
    let mut third = connect(&tls, gw.public_addr()).await;
    assert_eq!(third.kind, HandshakeKind::Resumed);
    assert_eq!(third.health().await, StatusCode::OK);
}

#[tokio::test]
async fn a_session_resumes_across_a_certificate_reload() {
    let up = common::upstream().await;
    // Only the POST below reloads: with the file watcher on, a tick between
    // the two copies and the POST could swap the certificate first, and the
    // test's admin client (which trusts the first certificate only) would
    // then refuse the admin listener's new one.
    let gw = TestGateway::start_with(up.addr, |f| {
        f.tls.watch_interval = tokengate::config::HumanDuration(Duration::ZERO)
    })
    .await;
    let cert = gw.file.tls.cert.clone().unwrap();
    let key = gw.file.tls.key.clone().unwrap();
    let spare = tempfile::tempdir().unwrap();
    let (new_cert, new_key) = (spare.path().join("new.crt"), spare.path().join("new.key"));
    tokengate::tls::generate_self_signed(&new_cert, &new_key).unwrap();
    let trust = spare.path().join("trust.pem");
    let both =
        std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&new_cert).unwrap();
    std::fs::write(&trust, both).unwrap();
    let tls = resuming_client(&trust);

    let mut before = connect(&tls, gw.public_addr()).await;
    assert_eq!(before.kind, HandshakeKind::Full);
    assert_eq!(before.health().await, StatusCode::OK);

    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let r = gw
        .client
        .admin_json("POST", "/api/reload", &serde_json::json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // The ticket key outlives the reload: the session made before it resumes.
    let mut after = connect(&tls, gw.public_addr()).await;
    assert_eq!(after.kind, HandshakeKind::Resumed);
    assert_eq!(after.health().await, StatusCode::OK);
}

#[tokio::test]
async fn a_ticket_from_another_replica_gets_a_full_handshake_that_works() {
    let up = common::upstream().await;
    let a = TestGateway::start(up.addr).await;
    let cert = a.file.tls.cert.clone().unwrap();
    let key = a.file.tls.key.clone().unwrap();
    // The same certificate on both, as behind one name in a cluster; each
    // gateway has ticket keys of its own.
    let b = TestGateway::start_with(up.addr, |f| {
        f.tls.cert = Some(cert.clone());
        f.tls.key = Some(key.clone());
    })
    .await;
    let tls = resuming_client(&cert);

    let mut first = connect(&tls, a.public_addr()).await;
    assert_eq!(first.kind, HandshakeKind::Full);
    assert_eq!(first.health().await, StatusCode::OK);
    // The client resumes where its session came from...
    let mut again = connect(&tls, a.public_addr()).await;
    assert_eq!(again.kind, HandshakeKind::Resumed);
    assert_eq!(again.health().await, StatusCode::OK);

    // ...and offers the same kind of ticket to the other replica, which
    // cannot read it: a full handshake instead, and the request is served.
    let mut other = connect(&tls, b.public_addr()).await;
    assert_eq!(other.kind, HandshakeKind::Full);
    assert_eq!(other.health().await, StatusCode::OK);
    // From then on the client holds that replica's tickets too.
    let mut other_again = connect(&tls, b.public_addr()).await;
    assert_eq!(other_again.kind, HandshakeKind::Resumed);
    assert_eq!(other_again.health().await, StatusCode::OK);
}

#[tokio::test]
async fn one_ticket_per_handshake_and_aes_128_gcm_first() {
    let up = common::upstream().await;
    let gw = TestGateway::start(up.addr).await;
    let cert = gw.file.tls.cert.clone().unwrap();
    let mut config =
        tokengate::tls::client_config(tokengate::tls::Trust::CaFile(&cert), &[b"http/1.1"])
            .unwrap();
    // rustls' own client lists AES-256-GCM-SHA384 first, as OpenSSL does.
    assert_eq!(
        config.crypto_provider().cipher_suites[0].suite(),
        CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let store = Arc::new(CountingStore {
        inner: ClientSessionMemoryCache::new(16),
        tickets: AtomicUsize::new(0),
    });
    config.resumption = rustls::client::Resumption::store(store.clone());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));

    let mut full = connect(&tls, gw.public_addr()).await;
    assert_eq!(full.kind, HandshakeKind::Full);
    assert_eq!(full.suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!(full.health().await, StatusCode::OK);
    assert_eq!(store.tickets.load(Ordering::SeqCst), 1);

    let mut resumed = connect(&tls, gw.public_addr()).await;
    assert_eq!(resumed.kind, HandshakeKind::Resumed);
    assert_eq!(resumed.suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!(resumed.health().await, StatusCode::OK);
    assert_eq!(store.tickets.load(Ordering::SeqCst), 2);
}

//! The admin API on a Unix socket (`admin.socket`): a door for the
//! administrator on the host that no remote client can reach or lock (the
//! TCP listener's login throttle does not apply here). The socket file is
//! mode 0600 in the 0700 data directory, and a connection is served only if
//! its peer runs as the gateway's own user or as root, so the file system
//! is the authentication. Plain HTTP/1.1: nothing crosses a network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use super::accept::{accept_loop, LocalSocket};
use super::conn::{Activity, Counted, Deadlines};
use super::{drive, Guard, Handler};
use crate::config::ListenerLimits;

/// Binds the socket, replacing a stale file left by a process that died,
/// and refusing one that another gateway still serves.
pub(crate) async fn bind_local(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves this socket (is another tokengate running on this data directory?)",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    crate::secrets::restrict_file(path)?;
    Ok(listener)
}

/// Serves `handler` on the socket until shutdown, then drains like the TCP
/// listeners. Removes the socket file once it stops accepting.
pub(crate) async fn serve_local<H: Handler>(
    listener: UnixListener,
    path: PathBuf,
    handler: Arc<H>,
    limits: ListenerLimits,
    shutdown: watch::Receiver<bool>,
) {
    // The gateway's own user: the owner of the socket file it just created
    // (reading it needs no `unsafe` call to geteuid).
    let owner = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    // At the cap a new connection is closed at once rather than queued: a
    // local command fails fast instead of hanging.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let grace = limits.shutdown_grace;
    let stop = shutdown.clone();
    let socket = LocalSocket { listener, path };
    accept_loop("admin socket", socket, stop, grace, move |stream| {
        let peer_uid = match (stream.peer_cred(), &owner) {
            (Ok(cred), Ok(uid)) if cred.uid() == *uid || cred.uid() == 0 => cred.uid(),
            _ => {
                tracing::info!("admin socket: refused a connection from another user");
                return None;
            }
        };
        let slot = slots.clone().try_acquire_owned().ok()?;
        let handler = handler.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        Some(async move {
            connection(stream, handler, &limits, shutdown, PeerUid(peer_uid)).await;
            drop(slot);
        })
    })
    .await;
}

/// The Unix user id of the socket's peer, in every request's extensions:
/// the admin handler records it on its audit lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerUid(pub(crate) u32);

/// The address handlers and audit lines see for the socket's clients.
pub(crate) const LOCAL_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

async fn connection<H: Handler>(
    stream: UnixStream,
    handler: Arc<H>,
    limits: &ListenerLimits,
    shutdown: watch::Receiver<bool>,
    uid: PeerUid,
) {
    let activity = Arc::new(Activity::for_this_runtime());
    let guard = Guard {
        activity: activity.clone(),
        deadlines: Deadlines {
            first_request: limits.header_read_timeout,
            idle: limits.idle_timeout,
            send: limits.send_timeout,
        },
        max_age: limits.max_connection_age,
        shutdown,
        client: LOCAL_PEER,
    };
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes);
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(uid);
        let handler = handler.clone();
        let in_flight = activity.start();
        async move {
            let (resp, report) = handler
                .handle(crate::identify::Peer::direct(LOCAL_PEER), req)
                .await;
            Ok::<_, Infallible>(resp.map(|b| in_flight.track(b, report)))
        }
    });
    let io = TokioIo::new(Counted::new(stream, guard.activity.clone()));
    drive(b.serve_connection(io, svc), guard).await;
}

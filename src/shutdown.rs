//! The shutdown signal, as a leaf every layer may import: a
//! `watch::Receiver<bool>` that turns `true` once (SIGINT, SIGTERM or
//! `Gateway::shutdown`). Background jobs, health probes and listeners learn
//! that the process is stopping from here, never from the module that
//! drives connections, so nothing low has to import anything high.

use tokio::sync::watch;

/// Resolves once shutdown is signalled (or its sender is gone). Returns `()`
/// so no watch guard is held across the caller's `.await`s.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

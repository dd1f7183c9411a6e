//! Work on a timer, off the request path: sweeping dead access tokens,
//! admin sessions and login-throttle entries, writing the failed-
//! authentication throttle's `auth.throttled` lines, deleting refresh
//! tokens left unused for `tokens.revoke_unused_after`, and flushing
//! refresh-token usage to the store.

use std::sync::Arc;

use tokio::sync::watch;

use crate::admin::password::AdminAuth;
use crate::shutdown::stopped;
use crate::state::State;

/// Sweeps and flushes, each on its own interval, until shutdown.
pub(crate) async fn run(
    state: Arc<State>,
    admin: Arc<AdminAuth>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sweep = tokio::time::interval(state.startup_config.tokens.sweep_interval);
    let mut flush = tokio::time::interval(state.startup_config.storage.usage_flush_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                // A sweep walks every live token (millions, at scale): keep it
                // off the runtime that serves the admin listener.
                let (st, admin) = (state.clone(), admin.clone());
                let swept = tokio::task::spawn_blocking(move || {
                    let now = st.view.clock.now();
                    admin.sessions.sweep(now);
                    admin.throttle.sweep(now);
                    admin.account_throttle.sweep(now);
                    st.authority.sweep(now);
                    // Shared page sessions (PostgreSQL): the expired rows.
                    if st.view.store.shares_sessions() {
                        if let Err(e) = st.view.store.sweep_sessions(st.view.clock.unix()) {
                            tracing::debug!(error = %e, "sweeping stored page sessions failed");
                        }
                    }
                    st.lifecycle.sweep(now)
                })
                .await;
                if let Ok(removed @ 1..) = swept {
                    tracing::debug!(removed, live = state.view.access.len(), "swept access tokens");
                }
                revoke_unused(&state).await;
            }
            _ = flush.tick() => flush_usage(&state).await,
            _ = stopped(&mut shutdown) => {
                // Windows still running have refusals to report too.
                let st = state.clone();
                let _ = tokio::task::spawn_blocking(move || st.authority.report_all()).await;
                return;
            }
        }
    }
}

/// Deletes the refresh tokens unused for `tokens.revoke_unused_after`,
/// if set; a failure is retried at the next tick.
async fn revoke_unused(state: &Arc<State>) {
    let Some(after) = state.startup_config.tokens.revoke_unused_after else {
        return;
    };
    match state.lifecycle.revoke_unused(after.as_secs()).await {
        Ok(gone) if gone.is_empty() => {}
        Ok(gone) => tracing::debug!(tokens = gone.len(), "deleted unused refresh tokens"),
        Err(e) => {
            tracing::warn!(error = %e, "deleting unused refresh tokens failed; will retry")
        }
    }
}

/// Writes changed refresh-token usage to the store; a failure is retried at the next tick.
pub(crate) async fn flush_usage(state: &Arc<State>) {
    match state.lifecycle.flush_usage().await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(tokens = n, "flushed refresh-token usage"),
        Err(e) => tracing::warn!(error = %e, "flushing refresh-token usage failed; will retry"),
    }
}

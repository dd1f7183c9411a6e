//! Live reload, without a restart (which, by DPA's rule, would log every
//! script out): on SIGHUP, on `tokengate reload` (`POST /api/reload`), and
//! when the certificate files change on disk.
//!
//! A reload reads the configuration again, prepares everything that can
//! fail (the new certificate pair, the new settings) and only then applies
//! it; a bad file is refused with its name and the settings in force stay.
//! What can change live: the TLS certificate and key, and the keys in
//! `LIVE`. Any other key that differs from what the gateway started with is
//! named in the log and in the answer as needing a restart.
//!
//! The file watch only re-reads the files the configuration in force names
//! (certificate, key, `upstream.ca_file`): a configuration file half-way
//! through an edit is never picked up by itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use crate::config::{Config, ConfigError};
use crate::metrics::ReloadKind;
use crate::proxy::Upstreams;
use crate::shutdown::stopped;
use crate::state::State;
use crate::tls::{CertPair, LiveCert, TlsError};

/// Where a reload reads the configuration: the binary re-reads its file
/// and environment; tests hand in their own.
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Applies `log.level`: the binary owns the log subscriber, so it hands in
/// how to change its filter.
pub type LogLevelHook = Arc<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// Keys (and key prefixes) a reload applies to the running gateway.
const LIVE: &[&str] = &[
    "tls.cert",
    "tls.key",
    "public.auth_failures_per_minute",
    "upstream.headers",
    "upstream.connect_timeout",
    "upstream.response_timeout",
    "upstream.ca_file",
    "upstream.insecure_skip_verify",
    "log.level",
];

fn is_live(key: &str) -> bool {
    LIVE.iter().any(|l| {
        key == *l
            || key
                .strip_prefix(l)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// What a reload did: the answer of `POST /api/reload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    /// Changed keys now in force (`tls.cert` also when only the file's
    /// content changed).
    pub applied: Vec<String>,
    /// Keys whose new values differ from what the gateway started with and
    /// that only a restart applies; the started values stay in force.
    pub restart_required: Vec<String>,
    /// SHA-256 fingerprint of the certificate now served.
    pub certificate_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Apply(String),
}

/// Who asked for a reload, for the log and the audit line.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    Api,
    FileWatch,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Api => "admin API",
            Trigger::FileWatch => "file change",
        }
    }
}

pub struct Reloader {
    state: Arc<State>,
    cert: Arc<LiveCert>,
    /// The upstream servers' live settings (headers, timeouts, CA).
    upstreams: Arc<Upstreams>,
    source: ConfigSource,
    log_level: Option<LogLevelHook>,
    /// The configuration whose live parts are in force; the lock also keeps
    /// two reloads from interleaving.
    applied: Mutex<Config>,
}

impl Reloader {
    pub(crate) fn new(
        state: Arc<State>,
        cert: Arc<LiveCert>,
        upstreams: Arc<Upstreams>,
        source: ConfigSource,
        log_level: Option<LogLevelHook>,
    ) -> Reloader {
        let applied = Mutex::new(state.startup_config.clone());
        Reloader {
            state,
            cert,
            upstreams,
            source,
            log_level,
            applied,
        }
    }

    /// Reads the configuration again and applies what can change live.
    /// On any error nothing changes.
    pub async fn reload(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        self.reload_by(trigger, None).await
    }

    /// `reload`, asked for by an administrator (`by`: named on the audit line).
    pub(crate) async fn reload_by(
        &self,
        trigger: Trigger,
        by: Option<&crate::audit::Actor>,
    ) -> Result<Reloaded, ReloadError> {
        let mut applied = self.applied.lock().await;
        let result = self.reload_locked(&mut applied).await;
        self.report(trigger, by, &result);
        result
    }

    async fn reload_locked(&self, applied: &mut Config) -> Result<Reloaded, ReloadError> {
        let (source, upstreams) = (self.source.clone(), self.upstreams.clone());
        // File reads (configuration, certificate, upstream CA) are blocking
        // work. The upstream settings are the last step that can fail, and
        // they change only if they load: after them nothing can fail.
        let (new, pair) = tokio::task::spawn_blocking(move || {
            let new = source().map_err(ReloadError::Config)?;
            let pair = CertPair::load(&new.tls)?;
            upstreams
                .reload(&new.upstream)
                .map_err(|e| ReloadError::Apply(e.to_string()))?;
            Ok::<_, ReloadError>((new, pair))
        })
        .await
        .map_err(|e| ReloadError::Apply(format!("reload task failed: {e}")))??;
        let changed = applied.changed_keys(&new);
        let mut applied_keys: Vec<String> =
            changed.iter().filter(|k| is_live(k)).cloned().collect();
        // Everything is prepared: from here on, only changes that cannot fail.
        let print = pair.fingerprint();
        if print != self.cert.fingerprint() && !applied_keys.iter().any(|k| k == "tls.cert") {
            applied_keys.push("tls.cert".into());
            applied_keys.sort();
        }
        self.cert.install(pair);
        self.state
            .authority
            .set_failure_budget(new.public.auth_failures_per_minute);
        if let Some(hook) = &self.log_level {
            if let Err(e) = hook(&new) {
                // Validation already accepted the level: this is the
                // subscriber refusing, which leaves the old level on.
                tracing::warn!(error = %e, "log level not changed");
            }
        }
        let restart_required: Vec<String> = self
            .state
            .startup_config
            .changed_keys(&new)
            .into_iter()
            .filter(|k| !is_live(k))
            .collect();
        *applied = new;
        Ok(Reloaded {
            applied: applied_keys,
            restart_required,
            certificate_sha256: print.0,
        })
    }

    /// The certificate files changed on disk: serve the new pair if it is
    /// whole and fits together.
    async fn reload_files(&self) -> Result<Reloaded, ReloadError> {
        let applied = self.applied.lock().await;
        let result = self.swap_files(&applied).await;
        self.report(Trigger::FileWatch, None, &result);
        result
    }

    async fn swap_files(&self, applied: &Config) -> Result<Reloaded, ReloadError> {
        let (tls, upstream, upstreams) = (
            applied.tls.clone(),
            applied.upstream.clone(),
            self.upstreams.clone(),
        );
        let pair = tokio::task::spawn_blocking(move || {
            let pair = CertPair::load(&tls)?;
            // The upstream CA file may be what changed: read it again too.
            upstreams
                .reload(&upstream)
                .map_err(|e| ReloadError::Apply(e.to_string()))?;
            Ok::<_, ReloadError>(pair)
        })
        .await
        .map_err(|e| ReloadError::Apply(format!("reload task failed: {e}")))??;
        let print = pair.fingerprint();
        let applied_keys = if print == self.cert.fingerprint() {
            Vec::new()
        } else {
            vec!["tls.cert".to_owned()]
        };
        self.cert.install(pair);
        Ok(Reloaded {
            applied: applied_keys,
            restart_required: Vec::new(),
            certificate_sha256: print.0,
        })
    }

    fn report(
        &self,
        trigger: Trigger,
        actor: Option<&crate::audit::Actor>,
        result: &Result<Reloaded, ReloadError>,
    ) {
        let by = trigger.name();
        let kind = match trigger {
            Trigger::FileWatch => ReloadKind::Certificate,
            Trigger::Signal | Trigger::Api => ReloadKind::Config,
        };
        self.state.view.metrics.reload(kind, result.is_ok());
        match result {
            Ok(r) => {
                tracing::info!(
                    trigger = by,
                    applied = ?r.applied,
                    certificate_sha256 = %r.certificate_sha256,
                    "configuration reloaded"
                );
                if !r.restart_required.is_empty() {
                    tracing::warn!(
                        trigger = by,
                        keys = ?r.restart_required,
                        "these settings changed but only apply after a restart; their started values stay in force"
                    );
                }
            }
            Err(e) => tracing::error!(
                trigger = by,
                error = %e,
                "reload refused: the settings and certificate in force stay"
            ),
        }
        let reason = result.as_ref().err().map(|e| e.to_string());
        let event = if result.is_ok() {
            "config.reloaded"
        } else {
            "config.reload_failed"
        };
        let base = actor.map_or_else(crate::audit::Event::default, |a| a.event(event));
        self.state.view.audit.record(&crate::audit::Event {
            event,
            actor: Some(by),
            reason: reason.as_deref(),
            ..base
        });
    }

    /// Every `tls.watch_interval`, looks at the certificate and key files
    /// and `upstream.ca_file` (size, modification time, inode: a
    /// renamed-over file or a swapped symlink shows as a change) and
    /// reloads them when they changed. A
    /// pair refused once is tried again at the next change of either file,
    /// so a certificate written before its key is picked up with the key.
    pub(crate) async fn watch_files(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(every) = self.state.startup_config.tls.watch_interval else {
            return;
        };
        let mut last = self.stamp().await;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            // Stamped before reading, so a write during the read shows as
            // a change at the next tick.
            let now = self.stamp().await;
            if now != last {
                last = now;
                let _ = self.reload_files().await;
            }
        }
    }

    async fn stamp(&self) -> Vec<Stamp> {
        let paths = {
            let applied = self.applied.lock().await;
            let mut p = vec![applied.tls.cert.clone(), applied.tls.key.clone()];
            p.extend(applied.upstream.ca_file.clone());
            p
        };
        tokio::task::spawn_blocking(move || paths.iter().map(|p| Stamp::of(p)).collect())
            .await
            .unwrap_or_default()
    }
}

/// What a file looks like from outside; any difference means it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Missing(PathBuf),
    File {
        len: u64,
        modified: Option<SystemTime>,
        inode: (u64, u64),
    },
}

impl Stamp {
    fn of(path: &Path) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        // `metadata` follows symlinks: Kubernetes' secret volumes swap a
        // `..data` link, which shows here as another inode.
        match std::fs::metadata(path) {
            Ok(m) => Stamp::File {
                len: m.len(),
                modified: m.modified().ok(),
                inode: (m.dev(), m.ino()),
            },
            Err(_) => Stamp::Missing(path.to_owned()),
        }
    }
}

/// Listens for SIGHUP and reloads on each, until shutdown. Only the binary
/// asks for this: a signal reaches the whole process.
pub(crate) async fn on_sighup(reloader: Arc<Reloader>, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with `tokengate reload` instead");
            return;
        }
    };
    loop {
        tokio::select! {
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                let _ = reloader.reload(Trigger::Signal).await;
            }
            _ = stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_match_whole_segments() {
        assert!(is_live("tls.cert"));
        assert!(is_live("public.auth_failures_per_minute"));
        assert!(!is_live("tls.certificate"));
        assert!(!is_live("public.listen"));
        assert!(!is_live("tls.watch_interval"));
    }

    #[test]
    fn a_stamp_changes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.pem");
        let missing = Stamp::of(&p);
        std::fs::write(&p, b"one").unwrap();
        let one = Stamp::of(&p);
        assert_ne!(missing, one);
        // Renamed over (what certbot and cert-manager do): another inode,
        // even with the same size.
        let q = dir.path().join("b.pem");
        std::fs::write(&q, b"two").unwrap();
        std::fs::rename(&q, &p).unwrap();
        assert_ne!(one, Stamp::of(&p));
    }
}

//! The audit log: one JSON line per security event, written by a dedicated
//! thread so the request path never waits on disk.
//!
//! Events: `refresh_token.created`, `refresh_token.deleted`,
//! `token.exchanged`, `token.exchange_refused` (with `reason`),
//! `admin.login` and `admin.login_failed`. Lines carry the time, the actor
//! (`admin`, or `client` for exchanges), the client IP, and the token id and
//! name where known. Never a token string or a password.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use serde::Serialize;

use crate::config::AuditDestination;

/// Events queued for the writer before new ones are dropped (and counted):
/// a stalled disk must never stall token exchanges.
const QUEUE: usize = 65_536;

#[derive(Debug, Serialize, Default)]
pub struct Event<'a> {
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

pub struct Audit {
    tx: Option<SyncSender<Msg>>,
    dropped: AtomicU64,
}

impl Audit {
    pub fn off() -> Audit {
        Audit {
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// Opens the destination (a file is created 0600 and appended to) and starts the writer.
    pub fn open(dest: &AuditDestination) -> io::Result<Audit> {
        let out: Box<dyn Write + Send> = match dest {
            AuditDestination::Off => return Ok(Audit::off()),
            AuditDestination::Stdout => Box::new(io::stdout()),
            AuditDestination::Stderr => Box::new(io::stderr()),
            AuditDestination::File(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(p)?,
                )
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("tokengate-audit".into())
            .spawn(move || writer(rx, BufWriter::new(out)))?;
        Ok(Audit {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues one event. Never blocks; if the writer is far behind, the event
    /// is counted as dropped and reported in the log.
    pub fn record(&self, event: &Event<'_>) {
        let Some(tx) = &self.tx else { return };
        let time = crate::clock::rfc3339_now();
        let mut line = match serde_json::to_vec(&Line { time, event }) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        match tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "audit log writer is behind; events dropped");
                }
            }
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is written.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let (ack_tx, ack_rx) = sync_channel(1);
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(timeout);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn writer(rx: Receiver<Msg>, mut out: BufWriter<Box<dyn Write + Send>>) {
    let mut failed = false;
    let mut write = |out: &mut BufWriter<_>, line: &[u8]| {
        if let Err(e) = out.write_all(line) {
            if !failed {
                tracing::error!(error = %e, "cannot write the audit log");
                failed = true;
            }
        }
    };
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Line(l) => write(&mut out, &l),
            Msg::Flush(ack) => {
                let _ = out.flush();
                let _ = ack.send(());
                continue;
            }
        }
        // Batch whatever else is queued, then flush once: cheap under load,
        // prompt when idle.
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Line(l) => write(&mut out, &l),
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_to_a_private_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        let audit = Audit::open(&AuditDestination::File(path.clone())).unwrap();
        audit.record(&Event {
            event: "refresh_token.created",
            actor: Some("admin"),
            client_ip: Some("127.0.0.1".parse().unwrap()),
            token_id: Some(7),
            token_name: Some("ci \"bot\""),
            ..Event::default()
        });
        audit.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["event"], "refresh_token.created");
        assert_eq!(v["token_id"], 7);
        assert_eq!(v["token_name"], "ci \"bot\"");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("reason").is_none());
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }
}

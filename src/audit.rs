//! The audit log: one JSON line per security event, written by a dedicated
//! thread so the request path never waits on disk.
//!
//! Events: `refresh_token.created`, `refresh_token.deleted`,
//! `token.exchanged`, `token.exchange_refused` (with `reason`),
//! `auth.throttled` (with `count`), `admin.login`, `admin.login_failed` and
//! `admin.logout`. Lines carry the time, the actor (`admin`, or `client` for
//! exchanges), the client IP, and the token id and name where known. Never a
//! token string or a password.
//!
//! Clients cause most lines, and a client chooses how many and how long
//! (its User-Agent). So every string field is cut to `MAX_FIELD_CHARS`, and
//! the lines waiting for the writer are bounded by bytes and by count in two
//! separate budgets: client-caused events (`token.*`, `auth.*`) can fill
//! theirs and be dropped, but never take the room of an administrator's or
//! security event (`admin.*`, `refresh_token.*`). Drops are counted per
//! class and logged.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::AuditDestination;

/// Longest string field kept in a line, in characters: a 16 KiB User-Agent
/// must not become a 16 KiB line (the first 256 characters identify a client).
pub(crate) const MAX_FIELD_CHARS: usize = 256;

/// What client-caused lines may hold in memory while the writer is behind,
/// before new ones are dropped (and counted): a stalled disk must never
/// stall token exchanges, nor grow without bound.
const CLIENT_BYTES: usize = 4 << 20;
const CLIENT_LINES: usize = 65_536;
/// The administrators' and security events' own room, which client events
/// cannot use: they are few, and the ones an investigation needs.
const SECURITY_BYTES: usize = 1 << 20;
const SECURITY_LINES: usize = 8_192;
/// The writer gives room back every this many lines, not once per batch,
/// so a long batch does not keep the queue looking full.
const RELEASE_EVERY: usize = 64;

#[derive(Debug, Serialize, Default, Clone, Copy)]
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
    /// How many times it happened (`auth.throttled`: requests refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The first `MAX_FIELD_CHARS` characters of `s`.
pub(crate) fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_FIELD_CHARS) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

impl<'a> Event<'a> {
    /// The event with every string field cut to `MAX_FIELD_CHARS`.
    fn clipped(&self) -> Event<'a> {
        Event {
            actor: self.actor.map(clip),
            token_name: self.token_name.map(clip),
            reason: self.reason.map(clip),
            user_agent: self.user_agent.map(clip),
            ..*self
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    /// `cluster.name`: which replica wrote it, when several share one log
    /// pipeline. Omitted for a single node (redb).
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<&'a str>,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// Who caused an event, and so whose room in the queue it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `token.*`, `auth.*`: caused by API clients, as many as they like.
    Client,
    /// `admin.*`, `refresh_token.*`: administrators' actions and logins.
    Security,
}

impl Class {
    fn of(event: &str) -> Class {
        if event.starts_with("admin.") || event.starts_with("refresh_token.") {
            Class::Security
        } else {
            Class::Client
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::Client => "client",
            Class::Security => "security",
        }
    }
}

/// One class's room in the queue: bytes and lines waiting for the writer.
struct Budget {
    class: Class,
    max_bytes: usize,
    max_lines: usize,
    bytes: AtomicUsize,
    lines: AtomicUsize,
    dropped: AtomicU64,
}

impl Budget {
    fn new(class: Class, max_bytes: usize, max_lines: usize) -> Budget {
        Budget {
            class,
            max_bytes,
            max_lines,
            bytes: AtomicUsize::new(0),
            lines: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Takes room for one line of `len` bytes, if there is any.
    fn reserve(&self, len: usize) -> bool {
        if self.bytes.fetch_add(len, Ordering::Relaxed) + len > self.max_bytes {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) >= self.max_lines {
            self.release(len, 1);
            return false;
        }
        true
    }

    fn release(&self, bytes: usize, lines: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.lines.fetch_sub(lines, Ordering::Relaxed);
    }

    fn drop_one(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                class = self.class.name(),
                dropped = n,
                "audit log writer is behind; events dropped"
            );
        }
    }
}

/// The two budgets, shared by the recorders and the writer thread.
struct Budgets {
    client: Budget,
    security: Budget,
}

impl Budgets {
    fn new() -> Budgets {
        Budgets {
            client: Budget::new(Class::Client, CLIENT_BYTES, CLIENT_LINES),
            security: Budget::new(Class::Security, SECURITY_BYTES, SECURITY_LINES),
        }
    }

    fn of(&self, class: Class) -> &Budget {
        match class {
            Class::Client => &self.client,
            Class::Security => &self.security,
        }
    }
}

enum Msg {
    Line(Vec<u8>, Class),
    Flush(SyncSender<()>),
}

/// Events dropped because the writer was behind, per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub client: u64,
    pub security: u64,
}

pub struct Audit {
    /// Unbounded as a channel; bounded by `budgets`, which every line
    /// passes before it is sent.
    tx: Option<Sender<Msg>>,
    budgets: Arc<Budgets>,
    replica: Option<String>,
}

impl Audit {
    pub fn off() -> Audit {
        Audit {
            tx: None,
            budgets: Arc::new(Budgets::new()),
            replica: None,
        }
    }

    /// Opens the destination (a file is created 0600 and appended to) and starts the writer.
    pub fn open(dest: &AuditDestination) -> io::Result<Audit> {
        match open_destination(dest)? {
            None => Ok(Audit::off()),
            Some(out) => Audit::with_writer(out),
        }
    }

    /// Names the replica in every line from now on (cluster mode).
    pub(crate) fn with_replica(mut self, name: &str) -> Audit {
        self.replica = Some(name.to_owned());
        self
    }

    fn with_writer(out: Box<dyn Write + Send>) -> io::Result<Audit> {
        let (tx, rx) = channel();
        let budgets = Arc::new(Budgets::new());
        let shared = budgets.clone();
        std::thread::Builder::new()
            .name("tokengate-audit".into())
            .spawn(move || writer(rx, BufWriter::new(out), &shared))?;
        Ok(Audit {
            tx: Some(tx),
            budgets,
            replica: None,
        })
    }

    /// Queues one event. Never blocks; if the writer is far behind, the event
    /// is counted as dropped and reported in the log.
    pub fn record(&self, event: &Event<'_>) {
        let Some(tx) = &self.tx else { return };
        let event = event.clipped();
        let budget = self.budgets.of(Class::of(event.event));
        let time = crate::clock::rfc3339_now();
        let mut line = match serde_json::to_vec(&Line {
            time,
            replica: self.replica.as_deref(),
            event: &event,
        }) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let len = line.len();
        if !budget.reserve(len) {
            budget.drop_one();
            return;
        }
        if tx.send(Msg::Line(line, budget.class)).is_err() {
            budget.release(len, 1);
            budget.drop_one();
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

    /// Events dropped so far, per class.
    pub fn dropped(&self) -> Dropped {
        Dropped {
            client: self.budgets.client.dropped.load(Ordering::Relaxed),
            security: self.budgets.security.dropped.load(Ordering::Relaxed),
        }
    }

    /// Bytes of lines waiting for the writer.
    pub fn pending_bytes(&self) -> usize {
        self.budgets.client.bytes.load(Ordering::Relaxed)
            + self.budgets.security.bytes.load(Ordering::Relaxed)
    }
}

/// Opens a log destination (the audit log's, the access log's): `None`
/// for off; a file is created 0600 (its directory too) and appended to.
pub(crate) fn open_destination(
    dest: &AuditDestination,
) -> io::Result<Option<Box<dyn Write + Send>>> {
    Ok(Some(match dest {
        AuditDestination::Off => return Ok(None),
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
    }))
}

/// Room taken by lines written but not yet given back, per class.
#[derive(Default)]
struct Written {
    bytes: [usize; 2],
    lines: [usize; 2],
}

impl Written {
    fn add(&mut self, class: Class, bytes: usize) {
        let i = class as usize;
        self.bytes[i] += bytes;
        self.lines[i] += 1;
    }

    fn give_back(&mut self, budgets: &Budgets) {
        for class in [Class::Client, Class::Security] {
            let i = class as usize;
            if self.lines[i] > 0 {
                budgets.of(class).release(self.bytes[i], self.lines[i]);
            }
        }
        *self = Written::default();
    }
}

fn writer(rx: Receiver<Msg>, mut out: BufWriter<Box<dyn Write + Send>>, budgets: &Budgets) {
    let mut failed = false;
    let mut written = Written::default();
    // Drops already told about in a "caught up" line, per class.
    let mut reported = [0u64; 2];
    let mut handle = |out: &mut BufWriter<_>, msg: Msg, written: &mut Written| match msg {
        Msg::Line(l, class) => {
            if let Err(e) = out.write_all(&l) {
                if !failed {
                    tracing::error!(error = %e, "cannot write the audit log");
                    failed = true;
                }
            }
            written.add(class, l.len());
            if written.lines.iter().sum::<usize>() >= RELEASE_EVERY {
                written.give_back(budgets);
            }
        }
        Msg::Flush(ack) => {
            let _ = out.flush();
            written.give_back(budgets);
            let _ = ack.send(());
        }
    };
    while let Ok(msg) = rx.recv() {
        handle(&mut out, msg, &mut written);
        // Batch whatever else is queued, then flush once: cheap under load,
        // prompt when idle.
        while let Ok(msg) = rx.try_recv() {
            handle(&mut out, msg, &mut written);
        }
        let _ = out.flush();
        written.give_back(budgets);
        // The queue is empty: say once how much an overload cost.
        for class in [Class::Client, Class::Security] {
            let total = budgets.of(class).dropped.load(Ordering::Relaxed);
            let seen = &mut reported[class as usize];
            if total > *seen {
                tracing::warn!(
                    class = class.name(),
                    dropped = total - *seen,
                    dropped_total = total,
                    "audit log writer caught up; events were dropped while it was behind"
                );
                *seen = total;
            }
        }
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

    /// Output that blocks until the test opens the gate: a stalled disk.
    #[derive(Clone, Default)]
    struct Stalled {
        open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        out: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Stalled {
        fn open_gate(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut open = self.open.0.lock().unwrap();
            while !*open {
                open = self.open.1.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_flood_of_client_events_is_bounded_and_cannot_push_out_admin_events() {
        let out = Stalled::default();
        let audit = Audit::with_writer(Box::new(out.clone())).unwrap();
        let user_agent = "A".repeat(16 * 1024);
        let refused = Event {
            event: "token.exchange_refused",
            actor: Some("client"),
            client_ip: Some("192.0.2.7".parse().unwrap()),
            reason: Some("invalid_grant: refresh token is not valid"),
            user_agent: Some(&user_agent),
            ..Event::default()
        };
        let flood = 20_000;
        for _ in 0..flood {
            audit.record(&refused);
            assert!(audit.pending_bytes() <= CLIENT_BYTES);
        }
        let dropped = audit.dropped();
        assert!(dropped.client > 0, "the client budget filled up");
        // An administrator's events during the flood still find room.
        for event in ["admin.login_failed", "refresh_token.deleted"] {
            audit.record(&Event {
                event,
                actor: Some("admin"),
                ..Event::default()
            });
        }
        assert_eq!(audit.dropped().security, 0);
        assert!(audit.pending_bytes() <= CLIENT_BYTES + SECURITY_BYTES);

        out.open_gate();
        audit.flush(Duration::from_secs(30));
        let text = String::from_utf8(out.out.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let events = |name: &str| lines.iter().filter(|v| v["event"] == name).count();
        assert_eq!(events("admin.login_failed"), 1);
        assert_eq!(events("refresh_token.deleted"), 1);
        let refused_lines = events("token.exchange_refused");
        assert_eq!(
            u64::try_from(refused_lines).unwrap(),
            flood - dropped.client
        );
        assert!(lines
            .iter()
            .filter_map(|v| v["user_agent"].as_str())
            .all(|ua| ua.chars().count() == MAX_FIELD_CHARS));
        // Room is given back once written.
        assert_eq!(audit.pending_bytes(), 0);
    }

    #[test]
    fn long_fields_are_cut_on_character_boundaries() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        assert_eq!(clip(&long).chars().count(), MAX_FIELD_CHARS);
        assert_eq!(clip(&"x".repeat(MAX_FIELD_CHARS)).len(), MAX_FIELD_CHARS);
        assert_eq!(Class::of("admin.login_failed"), Class::Security);
        assert_eq!(Class::of("refresh_token.created"), Class::Security);
        assert_eq!(Class::of("token.exchange_refused"), Class::Client);
        assert_eq!(Class::of("auth.throttled"), Class::Client);
    }
}

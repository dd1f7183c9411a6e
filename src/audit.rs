//! The audit log: one JSON line per security event, written by a dedicated
//! thread (`log_writer`) so the request path never waits on disk.
//!
//! Events: `refresh_token.created`, `refresh_token.deleted`,
//! `token.exchanged`, `token.exchange_refused` (with `reason`),
//! `auth.throttled` (with `count`), `admin.login`, `admin.login_failed` and
//! `admin.logout`, and the account changes `admin.user_created`,
//! `admin.user_edited`, `admin.user_deleted`. Lines carry the time, the actor
//! (`admin`, or `client` for exchanges), the client IP, and the token id and
//! name where known; an administrator's lines also the account (`user`), how
//! it signed in (`via`), the local socket peer's Unix user id (`uid`), and
//! for account changes the account acted on (`target_user`). Never a token
//! string or a password.
//!
//! Clients cause most lines, and a client chooses how many and how long
//! (its User-Agent). So every string field is cut to `MAX_FIELD_CHARS`, and
//! the lines waiting for the writer are bounded by bytes and by count in two
//! separate budgets: client-caused events (`token.*`, `auth.*`) can fill
//! theirs and be dropped, but never take the room of an administrator's or
//! security event (`admin.*`, `refresh_token.*`). Drops are counted per
//! class and logged.
//!
//! Every line is a link of a hash chain (`audit_chain`): it starts with
//! `seq` and `prev`, given on the writer thread in the order lines reach
//! the destination, so a dropped event takes no seq and leaves no gap. A
//! file continues its chain across restarts; stdout and stderr start a new
//! one at each start (what they feed keeps no state the gateway can read).

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::audit_chain::{self, Found, Head};
use crate::config::AuditDestination;
use crate::log_writer::{clip, open_destination, Budget, LogWriter, Render};

/// What client-caused lines may hold in memory while the writer is behind,
/// before new ones are dropped (and counted): a stalled disk must never
/// stall token exchanges, nor grow without bound.
const CLIENT_BYTES: usize = 4 << 20;
const CLIENT_LINES: usize = 65_536;
/// The administrators' and security events' own room, which client events
/// cannot use: they are few, and the ones an investigation needs.
const SECURITY_BYTES: usize = 1 << 20;
const SECURITY_LINES: usize = 8_192;

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
    /// The admin account that acted (or tried to sign in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// How it signed in: `password`, `oidc` or `socket`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// The local socket's peer: its Unix user id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The account an account change acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_user: Option<&'a str>,
}

/// Who made an admin change, as every admin audit line names them: the
/// account, how it signed in, the client address, and for the local socket
/// the peer's Unix user id.
#[derive(Debug, Clone)]
pub(crate) struct Actor {
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) who: crate::roles::Who,
    pub(crate) uid: Option<u32>,
}

impl Actor {
    /// An admin event by this actor; the caller fills in the rest.
    pub(crate) fn event(&self, event: &'static str) -> Event<'_> {
        Event {
            event,
            // A leaked-token report acts on a client's word, not an
            // administrator's.
            actor: Some(if self.who.via == crate::roles::Via::Report {
                "client"
            } else {
                "admin"
            }),
            client_ip: Some(self.peer.ip().to_canonical()),
            user: Some(&self.who.user),
            via: Some(self.who.via.as_str()),
            uid: self.uid,
            ..Event::default()
        }
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
            user: self.user.map(clip),
            target_user: self.target_user.map(clip),
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

/// The two budgets, index = `Class as usize`.
fn budgets() -> Vec<Budget> {
    [
        (Class::Client, CLIENT_BYTES, CLIENT_LINES),
        (Class::Security, SECURITY_BYTES, SECURITY_LINES),
    ]
    .into_iter()
    .map(|(class, bytes, lines)| Budget::new(class.name(), bytes, lines))
    .collect()
}

/// Audit lines are serialised by the caller (it holds the borrowed event);
/// the writer links each into the chain, in the order they are written.
struct Chained {
    /// The last line written (or found in the file at start).
    head: Head,
    /// Reused for every line.
    line: Vec<u8>,
}

impl Render for Chained {
    type Item = Vec<u8>;

    fn write(&mut self, body: Vec<u8>, out: &mut impl Write) -> io::Result<()> {
        let next = self.head.link(&body, &mut self.line);
        self.line.push(b'\n');
        // Only a line handed to the output moves the head: after a failed
        // write the next line links to the last one written.
        out.write_all(&self.line)?;
        self.head = next;
        Ok(())
    }
}

/// Events dropped because the writer was behind, per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub client: u64,
    pub security: u64,
}

/// Something else that sees every event as it is recorded, whether the
/// log is on or off: the webhooks' outbox, which turns the lifecycle's
/// events into deliveries (so every event, wherever it is recorded, is
/// one webhook). It must not block: it is called on the request path.
pub(crate) trait Tap: Send + Sync {
    fn observe(&self, event: &Event<'_>);
}

pub struct Audit {
    /// `None`: the audit log is off.
    writer: Option<LogWriter<Vec<u8>>>,
    replica: Option<String>,
    tap: Option<std::sync::Arc<dyn Tap>>,
}

impl Audit {
    pub fn off() -> Audit {
        Audit {
            writer: None,
            replica: None,
            tap: None,
        }
    }

    /// Opens the destination (a file is created 0600 and appended to, its
    /// chain continued from its last line) and starts the writer.
    pub fn open(dest: &AuditDestination) -> io::Result<Audit> {
        let head = match dest {
            AuditDestination::File(path) => continue_chain(path)?,
            _ => Head::GENESIS,
        };
        match open_destination(dest)? {
            None => Ok(Audit::off()),
            Some(out) => Audit::with_writer(out, head),
        }
    }

    /// Names the replica in every line from now on (cluster mode).
    pub(crate) fn with_replica(mut self, name: &str) -> Audit {
        self.replica = Some(name.to_owned());
        self
    }

    /// Shows every event recorded from now on to `tap` too.
    pub(crate) fn with_tap(mut self, tap: std::sync::Arc<dyn Tap>) -> Audit {
        self.tap = Some(tap);
        self
    }

    fn with_writer(out: Box<dyn Write + Send>, head: Head) -> io::Result<Audit> {
        let render = Chained {
            head,
            line: Vec::new(),
        };
        let writer = LogWriter::start("audit log", "tokengate-audit", out, render, budgets())?;
        Ok(Audit {
            writer: Some(writer),
            replica: None,
            tap: None,
        })
    }

    /// Queues one event. Never blocks; if the writer is far behind, the event
    /// is counted as dropped and reported in the log.
    pub fn record(&self, event: &Event<'_>) {
        if let Some(tap) = &self.tap {
            tap.observe(event);
        }
        let Some(writer) = &self.writer else { return };
        let event = event.clipped();
        let time = crate::clock::rfc3339_now();
        let Ok(body) = serde_json::to_vec(&Line {
            time,
            replica: self.replica.as_deref(),
            event: &event,
        }) else {
            return;
        };
        // The room it takes: the line as written, with its link and newline.
        let bytes = body.len() + audit_chain::LINK_BYTES + 1;
        writer.send(Class::of(event.event) as usize, bytes, body);
    }

    /// Waits (at most `timeout`) until everything queued so far is written.
    pub fn flush(&self, timeout: Duration) {
        if let Some(w) = &self.writer {
            w.flush(timeout);
        }
    }

    /// Events dropped so far, per class.
    pub fn dropped(&self) -> Dropped {
        let dropped = |class| {
            self.writer
                .as_ref()
                .map_or(0, |w| w.dropped(class as usize))
        };
        Dropped {
            client: dropped(Class::Client),
            security: dropped(Class::Security),
        }
    }

    /// Bytes of lines waiting for the writer.
    pub fn pending_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, LogWriter::pending_bytes)
    }
}

/// Where the chain of the audit file at `path` stands, after repairing a
/// torn end; says so in the log when the file did not end in a chained line.
fn continue_chain(path: &std::path::Path) -> io::Result<Head> {
    let (head, found) = audit_chain::recover(path)?;
    let file = path.display();
    match found {
        Found::Empty | Found::Chained | Found::NotAFile => {}
        Found::Unreadable(error) => tracing::warn!(
            file = %file,
            error,
            "cannot read the audit file to continue its chain: a new chain starts at seq 1"
        ),
        Found::Unchained => tracing::warn!(
            file = %file,
            "the audit file does not end in a chained line (seq, prev): a new chain starts at seq 1 after it"
        ),
        Found::TornCut(bytes) => tracing::warn!(
            file = %file,
            bytes,
            seq = head.seq,
            "the audit file ended in part of a line (a write cut short by a crash): that part was cut off; the chain continues after the last whole line"
        ),
        Found::TornKept(bytes) => tracing::warn!(
            file = %file,
            bytes,
            seq = head.seq,
            "the audit file ended in part of a line (a write cut short by a crash) and cannot be shortened (append-only?): the part was ended with a newline and stays; `tokengate audit verify` will name it; the chain continues after the last whole line"
        ),
        Found::Completed => tracing::warn!(
            file = %file,
            seq = head.seq,
            "the audit file's last line lacked its newline (a write cut short by a crash): added"
        ),
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_writer::tests::Stalled;
    use crate::log_writer::MAX_FIELD_CHARS;

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
        assert_eq!(v["seq"], 1);
        assert_eq!(v["prev"], "0".repeat(64));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_flood_of_client_events_is_bounded_and_cannot_push_out_admin_events() {
        let out = Stalled::default();
        let audit = Audit::with_writer(Box::new(out.clone()), Head::GENESIS).unwrap();
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
        // Dropped events took no seq: the chain has no gap.
        let seqs: Vec<u64> = lines.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=u64::try_from(lines.len()).unwrap()).collect::<Vec<_>>()
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("audit.jsonl");
        std::fs::write(&file, text).unwrap();
        let v = audit_chain::verify(&[file], &audit_chain::VerifyOptions::default()).unwrap();
        assert_eq!(v.lines, u64::try_from(lines.len()).unwrap());
    }

    #[test]
    fn a_file_continues_its_chain_across_restarts_and_a_torn_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let dest = AuditDestination::File(path.clone());
        let write = |n: usize| {
            let audit = Audit::open(&dest).unwrap();
            for _ in 0..n {
                audit.record(&Event {
                    event: "admin.login",
                    actor: Some("admin"),
                    ..Event::default()
                });
            }
            audit.flush(Duration::from_secs(5));
        };
        let seqs = || -> Vec<u64> {
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        write(3);
        write(2);
        assert_eq!(seqs(), [1, 2, 3, 4, 5]);
        let opts = audit_chain::VerifyOptions::default();
        let files = [path.clone()];
        assert_eq!(audit_chain::verify(&files, &opts).unwrap().last.seq, 5);

        // A crash in the middle of a line: the part is cut off at start.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(br#"{"seq":6,"prev":"00"#);
        std::fs::write(&path, &bytes).unwrap();
        write(1);
        assert_eq!(seqs(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(audit_chain::verify(&files, &opts).unwrap().lines, 6);

        // A log from before the chain: a new chain after its last line,
        // which verify names as the break it is.
        std::fs::write(&path, "{\"time\":\"t\",\"event\":\"admin.login\"}\n").unwrap();
        write(2);
        let text = std::fs::read_to_string(&path).unwrap();
        let second: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(second["seq"], 1);
        assert_eq!(second["prev"], "0".repeat(64));
    }

    #[test]
    fn stdout_starts_a_chain_at_each_start() {
        let out = Stalled::default();
        out.open_gate();
        for _ in 0..2 {
            let audit = Audit::with_writer(Box::new(out.clone()), Head::GENESIS).unwrap();
            audit.record(&Event {
                event: "admin.login",
                ..Event::default()
            });
            audit.flush(Duration::from_secs(5));
        }
        let text = String::from_utf8(out.out.lock().unwrap().clone()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                (v["seq"].as_u64(), v["prev"].as_str()),
                (Some(1), Some(&*"0".repeat(64)))
            );
        }
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn events_are_classed_by_who_causes_them() {
        assert_eq!(Class::of("admin.login_failed"), Class::Security);
        assert_eq!(Class::of("refresh_token.created"), Class::Security);
        assert_eq!(Class::of("token.exchange_refused"), Class::Client);
        assert_eq!(Class::of("auth.throttled"), Class::Client);
    }
}

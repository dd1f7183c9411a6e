//! The access log (`log.access`): one line per public request, built where
//! the request finishes and written by a dedicated thread (`log_writer`), so the request
//! path never waits on a disk or a pipe. The queue is bounded: when the
//! writer is behind, lines are dropped and counted
//! (`tokengate_access_log_dropped_total`), never waited for.
//!
//! A line carries the time, the client's address (behind trusted proxies:
//! the client), method, path without the query (queries can carry
//! secrets), status, response body bytes handed to the connection,
//! durations, and the refresh token's id and name. Never a token or an
//! `Authorization` header: the request's headers are not looked at here.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{AuditDestination, LogFormat};
use crate::log_writer::{clip, open_destination, Budget, LogWriter, Render};

/// Lines waiting for the writer before new ones are dropped: a few seconds
/// of a busy gateway, a few MiB at most.
const QUEUE: usize = 16_384;

/// One finished request.
pub(crate) struct Entry {
    pub(crate) time: SystemTime,
    pub(crate) client: IpAddr,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream: Option<Duration>,
    pub(crate) token: Option<(u64, String)>,
}

/// The sending side; each public worker holds its own clone.
#[derive(Clone)]
pub(crate) struct AccessLog {
    /// Boxed entries: the queue moves a pointer, and the line is formatted
    /// on the writer thread, not the request's.
    writer: LogWriter<Box<Entry>>,
}

impl AccessLog {
    /// Opens the destination and starts the writer; `None` for off.
    pub(crate) fn open(dest: &AuditDestination, format: LogFormat) -> io::Result<Option<Self>> {
        let Some(out) = open_destination(dest)? else {
            return Ok(None);
        };
        AccessLog::with_writer(out, format, QUEUE).map(Some)
    }

    fn with_writer(
        out: Box<dyn Write + Send>,
        format: LogFormat,
        lines: usize,
    ) -> io::Result<AccessLog> {
        // Bounded by lines only: an entry's size is known once formatted.
        let budget = Budget::new("request", usize::MAX, lines);
        let lines = Lines {
            line: String::with_capacity(256),
            format,
        };
        let writer = LogWriter::start("access log", "tokengate-access", out, lines, vec![budget])?;
        Ok(AccessLog { writer })
    }

    /// Queues a line; never blocks.
    pub(crate) fn record(&self, entry: Entry) {
        self.writer.send(0, 0, Box::new(entry));
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.writer.dropped(0)
    }

    /// Waits (at most `timeout`) until the lines queued so far are written.
    pub(crate) fn flush(&self, timeout: Duration) {
        self.writer.flush(timeout);
    }
}

/// Formats entries on the writer thread, into one reused buffer.
struct Lines {
    line: String,
    format: LogFormat,
}

impl Render for Lines {
    type Item = Box<Entry>;

    fn write(&mut self, entry: Box<Entry>, out: &mut impl Write) -> io::Result<()> {
        self.line.clear();
        format_entry(&mut self.line, &entry, self.format);
        out.write_all(self.line.as_bytes())
    }
}

#[derive(Serialize)]
struct Json<'a> {
    time: &'a str,
    client_ip: IpAddr,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    upstream_duration_ms: Option<f64>,
    token_id: Option<u64>,
    token_name: Option<&'a str>,
}

fn millis(d: Duration) -> f64 {
    // Microsecond precision is plenty for a log line.
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn format_entry(out: &mut String, e: &Entry, format: LogFormat) {
    let time = crate::clock::rfc3339_at(e.time);
    // A client picks the path's length: cut like the audit log's fields.
    let path = clip(&e.path);
    let name = e.token.as_ref().map(|(_, n)| clip(n));
    match format {
        LogFormat::Json => {
            let j = Json {
                time: &time,
                client_ip: e.client.to_canonical(),
                method: e.method.as_str(),
                path,
                status: e.status,
                bytes: e.bytes,
                duration_ms: millis(e.duration),
                upstream_duration_ms: e.upstream.map(millis),
                token_id: e.token.as_ref().map(|(id, _)| *id),
                token_name: name,
            };
            if let Ok(s) = serde_json::to_string(&j) {
                out.push_str(&s);
            }
        }
        LogFormat::Text => {
            // Debug-quoted path and name: a client cannot forge a line break.
            let _ = write!(
                out,
                "{time} {} {} {path:?} {} {}B {:.3}ms",
                e.client.to_canonical(),
                e.method,
                e.status,
                e.bytes,
                millis(e.duration),
            );
            match e.upstream {
                Some(u) => {
                    let _ = write!(out, " upstream={:.3}ms", millis(u));
                }
                None => out.push_str(" upstream=-"),
            }
            match (&e.token, name) {
                (Some((id, _)), Some(n)) => {
                    let _ = write!(out, " token_id={id} token_name={n:?}");
                }
                _ => out.push_str(" token_id=- token_name=-"),
            }
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            client: "::ffff:10.0.0.7".parse().unwrap(),
            method: http::Method::GET,
            path: "/api/\"x\"\n".into(),
            status: 200,
            bytes: 42,
            duration: Duration::from_micros(1500),
            upstream: Some(Duration::from_micros(1000)),
            token: Some((7, "ci bot".into())),
        }
    }

    #[test]
    fn json_lines_carry_every_field() {
        let mut s = String::new();
        format_entry(&mut s, &entry(), LogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["client_ip"], "10.0.0.7");
        assert_eq!(v["path"], "/api/\"x\"\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream_duration_ms"], 1.0);
        assert_eq!(v["token_id"], 7);
        assert_eq!(v["token_name"], "ci bot");
        assert!(v["time"].as_str().unwrap().starts_with("2027-01-15T"));
        // Whole seconds keep their zeros: every line's time has one width.
        assert_eq!(v["time"], "2027-01-15T08:00:00.000Z");
    }

    #[test]
    fn text_lines_stay_one_line() {
        let mut s = String::new();
        format_entry(&mut s, &entry(), LogFormat::Text);
        assert_eq!(s.matches('\n').count(), 1);
        assert!(s.contains(r#" 10.0.0.7 GET "/api/\"x\"\n" 200 42B 1.500ms upstream=1.000ms token_id=7 token_name="ci bot""#), "{s}");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let out = crate::log_writer::tests::Stalled::default();
        let log = AccessLog::with_writer(Box::new(out.clone()), LogFormat::Text, 1).unwrap();
        log.record(entry());
        log.record(entry());
        assert_eq!(log.dropped(), 1);
        out.open_gate();
        log.flush(Duration::from_secs(30));
        assert_eq!(out.out.lock().unwrap().split(|b| *b == b'\n').count(), 2);
    }
}

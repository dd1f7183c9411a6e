//! The writer thread behind the audit log and the access log: a request or
//! an administrator's action queues a line and goes on; one dedicated
//! thread per log writes what is queued, in batches, so no request ever
//! waits on a disk or a pipe.
//!
//! The queue is bounded by bytes and lines in one or more budgets (the
//! audit log keeps client-caused events apart from administrators'). A
//! line that finds its budget full is dropped and counted, never waited
//! for; the count is logged at each power of two and once more when the
//! writer has caught up. The writer gives room back as it writes, every
//! [`RELEASE_EVERY`] lines, so a long batch does not keep the queue looking
//! full; it flushes once per batch (cheap under load, prompt when idle) and
//! on request ([`LogWriter::flush`], at shutdown).

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use crate::config::AuditDestination;

/// Longest string field kept in a line, in characters: a 16 KiB User-Agent
/// must not become a 16 KiB line (the first 256 characters identify a client).
pub(crate) const MAX_FIELD_CHARS: usize = 256;

/// The writer gives room back every this many lines, not once per batch,
/// so a long batch does not keep the queue looking full.
const RELEASE_EVERY: usize = 64;

/// The first `MAX_FIELD_CHARS` characters of `s`.
pub(crate) fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_FIELD_CHARS) {
        Some((end, _)) => &s[..end],
        None => s,
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

/// Turns what a log queues into its line, on the writer thread (so the
/// sender pays only for what it must: the access log queues the request's
/// facts and formats them here).
pub(crate) trait Render: Send + 'static {
    type Item: Send + 'static;

    fn write(&mut self, item: Self::Item, out: &mut impl Write) -> io::Result<()>;
}

/// One class of lines' room in the queue: bytes and lines waiting for the
/// writer.
pub(crate) struct Budget {
    /// For log lines about drops.
    class: &'static str,
    max_bytes: usize,
    max_lines: usize,
    bytes: AtomicUsize,
    lines: AtomicUsize,
    dropped: AtomicU64,
}

impl Budget {
    pub(crate) fn new(class: &'static str, max_bytes: usize, max_lines: usize) -> Budget {
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
}

/// What the senders and the writer thread share.
struct Shared {
    /// "audit log", "access log": for its own log lines.
    name: &'static str,
    budgets: Box<[Budget]>,
}

impl Shared {
    fn drop_one(&self, budget: &Budget) {
        let n = budget.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                class = budget.class,
                dropped = n,
                "{} writer is behind; lines dropped",
                self.name
            );
        }
    }
}

enum Msg<T> {
    /// An item, the budget it took room from, and how many bytes.
    Line(T, usize, usize),
    Flush(SyncSender<()>),
}

/// The sending side of one log's writer thread; cheap to clone (each public
/// worker holds its own clone of the access log's).
pub(crate) struct LogWriter<T> {
    /// Unbounded as a channel; bounded by the budgets, which every line
    /// passes before it is sent.
    tx: Sender<Msg<T>>,
    shared: Arc<Shared>,
}

impl<T> Clone for LogWriter<T> {
    fn clone(&self) -> Self {
        LogWriter {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T: Send + 'static> LogWriter<T> {
    /// Starts the writer thread `thread`, writing `render`ed lines to `out`
    /// within `budgets` (at least one; [`Self::send`] names one by index).
    pub(crate) fn start<R: Render<Item = T>>(
        name: &'static str,
        thread: &str,
        out: Box<dyn Write + Send>,
        render: R,
        budgets: Vec<Budget>,
    ) -> io::Result<LogWriter<T>> {
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            name,
            budgets: budgets.into_boxed_slice(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || run(&rx, BufWriter::new(out), render, &writer))?;
        Ok(LogWriter { tx, shared })
    }

    /// Queues `item`, `bytes` long, in budget `class`. Never blocks: with
    /// no room (or no writer), the line is dropped and counted.
    pub(crate) fn send(&self, class: usize, bytes: usize, item: T) {
        let Some(budget) = self.shared.budgets.get(class) else {
            return;
        };
        if !budget.reserve(bytes) {
            self.shared.drop_one(budget);
            return;
        }
        if self.tx.send(Msg::Line(item, class, bytes)).is_err() {
            budget.release(bytes, 1);
            self.shared.drop_one(budget);
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is written.
    pub(crate) fn flush(&self, timeout: Duration) {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(timeout);
        }
    }

    /// Lines of budget `class` dropped so far.
    pub(crate) fn dropped(&self, class: usize) -> u64 {
        self.shared
            .budgets
            .get(class)
            .map_or(0, |b| b.dropped.load(Ordering::Relaxed))
    }

    /// Bytes of lines waiting for the writer, all budgets.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.shared
            .budgets
            .iter()
            .map(|b| b.bytes.load(Ordering::Relaxed))
            .sum()
    }
}

/// Room taken by lines written but not yet given back, per budget.
struct Written {
    bytes: Vec<usize>,
    lines: Vec<usize>,
    total: usize,
}

impl Written {
    fn new(n: usize) -> Written {
        Written {
            bytes: vec![0; n],
            lines: vec![0; n],
            total: 0,
        }
    }

    fn add(&mut self, class: usize, bytes: usize) {
        if let (Some(b), Some(l)) = (self.bytes.get_mut(class), self.lines.get_mut(class)) {
            *b += bytes;
            *l += 1;
            self.total += 1;
        }
    }

    fn give_back(&mut self, budgets: &[Budget]) {
        for ((budget, bytes), lines) in budgets.iter().zip(&mut self.bytes).zip(&mut self.lines) {
            if *lines > 0 {
                budget.release(*bytes, *lines);
            }
            (*bytes, *lines) = (0, 0);
        }
        self.total = 0;
    }
}

/// The writer thread: until every sender is gone, writes what is queued,
/// then flushes once and gives the room back.
fn run<R: Render>(
    rx: &Receiver<Msg<R::Item>>,
    mut out: BufWriter<Box<dyn Write + Send>>,
    mut render: R,
    shared: &Shared,
) {
    let budgets = &shared.budgets[..];
    let mut failed = false;
    let mut written = Written::new(budgets.len());
    // Drops already told about in a "caught up" line, per budget.
    let mut reported = vec![0u64; budgets.len()];
    let mut handle = |out: &mut BufWriter<_>, msg, written: &mut Written| match msg {
        Msg::Line(item, class, bytes) => {
            if let Err(e) = render.write(item, out) {
                if !failed {
                    tracing::error!(error = %e, "cannot write the {}", shared.name);
                    failed = true;
                }
            }
            written.add(class, bytes);
            if written.total >= RELEASE_EVERY {
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
        // Batch whatever else is queued, then flush once.
        while let Ok(msg) = rx.try_recv() {
            handle(&mut out, msg, &mut written);
        }
        let _ = out.flush();
        written.give_back(budgets);
        // The queue is empty: say once how much an overload cost.
        for (budget, seen) in budgets.iter().zip(&mut reported) {
            let total = budget.dropped.load(Ordering::Relaxed);
            if total > *seen {
                tracing::warn!(
                    class = budget.class,
                    dropped = total - *seen,
                    dropped_total = total,
                    "{} writer caught up; lines were dropped while it was behind",
                    shared.name
                );
                *seen = total;
            }
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Output that blocks until the test opens the gate: a stalled disk.
    #[derive(Clone, Default)]
    pub(crate) struct Stalled {
        open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        pub(crate) out: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Stalled {
        pub(crate) fn open_gate(&self) {
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

    struct Raw;

    impl Render for Raw {
        type Item = Vec<u8>;
        fn write(&mut self, item: Vec<u8>, out: &mut impl Write) -> io::Result<()> {
            out.write_all(&item)
        }
    }

    #[test]
    fn budgets_bound_the_queue_apart_and_room_comes_back_once_written() {
        let out = Stalled::default();
        let log = LogWriter::start(
            "test log",
            "test-log",
            Box::new(out.clone()),
            Raw,
            vec![Budget::new("a", 10, 100), Budget::new("b", 100, 2)],
        )
        .unwrap();
        // Budget 0 is bounded by bytes, budget 1 by lines; neither takes
        // the other's room.
        for _ in 0..4 {
            log.send(0, 4, b"aaa\n".to_vec());
        }
        for _ in 0..3 {
            log.send(1, 2, b"b\n".to_vec());
        }
        assert_eq!((log.dropped(0), log.dropped(1)), (2, 1));
        assert_eq!(log.pending_bytes(), 8 + 4);
        // An unknown budget is not a panic.
        log.send(7, 1, b"x".to_vec());
        out.open_gate();
        log.flush(Duration::from_secs(30));
        let text = String::from_utf8(out.out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().filter(|l| *l == "aaa").count(), 2);
        assert_eq!(text.lines().filter(|l| *l == "b").count(), 2);
        assert_eq!(log.pending_bytes(), 0);
        // Room given back: the next lines go through.
        log.send(1, 2, b"b\n".to_vec());
        log.flush(Duration::from_secs(30));
        assert_eq!(log.dropped(1), 1);
    }

    #[test]
    fn long_fields_are_cut_on_character_boundaries() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        assert_eq!(clip(&long).chars().count(), MAX_FIELD_CHARS);
        assert_eq!(clip(&"x".repeat(MAX_FIELD_CHARS)).len(), MAX_FIELD_CHARS);
    }
}

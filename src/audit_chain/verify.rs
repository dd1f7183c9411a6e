//! Checking a chain (`tokengate audit verify`): the files in order, line by
//! line, each line's `seq` one more than the last and its `prev` the hash of
//! the last; the first line that breaks it is named with what it shows (an
//! edited, missing, moved or inserted line, a torn end, a line that is not
//! chained at all).
//!
//! A chain alone cannot show lines cut off at its end, nor a log rewritten
//! from the first line on: only a hash kept elsewhere (an anchor) can, and
//! `--anchor SEQ:HASH` checks the chain against one.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{hash_line, parse_link, Head, NotLinked};

/// The longest line read whole: every line the gateway writes is far
/// shorter, and a tampered file must not make verification hold gigabytes.
pub(super) const MAX_LINE: usize = 1 << 20;

/// What to check beyond the links between the lines.
#[derive(Debug, Clone, Default)]
pub(crate) struct VerifyOptions {
    /// The files continue a chain whose line `after.seq` hashed to
    /// `after.hash` (earlier files were archived away); by default the first
    /// line must start a chain (seq 1, genesis `prev`).
    pub(crate) after: Option<Head>,
    /// Hashes kept elsewhere: the line with each seq must hash to it, and
    /// the chain must reach it (which shows lines cut off at the end).
    pub(crate) anchors: Vec<Head>,
}

/// A chain that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) lines: u64,
    /// The first line's seq, if there was a line.
    pub(crate) first_seq: Option<u64>,
    /// The last line's seq and hash: the value to anchor.
    pub(crate) last: Head,
}

/// The first line where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Break {
    pub(crate) file: PathBuf,
    /// 1-based; 0 when the break is the file as a whole (it ends too early).
    pub(crate) line: u64,
    /// The line's own seq, when it has one.
    pub(crate) seq: Option<u64>,
    pub(crate) what: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.what)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    /// The chain breaks here.
    #[error("{0}")]
    Broken(Break),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// An anchor that cannot be checked against these files.
    #[error("{0}")]
    Usage(String),
}

/// Checks the chain through `files`, in order.
pub(crate) fn verify(files: &[PathBuf], opts: &VerifyOptions) -> Result<Verified, VerifyError> {
    let start = opts.after.unwrap_or(Head::GENESIS);
    if let Some(a) = opts.anchors.iter().find(|a| a.seq <= start.seq) {
        return Err(VerifyError::Usage(format!(
            "the anchor {} lies at or before --after {}: its line is not in these files",
            a.display(),
            start.display()
        )));
    }
    let mut v = Verifier {
        files,
        start,
        genesis: opts.after.is_none(),
        last: None,
        before_last: None,
        anchors: &opts.anchors,
        lines: 0,
        first_seq: None,
    };
    let mut buf = Vec::new();
    for (index, path) in files.iter().enumerate() {
        let read_err = |source| VerifyError::Read {
            path: path.clone(),
            source,
        };
        let mut r = BufReader::new(File::open(path).map_err(read_err)?);
        let mut n = 0u64;
        while let Some(raw) = read_line(&mut r, &mut buf).map_err(read_err)? {
            n += 1;
            v.line(index, n, &buf, raw).map_err(VerifyError::Broken)?;
        }
    }
    v.finish().map_err(VerifyError::Broken)
}

/// How a line ended.
#[derive(Debug, Clone, Copy)]
struct Raw {
    /// With a newline (a file's last line may lack it).
    terminated: bool,
    /// Longer than `MAX_LINE` (only its start was kept).
    long: bool,
}

/// Reads the next line into `buf` (cleared first, without its newline).
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Option<Raw>> {
    buf.clear();
    let mut long = false;
    let mut any = false;
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(any.then_some(Raw {
                terminated: false,
                long,
            }));
        }
        any = true;
        let newline = avail.iter().position(|b| *b == b'\n');
        let take = newline.unwrap_or(avail.len());
        let room = MAX_LINE.saturating_sub(buf.len());
        if take > room {
            long = true;
        }
        buf.extend_from_slice(&avail[..take.min(room)]);
        let used = newline.map_or(take, |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            return Ok(Some(Raw {
                terminated: true,
                long,
            }));
        }
    }
}

/// A line that passed: where it is and its head.
#[derive(Debug, Clone, Copy)]
struct Seen {
    file: usize,
    line: u64,
    head: Head,
}

struct Verifier<'a> {
    files: &'a [PathBuf],
    /// The head before the first line (genesis, or `--after`).
    start: Head,
    /// Whether `start` is the genesis (not `--after`): for the wording.
    genesis: bool,
    last: Option<Seen>,
    /// The line before `last`: a line linking to it shows `last` inserted.
    before_last: Option<Seen>,
    anchors: &'a [Head],
    lines: u64,
    first_seq: Option<u64>,
}

impl Verifier<'_> {
    fn at(&self, file: usize, line: u64, seq: Option<u64>, what: String) -> Break {
        Break {
            file: self.files.get(file).cloned().unwrap_or_default(),
            line,
            seq,
            what,
        }
    }

    fn place(&self, s: &Seen) -> String {
        let file = self
            .files
            .get(s.file)
            .map_or(Path::new(""), PathBuf::as_path);
        format!("{}:{}", file.display(), s.line)
    }

    fn line(&mut self, file: usize, n: u64, bytes: &[u8], raw: Raw) -> Result<(), Break> {
        if raw.long {
            return Err(self.at(
                file,
                n,
                None,
                format!("longer than {MAX_LINE} bytes: not a line the gateway wrote"),
            ));
        }
        let link = match parse_link(bytes) {
            Ok(link) => link,
            Err(_) if !raw.terminated => {
                return Err(self.at(
                    file,
                    n,
                    None,
                    "torn: the file ends in part of a line (no newline), as a write cut short or a cut file leaves it".into(),
                ))
            }
            Err(e) => {
                let what = match e {
                    _ if bytes.is_empty() => "an empty line: not chained",
                    NotLinked::NotJson => "not a JSON line: not chained (inserted, or lines cut in the middle)",
                    NotLinked::NoLink => "a JSON line without seq and prev: not chained",
                    NotLinked::BadPrev => "prev is not a SHA-256 in lowercase hex (64 digits)",
                };
                return Err(self.at(file, n, None, what.into()));
            }
        };
        let expected = self.last.map_or(self.start, |s| s.head);
        let seq = link.seq;
        let next = expected.seq.saturating_add(1);
        if seq == next && link.prev == expected.hash {
            return self.accept(file, n, bytes, seq);
        }
        let here = |what: String| self.at(file, n, Some(seq), what);
        let place = format!(
            "{}:{n}",
            self.files
                .get(file)
                .map_or(Path::new(""), PathBuf::as_path)
                .display()
        );
        // The line links past the last one to the one before: the last one
        // was put in.
        if let (Some(last), Some(before)) = (self.last, self.before_last) {
            if link.prev == before.head.hash && seq == before.head.seq.saturating_add(1) {
                return Err(self.at(
                    last.file,
                    last.line,
                    Some(last.head.seq),
                    format!("inserted: the next line ({place}, seq {seq}) links past it to the line before"),
                ));
            }
        }
        Err(if seq == next {
            match self.last {
                // The last line's hash is not what this line recorded: the
                // last line (or this line's prev) was changed.
                Some(last) => self.at(
                    last.file,
                    last.line,
                    Some(last.head.seq),
                    format!(
                        "edited: its hash is not the prev of the next line ({place}, seq {seq}); this line or that prev was changed after it was written"
                    ),
                ),
                None if self.genesis => here("edited: prev is not the genesis value (64 zeros) of a chain's first line".into()),
                None => here(format!("prev does not continue --after {}", self.start.display())),
            }
        } else if seq > next {
            if self.last.is_none() && self.genesis {
                here(format!(
                    "missing lines: a chain starts at seq 1, and this is the first line given; name the earlier files first, or give --after SEQ:HASH of seq {}",
                    seq - 1
                ))
            } else {
                let missing = if seq - next == 1 {
                    format!("seq {next} is")
                } else {
                    format!("seqs {next} to {} are", seq - 1)
                };
                here(format!(
                    "missing lines: seq {} comes after seq {}: {missing} missing here (deleted, moved or cut out)",
                    seq, expected.seq
                ))
            }
        } else if seq == 1 && link.prev == Head::GENESIS.hash {
            here(format!(
                "a new chain starts here after seq {}: the gateway started a new chain (a stdout destination, or a file that did not end in a chained line); check the lines before and from here apart",
                expected.seq
            ))
        } else {
            here(format!(
                "out of order: seq {seq} comes after seq {}: a line moved, repeated or inserted",
                expected.seq
            ))
        })
    }

    fn accept(&mut self, file: usize, n: u64, bytes: &[u8], seq: u64) -> Result<(), Break> {
        let head = Head {
            seq,
            hash: hash_line(bytes),
        };
        if let Some(a) = self
            .anchors
            .iter()
            .find(|a| a.seq == seq && a.hash != head.hash)
        {
            return Err(self.at(
                file,
                n,
                Some(seq),
                format!(
                    "does not match the anchor {}: the log was rewritten at or before this line",
                    a.display()
                ),
            ));
        }
        self.before_last = self.last;
        self.last = Some(Seen {
            file,
            line: n,
            head,
        });
        self.lines += 1;
        self.first_seq.get_or_insert(seq);
        Ok(())
    }

    fn finish(self) -> Result<Verified, Break> {
        let last = self.last.map_or(self.start, |s| s.head);
        if let Some(a) = self
            .anchors
            .iter()
            .filter(|a| a.seq > last.seq)
            .max_by_key(|a| a.seq)
        {
            let (file, line) = match self.last {
                Some(s) => (s.file, s.line),
                None => (self.files.len().saturating_sub(1), 0),
            };
            let at = self.last.as_ref().map(|s| self.place(s));
            return Err(self.at(
                file,
                line,
                self.last.map(|s| s.head.seq),
                format!(
                    "cut off: the chain ends {} at seq {} but the anchor {} lies beyond: lines were cut off at the end",
                    at.map_or_else(|| "before its first line".to_owned(), |p| format!("here ({p})")),
                    last.seq,
                    a.display()
                ),
            ));
        }
        Ok(Verified {
            lines: self.lines,
            first_seq: self.first_seq,
            last,
        })
    }
}

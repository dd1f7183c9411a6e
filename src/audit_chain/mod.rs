//! The audit log's hash chain: what makes an edit, a deletion, a reordering
//! or an insertion visible.
//!
//! Every line starts with `seq` (1, 2, 3, …) and `prev`, the lowercase hex
//! SHA-256 of the previous line's exact bytes without its newline; the
//! first line of a chain has seq 1 and the genesis value, 64 zeros. A
//! line's hash covers its `seq` and `prev`, so changing any byte of any line
//! breaks the link to the line after it, and the last line's hash stands
//! for the whole chain: the value an operator keeps elsewhere (an anchor).
//!
//! A file destination continues its chain across restarts: at start the
//! gateway reads the file's last line ([`recover`]). What it does with a
//! file that does not end in a chained line is documented there.
//!
//! Verification ([`verify`]) is the other side, used by
//! `tokengate audit verify`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

mod verify;

#[cfg(test)]
use verify::Break;
pub(crate) use verify::{verify, VerifyError, VerifyOptions};

/// Bytes the chain adds to a line at most: `"seq":` and 20 digits,
/// `,"prev":"`, 64 hex digits and `",`.
pub(crate) const LINK_BYTES: usize = 6 + 20 + 9 + 64 + 2;

/// The end of an audit file read at start to find its last line. Lines are
/// far shorter (every string field is cut to 256 characters), so the last
/// complete line always lies inside it.
const TAIL_WINDOW: u64 = 64 * 1024;

/// Where a chain stands: the last line's seq and hash (seq 0 and the
/// genesis value before the first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: [u8; 32],
}

impl Head {
    /// Before the first line of a chain: its `prev` is 64 zeros.
    pub(crate) const GENESIS: Head = Head {
        seq: 0,
        hash: [0; 32],
    };

    /// Writes into `out` (cleared first) the next line of the chain: `body`,
    /// a serialised JSON object, with `seq` and `prev` in front, without a
    /// newline; returns the head after it.
    pub(crate) fn link(&self, body: &[u8], out: &mut Vec<u8>) -> Head {
        let seq = self.seq.saturating_add(1);
        out.clear();
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(b",\"prev\":\"");
        out.extend_from_slice(hex(&self.hash).as_bytes());
        out.push(b'"');
        // The body's own fields follow, after its opening brace.
        match body.strip_prefix(b"{") {
            Some(rest) if rest.first().is_some_and(|b| *b != b'}') => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            _ => out.push(b'}'),
        }
        Head {
            seq,
            hash: hash_line(out),
        }
    }

    /// `seq:hash`, the form `tokengate audit verify` prints and takes
    /// (`--after`, `--anchor`).
    pub(crate) fn display(&self) -> String {
        format!("{}:{}", self.seq, hex(&self.hash))
    }

    /// Parses `seq:hash` (lowercase or uppercase hex).
    pub(crate) fn parse(s: &str) -> Result<Head, String> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected SEQ:HASH (e.g. 42:3f9a…, 64 hex digits)"))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("{seq:?}: the seq must be a whole number"))?;
        let hash = unhex(&hash.to_ascii_lowercase())
            .ok_or_else(|| format!("{hash:?}: the hash must be 64 hex digits (SHA-256)"))?;
        Ok(Head { seq, hash })
    }
}

/// SHA-256 of a line's exact bytes (without its newline).
pub(crate) fn hash_line(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(64);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// 64 lowercase hex digits back to bytes; anything else is `None`.
fn unhex(s: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// Why a line is not a link of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotLinked {
    /// Not a JSON object.
    NotJson,
    /// A JSON object without `seq` (a whole number) and `prev`.
    NoLink,
    /// `prev` is not 64 lowercase hex digits.
    BadPrev,
}

/// A chained line's own `seq` and `prev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 32],
}

/// Reads `seq` and `prev` from one line (without its newline).
pub(crate) fn parse_link(line: &[u8]) -> Result<Link, NotLinked> {
    /// Only the chain's fields; the event's are not needed to check it.
    #[derive(Deserialize)]
    struct Fields {
        seq: Option<serde_json::Value>,
        prev: Option<serde_json::Value>,
    }
    // An object, not an array that serde would also map onto the fields.
    if line.first() != Some(&b'{') {
        return Err(NotLinked::NotJson);
    }
    let fields: Fields = serde_json::from_slice(line).map_err(|_| NotLinked::NotJson)?;
    let (Some(seq), Some(prev)) = (fields.seq, fields.prev) else {
        return Err(NotLinked::NoLink);
    };
    let seq = seq.as_u64().ok_or(NotLinked::NoLink)?;
    let prev = prev.as_str().and_then(unhex).ok_or(NotLinked::BadPrev)?;
    Ok(Link { seq, prev })
}

/// What the start found at the end of an audit file, for its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file, or an empty one: a new chain.
    Empty,
    /// Not a regular file (a named pipe, a device): a new chain, as for
    /// stdout.
    NotAFile,
    /// The file exists but cannot be read (only written): a new chain.
    Unreadable(String),
    /// The last line is chained: the chain continues after it.
    Chained,
    /// The last line is not a chained line (a log from before the chain, or
    /// another program's): a new chain starts after it.
    Unchained,
    /// The file ended in part of a line, as a crash in the middle of a write
    /// leaves it; that many bytes were cut off, and the chain continues
    /// after the last complete line.
    TornCut(u64),
    /// As `TornCut`, but the file could not be shortened (append-only, as
    /// `chattr +a` makes it): the part was ended with a newline and stays,
    /// and `tokengate audit verify` names it as a break (not a JSON line).
    TornKept(u64),
    /// The file ended in a complete chained line that only lacked its
    /// newline: the newline was added and the chain continues after it.
    Completed,
}

/// Finds where the chain of the audit file at `path` stands, repairing a
/// torn end first:
///
/// - no file or an empty one: a new chain (seq 1, genesis `prev`); also a
///   named pipe or a device, and a file that cannot be read;
/// - ends in a complete chained line: the chain continues after it;
/// - ends in a complete line that is not chained: a new chain, after it;
/// - ends in part of a line (no newline: a crash in the middle of a write):
///   if that part is a whole chained line continuing the one before, its
///   newline is added; otherwise the part is cut off and the chain
///   continues after the last complete line. A file that cannot be
///   shortened (append-only) keeps the part, ended by a newline.
///
/// Never fails on the file's content; only on an I/O error in the middle
/// of reading or repairing it (which stops start-up).
pub(crate) fn recover(path: &Path) -> io::Result<(Head, Found)> {
    // Only a regular file can be read back: a named pipe (a shipper's) or a
    // device holds no earlier lines, and opening a pipe to read would wait
    // for a writer.
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok((Head::GENESIS, Found::NotAFile)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Head::GENESIS, Found::Empty)),
        Err(e) => return Ok((Head::GENESIS, Found::Unreadable(e.to_string()))),
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Ok((Head::GENESIS, Found::Unreadable(e.to_string()))),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    drop(file);
    // Where the window's complete lines begin: a window that starts in the
    // middle of the file starts in the middle of a line, skipped.
    let from_whole = start == 0;
    let Some(last) = tail.last() else {
        return Ok((Head::GENESIS, Found::Empty));
    };
    if *last == b'\n' {
        let head = last_head(&tail[..tail.len() - 1], from_whole);
        return Ok(match head {
            Some(h) => (h, Found::Chained),
            None => (Head::GENESIS, Found::Unchained),
        });
    }
    // A torn end: the part after the last newline.
    let cut = tail.iter().rposition(|b| *b == b'\n').map(|i| i + 1);
    let (complete, part) = match cut {
        Some(i) => (&tail[..i], &tail[i..]),
        None if from_whole => (&tail[..0], &tail[..]),
        // A part longer than the window is no line the gateway wrote.
        None => {
            append(path, b"\n")?;
            return Ok((Head::GENESIS, Found::Unchained));
        }
    };
    let before = match complete.split_last() {
        None => Some(Head::GENESIS),
        Some((_, rest)) => last_head(rest, from_whole),
    };
    if let (Some(b), Ok(link)) = (before, parse_link(part)) {
        if link.seq == b.seq.saturating_add(1) && link.prev == b.hash {
            append(path, b"\n")?;
            let head = Head {
                seq: link.seq,
                hash: hash_line(part),
            };
            return Ok((head, Found::Completed));
        }
    }
    let part_len = u64::try_from(part.len()).unwrap_or(u64::MAX);
    let keep = len.saturating_sub(part_len);
    let found = match OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(keep))
    {
        Ok(()) => Found::TornCut(part_len),
        Err(_) => {
            append(path, b"\n")?;
            Found::TornKept(part_len)
        }
    };
    Ok((before.unwrap_or(Head::GENESIS), found))
}

/// The head after the last line of `text` (complete lines, the last one
/// without its newline), if it is a chained line. `whole`: `text` starts
/// at the beginning of a line.
fn last_head(text: &[u8], whole: bool) -> Option<Head> {
    let line = match text.iter().rposition(|b| *b == b'\n') {
        Some(i) => &text[i + 1..],
        None if whole => text,
        None => return None,
    };
    let link = parse_link(line).ok()?;
    Some(Head {
        seq: link.seq,
        hash: hash_line(line),
    })
}

fn append(path: &Path, bytes: &[u8]) -> io::Result<()> {
    OpenOptions::new().append(true).open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests;

//! Reading a password from the person at the terminal, without echo, and
//! reading one from standard input (`--password-stdin`).

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;

use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions, Termios};

/// Whether a person could answer a prompt: standard input is a terminal.
pub(super) fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks for a password on the terminal (the prompt on stderr, so stdout
/// stays the command's answer) with echo off, and returns what was typed,
/// without its line end. `Err` is a sentence for the user.
pub(super) fn password(prompt: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    // Echo off before the prompt shows: whatever is typed once it is
    // visible must neither appear nor be thrown away.
    let quiet =
        NoEcho::on(&stdin).map_err(|e| format!("cannot turn off the terminal's echo: {e}"))?;
    let mut err = std::io::stderr();
    // A failed write of the prompt only loses the prompt; reading goes on.
    let _ = write!(err, "{prompt}");
    let _ = err.flush();
    let line = read_line(&mut stdin.lock());
    drop(quiet);
    line.ok_or_else(|| "no password typed".to_owned())
}

/// The first line of standard input, without its line end; `None` when
/// there is none (end of input, or an empty line).
pub(super) fn stdin_line() -> Option<String> {
    read_line(&mut std::io::stdin().lock())
}

fn read_line(input: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    input.read_line(&mut line).ok()?;
    let line = line.trim_end_matches(['\r', '\n']);
    (!line.is_empty()).then(|| line.to_owned())
}

/// The terminal with echo off for as long as this lives; dropping it puts
/// the terminal back as it was, on every path out of the read.
struct NoEcho<'a> {
    stdin: &'a std::io::Stdin,
    saved: Termios,
}

impl<'a> NoEcho<'a> {
    fn on(stdin: &'a std::io::Stdin) -> std::io::Result<NoEcho<'a>> {
        let saved = tcgetattr(stdin.as_fd())?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        // The Enter still moves the cursor to the next line.
        quiet.local_modes.insert(LocalModes::ECHONL);
        // `Now`, not `Flush`: what was typed ahead is the password, not noise.
        tcsetattr(stdin.as_fd(), OptionalActions::Now, &quiet)?;
        Ok(NoEcho { stdin, saved })
    }
}

impl Drop for NoEcho<'_> {
    fn drop(&mut self) {
        // Nothing more can be done if this fails; the shell's `reset` can.
        let _ = tcsetattr(self.stdin.as_fd(), OptionalActions::Now, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_its_end() {
        let read = |s: &str| read_line(&mut std::io::Cursor::new(s.as_bytes().to_vec()));
        assert_eq!(
            read("secret words\r\nmore").as_deref(),
            Some("secret words")
        );
        assert_eq!(read("  spaced  \n").as_deref(), Some("  spaced  "));
        assert_eq!(read("\n"), None);
        assert_eq!(read(""), None);
    }
}

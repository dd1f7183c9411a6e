//! `tokengate audit verify FILE…`: checks the audit log's hash chain through
//! the files in order (oldest first) and prints the last seq and hash, the
//! value to keep elsewhere as an anchor.
//!
//! Exit codes: 0 the chain holds; 1 it breaks (the first line where it does
//! is named: file, line number, seq, and what it shows); 2 a usage error or
//! a file that cannot be read.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: the verdict to stdout, failures to stderr"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::audit_chain::{verify, Head, VerifyError, VerifyOptions};

/// `tokengate audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain through FILE… in order (oldest
    /// first, e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl).
    ///
    /// Prints the number of lines and the last seq and hash (SEQ:HASH, the
    /// value to anchor elsewhere). Exit codes: 0 the chain holds, 1 it
    /// breaks (the first line where it does is named), 2 usage error or
    /// unreadable file.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Audit log files, oldest first.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The files continue a chain whose line SEQ hashed to HASH (what an
    /// earlier verify printed), instead of starting one.
    #[arg(long, value_name = "SEQ:HASH", value_parser = Head::parse)]
    after: Option<Head>,
    /// A hash kept elsewhere: the line SEQ must hash to HASH, and the chain
    /// must reach it (this is what shows lines cut off at the end).
    #[arg(long, value_name = "SEQ:HASH", value_parser = Head::parse)]
    anchor: Vec<Head>,
}

/// Runs `tokengate audit …`.
pub fn run_audit(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify(args) => run_verify(&args),
    }
}

fn run_verify(args: &VerifyArgs) -> ExitCode {
    let opts = VerifyOptions {
        after: args.after,
        anchors: args.anchor.clone(),
    };
    match verify(&args.files, &opts) {
        Ok(v) => {
            let files = match args.files.len() {
                1 => "1 file".to_owned(),
                n => format!("{n} files"),
            };
            let range = match v.first_seq {
                Some(first) => format!(", seq {first} to {}", v.last.seq),
                None => String::new(),
            };
            println!("chain holds: {} lines in {files}{range}", v.lines);
            if !opts.anchors.is_empty() {
                println!("anchors match: {}", opts.anchors.len());
            }
            println!("last: {}", v.last.display());
            ExitCode::SUCCESS
        }
        Err(VerifyError::Broken(b)) => {
            println!("chain broken at {b}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("tokengate: {e}");
            ExitCode::from(2)
        }
    }
}

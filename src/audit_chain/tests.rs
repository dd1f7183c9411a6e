use std::path::PathBuf;

use super::*;

/// `n` chained lines (without newlines), from `from`.
fn lines_from(from: Head, n: u64) -> (Vec<Vec<u8>>, Head) {
    let mut head = from;
    let mut out = Vec::new();
    for i in 0..n {
        let body =
            format!(r#"{{"time":"2027-01-01T00:00:00.000Z","event":"token.exchanged","n":{i}}}"#);
        let mut line = Vec::new();
        head = head.link(body.as_bytes(), &mut line);
        out.push(line);
    }
    (out, head)
}

fn text(lines: &[Vec<u8>]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect()
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn opts_after(after: Head) -> VerifyOptions {
    VerifyOptions {
        after: Some(after),
        anchors: Vec::new(),
    }
}

fn broken(files: &[PathBuf], opts: &VerifyOptions) -> Break {
    match verify(files, opts) {
        Err(VerifyError::Broken(b)) => b,
        other => panic!("expected a break, got {other:?}"),
    }
}

#[test]
fn lines_carry_seq_and_the_previous_lines_hash() {
    let (lines, head) = lines_from(Head::GENESIS, 3);
    let first: serde_json::Value = serde_json::from_slice(&lines[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], "0".repeat(64));
    assert_eq!(first["event"], "token.exchanged");
    assert!(lines[0].starts_with(br#"{"seq":1,"prev":"0000"#));
    let second: serde_json::Value = serde_json::from_slice(&lines[1]).unwrap();
    assert_eq!(second["seq"], 2);
    let sha = hex(&Sha256::digest(&lines[0]).into());
    assert_eq!(second["prev"], sha);
    assert_eq!(head.seq, 3);
    assert_eq!(head.hash, hash_line(&lines[2]));
    // An empty object still makes a valid line.
    let mut line = Vec::new();
    Head::GENESIS.link(b"{}", &mut line);
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["seq"], 1);
}

#[test]
fn heads_print_and_parse_as_seq_colon_hash() {
    let (_, head) = lines_from(Head::GENESIS, 2);
    let shown = head.display();
    assert!(shown.starts_with("2:"));
    assert_eq!(Head::parse(&shown).unwrap(), head);
    assert_eq!(Head::parse(&shown.to_uppercase()).unwrap(), head);
    for bad in ["", "2", "x:00", "2:abc", &format!("2:{}", "g".repeat(64))] {
        assert!(Head::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn links_are_read_from_json_objects_only() {
    let (lines, _) = lines_from(Head::GENESIS, 1);
    assert_eq!(parse_link(&lines[0]).unwrap().seq, 1);
    assert_eq!(parse_link(b"hello"), Err(NotLinked::NotJson));
    assert_eq!(parse_link(b"[1,\"00\"]"), Err(NotLinked::NotJson));
    assert_eq!(
        parse_link(br#"{"seq":1,"prev":"00"#),
        Err(NotLinked::NotJson)
    );
    assert_eq!(parse_link(br#"{"event":"x"}"#), Err(NotLinked::NoLink));
    assert_eq!(
        parse_link(br#"{"seq":-1,"prev":"x"}"#),
        Err(NotLinked::NoLink)
    );
    let upper = format!(r#"{{"seq":1,"prev":"{}"}}"#, "A".repeat(64));
    assert_eq!(parse_link(upper.as_bytes()), Err(NotLinked::BadPrev));
}

#[test]
fn recovery_continues_a_chained_file_and_starts_over_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.jsonl");
    assert_eq!(recover(&missing).unwrap(), (Head::GENESIS, Found::Empty));
    let empty = write(&dir, "empty.jsonl", b"");
    assert_eq!(recover(&empty).unwrap(), (Head::GENESIS, Found::Empty));

    let (lines, head) = lines_from(Head::GENESIS, 5);
    let chained = write(&dir, "chained.jsonl", &text(&lines));
    assert_eq!(recover(&chained).unwrap(), (head, Found::Chained));

    // A log from before the chain: a new chain after it.
    let old = write(
        &dir,
        "old.jsonl",
        b"{\"time\":\"t\",\"event\":\"admin.login\"}\n",
    );
    assert_eq!(recover(&old).unwrap(), (Head::GENESIS, Found::Unchained));
    let garbage = write(&dir, "garbage.jsonl", b"\x00\xff not json\n");
    assert_eq!(
        recover(&garbage).unwrap(),
        (Head::GENESIS, Found::Unchained)
    );

    // A named pipe is not read (that would wait for a writer).
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    assert_eq!(recover(&fifo).unwrap(), (Head::GENESIS, Found::NotAFile));
    // A file that can only be written (root reads it anyway).
    let unreadable = write(
        &dir,
        "unreadable.jsonl",
        &text(&lines_from(Head::GENESIS, 1).0),
    );
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o200),
    )
    .unwrap();
    if std::fs::File::open(&unreadable).is_err() {
        assert!(matches!(
            recover(&unreadable).unwrap(),
            (Head::GENESIS, Found::Unreadable(_))
        ));
    }

    // Far longer than the window read at start: the last line is found.
    let (many, head) = lines_from(Head::GENESIS, 2_000);
    let long = write(&dir, "long.jsonl", &text(&many));
    assert!(std::fs::metadata(&long).unwrap().len() > TAIL_WINDOW);
    assert_eq!(recover(&long).unwrap(), (head, Found::Chained));
}

#[test]
fn a_torn_end_is_cut_off_and_the_chain_continues_from_the_last_whole_line() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = lines_from(Head::GENESIS, 4);
    let whole = text(&lines[..3]);
    let mut torn = whole.clone();
    torn.extend_from_slice(&lines[3][..40]);
    let path = write(&dir, "torn.jsonl", &torn);
    let (head, found) = recover(&path).unwrap();
    assert_eq!(found, Found::TornCut(40));
    assert_eq!(head.seq, 3);
    assert_eq!(head.hash, hash_line(&lines[2]));
    assert_eq!(std::fs::read(&path).unwrap(), whole, "the part is gone");

    // The first line torn: an empty file, a new chain.
    let path = write(&dir, "first.jsonl", &lines[0][..10]);
    assert_eq!(recover(&path).unwrap(), (Head::GENESIS, Found::TornCut(10)));
    assert_eq!(std::fs::read(&path).unwrap(), b"");

    // Only the newline missing: completed, and the chain goes on after it.
    let mut no_newline = text(&lines);
    no_newline.pop();
    let path = write(&dir, "completed.jsonl", &no_newline);
    let (head, found) = recover(&path).unwrap();
    assert_eq!(found, Found::Completed);
    assert_eq!(head.seq, 4);
    assert_eq!(std::fs::read(&path).unwrap(), text(&lines));

    // What recovery leaves verifies, with the next lines appended.
    let (more, _) = lines_from(Head::parse(&head.display()).unwrap(), 2);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(text(&more));
    std::fs::write(&path, bytes).unwrap();
    let v = verify(&[path], &VerifyOptions::default()).unwrap();
    assert_eq!(v.lines, 6);
}

#[test]
fn a_torn_end_of_an_append_only_file_stays_and_verify_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = lines_from(Head::GENESIS, 3);
    let mut torn = text(&lines[..2]);
    torn.extend_from_slice(&lines[2][..30]);
    let path = write(&dir, "append-only.jsonl", &torn);
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success())
    };
    // Setting the flag needs root (CAP_LINUX_IMMUTABLE) and a file system
    // that has it.
    if !chattr("+a") {
        eprintln!("chattr +a is not available here: skipped");
        return;
    }
    let recovered = recover(&path);
    let after = std::fs::read(&path);
    assert!(chattr("-a"));
    let (head, found) = recovered.unwrap();
    assert_eq!(found, Found::TornKept(30));
    assert_eq!((head.seq, head.hash), (2, hash_line(&lines[1])));
    let mut expected = torn.clone();
    expected.push(b'\n');
    assert_eq!(
        after.unwrap(),
        expected,
        "the part stays, ended by a newline"
    );
    // The chain goes on after line 2; verify names the part.
    let (next, _) = lines_from(head, 1);
    let mut bytes = expected;
    bytes.extend(text(&next));
    std::fs::write(&path, bytes).unwrap();
    let b = broken(std::slice::from_ref(&path), &VerifyOptions::default());
    assert_eq!((b.line, b.seq), (3, None));
    assert!(b.what.contains("not a JSON line"), "{b}");
}

#[test]
fn a_whole_chain_verifies_across_files_and_names_its_last_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, head) = lines_from(Head::GENESIS, 10);
    let a = write(&dir, "a.jsonl", &text(&lines[..4]));
    let b = write(&dir, "b.jsonl", &text(&lines[4..]));
    let v = verify(&[a.clone(), b.clone()], &VerifyOptions::default()).unwrap();
    assert_eq!(v.lines, 10);
    assert_eq!(v.first_seq, Some(1));
    assert_eq!(v.last, head);

    // The later file alone needs the head it continues.
    let alone = broken(std::slice::from_ref(&b), &VerifyOptions::default());
    assert_eq!((alone.line, alone.seq), (1, Some(5)));
    assert!(alone.what.contains("--after"), "{alone}");
    let after = Head {
        seq: 4,
        hash: hash_line(&lines[3]),
    };
    let opts = VerifyOptions {
        after: Some(after),
        anchors: vec![head],
    };
    assert_eq!(verify(std::slice::from_ref(&b), &opts).unwrap().lines, 6);
    // In the wrong order, the files break at once: the first starts mid-chain.
    let swapped = broken(&[b.clone(), a.clone()], &VerifyOptions::default());
    assert_eq!((swapped.file, swapped.line), (b.clone(), 1));
    let swapped = broken(&[b, a.clone()], &opts_after(after));
    assert_eq!((&swapped.file, swapped.line, swapped.seq), (&a, 1, Some(1)));
    assert!(swapped.what.contains("new chain"), "{swapped}");

    // Empty files are empty chains.
    let empty = write(&dir, "empty.jsonl", b"");
    let v = verify(&[empty], &VerifyOptions::default()).unwrap();
    assert_eq!((v.lines, v.last), (0, Head::GENESIS));
}

#[test]
fn every_kind_of_tampering_is_named_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, _) = lines_from(Head::GENESIS, 8);
    let check = |name: &str, bytes: Vec<u8>, line: u64, word: &str| {
        let path = write(&dir, name, &bytes);
        let b = broken(std::slice::from_ref(&path), &VerifyOptions::default());
        assert_eq!(b.file, path, "{name}: {b}");
        assert_eq!(b.line, line, "{name}: {b}");
        assert!(b.what.contains(word), "{name}: {b}");
        assert!(b.to_string().contains(&format!("{name}:{line}")), "{b}");
    };

    let mut edited = lines.clone();
    edited[3] = String::from_utf8(edited[3].clone())
        .unwrap()
        .replace("token.exchanged", "token.exchanged ")
        .into_bytes();
    check("edited.jsonl", text(&edited), 4, "edited");

    let mut deleted = lines.clone();
    deleted.remove(3);
    check("deleted.jsonl", text(&deleted), 4, "missing");

    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    check("swapped.jsonl", text(&swapped), 4, "missing");

    let mut junk = lines.clone();
    junk.insert(3, b"{\"event\":\"admin.login\"}".to_vec());
    check("junk.jsonl", text(&junk), 4, "without seq");

    // A line forged to link to the one before it: the next line links past it.
    let mut forged = lines.clone();
    let before = Head {
        seq: 3,
        hash: hash_line(&lines[2]),
    };
    let mut line = Vec::new();
    before.link(br#"{"event":"admin.login"}"#, &mut line);
    forged.insert(3, line);
    check("forged.jsonl", text(&forged), 4, "inserted");

    let mut repeated = lines.clone();
    repeated.insert(5, lines[1].clone());
    check("repeated.jsonl", text(&repeated), 6, "out of order");

    // Bytes cut out across lines 3 to 5.
    let all = text(&lines);
    let from = text(&lines[..2]).len() + 30;
    let to = text(&lines[..5]).len() + 12;
    let mut cut = all[..from].to_vec();
    cut.extend_from_slice(&all[to..]);
    check("cut.jsonl", cut, 3, "not a JSON line");

    // Whole lines cut out of the middle.
    let mut gap = lines[..2].to_vec();
    gap.extend_from_slice(&lines[6..]);
    check("gap.jsonl", text(&gap), 3, "seqs 3 to 6 are missing");

    let mut torn = text(&lines);
    torn.truncate(torn.len() - 25);
    check("torn.jsonl", torn, 8, "torn");

    check(
        "blank.jsonl",
        [text(&lines[..2]), b"\n".to_vec(), text(&lines[2..])].concat(),
        3,
        "empty line",
    );

    let mut restarted = lines[..5].to_vec();
    restarted.extend(lines_from(Head::GENESIS, 2).0);
    check("restarted.jsonl", text(&restarted), 6, "new chain");

    // The first line changed: the second names it.
    let mut first = lines.clone();
    first[0] = String::from_utf8(first[0].clone())
        .unwrap()
        .replace("2027", "2026")
        .into_bytes();
    check("first.jsonl", text(&first), 1, "edited");

    let mut long = text(&lines[..2]);
    long.extend(vec![b'x'; verify::MAX_LINE + 1]);
    long.push(b'\n');
    check("long.jsonl", long, 3, "longer than");
}

#[test]
fn anchors_show_a_log_cut_at_its_end_or_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let (lines, head) = lines_from(Head::GENESIS, 6);
    let path = write(&dir, "audit.jsonl", &text(&lines));
    let anchored = |anchors: Vec<Head>| VerifyOptions {
        after: None,
        anchors,
    };
    assert!(verify(std::slice::from_ref(&path), &anchored(vec![head])).is_ok());

    // The last two lines cut off: the chain still holds, the anchor does not.
    let cut = write(&dir, "cut.jsonl", &text(&lines[..4]));
    assert_eq!(
        verify(std::slice::from_ref(&cut), &VerifyOptions::default())
            .unwrap()
            .lines,
        4
    );
    let b = broken(&[cut], &anchored(vec![head]));
    assert_eq!((b.line, b.seq), (4, Some(4)));
    assert!(b.what.contains("cut off"), "{b}");

    // Rewritten from the first line on, as a whole new chain: it holds,
    // and only the anchor shows it.
    let mut head2 = Head::GENESIS;
    let mut rewritten = Vec::new();
    for i in 0..6 {
        let mut line = Vec::new();
        head2 = head2.link(
            format!(r#"{{"event":"admin.login","n":{i}}}"#).as_bytes(),
            &mut line,
        );
        rewritten.push(line);
    }
    let rw = write(&dir, "rewritten.jsonl", &text(&rewritten));
    assert!(verify(std::slice::from_ref(&rw), &VerifyOptions::default()).is_ok());
    assert_ne!(head2, head);
    let b = broken(&[rw], &anchored(vec![head]));
    assert_eq!((b.line, b.seq), (6, Some(6)));
    assert!(b.what.contains("anchor"), "{b}");

    // An anchor before --after cannot be checked: a usage error.
    let opts = VerifyOptions {
        after: Some(head),
        anchors: vec![Head {
            seq: 2,
            hash: [1; 32],
        }],
    };
    assert!(matches!(verify(&[path], &opts), Err(VerifyError::Usage(_))));
}

#[test]
fn an_unreadable_file_is_an_error_not_a_break() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    assert!(matches!(
        verify(&[missing], &VerifyOptions::default()),
        Err(VerifyError::Read { .. })
    ));
}

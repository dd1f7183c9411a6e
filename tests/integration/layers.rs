//! The layers of `src/` kept by a test: every `crate::`, `super::` and
//! `self::` path in the library's sources is resolved to the module it
//! names, and an import that runs upward in a layer table, stays inside one
//! row, or closes a circle fails the test, naming the file, the line and
//! the edge.
//!
//! The tables are the crate doc of `src/lib.rs` (the top-level modules) and
//! the module doc of any directory module's `mod.rs` that has one (today
//! `config`); they are read from there, so the doc and the check cannot
//! drift. Every directory module, with a table or without, must be free of
//! circles between its files.
//!
//! What counts: paths in code, `use` trees included; comments, strings and
//! character literals do not. Items marked `#[cfg(test)]` (the unit-test
//! modules) are left out: a test may build its fixture from a layer above
//! the code it tests (a whole `Config`, a running gateway) without the
//! shipped code depending on it, and the layers describe the shipped code.
//! A glob import (`use super::*`) names no module and adds no edge.
//! Plain std, no dependencies: the checker is the code below.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path from the crate root: `[]` is the crate, `["config", "storage"]`
/// is `src/config/storage.rs`.
type ModPath = Vec<String>;

/// One import from a file at a line: `from` uses `to`, both children of `parent`.
#[derive(Debug, Clone)]
struct Edge {
    parent: ModPath,
    from: String,
    to: String,
    file: String,
    line: usize,
}

/// A source file: where it is (for messages), its module path, its text.
struct Source {
    file: String,
    module: ModPath,
    text: String,
}

#[test]
fn imports_run_down_the_layer_tables_and_never_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    read_dir(&src, &src, &mut sources);
    let problems = check(&sources);
    assert!(
        problems.is_empty(),
        "{} import(s) break the layers (tables: the crate doc of src/lib.rs, \
         and the doc of a directory's mod.rs):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// docs/architecture.md shows the crate's layer table to readers: it must be
/// the table the check above enforces, row for row.
#[test]
fn the_architecture_page_shows_the_crate_layer_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let rows = |text: &str, strip: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(strip))
            .map(str::trim)
            .filter(|l| {
                l.starts_with('|')
                    && l.split('|')
                        .nth(1)
                        .is_some_and(|c| c.trim().parse::<u32>().is_ok())
            })
            .map(str::to_owned)
            .collect()
    };
    let lib = rows(&read("src/lib.rs"), "//!");
    let doc = rows(&read("docs/architecture.md"), "");
    assert!(!lib.is_empty(), "no layer table in src/lib.rs");
    assert_eq!(
        doc, lib,
        "docs/architecture.md's layer table differs from the crate doc of src/lib.rs: copy it over"
    );
}

fn read_dir(root: &Path, dir: &Path, out: &mut Vec<Source>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_dir(root, &path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(root).expect("under src");
        let rel = rel.to_string_lossy().replace('\\', "/");
        // The binary is a crate of its own on top of the library.
        if rel == "main.rs" || rel.starts_with("bin/") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source file");
        out.push(Source {
            file: format!("src/{rel}"),
            module: module_of(&rel),
            text,
        });
    }
}

/// `lib.rs` → `[]`, `a/mod.rs` and `a.rs` → `[a]`, `a/b.rs` → `[a, b]`.
fn module_of(rel: &str) -> ModPath {
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// Every problem found, one line each (empty: the layers hold).
fn check(sources: &[Source]) -> Vec<String> {
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let children = |p: &ModPath| -> BTreeSet<String> {
        modules
            .iter()
            .filter(|m| m.len() == p.len() + 1 && m.starts_with(p))
            .map(|m| m[p.len()].clone())
            .collect()
    };
    let root_of = |p: &ModPath| sources.iter().find(|s| &s.module == p);
    // Names re-exported by a module from its children, for `super::Name`.
    let mut reexports: BTreeMap<ModPath, BTreeMap<String, String>> = BTreeMap::new();
    for m in &modules {
        let kids = children(m);
        if kids.is_empty() {
            continue;
        }
        if let Some(s) = root_of(m) {
            let items = |kid: &str| {
                let mut p = m.clone();
                p.push(kid.to_owned());
                root_of(&p)
                    .map(|s| public_items(&s.text))
                    .unwrap_or_default()
            };
            reexports.insert(m.clone(), reexported(&s.text, &kids, items));
        }
    }

    let mut problems = Vec::new();
    let mut edges = Vec::new();
    for s in sources {
        for (path, line) in paths(&s.text, &s.module) {
            // The first level where the user and the used part ways.
            let k = s
                .module
                .iter()
                .zip(&path)
                .take_while(|(a, b)| a == b)
                .count();
            if k >= s.module.len() || k >= path.len() {
                continue; // a module using itself, its parent or its own children
            }
            let parent: ModPath = s.module[..k].to_vec();
            let kids = children(&parent);
            let to = if kids.contains(&path[k]) {
                Some(path[k].clone())
            } else {
                reexports
                    .get(&parent)
                    .and_then(|r| r.get(&path[k]))
                    .cloned()
            };
            if let Some(to) = to {
                edges.push(Edge {
                    parent,
                    from: s.module[k].clone(),
                    to,
                    file: s.file.clone(),
                    line,
                });
            }
        }
    }

    // `LAYERS_EDGES=1 cargo test --test layers -- --nocapture` prints the graph.
    if std::env::var_os("LAYERS_EDGES").is_some() {
        let graph: BTreeSet<String> = edges
            .iter()
            .map(|e| format!("{}{} -> {}", prefix(&e.parent), e.from, e.to))
            .collect();
        for line in graph {
            println!("{line}");
        }
    }

    let parents: BTreeSet<ModPath> = modules
        .iter()
        .filter(|m| !children(m).is_empty())
        .cloned()
        .collect();
    for parent in &parents {
        let here: Vec<&Edge> = edges.iter().filter(|e| &e.parent == parent).collect();
        let name = if parent.is_empty() {
            "the crate".to_owned()
        } else {
            format!("`{}`", parent.join("::"))
        };
        if let Some(table) = root_of(parent).and_then(|s| layer_table(&s.text)) {
            let kids = children(parent);
            for k in &kids {
                if !table.contains_key(k) {
                    problems.push(format!(
                        "{name}: module `{k}` is missing from the layer table: give it a row"
                    ));
                }
            }
            for t in table.keys() {
                if !kids.contains(t) {
                    problems.push(format!(
                        "{name}: the layer table names `{t}`, which is not a module"
                    ));
                }
            }
            for e in &here {
                if let (Some(a), Some(b)) = (table.get(&e.from), table.get(&e.to)) {
                    if a >= b {
                        let how = if a == b { "inside row" } else { "upward, row" };
                        problems.push(format!(
                            "{}:{}: {} -> {} runs {how} {a}{} of {name}'s layer table",
                            e.file,
                            e.line,
                            e.from,
                            e.to,
                            if a == b {
                                String::new()
                            } else {
                                format!(" to row {b}")
                            },
                        ));
                    }
                }
            }
        }
        for circle in circles(&here) {
            let ties: Vec<String> = here
                .iter()
                .filter(|e| circle.contains(&e.from) && circle.contains(&e.to))
                .map(|e| format!("{} -> {} ({}:{})", e.from, e.to, e.file, e.line))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            problems.push(format!(
                "{name}: circle between {}: {}",
                circle.iter().cloned().collect::<Vec<_>>().join(", "),
                first_per_pair(&ties).join("; ")
            ));
        }
    }
    problems
}

fn prefix(p: &ModPath) -> String {
    p.iter().map(|s| format!("{s}::")).collect()
}

/// One `a -> b (file:line)` per pair (the first by file and line).
fn first_per_pair(ties: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ties.iter()
        .filter(|t| seen.insert(t.split(" (").next().unwrap_or(t).to_owned()))
        .cloned()
        .collect()
}

/// The strongly connected groups of more than one module (Tarjan).
fn circles(edges: &[&Edge]) -> Vec<BTreeSet<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
        graph.entry(&e.to).or_default();
    }
    struct Walk<'a> {
        graph: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let i = w.index.len();
        w.index.insert(v, i);
        w.low.insert(v, i);
        w.stack.push(v);
        for &t in &w.graph[v] {
            if !w.index.contains_key(t) {
                visit(w, t);
                let l = w.low[v].min(w.low[t]);
                w.low.insert(v, l);
            } else if w.stack.contains(&t) {
                let l = w.low[v].min(w.index[t]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = BTreeSet::new();
            while let Some(t) = w.stack.pop() {
                group.insert(t.to_owned());
                if t == v {
                    break;
                }
            }
            if group.len() > 1 {
                w.out.push(group);
            }
        }
    }
    let mut w = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for &v in graph.keys() {
        if !w.index.contains_key(v) {
            visit(&mut w, v);
        }
    }
    w.out
}

/// The layer table of a module's doc: rows `//! | 3 | `a`, `b` | … |`,
/// numbered from the top. `None` when the doc has no table.
fn layer_table(text: &str) -> Option<BTreeMap<String, u32>> {
    let mut table = BTreeMap::new();
    for line in text.lines() {
        let Some(row) = line.trim().strip_prefix("//!") else {
            continue;
        };
        let cells: Vec<&str> = row.trim().split('|').map(str::trim).collect();
        // `| n | modules | … |` splits into ["", n, modules, …, ""].
        let (Some(n), Some(names)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else {
            continue;
        };
        for name in names.split(',') {
            let name = name.trim().trim_matches('`');
            if !name.is_empty() {
                table.insert(name.to_owned(), n);
            }
        }
    }
    (!table.is_empty()).then_some(table)
}

/// `name -> child` for what a module's file re-exports from its children
/// (`pub use child::Name;`, `pub(crate) use child::{A, B as C};`, and
/// `pub use child::*` with the child's public items from `items`).
fn reexported(
    text: &str,
    kids: &BTreeSet<String>,
    items: impl Fn(&str) -> BTreeSet<String>,
) -> BTreeMap<String, String> {
    let toks = tokens(text);
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i].text == "use" && i > 0 && is_visibility_end(&toks, i) {
            let end = toks[i..]
                .iter()
                .position(|t| t.text == ";")
                .map_or(toks.len(), |p| i + p);
            let mut leaves = Vec::new();
            use_tree(&toks[i + 1..end], &mut Vec::new(), &mut leaves);
            for (path, alias) in leaves {
                let Some(first) = path.first() else { continue };
                if !kids.contains(first) {
                    continue;
                }
                match (alias.as_str(), path.len()) {
                    // `pub use child::*`: everything the child makes public.
                    ("*", 1) => {
                        for item in items(first) {
                            out.entry(item).or_insert_with(|| first.clone());
                        }
                    }
                    ("*", _) | (_, 1) => {}
                    _ => {
                        out.insert(alias, first.clone());
                    }
                }
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// Whether the `use` at `i` follows a `pub` or `pub(…)`.
fn is_visibility_end(toks: &[Token], i: usize) -> bool {
    if toks[i - 1].text == "pub" {
        return true;
    }
    if toks[i - 1].text == ")" {
        if let Some(open) = toks[..i - 1].iter().rposition(|t| t.text == "(") {
            return open > 0 && toks[open - 1].text == "pub";
        }
    }
    false
}

/// The names a file makes public (`pub`, `pub(crate)`, `pub(super)`, …).
fn public_items(text: &str) -> BTreeSet<String> {
    let toks = tokens(text);
    let mut out = BTreeSet::new();
    for (i, t) in toks.iter().enumerate() {
        if t.text != "pub" {
            continue;
        }
        let mut j = i + 1;
        if toks.get(j).is_some_and(|t| t.text == "(") {
            while toks.get(j).is_some_and(|t| t.text != ")") {
                j += 1;
            }
            j += 1;
        }
        while toks
            .get(j)
            .is_some_and(|t| matches!(t.text.as_str(), "async" | "unsafe" | "const" | "extern"))
            && toks
                .get(j + 1)
                .is_some_and(|t| t.text != "=" && t.text != ":")
        {
            // `pub const NAME: …` is an item named NAME, `pub const fn f` a function.
            if toks[j].text == "const" && toks.get(j + 2).is_some_and(|t| t.text == ":") {
                break;
            }
            j += 1;
        }
        let kind = toks.get(j).map(|t| t.text.as_str());
        if let (
            Some(
                "struct" | "enum" | "fn" | "type" | "const" | "static" | "trait" | "union" | "mod",
            ),
            Some(name),
        ) = (kind, toks.get(j + 1))
        {
            out.insert(name.text.clone());
        }
    }
    out
}

/// A token of Rust source: an identifier, a keyword or one punctuation
/// mark (`::` is one), with its line. Comments, strings and character
/// literals are dropped.
#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
}

fn tokens(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            _ if c.is_ascii_whitespace() => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
            }
            b'"' => i = skip_string(b, i + 1, &mut line),
            b'r' | b'b' if raw_string_start(b, i).is_some() => {
                let (hashes, start) = raw_string_start(b, i).unwrap_or((0, i));
                i = start;
                loop {
                    if i >= b.len() {
                        break;
                    }
                    if b[i] == b'"'
                        && b[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&h| h == b'#')
                            .count()
                            == hashes
                    {
                        i += 1 + hashes;
                        break;
                    }
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
            }
            b'b' if b.get(i + 1) == Some(&b'"') => i = skip_string(b, i + 2, &mut line),
            b'b' if b.get(i + 1) == Some(&b'\'') => i = skip_char(b, i + 1),
            b'\'' => {
                // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'') {
                    i = skip_char(b, i);
                } else if let Some(len) = std::str::from_utf8(&b[i + 1..]).ok().and_then(|s| {
                    let ch = s.chars().next()?;
                    (s[ch.len_utf8()..].starts_with('\'')).then_some(ch.len_utf8())
                }) {
                    i += len + 2;
                } else {
                    i += 1;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                }
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Token {
                    text: text[start..i].to_owned(),
                    line,
                });
            }
            _ if c.is_ascii_digit() => {
                // A number, `1_000`, `0x1f`, `1.5e3`; `0..n` stops before the range.
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || (b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)))
                {
                    i += 1;
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push(Token {
                    text: "::".into(),
                    line,
                });
                i += 2;
            }
            _ => {
                let len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push(Token {
                    text: text[i..i + len].to_owned(),
                    line,
                });
                i += len;
            }
        }
    }
    out
}

/// `r"`, `r#"`, `br"`, `br#"`: the number of `#` and where the text starts.
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    // Only at the start of a token: `for"` or `bar#` are not raw strings.
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if b[j] == b'b' {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&h| h == b'#').count();
    (b.get(j + hashes) == Some(&b'"')).then_some((hashes, j + hashes + 1))
}

fn skip_string(b: &[u8], mut i: usize, line: &mut usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            c => {
                *line += usize::from(c == b'\n');
                i += 1;
            }
        }
    }
    i
}

fn skip_char(b: &[u8], mut i: usize) -> usize {
    i += 1; // the opening quote
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Every module path the code of a file names through `crate::`, `super::`
/// or `self::`, made absolute, with its line; `#[cfg(test)]` items left out.
fn paths(text: &str, module: &ModPath) -> Vec<(ModPath, usize)> {
    let toks = without_test_items(tokens(text));
    let mut out = Vec::new();
    // Inline modules (`mod name { … }`): their `super` is the file's module.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let here = || {
            let mut m = module.clone();
            m.extend(inline.iter().map(|(n, _)| n.clone()));
            m
        };
        match t.text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|t| t.text == "{") => {
                inline.push((toks[i + 1].text.clone(), depth));
            }
            "use" => {
                let end = toks[i..]
                    .iter()
                    .position(|t| t.text == ";")
                    .map_or(toks.len(), |p| i + p);
                let mut leaves = Vec::new();
                use_tree(&toks[i + 1..end], &mut Vec::new(), &mut leaves);
                for (path, _) in leaves {
                    if let Some(abs) = absolute(&path, &here()) {
                        out.push((abs, t.line));
                    }
                }
                i = end;
                continue;
            }
            "crate" | "super" | "self"
                if toks.get(i + 1).is_some_and(|t| t.text == "::")
                    && (i == 0 || toks[i - 1].text != "::") =>
            {
                let mut path = vec![t.text.clone()];
                let mut j = i + 1;
                while toks.get(j).is_some_and(|t| t.text == "::")
                    && toks.get(j + 1).is_some_and(|t| is_ident(&t.text))
                {
                    path.push(toks[j + 1].text.clone());
                    j += 2;
                }
                if let Some(abs) = absolute(&path, &here()) {
                    out.push((abs, t.line));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_ident(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
}

/// `crate::a::b`, `super::super::c`, `self::d` from inside `module`, as a
/// path from the crate root; `None` for a path into another crate.
fn absolute(path: &[String], module: &ModPath) -> Option<ModPath> {
    let mut it = path.iter().peekable();
    let mut base = match it.peek().map(|s| s.as_str()) {
        Some("crate") => {
            it.next();
            Vec::new()
        }
        Some("super" | "self") => module.clone(),
        _ => return None,
    };
    while let Some(s) = it.peek() {
        match s.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        it.next();
    }
    base.extend(it.cloned());
    Some(base)
}

/// The leaves of a `use` tree (its tokens after `use`, before `;`): each
/// full path and the name it is bound to (`*` for a glob).
fn use_tree(toks: &[Token], prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let mut i = 0;
    let depth_before = prefix.len();
    while i < toks.len() {
        let t = &toks[i].text;
        match t.as_str() {
            "::" => {}
            "{" => {
                // The group runs to its matching brace; each item in it is a tree.
                let mut depth = 0;
                let mut start = i + 1;
                let mut j = i;
                while j < toks.len() {
                    match toks[j].text.as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                use_tree(&toks[start..j], prefix, out);
                                break;
                            }
                        }
                        "," if depth == 1 => {
                            use_tree(&toks[start..j], prefix, out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                    j += 1;
                }
                i = j;
            }
            "*" => out.push((prefix.clone(), "*".into())),
            "as" => {
                if let (Some(last), Some(alias)) = (out.last_mut(), toks.get(i + 1)) {
                    last.1 = alias.text.clone();
                }
                i += 1;
            }
            // `a::{self}` (or `a::{self as b}`): `a` itself.
            "self"
                if i == 0 && !prefix.is_empty() && toks.get(1).is_none_or(|n| n.text == "as") =>
            {
                out.push((prefix.clone(), prefix.last().cloned().unwrap_or_default()));
            }
            "," => {}
            _ if is_ident(t) => {
                prefix.push(t.clone());
                let last = toks.get(i + 1).is_none_or(|n| n.text != "::");
                if last {
                    out.push((prefix.clone(), t.clone()));
                }
            }
            _ => {}
        }
        i += 1;
    }
    prefix.truncate(depth_before);
}

/// The tokens without any item under `#[cfg(test)]` (the attribute and
/// the item: up to its `;`, or to the end of its first `{ … }` block).
fn without_test_items(toks: Vec<Token>) -> Vec<Token> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let is_cfg_test = toks[i].text == "#"
            && toks.get(i + 1).is_some_and(|t| t.text == "[")
            && toks.get(i + 2).is_some_and(|t| t.text == "cfg")
            && toks.get(i + 3).is_some_and(|t| t.text == "(")
            && toks.get(i + 4).is_some_and(|t| t.text == "test")
            && toks.get(i + 5).is_some_and(|t| t.text == ")");
        if !is_cfg_test {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        let mut j = i + 7; // past `]`
        let mut depth = 0;
        while j < toks.len() {
            match toks[j].text.as_str() {
                ";" if depth == 0 => break,
                "{" => depth += 1,
                "}" => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        i = j + 1;
    }
    out
}

/// The checker on a synthetic crate: it must name what breaks.
#[cfg(test)]
mod checker {
    use super::*;

    fn crate_of(files: &[(&str, &str)]) -> Vec<Source> {
        files
            .iter()
            .map(|(rel, text)| Source {
                file: format!("src/{rel}"),
                module: module_of(rel),
                text: (*text).to_owned(),
            })
            .collect()
    }

    const LIB: &str = "//! | row | modules | job |\n\
                       //! |---|---|---|\n\
                       //! | 1 | `top` | the front |\n\
                       //! | 2 | `mid`, `side` | the middle |\n\
                       //! | 3 | `low` | the leaf |\n\
                       mod top;\nmod mid;\nmod side;\nmod low;\n";

    #[test]
    fn downward_imports_pass() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("top.rs", "use crate::mid::X;\nfn f() { crate::low::g(); }"),
            ("mid.rs", "use crate::{low::{self, Y}};"),
            ("side.rs", "// crate::top::Z in a comment\nconst S: &str = \"crate::top::Z\";\nfn f<'a>(c: char) -> bool { c == '\"' }"),
            ("low.rs", "#[cfg(test)]\nmod tests {\n    use crate::top::T;\n}\n"),
        ]);
        assert_eq!(check(&files), Vec::<String>::new());
    }

    #[test]
    fn an_upward_import_is_named_with_its_file_and_line() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("top.rs", ""),
            ("mid.rs", "\n\nfn f() { crate::top::go(); }"),
            ("side.rs", "use crate::mid::M;"),
            ("low.rs", ""),
        ]);
        let problems = check(&files);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("src/mid.rs:3: mid -> top runs upward, row 2 to row 1")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("src/side.rs:1: side -> mid runs inside row 2")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_circle_inside_a_directory_module_is_named_even_through_a_reexport() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("top.rs", ""),
            ("mid.rs", ""),
            ("side.rs", ""),
            ("low/mod.rs", "mod a;\nmod b;\npub use b::Thing;\n"),
            ("low/a.rs", "use super::Thing;"),
            ("low/b.rs", "pub struct Thing;\nfn f() { super::a::g(); }"),
        ]);
        let problems = check(&files);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let p = &problems[0];
        assert!(p.starts_with("`low`: circle between a, b"), "{p}");
        assert!(p.contains("a -> b (src/low/a.rs:1)"), "{p}");
        assert!(p.contains("b -> a (src/low/b.rs:2)"), "{p}");
    }

    #[test]
    fn every_module_needs_a_row_and_every_row_a_module() {
        let files = crate_of(&[
            ("lib.rs", LIB),
            ("top.rs", ""),
            ("mid.rs", ""),
            ("low.rs", ""),
            ("extra.rs", ""),
        ]);
        let problems = check(&files);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`extra` is missing from the layer table")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("names `side`, which is not a module")),
            "{problems:#?}"
        );
    }
}

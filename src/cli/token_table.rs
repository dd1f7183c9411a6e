//! Tokens as a plain-text table for people (`tokengate token list`, and
//! the token an edit leaves).

use crate::admin::api::{RestrictionSpec, TokenInfo};

/// A token's restrictions in a few words: `full access`, or each kind set.
pub(super) fn restrictions_text(r: &RestrictionSpec) -> String {
    let mut parts = Vec::new();
    if r.read_only {
        parts.push("read-only".to_owned());
    }
    for s in &r.scopes {
        parts.push(format!("{} {}", s.methods.join(","), s.path));
    }
    if !r.networks.is_empty() {
        parts.push(format!("from {}", r.networks.join(" ")));
    }
    if let Some(l) = r.rate_limit {
        parts.push(format!("{}/s burst {}", l.per_second, l.burst));
    }
    if parts.is_empty() {
        "full access".into()
    } else {
        parts.join("; ")
    }
}

/// A token's state in a word or two: suspended (and why), not yet valid,
/// expiring soon, or its status.
fn status(r: &TokenInfo) -> String {
    if r.suspended {
        return match &r.suspended_reason {
            Some(why) => format!("suspended ({why})"),
            None => "suspended".into(),
        };
    }
    let now = crate::clock::Clock::new().unix();
    let ahead = r
        .not_before
        .as_deref()
        .and_then(crate::clock::parse_rfc3339)
        .and_then(|t| u64::try_from(t).ok())
        .is_some_and(|t| t > now);
    if ahead {
        format!("not before {}", r.not_before.as_deref().unwrap_or(""))
    } else if r.expiring_soon {
        "expiring soon".into()
    } else {
        r.status.clone()
    }
}

/// The lifetime policy's view of a token: what it breaks, and when it is
/// deleted unless used.
fn policy_text(r: &TokenInfo) -> String {
    let mut parts: Vec<String> = r.violations.iter().map(|v| format!("breaks {v}")).collect();
    if let Some(at) = &r.revoke_unused_at {
        parts.push(format!("deleted if unused by {at}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

/// A plain-text table of tokens for people.
pub(super) fn table(rows: &[TokenInfo]) -> String {
    if rows.is_empty() {
        return "No refresh tokens. Create one with: tokengate token create --name NAME\n".into();
    }
    let header = [
        "ID",
        "NAME",
        "STATUS",
        "CREATED",
        "CREATED BY",
        "EXPIRES",
        "LAST USED",
        "USES",
        "USES LEFT",
        "LAST CLIENT",
        "POLICY",
        "RESTRICTIONS",
    ];
    let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.into());
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.name.clone(),
                status(r),
                r.created_at.clone(),
                // Tokens from before accounts existed name nobody.
                or(&r.created_by, "-"),
                or(&r.expires_at, "never"),
                or(&r.last_used_at, "never"),
                r.use_count.to_string(),
                match (r.uses_left, r.max_uses) {
                    (Some(left), Some(max)) => format!("{left} of {max}"),
                    _ => "-".into(),
                },
                or(&r.last_client_ip, "-"),
                policy_text(r),
                restrictions_text(&r.restrictions),
            ]
        })
        .collect();
    columns(&header, &body)
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart; the last column is not padded.
pub(super) fn columns(header: &[&str], body: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in body {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![TokenInfo {
            id: 1,
            name: "a".into(),
            status: "active".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: Some("jo".into()),
            expires_at: None,
            last_used_at: None,
            use_count: 0,
            last_client_ip: None,
            last_user_agent: None,
            expiring_soon: false,
            restrictions: Default::default(),
            suspended: true,
            suspended_reason: Some("reported leaked".into()),
            not_before: None,
            max_uses: Some(5),
            uses_left: Some(2),
            violations: vec!["max_lifetime".into()],
            revoke_unused_at: None,
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  NAME  STATUS"));
        assert!(lines[1].contains("never"));
        assert!(lines[1].ends_with("full access"), "{t}");
        assert!(
            lines[0].contains("CREATED BY") && lines[1].contains(" jo "),
            "{t}"
        );
        assert!(lines[1].contains("suspended (reported leaked)"), "{t}");
        assert!(lines[1].contains("2 of 5"), "{t}");
        assert!(lines[1].contains("breaks max_lifetime"), "{t}");
        assert!(table(&[]).contains("No refresh tokens"));
    }
}

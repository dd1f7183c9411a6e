//! One function per command: build the request from the command line, call
//! the admin API, and show the answer (the API's JSON as it came with
//! `--json`, otherwise a sentence or a table).

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::connect::{answer, call, request_body};
use super::token_table::table;
use super::{EditArgs, Failure, RestrictArgs, EXIT_INVALID, EXIT_NOT_FOUND};
use crate::admin::api::{
    expiry_text, parse_expiry, CreateToken, CreatedToken, DeleteTokens, DeletedTokens, EditToken,
    RestrictionSpec, ResumeToken, RotateToken, Rotated, RotatedToken, SuspendToken, TokenInfo,
};
use crate::clock::rfc3339;
use crate::reload::Reloaded;

use super::Connection;

/// Calls the admin API and shows its answer: with `--json` the API's JSON as
/// it came, otherwise what `for_people` prints from the typed answer, which
/// is returned either way.
async fn call_and_show<T: DeserializeOwned>(
    conn: &Connection,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    for_people: impl FnOnce(&T),
) -> Result<T, Failure> {
    let bytes = call(conn, method, path, body).await?;
    let value: T = answer(&bytes)?;
    if conn.json {
        println!("{}", String::from_utf8_lossy(&bytes));
    } else {
        for_people(&value);
    }
    Ok(value)
}

/// The body of the POSTs that take no arguments.
fn empty_body() -> Result<Option<Vec<u8>>, Failure> {
    request_body(&serde_json::json!({})).map(Some)
}

/// `tokengate reload`.
pub(super) async fn reload(conn: &Connection) -> Result<(), Failure> {
    call_and_show(
        conn,
        "POST",
        "/api/reload",
        empty_body()?,
        |done: &Reloaded| {
            let applied = if done.applied.is_empty() {
                "nothing changed".to_owned()
            } else {
                format!("applied {}", done.applied.join(", "))
            };
            println!(
                "reloaded: {applied}; serving certificate SHA-256 {}",
                done.certificate_sha256
            );
            if !done.restart_required.is_empty() {
                println!(
                    "changed but needing a restart (started values stay in force): {}",
                    done.restart_required.join(", ")
                );
            }
        },
    )
    .await
    .map(drop)
}

/// `tokengate cluster rotate`.
pub(super) async fn cluster_rotate(conn: &Connection) -> Result<(), Failure> {
    call_and_show(conn, "POST", "/api/cluster/rotate", empty_body()?, |done: &Rotated| {
        println!(
            "retired {} boot(s): every access token is refused from now on; scripts exchange their refresh tokens again",
            done.retired_boots
        );
    })
    .await
    .map(drop)
}

/// `token create`'s `--not-before` and `--max-uses`.
#[derive(Debug, Default)]
pub(super) struct Limits {
    pub(super) not_before: Option<String>,
    pub(super) max_uses: Option<u64>,
}

/// `tokengate token create`.
pub(super) async fn create(
    conn: &Connection,
    name: String,
    expires: Option<String>,
    restrict: &RestrictArgs,
    limits: Limits,
) -> Result<(), Failure> {
    let body = request_body(&CreateToken {
        name,
        expires: expires_option(expires)?,
        restrictions: RestrictionSpec {
            scopes: restrict.scope_rules()?,
            read_only: restrict.read_only,
            networks: restrict.networks.clone(),
            rate_limit: restrict.rate_limit(),
        },
        not_before: not_before_option(limits.not_before)?,
        max_uses: limits.max_uses,
    })?;
    call_and_show(
        conn,
        "POST",
        "/api/refresh-tokens",
        Some(body),
        |created: &CreatedToken| {
            let expiry = created
                .expires_at
                .as_ref()
                .map(|e| format!("expires {e}"))
                .unwrap_or("never expires".into());
            eprintln!(
                "Created refresh token {} \"{}\" ({expiry}). Copy it now: it cannot be shown again.",
                created.id, created.name
            );
            println!("{}", created.token);
        },
    )
    .await
    .map(drop)
}

/// `tokengate token list [--expiring WITHIN] [--violations]`.
pub(super) async fn list(
    conn: &Connection,
    expiring: Option<String>,
    violations: bool,
) -> Result<(), Failure> {
    let within = expiring
        .as_deref()
        .map(|w| {
            crate::config::parse_duration(w)
                .map_err(|e| Failure(EXIT_INVALID, format!("--expiring: {e}")))
        })
        .transpose()?;
    let path = if violations {
        "/api/refresh-tokens?violations=true"
    } else {
        "/api/refresh-tokens"
    };
    let bytes = call(conn, "GET", path, None).await?;
    let mut tokens: Vec<TokenInfo> = answer(&bytes)?;
    if let Some(within) = within {
        let now = crate::clock::Clock::new().unix();
        tokens.retain(|t| {
            let expires = t
                .expires_at
                .as_deref()
                .and_then(crate::clock::parse_rfc3339)
                .and_then(|e| u64::try_from(e).ok());
            crate::api::expires_within(expires, now, within.as_secs())
        });
    }
    if conn.json {
        let text =
            serde_json::to_string(&tokens).map_err(|e| Failure::unreachable(e.to_string()))?;
        println!("{text}");
    } else if tokens.is_empty() && violations {
        println!("No refresh token breaks the lifetime policy.");
    } else if let (true, Some(within)) = (tokens.is_empty(), within) {
        // "No refresh tokens" would be wrong here: there may be many, none
        // of them expiring that soon.
        println!("No refresh token expires within {}.", in_words(within));
    } else {
        print!("{}", table(&tokens));
    }
    Ok(())
}

/// `tokengate token edit ID …`.
pub(super) async fn edit(conn: &Connection, args: EditArgs) -> Result<(), Failure> {
    let id = args.id;
    let edit = edit_request(args)?;
    call_and_show(
        conn,
        "PATCH",
        &format!("/api/refresh-tokens/{id}"),
        Some(request_body(&edit)?),
        |token: &TokenInfo| print!("{}", table(std::slice::from_ref(token))),
    )
    .await
    .map(drop)
}

/// What `token edit`'s flags ask to change; only what is given changes, and
/// at least something must be given.
fn edit_request(args: EditArgs) -> Result<EditToken, Failure> {
    let EditArgs {
        id: _,
        name,
        expires,
        restrict,
        no_scopes,
        no_read_only,
        no_networks,
        no_rate_limit,
        full_access,
        not_before,
        no_not_before,
        max_uses,
        no_max_uses,
    } = args;
    let edit = EditToken {
        name,
        expires: expires_option(expires)?,
        scopes: (!restrict.scopes.is_empty())
            .then(|| restrict.scope_rules())
            .transpose()?
            .or((no_scopes || full_access).then(Vec::new)),
        read_only: if restrict.read_only {
            Some(true)
        } else {
            (no_read_only || full_access).then_some(false)
        },
        networks: (!restrict.networks.is_empty())
            .then(|| restrict.networks.clone())
            .or((no_networks || full_access).then(Vec::new)),
        rate_limit: match restrict.rate_limit() {
            Some(r) => Some(Some(r)),
            None => (no_rate_limit || full_access).then_some(None),
        },
        not_before: match not_before_option(not_before)? {
            Some(t) => Some(Some(t)),
            None => no_not_before.then_some(None),
        },
        max_uses: match max_uses {
            Some(n) => Some(Some(n)),
            None => no_max_uses.then_some(None),
        },
    };
    if edit == EditToken::default() {
        return Err(Failure(
            EXIT_INVALID,
            "nothing to change: give --name, --expires, --not-before, --max-uses or a restriction flag".into(),
        ));
    }
    Ok(edit)
}

/// `tokengate token rotate ID [--grace G]`.
pub(super) async fn rotate(conn: &Connection, id: u64, grace: &str) -> Result<(), Failure> {
    let grace = crate::config::parse_duration(grace)
        .map_err(|e| Failure(EXIT_INVALID, format!("--grace: {e}")))?;
    let body = request_body(&RotateToken {
        grace_seconds: grace.as_secs(),
    })?;
    call_and_show(
        conn,
        "POST",
        &format!("/api/refresh-tokens/{id}/rotate"),
        Some(body),
        |rotated: &RotatedToken| {
            let old = match &rotated.previous_token_valid_until {
                Some(t) => format!("the old one keeps working until {t}"),
                None => "the old one and its access tokens stopped working now".into(),
            };
            eprintln!(
                "Rotated refresh token {} \"{}\": {old}. Copy the new one now: it cannot be shown again.",
                rotated.token.id, rotated.token.name
            );
            println!("{}", rotated.token.token);
        },
    )
    .await
    .map(drop)
}

/// `tokengate token suspend ID [--reason TEXT]`.
pub(super) async fn suspend(
    conn: &Connection,
    id: u64,
    reason: Option<String>,
) -> Result<(), Failure> {
    let body = request_body(&SuspendToken { reason })?;
    call_and_show(
        conn,
        "POST",
        &format!("/api/refresh-tokens/{id}/suspend"),
        Some(body),
        |token: &TokenInfo| {
            println!(
                "suspended {} \"{}\": its exchanges are refused and its access tokens ended; `tokengate token resume {}` lets it work again",
                token.id, token.name, token.id
            );
        },
    )
    .await
    .map(drop)
}

/// `tokengate token resume ID`.
pub(super) async fn resume(conn: &Connection, id: u64) -> Result<(), Failure> {
    let body = request_body(&ResumeToken {})?;
    call_and_show(
        conn,
        "POST",
        &format!("/api/refresh-tokens/{id}/resume"),
        Some(body),
        |token: &TokenInfo| {
            println!(
                "resumed {} \"{}\": it exchanges again (access tokens from before the suspension stay ended)",
                token.id, token.name
            );
        },
    )
    .await
    .map(drop)
}

/// `tokengate token delete ID…`: the ones found are deleted (and said so);
/// any not found makes the exit code 4.
pub(super) async fn delete(conn: &Connection, ids: Vec<u64>) -> Result<(), Failure> {
    let body = request_body(&DeleteTokens {
        ids: ids.into_iter().map(serde_json::Value::from).collect(),
    })?;
    let done = call_and_show(
        conn,
        "POST",
        "/api/refresh-tokens/delete",
        Some(body),
        |done: &DeletedTokens| {
            for d in &done.deleted {
                println!("deleted {} \"{}\"", d.id, d.name);
            }
        },
    )
    .await?;
    if done.not_found.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = done.not_found.iter().map(u64::to_string).collect();
    Err(Failure(
        EXIT_NOT_FOUND,
        format!("no refresh token with id {}", missing.join(", ")),
    ))
}

/// `--expires` as the user wrote it, in the API's canonical form.
fn expires_arg(text: &str, now_unix: u64) -> Result<String, String> {
    parse_expiry(text, now_unix)
        .map(expiry_text)
        .map_err(|e| format!("--expires: {e}"))
}

/// `--not-before`, if given, as an RFC 3339 time: `2h` (from now), a date
/// or an RFC 3339 time.
fn not_before_option(text: Option<String>) -> Result<Option<String>, Failure> {
    let now = crate::clock::Clock::new().unix();
    text.map(|t| match parse_expiry(&t, now) {
        Ok(Some(at)) => Ok(rfc3339(at)),
        Ok(None) => Err(Failure(
            EXIT_INVALID,
            "--not-before: give a time such as 2h, 2027-05-01 or 2027-05-01T09:00:00Z".into(),
        )),
        Err(e) => Err(Failure(
            EXIT_INVALID,
            format!("--not-before: {}", e.replacen("expires", "time", 1)),
        )),
    })
    .transpose()
}

/// `--expires`, if given, in the wire's form.
fn expires_option(text: Option<String>) -> Result<Option<String>, Failure> {
    let now = crate::clock::Clock::new().unix();
    text.map(|e| expires_arg(&e, now))
        .transpose()
        .map_err(|m| Failure(EXIT_INVALID, m))
}

/// A duration as people say it: `7 days`, `12 hours`, `1 minute`, in the
/// largest unit that divides it (`90 minutes`, not `1.5 hours`).
fn in_words(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|&(size, _)| secs >= size && secs.is_multiple_of(size))
        .map_or((secs, "second"), |(size, unit)| (secs / size, unit));
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339;

    #[test]
    fn expires_forms() {
        let now = 1_800_000_000;
        assert_eq!(expires_arg("never", now).unwrap(), "never");
        assert_eq!(expires_arg("90d", now).unwrap(), rfc3339(now + 90 * 86_400));
        assert_eq!(
            expires_arg("2027-05-01", now).unwrap(),
            "2027-05-01T00:00:00Z"
        );
        assert_eq!(
            expires_arg("2027-05-01T00:00:00Z", now).unwrap(),
            "2027-05-01T00:00:00Z"
        );
        assert!(expires_arg("someday", now).is_err());
        assert!(expires_arg("2020-01-01", now).is_err());
    }

    #[test]
    fn durations_in_words() {
        let words = |s| in_words(Duration::from_secs(s));
        assert_eq!(words(7 * 86_400), "7 days");
        assert_eq!(words(86_400), "1 day");
        assert_eq!(words(12 * 3_600), "12 hours");
        assert_eq!(words(90 * 60), "90 minutes");
        assert_eq!(words(45), "45 seconds");
        assert_eq!(words(0), "0 seconds");
    }
}

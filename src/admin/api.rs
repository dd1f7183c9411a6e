//! The admin API's wire contract: every request and answer body, serialised
//! on one side and deserialised on the other by the same types (the server,
//! the CLI and the tests), so a renamed field breaks the build, not a user.
//! Also the one parser of token expiry dates.

use serde::{Deserialize, Serialize};

use crate::clock::{parse_rfc3339, rfc3339};
pub use crate::restrict::{RateLimit, RestrictionSpec, ScopeRule};

/// Longest accepted token name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// `POST /api/refresh-tokens`. The server reads it field by field (each
/// error names its field; see `admin::checked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct CreateToken {
    pub name: String,
    /// Absent: the gateway's default lifetime. `"never"` (or `null`): never
    /// expires. Otherwise a time (see `parse_expiry`), in the future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// Scopes, networks and rate (see `restrict`); all absent = full access.
    #[serde(flatten)]
    pub restrictions: RestrictionSpec,
    /// An RFC 3339 time before which it does not exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// Exchanges allowed (1 to `MAX_USES`); absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
}

/// The largest usage limit a token may be given.
pub const MAX_USES: u64 = 1_000_000_000;

/// Longest suspension reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// `POST /api/refresh-tokens/{id}/suspend`: `{}` or `{"reason": "…"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct SuspendToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/refresh-tokens/{id}/resume`: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct ResumeToken {}

/// The answer to a create: the token string, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub id: u64,
    pub name: String,
    pub token: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// The account that created it (`null`: before accounts existed).
    #[serde(default)]
    pub created_by: Option<String>,
    /// As stored; empty, false and null = full access.
    #[serde(flatten)]
    pub restrictions: RestrictionSpec,
    /// Before this (RFC 3339) it does not exchange; `null`: no such bound.
    #[serde(default)]
    pub not_before: Option<String>,
    /// The usage limit; `null`: unlimited.
    #[serde(default)]
    pub max_uses: Option<u64>,
}

/// `PATCH /api/refresh-tokens/{id}`: each field present is changed, each
/// absent one stays. `null` clears a restriction (`scopes`, `networks`,
/// `rate_limit`) or, for `expires`, means never (read as `"never"`). What
/// the CLI sends and the server reads, field by field, to name the one at
/// fault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct EditToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `"never"`, a lifetime (`30d`) or a time, as at create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<ScopeRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// `Some(None)` is sent as `null`: remove the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Option<RateLimit>>,
    /// An RFC 3339 time; `Some(None)` is sent as `null`: no not-before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Option<String>>,
    /// A new usage limit: that many exchanges from now on; `Some(None)` is
    /// sent as `null`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<Option<u64>>,
}

/// `POST /api/refresh-tokens/{id}/rotate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct RotateToken {
    /// How long the old secret keeps working; 0 (the default) = it stops
    /// now, and so does every access token issued under it.
    #[serde(default)]
    pub grace_seconds: u64,
}

/// The answer to a rotation: what create answers (the new token string,
/// shown this once), and until when the old secret still works.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotatedToken {
    #[serde(flatten)]
    pub token: CreatedToken,
    /// `null`: the old secret stopped at once.
    pub previous_token_valid_until: Option<String>,
}

/// The longest grace period a rotation may give the old secret.
pub const MAX_GRACE_SECONDS: u64 = 30 * 86_400;

/// Tokens expiring within this are flagged (`expiring_soon`, the page, the
/// count in `GET /api/stats`); `expires_within` is the test itself.
pub use crate::store::{expires_within, EXPIRING_SOON_SECS};

/// One row of `GET /api/refresh-tokens` (never a token string).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: u64,
    pub name: String,
    pub created_at: String,
    /// The account that created it (`null`: before accounts existed).
    #[serde(default)]
    pub created_by: Option<String>,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub use_count: u64,
    pub last_client_ip: Option<String>,
    pub last_user_agent: Option<String>,
    /// `active` or `expired`.
    pub status: String,
    /// Active and expiring within 7 days: time to rotate or extend it.
    #[serde(default)]
    pub expiring_soon: bool,
    /// Scopes, networks and rate; empty, false and null = full access.
    #[serde(flatten)]
    pub restrictions: RestrictionSpec,
    /// Suspended: exchanges are refused until it is resumed.
    #[serde(default)]
    pub suspended: bool,
    /// Why, when someone said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_reason: Option<String>,
    /// Before this it does not exchange (`null`: no such bound).
    #[serde(default)]
    pub not_before: Option<String>,
    /// The usage limit as last set, and the exchanges left under it
    /// (`null`, both: unlimited).
    #[serde(default)]
    pub max_uses: Option<u64>,
    #[serde(default)]
    pub uses_left: Option<u64>,
    /// The lifetime policies it breaks (`max_lifetime`); empty when none.
    #[serde(default)]
    pub violations: Vec<String>,
    /// When the periodic sweep deletes it unless it is exchanged first
    /// (`tokens.revoke_unused_after`; `null` when that is unset).
    #[serde(default)]
    pub revoke_unused_at: Option<String>,
}

/// `POST /api/refresh-tokens/delete`. Ids are numbers; numeric strings are
/// accepted too, for clients that quote them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTokens {
    pub ids: Vec<serde_json::Value>,
}

/// The answer to a delete of many.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedTokens {
    pub deleted: Vec<DeletedToken>,
    pub not_found: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedToken {
    pub id: u64,
    pub name: String,
}

/// `POST /api/login` (the page's login form).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    #[serde(default = "admin_user")]
    pub username: String,
    pub password: String,
}

fn admin_user() -> String {
    super::password::ADMIN_USER.to_owned()
}

/// `GET /api/session`, and the answer to a login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    pub user: String,
    /// What the account may do (see `roles`).
    pub role: crate::roles::Role,
    /// How the person signed in.
    pub via: crate::roles::Via,
    /// Present for page sessions: send it as `X-CSRF-Token` on changes.
    pub csrf: Option<String>,
    pub default_refresh_ttl_days: u64,
    pub session_ttl_seconds: u64,
}

/// `GET /api/stats`: what the gateway holds right now (read-only; for
/// monitoring and the soak run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Access tokens in memory: live ones, plus expired ones until the next
    /// sweep (`tokens.sweep_interval`). A deleted refresh token's leave at once.
    pub live_access_tokens: u64,
    /// Refresh tokens in the store, expired ones included.
    pub refresh_tokens: u64,
    /// Of those, active ones that expire within 7 days: a monitoring system
    /// can alert on this before a script's credential lapses.
    #[serde(default)]
    pub refresh_tokens_expiring_soon: u64,
    /// Open connections on the public listener (all workers), TLS handshakes
    /// in progress included.
    pub public_connections: u64,
    /// Access tokens dropped since start because their refresh token minted
    /// more than `tokens.max_access_per_refresh` live ones (oldest first).
    pub access_tokens_evicted: u64,
    /// Cluster mode only: this replica, the peer boots whose access tokens
    /// verify here, and milliseconds since the last contact with PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// `GET /api/stats`'s `cluster` (PostgreSQL backend only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    pub replica: String,
    pub peer_boots: u64,
    pub staleness_ms: u64,
    /// Changes applied from the change feed since start.
    pub changes_applied: u64,
}

/// `POST /api/cluster/rotate`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotated {
    /// Boots retired: one per running replica (with redb, this gateway's).
    pub retired_boots: u64,
}

/// Every error answer: `{"error", "error_description"}`; a `forbidden`
/// one also names the least role that may (`required_role`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub error_description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_role: Option<crate::roles::Role>,
}

pub use crate::store::{validate_account_name, Source as AccountSource, MAX_ACCOUNT_NAME};

/// Shortest password an account may be given.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// One row of `GET /api/users`, and the answer to a `PATCH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: crate::roles::Role,
    pub disabled: bool,
    /// `local` (a password) or `oidc` (single sign-on).
    pub source: AccountSource,
    pub created_at: String,
    pub last_login_at: Option<String>,
}

/// `POST /api/users`. Without a password, one is generated and shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    pub role: crate::roles::Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// The answer to `POST /api/users`: the account, and the generated
/// password (shown this once; `null` when one was given).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: UserInfo,
    #[serde(default)]
    pub password: Option<String>,
}

/// `PATCH /api/users/{name}`: each field present is changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::roles::Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Reads an expiry as a person or a script writes it, at `now` (Unix
/// seconds): `never`; a lifetime from now (`90d`, `12h`); a date
/// (`2027-05-01`, midnight UTC); or an RFC 3339 time. `None` = never. A
/// moment that is not in the future is refused.
pub fn parse_expiry(text: &str, now: u64) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let at = if let Ok(d) = humantime::parse_duration(t) {
        i64::try_from(now.saturating_add(d.as_secs())).unwrap_or(i64::MAX)
    } else {
        parse_rfc3339(t)
            .or_else(|| parse_rfc3339(&format!("{t}T00:00:00Z")))
            .ok_or_else(|| {
                format!(
                    "expires {t:?} is not \"never\", a lifetime like 90d, a date like 2027-05-01 or an RFC 3339 time"
                )
            })?
    };
    match u64::try_from(at) {
        Ok(at) if at > now => Ok(Some(at)),
        _ => Err(format!("expires {t:?} is not in the future")),
    }
}

/// The canonical form of an expiry for the wire: `never` or RFC 3339.
pub fn expiry_text(expires: Option<u64>) -> String {
    expires.map(rfc3339).unwrap_or_else(|| "never".into())
}

/// Checks a name: trimmed, 1..=100 characters, no control characters.
pub fn validate_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("name must not be empty");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err("name must be at most 100 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters");
    }
    if name.chars().any(is_invisible_format) {
        return Err(
            "name must not contain invisible formatting characters (bidi controls, zero-width, soft hyphen, tags)",
        );
    }
    Ok(name.to_owned())
}

/// Characters that change how a name displays without showing themselves:
/// Unicode general category Cf (format) as of Unicode 16, plus the line and
/// paragraph separators (Zl, Zp). A name is shown to administrators in the
/// page, the CLI and the audit log; with these, `report\u{202E}exe.doc`
/// reads as `reportcod.exe`, and two names that look alike can differ.
/// Letters, marks, digits, symbols and ordinary spaces of every script pass.
///
/// Inclusive ranges, sorted. Kept here rather than pulling in a Unicode
/// tables crate: the set is small and changes rarely.
const INVISIBLE_FORMAT: [(u32, u32); 22] = [
    (0x00AD, 0x00AD),   // soft hyphen
    (0x0600, 0x0605),   // Arabic number signs
    (0x061C, 0x061C),   // Arabic letter mark (bidi)
    (0x06DD, 0x06DD),   // Arabic end of ayah
    (0x070F, 0x070F),   // Syriac abbreviation mark
    (0x0890, 0x0891),   // Arabic pound and piastre marks above
    (0x08E2, 0x08E2),   // Arabic disputed end of ayah
    (0x180E, 0x180E),   // Mongolian vowel separator
    (0x200B, 0x200F),   // zero-width space, (non-)joiner, LRM, RLM
    (0x2028, 0x2029),   // line and paragraph separators (Zl, Zp)
    (0x202A, 0x202E),   // bidi embeddings and overrides
    (0x2060, 0x2064),   // word joiner, invisible operators
    (0x2066, 0x206F),   // bidi isolates, deprecated format controls
    (0xFEFF, 0xFEFF),   // zero-width no-break space (BOM)
    (0xFFF9, 0xFFFB),   // interlinear annotation controls
    (0x110BD, 0x110BD), // Kaithi number sign
    (0x110CD, 0x110CD), // Kaithi number sign above
    (0x13430, 0x1343F), // Egyptian hieroglyph format controls
    (0x1BCA0, 0x1BCA3), // shorthand format controls
    (0x1D173, 0x1D17A), // musical symbol beam and slur controls
    (0xE0001, 0xE0001), // language tag
    (0xE0020, 0xE007F), // tag characters
];

/// Whether text shows as written: no control characters and no invisible
/// formatting characters (what a name refuses, at any length).
pub(crate) fn shows_as_written(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() || is_invisible_format(c))
}

fn is_invisible_format(c: char) -> bool {
    let c = u32::from(c);
    // Everything below the soft hyphen (ASCII and Latin-1 letters) passes at once.
    c >= 0x00AD
        && INVISIBLE_FORMAT
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("  ci bot ").unwrap(), "ci bot");
        assert!(validate_name("   ").is_err());
        assert!(validate_name(&"x".repeat(101)).is_err());
        assert!(validate_name(&"é".repeat(100)).is_ok());
        assert!(validate_name("a\nb").is_err());
    }

    #[test]
    fn names_refuse_invisible_format_characters() {
        for c in [
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200E}',
            '\u{200F}',
            '\u{061C}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{180E}',
            '\u{E0041}',
            '\u{2028}',
        ] {
            let e = validate_name(&format!("report{c}cod.exe")).unwrap_err();
            assert!(e.contains("name"), "{:04X}: {e}", c as u32);
        }
        // Letters of every script still pass.
        for ok in [
            "nightly report",
            "Отчёт",
            "報告",
            "تقرير",
            "रिपोर्ट",
            "emoji 🚀",
        ] {
            assert_eq!(validate_name(ok).unwrap(), ok);
        }
    }

    #[test]
    fn expiry_forms() {
        let now = 1_800_000_000;
        assert_eq!(parse_expiry("never", now).unwrap(), None);
        assert_eq!(parse_expiry(" Never ", now).unwrap(), None);
        assert_eq!(parse_expiry("90d", now).unwrap(), Some(now + 90 * 86_400));
        assert_eq!(
            parse_expiry("2027-05-01T00:00:00Z", now).unwrap(),
            Some(1_809_129_600)
        );
        assert_eq!(
            parse_expiry("2027-05-01", now).unwrap(),
            Some(1_809_129_600)
        );
        assert!(parse_expiry("2020-01-01T00:00:00Z", now).is_err());
        assert!(parse_expiry("tomorrow", now).is_err());
        assert!(parse_expiry("someday", now).is_err());
        assert_eq!(expiry_text(None), "never");
        assert_eq!(expiry_text(Some(1_809_129_600)), "2027-05-01T00:00:00Z");
    }
}

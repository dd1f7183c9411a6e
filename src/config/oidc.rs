//! `[admin.oidc]`: single sign-on for the admin page with an OpenID Connect
//! provider. Off while `issuer` is empty; once set, every other key is
//! checked here, at start-up and by `check-config`, and the client secret
//! is read (from its file, refused when group or others may read it, or
//! from `TOKENGATE_ADMIN__OIDC__CLIENT_SECRET`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::check::read_secret_file;
use super::file::{ClientSecret, OidcSection};
use super::ConfigError;
use crate::roles::{Role, ROLE_NAMES};

/// The environment variable that holds the client secret (never a file key:
/// a secret in the configuration file ends up in backups and reviews).
pub const CLIENT_SECRET_ENV: &str = "TOKENGATE_ADMIN__OIDC__CLIENT_SECRET";
/// Claim names and values, the button's text: short, printable.
const MAX_NAME: usize = 128;

/// The validated `[admin.oidc]`.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL exactly as configured: the ID token's `iss` must equal it.
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE alone proves the code is ours).
    pub client_secret: Option<ClientSecret>,
    /// The issuer's CA; `None`: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// The scopes asked for besides `openid` (which is always sent).
    pub scopes: Vec<String>,
    /// `None`: `https://<the request's Host>/auth/oidc/callback`.
    pub redirect_url: Option<String>,
    pub display_name: String,
    pub username_claim: String,
    pub role_claim: String,
    pub roles: BTreeMap<String, Role>,
    pub default_role: Option<Role>,
}

/// `admin.oidc`: `None` when sign-on is off. `display_name` is filled in
/// `o` when left empty, so `check-config` shows the one in effect.
pub(super) fn validate(o: &mut OidcSection) -> Result<Option<OidcConfig>, ConfigError> {
    if o.issuer.trim().is_empty() {
        // Any other key set without an issuer is a half-done set-up.
        if !o.client_id.is_empty() || o.client_secret_file.is_some() || !o.roles.is_empty() {
            return Err(ConfigError::invalid(
                "admin.oidc.issuer",
                "required when [admin.oidc] is set (the provider's issuer URL, e.g. https://login.example.com)",
            ));
        }
        return Ok(None);
    }
    let host = https_url("admin.oidc.issuer", &o.issuer)?;
    if o.issuer.contains('?') || o.issuer.contains('#') {
        return Err(ConfigError::invalid(
            "admin.oidc.issuer",
            "an issuer URL has no query or fragment",
        ));
    }
    if o.client_id.trim().is_empty() || o.client_id.len() > 256 {
        return Err(ConfigError::invalid(
            "admin.oidc.client_id",
            "required: the client ID the provider gave this gateway (at most 256 characters)",
        ));
    }
    let client_secret = client_secret(o)?;
    if let Some(ca) = &o.ca_file {
        std::fs::metadata(ca).map_err(|e| {
            ConfigError::invalid("admin.oidc.ca_file", format!("{}: {e}", ca.display()))
        })?;
    }
    let scopes = scopes(&o.scopes)?;
    let redirect_url = match o.redirect_url.trim() {
        "" => None,
        u => {
            https_url("admin.oidc.redirect_url", u)?;
            Some(u.to_owned())
        }
    };
    if o.display_name.trim().is_empty() {
        o.display_name = host;
    }
    let display_name = printable("admin.oidc.display_name", &o.display_name)?;
    let username_claim = printable("admin.oidc.username_claim", &o.username_claim)?;
    let role_claim = printable("admin.oidc.role_claim", &o.role_claim)?;
    let mut roles = BTreeMap::new();
    for (value, role) in &o.roles {
        let key = format!("admin.oidc.roles.{value}");
        printable(&key, value)?;
        roles.insert(value.clone(), parse_role(&key, role)?);
    }
    let default_role = match o.default_role.trim() {
        "" => None,
        r => Some(parse_role("admin.oidc.default_role", r)?),
    };
    Ok(Some(OidcConfig {
        issuer: o.issuer.clone(),
        client_id: o.client_id.clone(),
        client_secret,
        ca_file: o.ca_file.clone(),
        scopes,
        redirect_url,
        display_name,
        username_claim,
        role_claim,
        roles,
        default_role,
    }))
}

/// An `https://` URL with a host: returns the host.
fn https_url(key: &str, s: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError::invalid(
            key,
            format!("{s:?} is not an https:// URL (e.g. https://login.example.com/realms/staff)"),
        )
    };
    let uri: http::Uri = s.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    uri.host()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .ok_or_else(bad)
}

fn client_secret(o: &OidcSection) -> Result<Option<ClientSecret>, ConfigError> {
    const KEY: &str = "admin.oidc.client_secret_file";
    match (&o.client_secret_file, &o.client_secret) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            KEY,
            format!("set either this or {CLIENT_SECRET_ENV}, not both"),
        )),
        (None, Some(s)) if s.expose().trim().is_empty() => {
            Err(ConfigError::invalid(CLIENT_SECRET_ENV, "is empty"))
        }
        (None, Some(s)) => Ok(Some(ClientSecret::new(s.expose().trim().to_owned()))),
        (Some(path), None) => read_secret_file(KEY, path).map(|s| Some(ClientSecret::new(s))),
        (None, None) => Ok(None),
    }
}

/// `scopes`: space-separated scope tokens (RFC 6749's characters), `openid`
/// among them; returns the others.
fn scopes(s: &str) -> Result<Vec<String>, ConfigError> {
    const KEY: &str = "admin.oidc.scopes";
    let all: Vec<&str> = s.split_whitespace().collect();
    if !all.contains(&"openid") {
        return Err(ConfigError::invalid(
            KEY,
            format!("{s:?} must include openid (e.g. \"openid email profile\")"),
        ));
    }
    if let Some(bad) = all.iter().find(|t| {
        t.len() > MAX_NAME
            || !t
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    }) {
        return Err(ConfigError::invalid(KEY, format!("{bad:?} is not a scope")));
    }
    let mut rest: Vec<String> = Vec::new();
    for t in all.into_iter().filter(|t| *t != "openid") {
        if !rest.iter().any(|r| r == t) {
            rest.push(t.to_owned());
        }
    }
    Ok(rest)
}

/// A non-empty, short text without control characters.
fn printable(key: &str, s: &str) -> Result<String, ConfigError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > MAX_NAME || t.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            key,
            format!("must be 1 to {MAX_NAME} characters without control characters"),
        ));
    }
    Ok(t.to_owned())
}

fn parse_role(key: &str, s: &str) -> Result<Role, ConfigError> {
    s.trim().parse().map_err(|_: String| {
        ConfigError::invalid(key, format!("{s:?} is not a role: expected {ROLE_NAMES}"))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::Config;
    use crate::roles::Role;

    fn err(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

    const BASE: &str = "[admin.oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"tg\"\n";

    #[test]
    fn off_by_default_and_on_with_an_issuer() {
        assert!(Config::from_toml_str("").unwrap().admin.oidc.is_none());
        let c = Config::from_toml_str(&format!(
            "{BASE}roles = {{ \"dba-team\" = \"manager\", ops = \"admin\" }}\ndefault_role = \"viewer\"\n"
        ))
        .unwrap();
        let o = c.admin.oidc.clone().unwrap();
        assert_eq!(o.display_name, "idp.example.com");
        assert_eq!(o.scopes, ["email", "profile"]);
        assert_eq!(o.username_claim, "email");
        assert_eq!(o.role_claim, "groups");
        assert_eq!(o.roles["dba-team"], Role::Manager);
        assert_eq!(o.default_role, Some(Role::Viewer));
        assert!(o.client_secret.is_none() && o.redirect_url.is_none());
        assert!(c
            .summary()
            .contains("admin.oidc.display_name = idp.example.com"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (toml, key) in [
            ("[admin.oidc]\nclient_id = \"x\"", "admin.oidc.issuer"),
            (
                "[admin.oidc]\nissuer = \"http://idp\"\nclient_id = \"x\"",
                "admin.oidc.issuer",
            ),
            (
                "[admin.oidc]\nissuer = \"https://idp\"",
                "admin.oidc.client_id",
            ),
            (
                &format!("{BASE}scopes = \"email profile\""),
                "admin.oidc.scopes",
            ),
            (
                &format!("{BASE}roles = {{ a = \"root\" }}"),
                "admin.oidc.roles.a",
            ),
            (
                &format!("{BASE}default_role = \"boss\""),
                "admin.oidc.default_role",
            ),
            (
                &format!("{BASE}redirect_url = \"ftp://x/cb\""),
                "admin.oidc.redirect_url",
            ),
            (
                &format!("{BASE}client_secret_file = \"/nonexistent/secret\""),
                "admin.oidc.client_secret_file",
            ),
            (
                &format!("{BASE}username_claim = \"\""),
                "admin.oidc.username_claim",
            ),
        ] {
            let e = err(toml);
            assert!(e.contains(key), "{toml}: {e}");
        }
        // Never a key of the file: the secret comes from its file or the environment.
        assert!(err(&format!("{BASE}client_secret = \"x\"")).contains("client_secret"));
    }

    #[test]
    fn the_secret_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oidc.secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let toml = format!("{BASE}client_secret_file = \"{}\"", path.display());
        let e = err(&toml);
        assert!(e.contains("chmod 600") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::from_toml_str(&toml).unwrap();
        let secret = c.admin.oidc.unwrap().client_secret.unwrap();
        assert_eq!(secret.expose(), "s3cret");
        assert!(!format!("{secret:?}").contains("s3cret"));
    }
}

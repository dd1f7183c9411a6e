//! `check-config`'s listing: every key of the file format, derived from its
//! serialised form (so a new key shows up without code here), with the
//! values that are secrets masked.

use std::collections::BTreeMap;

use serde_json::Value;

use super::FileConfig;

/// Keys whose values are secrets, or whose sub-keys' values are: the password
/// hash, and extra upstream headers (which usually carry an API credential).
const MASKED: &[&str] = &["admin.password_hash", "upstream.headers"];
/// Arrays of tables (`[[webhooks]]`): each entry's keys listed as
/// `webhooks[0].url`; none, nothing.
const TABLE_ARRAYS: &[&str] = &["webhooks"];
/// URLs that may carry a password: listed with it masked.
const URLS: &[&str] = &["storage.postgres.url"];

pub(super) fn lines(file: &FileConfig) -> String {
    let mut out = Vec::new();
    match serde_json::to_value(file) {
        Ok(v) => walk("", &v, false, &mut out),
        Err(e) => out.push(format!("(cannot list the settings: {e})")),
    }
    out.join("\n")
}

/// Tables whose keys are the operator's (header names): compared whole.
const FREE_FORM: &[&str] = &["upstream.headers"];

/// The keys whose values differ between two configurations, sorted, for a
/// reload to say what it applied and what needs a restart. Only key names
/// come out, never values.
pub(super) fn changed(old: &FileConfig, new: &FileConfig) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    if let (Ok(x), Ok(y)) = (serde_json::to_value(old), serde_json::to_value(new)) {
        leaves("", x, &mut a);
        leaves("", y, &mut b);
    }
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    keys.sort();
    keys.dedup();
    keys
}

fn leaves(key: &str, v: Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) if !map.is_empty() && !FREE_FORM.contains(&key) => {
            for (k, child) in map {
                let key = if key.is_empty() {
                    k
                } else {
                    format!("{key}.{k}")
                };
                leaves(&key, child, out);
            }
        }
        other => {
            out.insert(key.to_owned(), other);
        }
    }
}

fn walk(key: &str, v: &Value, masked: bool, out: &mut Vec<String>) {
    let masked = masked || MASKED.contains(&key);
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let key = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                walk(&key, child, masked, out);
            }
        }
        Value::Object(_) => out.push(format!("{key} = (none)")),
        Value::Array(items) if TABLE_ARRAYS.contains(&key) => {
            for (i, item) in items.iter().enumerate() {
                walk(&format!("{key}[{i}]"), item, masked, out);
            }
        }
        Value::Null => out.push(format!("{key} = (unset)")),
        _ if masked => out.push(format!("{key} = (set, hidden)")),
        // Shown (where the database is matters), but never its password.
        Value::String(s) if URLS.contains(&key) => {
            out.push(format!("{key} = {}", super::mask::mask_url(s)))
        }
        // `webhooks[N].url`: the path may be the credential.
        Value::String(s) if key.starts_with("webhooks[") && key.ends_with("].url") => {
            out.push(format!("{key} = {}", super::mask::url_origin(s)))
        }
        Value::String(s) => out.push(format!("{key} = {s}")),
        other => out.push(format!("{key} = {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_names_keys_never_values() {
        let old = FileConfig::default();
        let mut new = old.clone();
        assert!(changed(&old, &new).is_empty());
        new.public.listen = "127.0.0.1:9443".into();
        new.upstream
            .headers
            .insert("X-Api-Key".into(), "s3cret".into());
        new.tls.cert = Some("/etc/tokengate/new.crt".into());
        assert_eq!(
            changed(&old, &new),
            ["public.listen", "tls.cert", "upstream.headers"]
        );
        // A header's value alone changing is still a change of the table.
        let mut newer = new.clone();
        newer
            .upstream
            .headers
            .insert("X-Api-Key".into(), "other".into());
        assert_eq!(changed(&new, &newer), ["upstream.headers"]);
    }

    #[test]
    fn every_key_is_listed_and_secrets_are_masked() {
        let mut f = FileConfig::default();
        f.admin.password_hash = Some("$argon2id$v=19$secret".into());
        f.upstream
            .headers
            .insert("X-Api-Key".into(), "s3cret".into());
        let text = lines(&f);
        assert!(text.contains("public.listen = 0.0.0.0:8443"), "{text}");
        assert!(text.contains("tokens.access_ttl = 900s"), "{text}");
        assert!(text.contains("upstream.ca_file = (unset)"), "{text}");
        assert!(text.contains("upstream.headers.X-Api-Key = (set, hidden)"));
        assert!(text.contains("admin.password_hash = (set, hidden)"));
        assert!(
            !text.contains("s3cret") && !text.contains("argon2id"),
            "{text}"
        );
    }
}

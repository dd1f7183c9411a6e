//! Token-endpoint JSON bodies (`parse_body(BodyKind::Json, …)`): an accepted
//! body is a JSON object whose fields are what was decoded; a refusal is one
//! of the fixed descriptions (never an echo of the body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokengate::{parse_body, BodyKind};

const NOT_OBJECT: &str =
    "body is not a JSON object with string fields grant_type and refresh_token";

fn field(obj: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    match obj.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => panic!("{name} accepted as {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_body(BodyKind::Json, data) {
        Ok(r) => {
            assert_eq!(
                data.trim_ascii_start().first(),
                Some(&b'{'),
                "accepted a body that is not a JSON object"
            );
            // serde_json skips the values of ignored fields without checking
            // them fully (UTF-8 in strings, number range), so compare fields
            // only when the whole body is also valid JSON.
            if let Ok(v) = serde_json::from_slice::<Value>(data) {
                let obj = v
                    .as_object()
                    .unwrap_or_else(|| panic!("accepted a non-object: {v}"));
                assert_eq!(r.grant_type, field(obj, "grant_type"));
                assert_eq!(r.refresh_token, field(obj, "refresh_token"));
            }
        }
        Err(e) => assert!(
            e == NOT_OBJECT
                || e == "parameter grant_type is repeated"
                || e == "parameter refresh_token is repeated",
            "unexpected description {e:?}"
        ),
    }
});

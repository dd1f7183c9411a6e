//! `Authorization` header parsing: every line of the input is one
//! `Authorization` value (a newline can never be inside a header value).
#![no_main]

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(AUTHORIZATION, v);
        }
    }
    // Another header must never be mistaken for it.
    headers.append("x-authorization", HeaderValue::from_static("Bearer decoy"));
    let values: Vec<&[u8]> = headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();

    let result = tokengate::bearer_token(&headers);
    match values.as_slice() {
        [] => assert!(matches!(&result, Err(e) if format!("{e:?}") == "Missing")),
        [value] => {
            // The documented form: optional spaces, `bearer` in any case, a
            // space, the token, optional spaces.
            let raw = value.trim_ascii();
            let well_formed = raw.len() > 7
                && raw[..6].eq_ignore_ascii_case(b"bearer")
                && raw[6] == b' '
                && !raw[7..].trim_ascii().is_empty();
            match result {
                Ok(token) => {
                    assert!(well_formed, "accepted {value:?}");
                    assert!(!token.is_empty());
                    assert_eq!(token, token.trim_ascii(), "token keeps surrounding spaces");
                    // A subslice of the header value, ending at its last non-space.
                    let start = token.as_ptr() as usize - value.as_ptr() as usize;
                    assert!(start + token.len() <= value.len(), "not a subslice");
                    assert_eq!(&value[start..start + token.len()], token);
                    assert!(value[start + token.len()..].trim_ascii().is_empty());
                    assert!(value[..start].trim_ascii().eq_ignore_ascii_case(b"bearer"));
                }
                Err(e) => assert!(!well_formed, "refused {value:?}: {e:?}"),
            }
        }
        _ => assert!(matches!(&result, Err(e) if format!("{e:?}") == "Repeated")),
    }
});

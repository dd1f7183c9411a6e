//! Token-endpoint form bodies (`parse_body(BodyKind::Form, …)`), checked
//! against a plain decode of the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::{parse_body, BodyKind};

fuzz_target!(|data: &[u8]| {
    let result = parse_body(BodyKind::Form, data);
    let mut grant_type = Vec::new();
    let mut refresh_token = Vec::new();
    for (k, v) in form_urlencoded::parse(data) {
        match k.as_ref() {
            "grant_type" => grant_type.push(v.into_owned()),
            "refresh_token" => refresh_token.push(v.into_owned()),
            _ => {}
        }
    }
    if grant_type.len() > 1 || refresh_token.len() > 1 {
        let e = result.expect_err("repeated parameter accepted");
        assert!(
            e == "parameter grant_type is repeated" || e == "parameter refresh_token is repeated",
            "{e:?}"
        );
    } else {
        let r = result.expect("a body without repeats refused");
        assert_eq!(r.grant_type, grant_type.pop());
        assert_eq!(r.refresh_token, refresh_token.pop());
    }
});

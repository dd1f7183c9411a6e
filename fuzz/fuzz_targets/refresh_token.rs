//! Refresh-token decoding (`parse_refresh`): shape, charset and checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;

const LEN: usize = 54; // "tgr_" + 44 base62 + 6 base62 checksum

fuzz_target!(|data: &[u8]| {
    // The token endpoint hands over text (form and JSON decoding make it UTF-8).
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match tokengate::parse_refresh(s) {
        Ok(_) => {
            assert_eq!(s.len(), LEN);
            assert!(s.starts_with("tgr_"));
            assert!(s.bytes().skip(4).all(|b| b.is_ascii_alphanumeric()));
            // Parsing is a pure function of the text: it parses again.
            assert!(tokengate::parse_refresh(s).is_ok());
            // The checksum catches every single-character typo.
            let mut typo = s.as_bytes().to_vec();
            for i in 4..LEN {
                let orig = typo[i];
                typo[i] = if orig == b'a' { b'b' } else { b'a' };
                let t = std::str::from_utf8(&typo).expect("ascii");
                assert!(tokengate::parse_refresh(t).is_err(), "typo at {i} accepted");
                typo[i] = orig;
            }
        }
        Err(e) => {
            let kind = format!("{e:?}");
            if !s.starts_with("tgr_") {
                assert_eq!(kind, "Prefix");
            } else if s.len() != LEN {
                assert_eq!(kind, "Length");
            } else if !s.bytes().skip(4).all(|b| b.is_ascii_alphanumeric()) {
                assert_eq!(kind, "Charset");
            } else {
                assert_eq!(kind, "Checksum");
            }
            let _ = e.to_string();
        }
    }
});

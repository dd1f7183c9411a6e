//! Access-token decoding (`RawAccess::decode` and `BootKey::check` through `AccessTokens::validate`).
//!
//! The first byte picks the mode. Even: the rest is the bearer token as sent.
//! Odd: the rest is a list of 3-byte edits (op, position, byte) applied to a
//! real token minted at start-up, so the fuzzer works near the valid shape
//! even though the boot nonce (and with it every valid token) changes per run.
//! Either way a token is accepted if and only if it is exactly the minted one.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tokengate::{AccessTokens, RefreshToken};

struct Fixture {
    tokens: AccessTokens,
    valid: Vec<u8>,
    now: Instant,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tokens = AccessTokens::new().expect("boot nonce");
        let now = Instant::now();
        let refresh = Arc::new(RefreshToken::detached(7, "fuzz", None));
        let valid = tokens
            .issue(refresh, Duration::from_secs(3600), now)
            .expect("mint")
            .into_bytes();
        Fixture { tokens, valid, now }
    })
}

const ACCESS_LEN: usize = 90; // "tga_" + 86 base64url characters (64 bytes)
/// The format before the secret generation: refused as an earlier boot's.
const PREVIOUS_ACCESS_LEN: usize = 79;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token: Vec<u8> = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let mut t = f.valid.clone();
        for e in rest.chunks_exact(3) {
            let (op, pos, byte) = (e[0], usize::from(e[1]), e[2]);
            match op % 4 {
                0 if !t.is_empty() => {
                    let i = pos % t.len();
                    t[i] ^= byte;
                }
                1 if !t.is_empty() => {
                    let i = pos % t.len();
                    t[i] = byte;
                }
                2 => t.insert(pos % (t.len() + 1), byte),
                3 if !t.is_empty() => {
                    t.remove(pos % t.len());
                }
                _ => {}
            }
        }
        t
    };

    let result = f.tokens.validate(&token, f.now, 0, |r| r.id);
    if token == f.valid {
        assert_eq!(result, Ok(7));
    } else {
        let e = result.expect_err("a token other than the minted one was accepted");
        if !token.starts_with(b"tga_")
            || (token.len() != ACCESS_LEN && token.len() != PREVIOUS_ACCESS_LEN)
        {
            assert_eq!(format!("{e:?}"), "Malformed");
        } else if token.len() == PREVIOUS_ACCESS_LEN {
            assert_eq!(format!("{e:?}"), "EarlierBoot");
        }
    }
});

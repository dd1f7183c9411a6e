//! Configuration: TOML text → `FileConfig` (figment, over the defaults) →
//! `validate()`, without the environment or any file. An accepted
//! configuration satisfies the documented bounds and can be summarised.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokengate::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text) {
        Ok(c) => {
            let t = &c.tokens;
            assert!(!t.access_ttl.is_zero() && t.access_ttl <= Duration::from_secs(86_400));
            assert!(!t.refresh_ttl.is_zero());
            assert!(!t.sweep_interval.is_zero());
            assert!((256..=1 << 20).contains(&c.public.token_body_limit));
            assert!(c.public.workers >= 1);
            for l in [&c.public.limits, &c.admin.limits] {
                assert!(l.max_connections >= 1);
                assert!((1024..=1 << 20).contains(&l.max_header_bytes));
                assert!((1..=10_000).contains(&l.h2_max_concurrent_streams));
                assert!(!l.header_read_timeout.is_zero() && !l.body_read_timeout.is_zero());
            }
            assert!(matches!(
                c.upstream.url.scheme_str(),
                Some("http" | "https")
            ));
            assert!(c.upstream.url.authority().is_some());
            for (n, _) in &c.upstream.headers {
                assert!(
                    !tokengate::fuzzing::is_reserved(n),
                    "{n} allowed as an upstream header"
                );
            }
            assert!(c.tls.cert.as_os_str().len() > 0 && c.tls.key.as_os_str().len() > 0);
            let _ = c.summary();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

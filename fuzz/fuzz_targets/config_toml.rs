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
            assert!((1..=1_000_000).contains(&t.max_access_per_refresh));
            assert!(
                !c.admin.session_ttl.is_zero()
                    && c.admin.session_ttl <= Duration::from_secs(30 * 86_400)
            );
            assert!((256..=1 << 20).contains(&c.public.token_body_limit));
            assert!(c.public.workers >= 1);
            for l in [&c.public.limits, &c.admin.limits] {
                assert!(l.max_connections >= 1);
                assert!((1024..=1 << 20).contains(&l.max_header_bytes));
                assert!((1..=10_000).contains(&l.h2_max_concurrent_streams));
                assert!(!l.header_read_timeout.is_zero() && !l.body_read_timeout.is_zero());
                assert!(l.max_connections_per_client >= 1 && l.max_streams_per_client >= 1);
                assert!(!l.idle_timeout.is_zero() && !l.send_timeout.is_zero());
            }
            assert!(!c.upstream.urls.is_empty());
            for url in &c.upstream.urls {
                assert!(matches!(url.scheme_str(), Some("http" | "https")));
                let authority = url.authority().map(|a| a.as_str());
                assert!(
                    authority.is_some_and(|a| !a.contains('@')),
                    "credentials in {authority:?}"
                );
            }
            // Neither the summary (printed by check-config) nor the error
            // path may need to hide a password: there is none to hide.
            for (n, _) in &c.upstream.headers {
                assert!(
                    !tokengate::fuzzing::is_reserved(n),
                    "{n} allowed as an upstream header"
                );
                assert!(
                    !n.as_str().contains('_'),
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

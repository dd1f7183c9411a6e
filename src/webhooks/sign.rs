//! Standard Webhooks signing (<https://www.standardwebhooks.com/>): the
//! signature is HMAC-SHA256 over `{id}.{timestamp}.{body}` under the
//! secret's key bytes, sent as `v1,<base64>`. A receiver recomputes it
//! with the secret and compares in constant time; the timestamp (checked
//! against its clock) and the id (deduplicated) stop replays.

use base64::Engine;

/// The `webhook-signature` value for one attempt.
pub(super) fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example every Standard Webhooks library tests against.
    #[test]
    fn matches_the_reference_signature() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}

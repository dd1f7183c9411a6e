//! Token wire formats.
//!
//! Refresh token: `tgr_`, then 44 base62 characters from the OS CSPRNG (≈262
//! bits), then a 6-character base62 CRC32 of everything before it. The checksum lets the
//! gateway reject a mistyped token without touching the map or the disk; the
//! prefix lets secret scanners find leaked tokens. Only an HMAC-SHA256 of the
//! whole string, under the server secret, is ever stored.
//!
//! Access token: `tga_` + base64url(nonce id ‖ random id ‖ MAC tag). The MAC
//! key is this process's boot nonce, which never leaves memory, so a token
//! minted before a restart fails the MAC before any lookup.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secrets::random_bytes;
use crate::store::RefreshHash;

type HmacSha256 = Hmac<Sha256>;

pub(crate) const REFRESH_PREFIX: &str = "tgr_";
pub(crate) const ACCESS_PREFIX: &str = "tga_";
const REFRESH_BODY_LEN: usize = 44;
const CHECKSUM_LEN: usize = 6;
pub(crate) const REFRESH_LEN: usize = REFRESH_PREFIX.len() + REFRESH_BODY_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const NONCE_ID_LEN: usize = 8;
const ID_LEN: usize = 16;
const TAG_LEN: usize = 16;
const ACCESS_RAW_LEN: usize = NONCE_ID_LEN + ID_LEN + TAG_LEN;
/// 40 bytes in unpadded base64url.
pub(crate) const ACCESS_LEN: usize = ACCESS_PREFIX.len() + 54;

/// Keyed hasher for refresh tokens. The key is the server secret (`secret.key`).
#[derive(Clone)]
pub struct RefreshHasher {
    mac: HmacSha256,
}

impl RefreshHasher {
    pub fn new(secret: &[u8]) -> RefreshHasher {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        RefreshHasher { mac }
    }

    pub fn hash(&self, token: &ParsedRefresh<'_>) -> RefreshHash {
        let mut mac = self.mac.clone();
        mac.update(token.0.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Mints a new refresh token string.
pub fn new_refresh_token() -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(REFRESH_LEN);
    out.push_str(REFRESH_PREFIX);
    // Rejection sampling keeps every base62 digit uniform (248 = 4 × 62).
    let mut pool = [0u8; 64];
    while out.len() < REFRESH_PREFIX.len() + REFRESH_BODY_LEN {
        random_bytes(&mut pool)?;
        for b in pool {
            if b < 248 && out.len() < REFRESH_PREFIX.len() + REFRESH_BODY_LEN {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    let crc = crc32fast::hash(out.as_bytes());
    out.push_str(&base62_fixed(crc));
    Ok(out)
}

fn base62_fixed(mut n: u32) -> String {
    let mut digits = [b'0'; CHECKSUM_LEN];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

/// A refresh token whose shape and checksum are right (it may still be unknown).
#[derive(Debug, Clone, Copy)]
pub struct ParsedRefresh<'a>(&'a str);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshFormatError {
    #[error("refresh token does not start with tgr_")]
    Prefix,
    #[error("refresh token has the wrong length")]
    Length,
    #[error("refresh token has characters outside base62")]
    Charset,
    #[error("refresh token checksum does not match (mistyped or truncated?)")]
    Checksum,
}

pub fn parse_refresh(token: &str) -> Result<ParsedRefresh<'_>, RefreshFormatError> {
    let body = token
        .strip_prefix(REFRESH_PREFIX)
        .ok_or(RefreshFormatError::Prefix)?;
    if token.len() != REFRESH_LEN {
        return Err(RefreshFormatError::Length);
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(RefreshFormatError::Charset);
    }
    let (head, sum) = token.split_at(REFRESH_LEN - CHECKSUM_LEN);
    let expected = base62_fixed(crc32fast::hash(head.as_bytes()));
    // Not secret (anyone can compute a CRC), but there is no cost to constant time.
    if !bool::from(expected.as_bytes().ct_eq(sum.as_bytes())) {
        return Err(RefreshFormatError::Checksum);
    }
    Ok(ParsedRefresh(token))
}

/// Mints and checks access tokens for one process lifetime.
pub(crate) struct AccessCodec {
    nonce_id: [u8; NONCE_ID_LEN],
    /// Keyed with the boot nonce; cloned per use so the key schedule is computed once.
    mac: HmacSha256,
}

/// The map key of an access token: its 128-bit random id.
pub(crate) type AccessId = u128;

impl AccessCodec {
    /// Draws a fresh boot nonce: every token of an earlier process stops verifying.
    pub(crate) fn new() -> Result<AccessCodec, getrandom::Error> {
        let mut nonce = [0u8; 32];
        random_bytes(&mut nonce)?;
        let mut nonce_id = [0u8; NONCE_ID_LEN];
        random_bytes(&mut nonce_id)?;
        let mac = HmacSha256::new_from_slice(&nonce).unwrap_or_else(|_| unreachable!());
        Ok(AccessCodec { nonce_id, mac })
    }

    fn tag(&self, nonce_id: &[u8], id: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"tga1");
        mac.update(nonce_id);
        mac.update(id);
        mac.finalize().into_bytes().into()
    }

    /// Mints a new token: returns its map id and the string handed to the client.
    pub(crate) fn mint(&self) -> Result<(AccessId, String), getrandom::Error> {
        let mut id = [0u8; ID_LEN];
        random_bytes(&mut id)?;
        let tag = self.tag(&self.nonce_id, &id);
        let mut raw = [0u8; ACCESS_RAW_LEN];
        raw[..NONCE_ID_LEN].copy_from_slice(&self.nonce_id);
        raw[NONCE_ID_LEN..NONCE_ID_LEN + ID_LEN].copy_from_slice(&id);
        raw[NONCE_ID_LEN + ID_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        let mut s = String::with_capacity(ACCESS_LEN);
        s.push_str(ACCESS_PREFIX);
        URL_SAFE_NO_PAD.encode_string(raw, &mut s);
        Ok((u128::from_le_bytes(id), s))
    }

    /// Checks shape, boot nonce and MAC; returns the map id. No allocation.
    pub(crate) fn verify(&self, token: &[u8]) -> Result<AccessId, AccessFormatError> {
        if token.len() != ACCESS_LEN {
            return Err(AccessFormatError::Malformed);
        }
        let body = token
            .strip_prefix(ACCESS_PREFIX.as_bytes())
            .ok_or(AccessFormatError::Malformed)?;
        let mut raw = [0u8; ACCESS_RAW_LEN + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(body, &mut raw)
            .map_err(|_| AccessFormatError::Malformed)?;
        if n != ACCESS_RAW_LEN {
            return Err(AccessFormatError::Malformed);
        }
        let (nonce_id, rest) = raw[..ACCESS_RAW_LEN].split_at(NONCE_ID_LEN);
        let (id, tag) = rest.split_at(ID_LEN);
        if nonce_id != self.nonce_id {
            // Minted by an earlier process: a restart invalidated it.
            return Err(AccessFormatError::OtherBoot);
        }
        let expected = self.tag(nonce_id, id);
        if !bool::from(expected[..TAG_LEN].ct_eq(tag)) {
            return Err(AccessFormatError::BadMac);
        }
        let mut idb = [0u8; ID_LEN];
        idb.copy_from_slice(id);
        Ok(u128::from_le_bytes(idb))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessFormatError {
    Malformed,
    OtherBoot,
    BadMac,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_have_the_documented_shape() {
        let t = new_refresh_token().unwrap();
        assert!(t.starts_with("tgr_"));
        assert_eq!(t.len(), REFRESH_LEN);
        assert!(parse_refresh(&t).is_ok());
        assert_ne!(t, new_refresh_token().unwrap());
    }

    #[test]
    fn refresh_checksum_catches_typos() {
        let t = new_refresh_token().unwrap();
        let mut bytes = t.clone().into_bytes();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(
            parse_refresh(&typo).unwrap_err(),
            RefreshFormatError::Checksum
        );
        assert_eq!(
            parse_refresh(&t[..t.len() - 1]).unwrap_err(),
            RefreshFormatError::Length
        );
        assert_eq!(
            parse_refresh("abc").unwrap_err(),
            RefreshFormatError::Prefix
        );
        let bad = format!("tgr_{}", "!".repeat(REFRESH_LEN - 4));
        assert_eq!(
            parse_refresh(&bad).unwrap_err(),
            RefreshFormatError::Charset
        );
    }

    #[test]
    fn refresh_hash_depends_on_the_secret() {
        let t = new_refresh_token().unwrap();
        let p = parse_refresh(&t).unwrap();
        let a = RefreshHasher::new(b"one").hash(&p);
        assert_eq!(a, RefreshHasher::new(b"one").hash(&p));
        assert_ne!(a, RefreshHasher::new(b"two").hash(&p));
    }

    #[test]
    fn access_tokens_verify_only_in_their_own_boot() {
        let codec = AccessCodec::new().unwrap();
        let (id, t) = codec.mint().unwrap();
        assert!(t.starts_with("tga_"));
        assert_eq!(t.len(), ACCESS_LEN);
        assert_eq!(codec.verify(t.as_bytes()), Ok(id));
        let next_boot = AccessCodec::new().unwrap();
        assert_eq!(
            next_boot.verify(t.as_bytes()),
            Err(AccessFormatError::OtherBoot)
        );
    }

    #[test]
    fn access_tokens_reject_tampering() {
        let codec = AccessCodec::new().unwrap();
        let (_, t) = codec.mint().unwrap();
        let mut b = t.into_bytes();
        let last = b.len() - 3;
        b[last] = if b[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(codec.verify(&b), Err(AccessFormatError::BadMac));
        assert_eq!(
            codec.verify(b"tga_short"),
            Err(AccessFormatError::Malformed)
        );
        let junk = vec![b'*'; ACCESS_LEN];
        assert_eq!(codec.verify(&junk), Err(AccessFormatError::Malformed));
    }
}

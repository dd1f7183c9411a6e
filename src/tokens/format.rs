//! Token wire formats.
//!
//! Refresh token: `tgr_`, then 44 base62 characters from the OS CSPRNG (≈262
//! bits), then a 6-character base62 CRC32 of everything before it. The checksum lets the
//! gateway reject a mistyped token without touching the map or the disk; the
//! prefix lets secret scanners find leaked tokens. Only an HMAC-SHA256 of the
//! whole string, under the server secret, is ever stored.
//!
//! Access token: `tga_` + base64url(boot id ‖ refresh id ‖ secret
//! generation ‖ expiry ‖ random id ‖ MAC tag), 90 characters. The MAC key
//! of a boot (one process lifetime of one replica) is HMAC(server secret,
//! boot id ‖ boot nonce): the nonce is drawn at start, so a restart
//! invalidates every token of the earlier process; in cluster mode the
//! nonce is registered in PostgreSQL, so every replica holding the secret
//! can verify the token (its claims tell it which refresh token, which
//! generation of its secret, and until when) with no database round trip.
//! The generation is what a replica that never saw the token compares with
//! the refresh token's current one: a rotation at once bumps it, so the
//! claims of a token issued under the old secret no longer match anywhere.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::secrets::random_bytes;
use crate::store::RefreshHash;

/// HMAC-SHA-256, from ring: its SHA-256 has assembly for the SHA
/// extensions and for AVX/SSSE3, so CPUs without the SHA extensions
/// (Intel servers before Ice Lake) check an access token in a third of the
/// instructions the portable code takes. The MACs and hashes are the same
/// bytes whichever implementation computes them (the known-answer test
/// below holds them to RFC 4231).
fn hmac_sha256(key: &hmac::Key, parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

pub(crate) const REFRESH_PREFIX: &str = "tgr_";
pub(crate) const ACCESS_PREFIX: &str = "tga_";
const REFRESH_BODY_LEN: usize = 44;
const CHECKSUM_LEN: usize = 6;
pub(crate) const REFRESH_LEN: usize = REFRESH_PREFIX.len() + REFRESH_BODY_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Access-token layout, before base64: the claims (boot, refresh id,
/// secret generation, expiry), the random id, and the tag.
const BOOT_LEN: usize = 8;
const REFRESH_AT: usize = BOOT_LEN;
const GENERATION_AT: usize = REFRESH_AT + 8;
const EXPIRES_AT: usize = GENERATION_AT + 8;
const CLAIMS_LEN: usize = EXPIRES_AT + 8;
const ID_LEN: usize = 16;
const TAG_LEN: usize = 16;
const ACCESS_RAW_LEN: usize = CLAIMS_LEN + ID_LEN + TAG_LEN;
/// 64 bytes in unpadded base64url: 86 characters.
pub(crate) const ACCESS_LEN: usize = ACCESS_PREFIX.len() + 86;
/// The length of the format before the generation (56 bytes, 79
/// characters): what a replica not yet upgraded still mints during a
/// rolling upgrade. Such a token can never verify here, but it is no guess
/// either, so it is told apart (by its length alone) from a malformed one.
const PREVIOUS_ACCESS_LEN: usize = ACCESS_PREFIX.len() + 75;

/// Keyed hasher for refresh tokens. The key is the server secret (`secret.key`).
#[derive(Clone)]
pub struct RefreshHasher {
    key: hmac::Key,
}

impl RefreshHasher {
    pub fn new(secret: &[u8]) -> RefreshHasher {
        RefreshHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    pub fn hash(&self, token: &ParsedRefresh<'_>) -> RefreshHash {
        hmac_sha256(&self.key, &[token.0.as_bytes()])
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

/// The map key of an access token: its 128-bit random id.
pub(crate) type AccessId = u128;

/// What an access token says about itself, all of it under its MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessClaims {
    /// The boot (one process lifetime of one replica) that minted it.
    pub(crate) boot: u64,
    /// The refresh token it was exchanged for.
    pub(crate) refresh_id: u64,
    /// The refresh token's secret generation when it was issued (bumped by
    /// each rotation at once): a token of an older one ended with it.
    pub(crate) generation: u64,
    /// Unix seconds.
    pub(crate) expires: u64,
    pub(crate) id: AccessId,
}

/// The claims and tag of a token that passed its MAC check, kept with its
/// map entry (the id is the key): the same bytes presented again are the
/// same token, so the hot path compares 48 bytes instead of computing an
/// HMAC-SHA-256 per request. Holds no more than the token itself, which
/// the process held anyway, and dies with the entry.
#[derive(Clone, Copy)]
pub(crate) struct Seal([u8; SEAL_LEN]);

const SEAL_LEN: usize = CLAIMS_LEN + TAG_LEN;

/// An access token whose shape is right; its MAC is not checked yet.
pub(crate) struct RawAccess([u8; ACCESS_RAW_LEN]);

impl RawAccess {
    /// Shape only, no key needed and no allocation: the prefix, the length
    /// and base64url.
    pub(crate) fn decode(token: &[u8]) -> Result<RawAccess, AccessFormatError> {
        if token.len() != ACCESS_LEN {
            if token.len() == PREVIOUS_ACCESS_LEN && token.starts_with(ACCESS_PREFIX.as_bytes()) {
                return Err(AccessFormatError::Previous);
            }
            return Err(AccessFormatError::Malformed);
        }
        let body = token
            .strip_prefix(ACCESS_PREFIX.as_bytes())
            .ok_or(AccessFormatError::Malformed)?;
        decode_access_body(body)
            .map(RawAccess)
            .ok_or(AccessFormatError::Malformed)
    }

    #[inline]
    pub(crate) fn boot(&self) -> u64 {
        u64_at(&self.0, 0)
    }

    /// The map id, to be trusted only after [`BootKey::check`] or
    /// [`RawAccess::is_sealed_by`].
    #[inline]
    pub(crate) fn id(&self) -> AccessId {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.0[CLAIMS_LEN..CLAIMS_LEN + ID_LEN]);
        u128::from_le_bytes(id)
    }

    /// What a map entry keeps to recognise this token again.
    pub(crate) fn seal(&self) -> Seal {
        let mut seal = [0u8; SEAL_LEN];
        seal[..CLAIMS_LEN].copy_from_slice(&self.0[..CLAIMS_LEN]);
        seal[CLAIMS_LEN..].copy_from_slice(&self.0[CLAIMS_LEN + ID_LEN..]);
        Seal(seal)
    }

    /// Whether these are the claims and tag `seal` was taken from (constant
    /// time: the tag is the secret part). With the id equal too (the map's
    /// key), the token is byte for byte one that passed the MAC check.
    #[inline]
    pub(crate) fn is_sealed_by(&self, seal: &Seal) -> bool {
        // Word by word: the differences are OR-ed together with no branch
        // on any byte, and only the total is compared (constant time, as
        // `subtle`'s byte-wise slice comparison, in a sixth of the work).
        let ours = self.0[..CLAIMS_LEN]
            .chunks_exact(8)
            .chain(self.0[CLAIMS_LEN + ID_LEN..].chunks_exact(8));
        let mut diff = 0u64;
        for (a, b) in ours.zip(seal.0.chunks_exact(8)) {
            diff |= u64_at(a, 0) ^ u64_at(b, 0);
        }
        bool::from(diff.ct_eq(&0))
    }

    /// The claims, to be trusted only after [`BootKey::check`].
    pub(crate) fn claims(&self) -> AccessClaims {
        AccessClaims {
            boot: self.boot(),
            refresh_id: u64_at(&self.0, REFRESH_AT),
            generation: u64_at(&self.0, GENERATION_AT),
            expires: u64_at(&self.0, EXPIRES_AT),
            id: self.id(),
        }
    }
}

/// Values of the base64url alphabet; `INVALID` for every other byte.
const B64URL: [u8; 256] = {
    let mut t = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut v: u8 = 0;
    while (v as usize) < alphabet.len() {
        t[alphabet[v as usize] as usize] = v;
        v += 1;
    }
    t
};
/// Outside 0..64, so OR-ing every looked-up value shows any invalid byte.
const INVALID: u8 = 0xFF;

/// An access token's 86 characters of unpadded base64url as its 64 bytes:
/// the `base64` crate's `URL_SAFE_NO_PAD` verdicts (the alphabet only, no
/// padding, the last character's four unused bits zero) for this one
/// length, without its general loop (a token is decoded on every proxied
/// request). Eight characters make six bytes; every character's value is
/// OR-ed into one byte, which shows any byte outside the alphabet at the
/// end instead of a branch per character.
fn decode_access_body(body: &[u8]) -> Option<[u8; ACCESS_RAW_LEN]> {
    let chars: &[u8; ACCESS_B64_LEN] = body.try_into().ok()?;
    let (octets, tail) = chars.split_at(ACCESS_B64_LEN - 6);
    let mut out = [0u8; ACCESS_RAW_LEN];
    let (front, back) = out.split_at_mut(ACCESS_RAW_LEN - 4);
    let mut seen = 0u8;
    for (c, o) in octets.chunks_exact(8).zip(front.chunks_exact_mut(6)) {
        let mut n = 0u64;
        for &ch in c {
            let v = B64URL[usize::from(ch)];
            seen |= v;
            n = n << 6 | u64::from(v);
        }
        o.copy_from_slice(&n.to_be_bytes()[2..]);
    }
    // The last six characters: three bytes, then one from two characters,
    // the second's low four bits unused.
    let mut n = 0u64;
    for &ch in tail {
        let v = B64URL[usize::from(ch)];
        seen |= v;
        n = n << 6 | u64::from(v);
    }
    if seen >= 64 || n & 0x0F != 0 {
        return None;
    }
    back.copy_from_slice(&(n >> 4).to_be_bytes()[4..]);
    Some(out)
}

/// 64 bytes in unpadded base64url.
const ACCESS_B64_LEN: usize = (ACCESS_RAW_LEN * 4).div_ceil(3);

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// The server secret as the root of access-token keys (domain-separated
/// from refresh-token hashing, which MACs `tgr_…` strings).
#[derive(Clone)]
pub(crate) struct BootKeys {
    root: hmac::Key,
}

impl BootKeys {
    pub(crate) fn new(secret: &[u8]) -> BootKeys {
        BootKeys {
            root: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The MAC key of boot `boot`: HMAC(server secret, boot ‖ nonce). Every
    /// replica holding the secret derives it from the registry's nonce; the
    /// registry (the database) alone derives nothing.
    pub(crate) fn derive(&self, boot: u64, nonce: &[u8; 32]) -> BootKey {
        let key = hmac_sha256(
            &self.root,
            &[
                b"tokengate access-token boot key v3",
                &boot.to_be_bytes(),
                nonce,
            ],
        );
        BootKey {
            boot,
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }
}

/// Mints and checks the access tokens of one boot.
pub(crate) struct BootKey {
    pub(crate) boot: u64,
    /// Keyed once: the inner and outer pads' states are computed here, not
    /// per token.
    key: hmac::Key,
}

impl BootKey {
    fn tag(&self, signed: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.key, &[b"tga3", signed])
    }

    /// Mints a token for `refresh_id` at secret generation `generation`,
    /// expiring at `expires` (Unix seconds): returns its map id and the
    /// string handed to the client.
    pub(crate) fn mint(
        &self,
        refresh_id: u64,
        generation: u64,
        expires: u64,
    ) -> Result<(AccessId, Seal, String), getrandom::Error> {
        let mut raw = [0u8; ACCESS_RAW_LEN];
        raw[..BOOT_LEN].copy_from_slice(&self.boot.to_be_bytes());
        raw[REFRESH_AT..GENERATION_AT].copy_from_slice(&refresh_id.to_be_bytes());
        raw[GENERATION_AT..EXPIRES_AT].copy_from_slice(&generation.to_be_bytes());
        raw[EXPIRES_AT..CLAIMS_LEN].copy_from_slice(&expires.to_be_bytes());
        random_bytes(&mut raw[CLAIMS_LEN..CLAIMS_LEN + ID_LEN])?;
        let tag = self.tag(&raw[..CLAIMS_LEN + ID_LEN]);
        raw[CLAIMS_LEN + ID_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        let mut s = String::with_capacity(ACCESS_LEN);
        s.push_str(ACCESS_PREFIX);
        URL_SAFE_NO_PAD.encode_string(raw, &mut s);
        let raw = RawAccess(raw);
        Ok((raw.id(), raw.seal(), s))
    }

    /// Checks the MAC (constant time) of a token of this boot.
    pub(crate) fn check(&self, raw: &RawAccess) -> Result<AccessClaims, AccessFormatError> {
        let expected = self.tag(&raw.0[..CLAIMS_LEN + ID_LEN]);
        if !bool::from(expected[..TAG_LEN].ct_eq(&raw.0[CLAIMS_LEN + ID_LEN..])) {
            return Err(AccessFormatError::BadMac);
        }
        Ok(raw.claims())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessFormatError {
    Malformed,
    /// The shape of the format before this one (a rolling upgrade).
    Previous,
    BadMac,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test cases 1 and 2: the hashes stored in the databases and
    /// the tokens already issued stay valid whatever computes the HMAC.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[0x0b; 20]);
        assert_eq!(
            hmac_sha256(&key, &[b"Hi ", b"There"]).to_vec(),
            hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]).to_vec(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

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

    fn boot(keys: &BootKeys, id: u64) -> BootKey {
        keys.derive(id, &[u8::try_from(id % 256).unwrap(); 32])
    }

    #[test]
    fn access_tokens_carry_their_claims_under_the_boot_key() {
        let keys = BootKeys::new(b"server secret");
        let a = boot(&keys, 7);
        let (id, _, t) = a.mint(42, 3, 1_800_000_000).unwrap();
        assert!(t.starts_with("tga_"));
        assert_eq!(t.len(), ACCESS_LEN);
        let raw = RawAccess::decode(t.as_bytes()).unwrap();
        assert_eq!(raw.boot(), 7);
        let claims = AccessClaims {
            boot: 7,
            refresh_id: 42,
            generation: 3,
            expires: 1_800_000_000,
            id,
        };
        assert_eq!(a.check(&raw), Ok(claims));
        // Another replica derives the same key from the same secret and nonce.
        assert_eq!(boot(&keys, 7).check(&raw), Ok(claims));
        // Another nonce, or another secret, does not.
        assert_eq!(
            keys.derive(7, &[9; 32]).check(&raw),
            Err(AccessFormatError::BadMac)
        );
        assert_eq!(
            boot(&BootKeys::new(b"other secret"), 7).check(&raw),
            Err(AccessFormatError::BadMac)
        );
    }

    #[test]
    fn access_tokens_reject_tampering_with_any_claim() {
        let a = boot(&BootKeys::new(b"s"), 1);
        let (_, _, t) = a.mint(5, 1, 100).unwrap();
        // Every character position, the claims' included, is covered by the tag.
        for i in ACCESS_PREFIX.len()..t.len() - 1 {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            if let Ok(raw) = RawAccess::decode(&b) {
                assert_eq!(
                    a.check(&raw),
                    Err(AccessFormatError::BadMac),
                    "position {i}"
                );
            }
        }
        assert!(RawAccess::decode(b"tga_short").is_err());
        let junk = vec![b'*'; ACCESS_LEN];
        assert!(RawAccess::decode(&junk).is_err());
        // The previous format's length is told apart, by length and prefix only.
        let previous = format!("tga_{}", "A".repeat(75));
        assert!(matches!(
            RawAccess::decode(previous.as_bytes()),
            Err(AccessFormatError::Previous)
        ));
        let other = format!("tgx_{}", "A".repeat(75));
        assert!(matches!(
            RawAccess::decode(other.as_bytes()),
            Err(AccessFormatError::Malformed)
        ));
    }
    #[test]
    fn access_decoding_agrees_with_the_base64_crate() {
        let a = boot(&BootKeys::new(b"s"), 1);
        let reference = |b: &[u8]| -> Option<Vec<u8>> {
            let v = URL_SAFE_NO_PAD.decode(b.strip_prefix(b"tga_")?).ok()?;
            (v.len() == ACCESS_RAW_LEN).then_some(v)
        };
        for _ in 0..4 {
            let (_, _, t) = a.mint(5, 1, 100).unwrap();
            // Every position with every byte: the alphabet, padding, the
            // last character's unused bits, bytes outside ASCII.
            for i in ACCESS_PREFIX.len()..t.len() {
                for c in 0..=u8::MAX {
                    let mut b = t.clone().into_bytes();
                    b[i] = c;
                    let ours = RawAccess::decode(&b).ok().map(|r| r.0.to_vec());
                    assert_eq!(ours, reference(&b), "position {i}, byte {c}");
                }
            }
        }
    }
}

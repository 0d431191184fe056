//! The `Webhook-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256>` of
//! `"<t>.<body>"` with the shared secret. The timestamp is that of the attempt, so a
//! receiver refuses replays by checking it is recent (we suggest 5 minutes) and compares
//! the MAC in constant time. [`verify`] is that check, for Rust backends and our tests.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from the receiver's clock, as [`verify`] checks.
pub const TOLERANCE_SECS: u64 = 300;

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=...,v1=...`.
    #[error("malformed Webhook-Signature header")]
    Malformed,
    /// The timestamp is further than [`TOLERANCE_SECS`] from now: a replay, or a bad clock.
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` MAC matches.
    #[error("signature mismatch")]
    Mismatch,
}

/// Check `header` for `body` at `now` (Unix seconds).
pub fn verify(secret: &str, header: &str, body: &[u8], now: u64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => macs.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if macs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if timestamp.abs_diff(now) > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    for hex in macs {
        let Some(tag) = decode_hex(hex) else { continue };
        if mac(secret, timestamp, body).verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_tampering_does_not() {
        let header = sign("secret-0123456789", 1_700_000_000, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify("secret-0123456789", &header, b"{\"a\":1}", 1_700_000_100), Ok(()));
        assert_eq!(verify("secret-0123456789", &header, b"{\"a\":2}", 1_700_000_100), Err(SignatureError::Mismatch));
        assert_eq!(verify("other-secret-0000", &header, b"{\"a\":1}", 1_700_000_100), Err(SignatureError::Mismatch));
        assert_eq!(verify("secret-0123456789", &header, b"{\"a\":1}", 1_700_000_400), Err(SignatureError::Stale));
        assert_eq!(verify("secret-0123456789", "v1=00", b"", 0), Err(SignatureError::Malformed));
        // A vector computed independently (Python's hmac module), as the README's snippets do.
        assert_eq!(
            sign("whsec-test", 1, b"{}"),
            "t=1,v1=98fa11c0441192367b291d1d55ec090bb439697a86f8a4835f7c76cee9dae319"
        );
    }
}

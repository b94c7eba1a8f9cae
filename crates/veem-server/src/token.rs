//! Bearer tokens as the config keeps them: `token_sha256` is the SHA-256 of a token in hex, and
//! `veem token new` makes fresh ones. Both the config (checking `token_sha256`) and the
//! authenticator (hashing a presented token) use this; neither owns it.

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Random bytes in a token made by [`new_token`]: 256 bits, beyond guessing.
const NEW_TOKEN_BYTES: usize = 32;

/// The SHA-256 of a token, as `token_sha256` holds it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A `token_sha256` value: 64 hex digits (either case).
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// A fresh token (256 bits of the OS's randomness, in hex: URL- and header-safe) and its
/// `token_sha256`, for `veem token new`.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; NEW_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = veem_tls::hex(&bytes);
    let digest = veem_tls::hex(&token_sha256(&token));
    (token, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_are_fresh_256_bit_hex() {
        let (token, digest) = new_token();
        assert_eq!(token.len(), 2 * NEW_TOKEN_BYTES);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(parse_sha256_hex(&digest), Some(token_sha256(&token)));
        assert_ne!(new_token().0, token, "each token is fresh");
    }

    #[test]
    fn sha256_hex_is_64_hex_digits() {
        assert_eq!(
            parse_sha256_hex("2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"),
            Some(token_sha256("secret"))
        );
        for bad in [
            "",
            "2bb8",
            &"g".repeat(64),
            &"0".repeat(65),
            &"é".repeat(32),
        ] {
            assert_eq!(parse_sha256_hex(bad), None, "{bad}");
        }
    }
}

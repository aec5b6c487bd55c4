//! Tokens: 32 random bytes from the operating system's CSPRNG, shown once, stored only as
//! SHA-256 hashes and compared in constant time.
//!
//! A token reads `<id>.<secret>`: the id (public, random) finds the row, the secret (64 hex
//! digits) proves possession. Looking rows up by the public id and comparing the secret's hash
//! with `subtle::ConstantTimeEq` means no step's timing depends on how much of a guessed
//! secret is right.

use rand::rngs::OsRng;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::digest::{hex, sha256};

/// A freshly made token: what the holder gets (`token`) and what the server keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The public part, the row's key.
    pub id: String,
    /// `<id>.<secret>`: shown to the holder once.
    pub token: String,
    /// SHA-256 of the secret: the only thing stored.
    pub secret_hash: [u8; 32],
}

/// A new token whose id starts with `prefix` (e.g. `c` for clients, `e` for enrolment tokens).
pub fn issue(prefix: &str) -> IssuedToken {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    OsRng.fill_bytes(&mut secret);
    let id = format!("{prefix}{}", hex(&id));
    let secret = hex(&secret);
    IssuedToken {
        token: format!("{id}.{secret}"),
        secret_hash: sha256(secret.as_bytes()),
        id,
    }
}

/// Splits `<id>.<secret>`; `None` for anything else.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let plausible = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    (plausible(id, 64) && plausible(secret, 128)).then_some((id, secret))
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub fn secret_matches(secret: &str, stored: &[u8]) -> bool {
    let hash = sha256(secret.as_bytes());
    stored.len() == hash.len() && bool::from(hash.ct_eq(stored))
}

/// The bearer token of an `Authorization` header value (`Bearer <token>`, scheme
/// case-insensitive).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_matches_only_its_own_hash() {
        let issued = issue("c");
        let (id, secret) = split(&issued.token).unwrap();
        assert_eq!(id, issued.id);
        assert!(id.starts_with('c') && id.len() == 17);
        assert_eq!(secret.len(), 64);
        assert!(secret_matches(secret, &issued.secret_hash));
        let other = issue("c");
        assert_ne!(other.token, issued.token);
        let (_, other_secret) = split(&other.token).unwrap();
        assert!(!secret_matches(other_secret, &issued.secret_hash));
        // A stored value of the wrong length never matches.
        assert!(!secret_matches(secret, &issued.secret_hash[..31]));
        // The stored hash is not the secret.
        assert_ne!(hex(&issued.secret_hash), secret);
    }

    #[test]
    fn malformed_tokens_do_not_split() {
        for bad in ["", "abc", ".x", "x.", "a.b.c", "a b.c", "é.x"] {
            assert!(split(bad).is_none(), "{bad:?}");
        }
        assert_eq!(split("ab.cd"), Some(("ab", "cd")));
    }

    #[test]
    fn bearer_headers_are_parsed() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}

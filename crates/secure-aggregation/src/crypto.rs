//! The protocol's primitives, each from a maintained crate: X25519 (x25519-dalek), HKDF-SHA-256
//! (hkdf, sha2), ChaCha20-Poly1305 (chacha20poly1305), the ChaCha20 mask generator (chacha20),
//! Shamir sharing over GF(256) (vsss-rs), OS randomness (getrandom). Every derived key is bound
//! to the round, the session and its purpose, so no key serves twice.

use chacha20::ChaCha20Rng;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use vsss_rs::Gf256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::error::{ProtocolError, Result};

const SALT: &[u8] = b"fedsyn secure aggregation v1";

/// A share of a 32-byte secret: the participant number (one byte) and 32 bytes.
pub const SHARE_LEN: usize = 33;

/// The plaintext of a packet: the share of the self-mask seed, then of the mask key.
pub const PACKET_PLAINTEXT_LEN: usize = 2 * SHARE_LEN;

/// Ciphertext length of a packet (plaintext and the Poly1305 tag).
pub const PACKET_LEN: usize = PACKET_PLAINTEXT_LEN + 16;

/// 32 bytes from the operating system.
pub fn os_secret() -> Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ProtocolError::Randomness(e.to_string()))?;
    Ok(bytes)
}

/// A u64 from the operating system.
pub fn os_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ProtocolError::Randomness(e.to_string()))?;
    Ok(u64::from_le_bytes(bytes))
}

/// The X25519 public key of `secret`.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// SHA-256 of `bytes`.
pub fn commitment(bytes: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// 32 bytes of HKDF-SHA-256 output from `ikm` for `purpose` in one session.
fn derive(ikm: &[u8], purpose: &[u8], round: u64, session: u64, a: u32, b: u32) -> [u8; 32] {
    let mut info = Vec::with_capacity(purpose.len() + 24);
    info.extend_from_slice(purpose);
    info.extend_from_slice(&round.to_le_bytes());
    info.extend_from_slice(&session.to_le_bytes());
    info.extend_from_slice(&a.to_le_bytes());
    info.extend_from_slice(&b.to_le_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(SALT), ikm)
        .expand(&info, &mut key)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    key
}

/// The session's identity for key derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    pub round: u64,
    pub session: u64,
}

/// The seed of the pairwise mask between participants `a` and `b` (symmetric in the two):
/// X25519 of one's mask secret and the other's mask public key.
pub fn pair_seed(
    id: SessionId,
    secret: &[u8; 32],
    their_public: &[u8; 32],
    a: u32,
    b: u32,
) -> [u8; 32] {
    let shared = StaticSecret::from(*secret).diffie_hellman(&PublicKey::from(*their_public));
    derive(
        shared.as_bytes(),
        b"pair mask",
        id.round,
        id.session,
        a.min(b),
        a.max(b),
    )
}

/// The seed of participant `owner`'s self mask.
pub fn self_seed(id: SessionId, seed: &[u8; 32], owner: u32) -> [u8; 32] {
    derive(seed, b"self mask", id.round, id.session, owner, owner)
}

/// Adds (`add`) or subtracts the mask expanded from `seed` to `vector`, mod 2^64.
pub fn apply_mask(vector: &mut [u64], seed: [u8; 32], add: bool) {
    let mut rng = ChaCha20Rng::from_seed(seed);
    if add {
        vector
            .iter_mut()
            .for_each(|v| *v = v.wrapping_add(rng.next_u64()));
    } else {
        vector
            .iter_mut()
            .for_each(|v| *v = v.wrapping_sub(rng.next_u64()));
    }
}

/// The authenticated encryption of the one packet from participant `from` to `to` in a
/// session: its key (X25519 of one side's secret and the other's public key, through HKDF), its
/// nonce and its associated data.
pub struct PacketKey {
    cipher: ChaCha20Poly1305,
    nonce: [u8; 12],
    aad: Vec<u8>,
    from: u32,
}

impl PacketKey {
    /// The key of the packet `from` → `to`, from `secret` (the cipher secret of one end) and
    /// `their_public` (the other end's cipher public key).
    pub fn new(
        id: SessionId,
        secret: &[u8; 32],
        their_public: &[u8; 32],
        from: u32,
        to: u32,
    ) -> PacketKey {
        let shared = StaticSecret::from(*secret).diffie_hellman(&PublicKey::from(*their_public));
        // The key is the same in both directions; the nonce says which one (one packet each).
        let key = derive(
            shared.as_bytes(),
            b"share packet",
            id.round,
            id.session,
            from.min(to),
            from.max(to),
        );
        let mut nonce = [0u8; 12];
        nonce[0] = u8::from(from > to);
        let mut aad = Vec::with_capacity(24);
        aad.extend_from_slice(&id.round.to_le_bytes());
        aad.extend_from_slice(&id.session.to_le_bytes());
        aad.extend_from_slice(&from.to_le_bytes());
        aad.extend_from_slice(&to.to_le_bytes());
        PacketKey {
            cipher: ChaCha20Poly1305::new_from_slice(&key).expect("a 32-byte key"),
            nonce,
            aad,
            from,
        }
    }

    /// The packet's ciphertext.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let payload = Payload {
            msg: plaintext,
            aad: &self.aad,
        };
        self.cipher
            .encrypt(&self.nonce.into(), payload)
            .expect("ChaCha20-Poly1305 encrypts any short message")
    }

    /// The packet's plaintext; refused when it was forged or corrupted.
    pub fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let payload = Payload {
            msg: ciphertext,
            aad: &self.aad,
        };
        self.cipher
            .decrypt(&self.nonce.into(), payload)
            .map_err(|_| {
                ProtocolError::Refused(format!(
                    "the packet from participant {} does not decrypt (forged or corrupted)",
                    self.from
                ))
            })
    }
}

/// `limit` Shamir shares of `secret`, any `threshold` of which rebuild it.
pub fn split(secret: &[u8; 32], threshold: usize, limit: usize) -> Result<Vec<Vec<u8>>> {
    let seed = os_secret()?;
    let rng = ChaCha20Rng::from_seed(seed);
    Gf256::split_bytes(threshold, limit, secret, rng).map_err(|e| {
        ProtocolError::Invalid(format!(
            "cannot share a secret {threshold} of {limit}: {e:?}"
        ))
    })
}

/// The secret rebuilt from `shares` (at least the threshold of them).
pub fn combine(shares: &[Vec<u8>]) -> Result<[u8; 32]> {
    let bytes = Gf256::combine_bytes(shares)
        .map_err(|e| ProtocolError::Unrecoverable(format!("the shares do not combine: {e:?}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        ProtocolError::Unrecoverable(format!("a rebuilt secret of {} bytes", bytes.len()))
    })
}

//! FNV-1a hashes (64 and 128 bit), written here because their values must never change: they
//! name cache files and seed per-client random streams, and `std`'s `DefaultHasher` is allowed
//! to change between Rust releases.

const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// The 64-bit FNV-1a hash of `bytes`.
pub(crate) fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV64_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV64_PRIME)
    })
}

/// An incremental 128-bit FNV-1a hash, for keys built from several parts.
#[derive(Debug, Clone)]
pub(crate) struct Fnv128(u128);

impl Fnv128 {
    pub(crate) fn new() -> Fnv128 {
        Fnv128(FNV128_OFFSET)
    }

    /// Feeds `bytes` as they are (no length prefix).
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u128::from(byte)).wrapping_mul(FNV128_PRIME);
        }
    }

    /// Feeds the length of `bytes`, then `bytes`, so that a sequence of parts hashes
    /// unambiguously ("ab","c" differs from "a","bc").
    pub(crate) fn write_part(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    pub(crate) fn finish(&self) -> u128 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_test_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
        let mut hasher = Fnv128::new();
        hasher.write(b"foobar");
        assert_eq!(hasher.finish(), 0x343e1662793c64bf6f0d3597ba446f18);
    }

    #[test]
    fn parts_are_length_prefixed() {
        let hash_parts = |parts: &[&str]| {
            let mut hasher = Fnv128::new();
            parts
                .iter()
                .for_each(|part| hasher.write_part(part.as_bytes()));
            hasher.finish()
        };
        assert_ne!(hash_parts(&["ab", "c"]), hash_parts(&["a", "bc"]));
    }
}

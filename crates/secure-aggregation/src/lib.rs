//! Secure aggregation for `fedsyn serve`: SecAgg+ (Bell, Bonawitz, Gascón, Lepoint & Raykova,
//! CCS 2020), so that the server learns the sum of the cohort's clipped score vectors and no
//! one client's vector.
//!
//! One session aggregates one round in four steps; a client that misses a step drops out and
//! the sum is that of the clients who finished:
//! 1. **keys**: each client sends two X25519 public keys;
//! 2. **shares**: each client Shamir-shares its self-mask seed and its mask key among its
//!    neighbours (a random regular graph over the session, complete for small cohorts),
//!    encrypted for each of them;
//! 3. **masked**: each client sends its encoded vector plus its self mask plus one pairwise
//!    mask per neighbour (added or subtracted so that each pair cancels in the sum), mod 2^64;
//! 4. **unmask**: each client reveals, for each neighbour, the share of its self-mask seed if
//!    the neighbour's masked vector arrived, else the share of its mask key; never both. The
//!    server removes the self masks of the survivors and the pairwise masks of the dropped.
//!
//! [`ClientSession`] is a client's side, [`Aggregator`] the server's; [`encode`] and
//! [`decode`] carry a clipped vector to the ring and the sum back, on the grid the ledger's
//! mechanism charges. docs/threat-model.md says who sees what.

mod client;
mod crypto;
mod encoding;
mod error;
mod messages;
mod server;
mod wire;

pub use client::ClientSession;
pub use encoding::{decode, encode, per_client_units};
pub use error::{ProtocolError, Result};
pub use messages::{
    ClientMessage, Inbox, MaskedInput, Neighbour, Packet, PublicKeys, RevealedShare, Roster,
    SecretKind, SessionView, SharePackets, Step, Survivors, Unmasking,
};
pub use server::{Aggregator, Received, Unmasker};

#[cfg(test)]
mod tests;

//! A client's side of one session. Each step's message is computed once and kept: a retry
//! resends the same bytes, and the session never answers a step twice with different content.

use std::collections::{BTreeMap, BTreeSet};

use crate::crypto::{self, PacketKey, SessionId, PACKET_PLAINTEXT_LEN, SHARE_LEN};
use crate::error::{ProtocolError, Result};
use crate::messages::{
    ClientMessage, Inbox, MaskedInput, Packet, PublicKeys, RevealedShare, Roster, SecretKind,
    SharePackets, Survivors, Unmasking,
};

/// The fewest neighbours a client accepts: with fewer, a sum could hold its vector alone.
pub const MIN_NEIGHBOURS: usize = 2;

/// The threshold a client demands for `neighbours` neighbours: more than half, so that no
/// server can collect both of its secrets from honest neighbours.
pub fn threshold(neighbours: usize) -> usize {
    neighbours / 2 + 1
}

/// One client's state in one session.
pub struct ClientSession {
    id: SessionId,
    cipher_secret: [u8; 32],
    mask_secret: [u8; 32],
    self_mask_seed: [u8; 32],
    keys: PublicKeys,
    roster: Option<Roster>,
    packets: Option<SharePackets>,
    /// Shares held for each neighbour that finished step 2: (self-mask seed, mask key).
    held: BTreeMap<u32, (Vec<u8>, Vec<u8>)>,
    masked: Option<MaskedInput>,
    unmasking: Option<Unmasking>,
}

impl ClientSession {
    /// A new session for `round` (fresh keys from the operating system).
    pub fn new(round: u64, session: u64) -> Result<ClientSession> {
        let cipher_secret = crypto::os_secret()?;
        let mask_secret = crypto::os_secret()?;
        let self_mask_seed = crypto::os_secret()?;
        let keys = PublicKeys {
            cipher: crypto::public_key(&cipher_secret),
            mask: crypto::public_key(&mask_secret),
            self_mask_commitment: crypto::commitment(&self_mask_seed),
        };
        Ok(ClientSession {
            id: SessionId { round, session },
            cipher_secret,
            mask_secret,
            self_mask_seed,
            keys,
            roster: None,
            packets: None,
            held: BTreeMap::new(),
            masked: None,
            unmasking: None,
        })
    }

    /// The round and the session.
    pub fn id(&self) -> (u64, u64) {
        (self.id.round, self.id.session)
    }

    /// Step 1: the public keys.
    pub fn keys(&self) -> ClientMessage {
        ClientMessage::Keys(self.keys.clone())
    }

    /// Step 2: one encrypted pair of shares for each neighbour of `roster`.
    pub fn share_keys(&mut self, roster: &Roster) -> Result<ClientMessage> {
        if let (Some(packets), Some(held)) = (&self.packets, &self.roster) {
            if held != roster {
                return Err(ProtocolError::Refused(
                    "the server sent a second, different roster in one session".into(),
                ));
            }
            return Ok(ClientMessage::Shares(packets.clone()));
        }
        let count = roster.neighbours.len();
        if count < MIN_NEIGHBOURS {
            return Err(ProtocolError::Refused(format!(
                "{count} neighbour(s): at least {MIN_NEIGHBOURS} are needed, or a sum could \
                 hold this client's vector alone"
            )));
        }
        if count > 254 {
            return Err(ProtocolError::Refused(format!(
                "{count} neighbours: at most 254 (one byte names a share)"
            )));
        }
        if roster.threshold < threshold(count) || roster.threshold > count {
            return Err(ProtocolError::Refused(format!(
                "threshold {} of {count} neighbours: it must be in [{}, {count}] so the server \
                 can never rebuild both secrets of a client",
                roster.threshold,
                threshold(count)
            )));
        }
        let indices: BTreeSet<u32> = roster.neighbours.iter().map(|n| n.index).collect();
        if indices.len() != count || indices.contains(&roster.index) {
            return Err(ProtocolError::Refused(
                "the roster repeats a neighbour or names this client as its own".into(),
            ));
        }
        let self_shares = crypto::split(&self.self_mask_seed, roster.threshold, count)?;
        let key_shares = crypto::split(&self.mask_secret, roster.threshold, count)?;
        let packets = roster
            .neighbours
            .iter()
            .zip(self_shares.iter().zip(&key_shares))
            .map(|(neighbour, (self_share, key_share))| {
                let mut plaintext = Vec::with_capacity(PACKET_PLAINTEXT_LEN);
                plaintext.extend_from_slice(self_share);
                plaintext.extend_from_slice(key_share);
                Packet {
                    from: roster.index,
                    to: neighbour.index,
                    ciphertext: PacketKey::new(
                        self.id,
                        &self.cipher_secret,
                        &neighbour.keys.cipher,
                        roster.index,
                        neighbour.index,
                    )
                    .seal(&plaintext),
                }
            })
            .collect();
        let packets = SharePackets { packets };
        self.roster = Some(roster.clone());
        self.packets = Some(packets.clone());
        Ok(ClientMessage::Shares(packets))
    }

    /// Step 3: `encoded` (see [`crate::encode`]) plus the self mask and one pairwise mask per
    /// neighbour whose packet is in `inbox`.
    pub fn mask(&mut self, inbox: &Inbox, encoded: &[u64]) -> Result<ClientMessage> {
        if let Some(masked) = &self.masked {
            return Ok(ClientMessage::Masked(masked.clone()));
        }
        let roster = self.roster.as_ref().ok_or_else(|| {
            ProtocolError::Refused("a masked input was asked before the shares step".into())
        })?;
        let mut held = BTreeMap::new();
        for packet in &inbox.packets {
            let neighbour = roster
                .neighbours
                .iter()
                .find(|n| n.index == packet.from)
                .filter(|_| packet.to == roster.index)
                .ok_or_else(|| {
                    ProtocolError::Refused(format!(
                        "a packet from participant {} to {} is not from a neighbour to this \
                         client",
                        packet.from, packet.to
                    ))
                })?;
            let plaintext = PacketKey::new(
                self.id,
                &self.cipher_secret,
                &neighbour.keys.cipher,
                packet.from,
                packet.to,
            )
            .open(&packet.ciphertext)?;
            if plaintext.len() != PACKET_PLAINTEXT_LEN {
                return Err(ProtocolError::Refused(format!(
                    "the packet from participant {} holds {} bytes",
                    packet.from,
                    plaintext.len()
                )));
            }
            let shares = (
                plaintext[..SHARE_LEN].to_vec(),
                plaintext[SHARE_LEN..].to_vec(),
            );
            if held.insert(packet.from, shares).is_some() {
                return Err(ProtocolError::Refused(format!(
                    "two packets from participant {}",
                    packet.from
                )));
            }
        }
        if held.len() + 1 < roster.threshold {
            return Err(ProtocolError::Refused(format!(
                "only {} of {} neighbours finished the shares step; at least {} are needed",
                held.len(),
                roster.neighbours.len(),
                roster.threshold - 1
            )));
        }
        let mut masked = encoded.to_vec();
        crypto::apply_mask(
            &mut masked,
            crypto::self_seed(self.id, &self.self_mask_seed, roster.index),
            true,
        );
        for &other in held.keys() {
            let keys = &roster
                .neighbours
                .iter()
                .find(|n| n.index == other)
                .expect("held only for neighbours")
                .keys;
            let seed =
                crypto::pair_seed(self.id, &self.mask_secret, &keys.mask, roster.index, other);
            crypto::apply_mask(&mut masked, seed, roster.index < other);
        }
        self.held = held;
        let masked = MaskedInput { masked };
        self.masked = Some(masked.clone());
        Ok(ClientMessage::Masked(masked))
    }

    /// Step 4: for each neighbour that finished step 2, the share of its self-mask seed if it
    /// is among `survivors`, else the share of its mask key.
    pub fn unmask(&mut self, survivors: &Survivors) -> Result<ClientMessage> {
        if let Some(unmasking) = &self.unmasking {
            return Ok(ClientMessage::Unmask(unmasking.clone()));
        }
        let roster = match (&self.roster, &self.masked) {
            (Some(roster), Some(_)) => roster,
            _ => {
                return Err(ProtocolError::Refused(
                    "unmasking was asked before this client sent its masked input".into(),
                ))
            }
        };
        let alive: BTreeSet<u32> = survivors.survivors.iter().copied().collect();
        if alive.len() != survivors.survivors.len()
            || alive.iter().any(|s| !self.held.contains_key(s))
        {
            return Err(ProtocolError::Refused(
                "the survivors are not distinct neighbours that finished the shares step".into(),
            ));
        }
        // The sum then covers this client and at least threshold − 1 others.
        if alive.len() + 1 < roster.threshold {
            return Err(ProtocolError::Refused(format!(
                "only {} neighbour(s) sent a masked input; at least {} are needed before this \
                 client helps unmask a sum",
                alive.len(),
                roster.threshold - 1
            )));
        }
        let shares = self
            .held
            .iter()
            .map(|(&owner, (self_share, key_share))| {
                if alive.contains(&owner) {
                    RevealedShare {
                        owner,
                        secret: SecretKind::SelfMask,
                        share: self_share.clone(),
                    }
                } else {
                    RevealedShare {
                        owner,
                        secret: SecretKind::MaskKey,
                        share: key_share.clone(),
                    }
                }
            })
            .collect();
        let unmasking = Unmasking { shares };
        self.unmasking = Some(unmasking.clone());
        Ok(ClientMessage::Unmask(unmasking))
    }
}

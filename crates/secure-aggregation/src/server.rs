//! The server's side of one session: it relays keys and encrypted shares, collects masked
//! vectors, and at the end removes the masks. Everything it holds is either public (keys),
//! encrypted for a client (packets), masked (inputs), or one share of a secret per holder,
//! at most one of a client's two secrets rebuilt.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::client::threshold;
use crate::crypto::{self, SessionId, PACKET_LEN, SHARE_LEN};
use crate::error::{ProtocolError, Result};
use crate::messages::{
    ClientMessage, Inbox, Neighbour, Packet, PublicKeys, Roster, SecretKind, SessionView,
    SharePackets, Step, Survivors, Unmasking,
};

/// Whether a message was new or a retry of one already held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    New,
    Replay,
}

/// One session's server state.
#[derive(Debug)]
pub struct Aggregator {
    id: SessionId,
    dim: usize,
    /// Each participant's neighbours: at most this many (the whole session when smaller).
    degree: usize,
    /// Index → client id: the cohort in a random order.
    members: Vec<String>,
    index_of: HashMap<String, u32>,
    step: Step,
    keys: BTreeMap<u32, PublicKeys>,
    neighbours: BTreeMap<u32, Vec<u32>>,
    packets: BTreeMap<u32, SharePackets>,
    inboxes: BTreeMap<u32, Vec<Packet>>,
    masked: BTreeMap<u32, Vec<u64>>,
    survivors: BTreeMap<u32, Vec<u32>>,
    reveals: BTreeMap<u32, Unmasking>,
    /// How many sent a masked input, fixed when the masked step closes.
    contributors: usize,
}

impl Aggregator {
    /// A session of `round` over `cohort` (client ids) for vectors of `dim` coordinates, each
    /// participant with at most `degree` neighbours. The session id and the participants'
    /// order come from the operating system's randomness.
    pub fn new(round: u64, cohort: &[String], dim: usize, degree: usize) -> Result<Aggregator> {
        if !(crate::client::MIN_NEIGHBOURS..=254).contains(&degree) {
            return Err(ProtocolError::Invalid(format!(
                "{degree} neighbours per client: choose between {} and 254",
                crate::client::MIN_NEIGHBOURS
            )));
        }
        let mut members = cohort.to_vec();
        let mut rng = ChaCha20Rng::from_seed(crypto::os_secret()?);
        for i in (1..members.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            members.swap(i, j);
        }
        let index_of = members
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Ok(Aggregator {
            id: SessionId {
                round,
                session: crypto::os_u64()?,
            },
            dim,
            degree,
            members,
            index_of,
            step: Step::Keys,
            keys: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            packets: BTreeMap::new(),
            inboxes: BTreeMap::new(),
            masked: BTreeMap::new(),
            survivors: BTreeMap::new(),
            reveals: BTreeMap::new(),
            contributors: 0,
        })
    }

    /// The round.
    pub fn round(&self) -> u64 {
        self.id.round
    }

    /// The session id.
    pub fn session(&self) -> u64 {
        self.id.session
    }

    /// The current step.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Whether participant `index` is expected to answer the current step.
    fn is_participant(&self, index: u32) -> bool {
        match self.step {
            Step::Keys => (index as usize) < self.members.len(),
            Step::Shares => self.keys.contains_key(&index),
            Step::Masked => self.packets.contains_key(&index),
            Step::Unmask => self.masked.contains_key(&index),
            Step::Done => false,
        }
    }

    fn answered(&self, index: u32) -> bool {
        match self.step {
            Step::Keys => self.keys.contains_key(&index),
            Step::Shares => self.packets.contains_key(&index),
            Step::Masked => self.masked.contains_key(&index),
            Step::Unmask => self.reveals.contains_key(&index),
            Step::Done => true,
        }
    }

    /// How many participants of the current step have not answered yet.
    pub fn awaiting(&self) -> usize {
        (0..self.members.len() as u32)
            .filter(|&i| self.is_participant(i) && !self.answered(i))
            .count()
    }

    /// How many clients sent a masked input (once the masked step closed: the sum is theirs).
    pub fn contributors(&self) -> usize {
        if self.step >= Step::Unmask {
            self.contributors
        } else {
            self.masked.len()
        }
    }

    /// Whether `client_id` takes part in the current step, and whether its message for it is
    /// held; `None` if the client is not in the cohort. (A [`Aggregator::view`] without the
    /// step's payload, for callers that poll often.)
    pub fn standing(&self, client_id: &str) -> Option<(bool, bool)> {
        let index = *self.index_of.get(client_id)?;
        let participant = self.is_participant(index);
        Some((participant, participant && self.answered(index)))
    }

    /// The session as `client_id` sees it; `None` if the client is not in the cohort.
    pub fn view(&self, client_id: &str) -> Option<SessionView> {
        let index = *self.index_of.get(client_id)?;
        let (participant, received) = self.standing(client_id)?;
        let mut view = SessionView {
            round: self.id.round,
            session: self.id.session,
            step: self.step,
            dim: self.dim,
            participant,
            received,
            roster: None,
            inbox: None,
            survivors: None,
        };
        if participant {
            match self.step {
                Step::Shares => view.roster = Some(self.roster(index)),
                Step::Masked => {
                    view.inbox = Some(Inbox {
                        packets: self.inboxes.get(&index).cloned().unwrap_or_default(),
                    })
                }
                Step::Unmask => {
                    view.survivors = Some(Survivors {
                        survivors: self.survivors.get(&index).cloned().unwrap_or_default(),
                    })
                }
                Step::Keys | Step::Done => {}
            }
        }
        Some(view)
    }

    fn roster(&self, index: u32) -> Roster {
        let neighbours = self.neighbours.get(&index).cloned().unwrap_or_default();
        Roster {
            index,
            threshold: threshold(neighbours.len()),
            neighbours: neighbours
                .into_iter()
                .map(|n| Neighbour {
                    index: n,
                    keys: self.keys[&n].clone(),
                })
                .collect(),
        }
    }

    /// Takes `client_id`'s message for the current step. A retry of the same message is a
    /// [`Received::Replay`]; a different second one is refused.
    pub fn receive(&mut self, client_id: &str, message: ClientMessage) -> Result<Received> {
        let index = *self
            .index_of
            .get(client_id)
            .ok_or(ProtocolError::NotParticipant)?;
        if message.step() != self.step {
            return Err(ProtocolError::WrongStep {
                current: self.step.name(),
                sent: message.step().name(),
            });
        }
        if !self.is_participant(index) {
            return Err(ProtocolError::NotParticipant);
        }
        match message {
            ClientMessage::Keys(keys) => store(&mut self.keys, index, keys),
            ClientMessage::Shares(packets) => {
                self.check_packets(index, &packets)?;
                store(&mut self.packets, index, packets)
            }
            ClientMessage::Masked(masked) => {
                if masked.masked.len() != self.dim {
                    return Err(ProtocolError::Invalid(format!(
                        "the masked vector has {} coordinates; this round has {}",
                        masked.masked.len(),
                        self.dim
                    )));
                }
                store(&mut self.masked, index, masked.masked)
            }
            ClientMessage::Unmask(unmasking) => {
                self.check_unmasking(index, &unmasking)?;
                store(&mut self.reveals, index, unmasking)
            }
        }
    }

    fn check_packets(&self, index: u32, packets: &SharePackets) -> Result<()> {
        for packet in &packets.packets {
            if packet.from != index {
                return Err(ProtocolError::Invalid(format!(
                    "a packet from participant {}: send your own packets (you are {index})",
                    packet.from
                )));
            }
            if packet.ciphertext.len() != PACKET_LEN {
                return Err(ProtocolError::Invalid(format!(
                    "a packet of {} bytes; packets are {PACKET_LEN}",
                    packet.ciphertext.len()
                )));
            }
        }
        let neighbours: BTreeSet<u32> = self.neighbours[&index].iter().copied().collect();
        one_each(&neighbours, packets.packets.iter().map(|p| p.to), "packet")
    }

    fn check_unmasking(&self, index: u32, unmasking: &Unmasking) -> Result<()> {
        for share in &unmasking.shares {
            let kind = if self.masked.contains_key(&share.owner) {
                SecretKind::SelfMask
            } else {
                SecretKind::MaskKey
            };
            if share.secret != kind || share.share.len() != SHARE_LEN {
                return Err(ProtocolError::Invalid(format!(
                    "the share for participant {} must be a {SHARE_LEN}-byte {kind:?} share",
                    share.owner
                )));
            }
        }
        // One share for each neighbour whose packet the client received (none when a malicious
        // client sent a masked input without an inbox).
        let senders: BTreeSet<u32> = self
            .inboxes
            .get(&index)
            .map_or_else(BTreeSet::new, |packets| {
                packets.iter().map(|p| p.from).collect()
            });
        one_each(&senders, unmasking.shares.iter().map(|s| s.owner), "share")
    }

    /// Closes the current step (whoever has not answered drops out) and opens the next.
    pub fn advance(&mut self) -> Step {
        match self.step {
            Step::Keys => {
                self.neighbours =
                    regular_graph(&self.keys.keys().copied().collect::<Vec<_>>(), self.degree);
                self.step = Step::Shares;
            }
            Step::Shares => {
                for packets in self.packets.values() {
                    for packet in &packets.packets {
                        if self.packets.contains_key(&packet.to) {
                            self.inboxes
                                .entry(packet.to)
                                .or_default()
                                .push(packet.clone());
                        }
                    }
                }
                self.step = Step::Masked;
            }
            Step::Masked => {
                self.contributors = self.masked.len();
                for &index in self.masked.keys() {
                    let alive = self.inboxes.get(&index).map_or_else(Vec::new, |packets| {
                        packets
                            .iter()
                            .map(|p| p.from)
                            .filter(|from| self.masked.contains_key(from))
                            .collect()
                    });
                    self.survivors.insert(index, alive);
                }
                self.step = Step::Unmask;
            }
            Step::Unmask | Step::Done => self.step = Step::Done,
        }
        self.step
    }

    /// Takes the closed session's masked inputs and revealed shares out, with the public keys
    /// and the neighbour graph, for [`Unmasker::finish`], which can then run without the
    /// session (the server's lock is not held while the masks are expanded).
    pub fn unmasker(&mut self) -> Result<Unmasker> {
        if self.step != Step::Done {
            return Err(ProtocolError::WrongStep {
                current: self.step.name(),
                sent: "finish",
            });
        }
        let dropped = self
            .packets
            .keys()
            .copied()
            .filter(|i| !self.masked.contains_key(i))
            .collect();
        Ok(Unmasker {
            id: self.id,
            dim: self.dim,
            keys: self.keys.clone(),
            neighbours: self.neighbours.clone(),
            dropped,
            masked: std::mem::take(&mut self.masked),
            reveals: std::mem::take(&mut self.reveals),
        })
    }
}

/// What removing the masks of a closed session needs (see [`Aggregator::unmasker`]).
pub struct Unmasker {
    id: SessionId,
    dim: usize,
    keys: BTreeMap<u32, PublicKeys>,
    neighbours: BTreeMap<u32, Vec<u32>>,
    /// Participants that sent shares but no masked input.
    dropped: Vec<u32>,
    masked: BTreeMap<u32, Vec<u64>>,
    reveals: BTreeMap<u32, Unmasking>,
}

impl Unmasker {
    /// The sum of the masked-step clients' encoded vectors, mod 2^64, with every mask removed.
    /// Errors when some secret has fewer shares than its threshold (too many clients left
    /// during unmasking), or when shares rebuild a secret that does not match its public key
    /// or commitment.
    pub fn finish(self) -> Result<Vec<u64>> {
        let mut shares: BTreeMap<(u32, SecretKind), Vec<Vec<u8>>> = BTreeMap::new();
        for unmasking in self.reveals.values() {
            for share in &unmasking.shares {
                shares
                    .entry((share.owner, share.secret))
                    .or_default()
                    .push(share.share.clone());
            }
        }
        let rebuild = |owner: u32, kind: SecretKind| -> Result<[u8; 32]> {
            let needed = threshold(self.neighbours[&owner].len());
            let held = shares.get(&(owner, kind)).map_or(&[][..], |s| s.as_slice());
            if held.len() < needed {
                return Err(ProtocolError::Unrecoverable(format!(
                    "participant {owner}'s {kind:?} has {} of the {needed} shares it needs (too \
                     many clients left during unmasking)",
                    held.len()
                )));
            }
            crypto::combine(held)
        };
        let mut sum = vec![0u64; self.dim];
        for masked in self.masked.values() {
            sum.iter_mut()
                .zip(masked)
                .for_each(|(s, m)| *s = s.wrapping_add(*m));
        }
        for &owner in self.masked.keys() {
            let seed = rebuild(owner, SecretKind::SelfMask)?;
            if crypto::commitment(&seed) != self.keys[&owner].self_mask_commitment {
                return Err(ProtocolError::Unrecoverable(format!(
                    "participant {owner}'s self-mask seed rebuilt from its shares does not match \
                     its commitment (a neighbour sent a bad share)"
                )));
            }
            crypto::apply_mask(&mut sum, crypto::self_seed(self.id, &seed, owner), false);
        }
        for &dropped in &self.dropped {
            let secret = rebuild(dropped, SecretKind::MaskKey)?;
            if crypto::public_key(&secret) != self.keys[&dropped].mask {
                return Err(ProtocolError::Unrecoverable(format!(
                    "participant {dropped}'s mask key rebuilt from its shares does not match its \
                     public key (a neighbour sent a bad share)"
                )));
            }
            for &survivor in self.neighbours[&dropped]
                .iter()
                .filter(|n| self.masked.contains_key(n))
            {
                let seed = crypto::pair_seed(
                    self.id,
                    &secret,
                    &self.keys[&survivor].mask,
                    survivor,
                    dropped,
                );
                // The survivor added this mask if its index is lower; undo what it did.
                crypto::apply_mask(&mut sum, seed, survivor > dropped);
            }
        }
        Ok(sum)
    }
}

/// Errors unless `ids` names each participant of `expected` exactly once (a `what` per
/// neighbour).
fn one_each(
    expected: &BTreeSet<u32>,
    ids: impl IntoIterator<Item = u32>,
    what: &str,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !expected.contains(&id) || !seen.insert(id) {
            return Err(ProtocolError::Invalid(format!(
                "a {what} for participant {id}: send exactly one {what} for each of your {} \
                 neighbours",
                expected.len()
            )));
        }
    }
    if seen.len() != expected.len() {
        return Err(ProtocolError::Invalid(format!(
            "{} {what}s for {} neighbours: send one for each",
            seen.len(),
            expected.len()
        )));
    }
    Ok(())
}

fn store<T: PartialEq>(map: &mut BTreeMap<u32, T>, index: u32, value: T) -> Result<Received> {
    match map.get(&index) {
        Some(held) if *held == value => Ok(Received::Replay),
        Some(_) => Err(ProtocolError::Conflict),
        None => {
            map.insert(index, value);
            Ok(Received::New)
        }
    }
}

/// A symmetric graph over `nodes` in which each node has `degree` neighbours (rounded up to
/// even): node p is joined to the ⌈degree/2⌉ nodes on either side of it in `nodes`' order (a
/// Harary graph, as SecAgg+ uses; the order is the session's random one). Complete when the
/// nodes are too few.
fn regular_graph(nodes: &[u32], degree: usize) -> BTreeMap<u32, Vec<u32>> {
    let n = nodes.len();
    let half = degree.div_ceil(2);
    nodes
        .iter()
        .enumerate()
        .map(|(p, &node)| {
            let neighbours: BTreeSet<u32> = if n <= 2 * half + 1 {
                nodes.iter().copied().filter(|&o| o != node).collect()
            } else {
                (1..=half)
                    .flat_map(|j| [nodes[(p + j) % n], nodes[(p + n - j) % n]])
                    .collect()
            };
            (node, neighbours.into_iter().collect())
        })
        .collect()
}

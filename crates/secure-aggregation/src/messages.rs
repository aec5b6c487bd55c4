//! The messages of one SecAgg+ session, one definition for both ends (serde, JSON).
//!
//! Participants are named by their index in the session (the server's shuffled order of the
//! cohort), never by client id: nothing a client receives names another client.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire;

/// Step 1, client → server: the client's two X25519 public keys and a commitment to its
/// self-mask seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicKeys {
    /// Encrypts the shares sent to this client.
    #[serde(with = "wire::key")]
    #[schemars(with = "wire::schema::Bytes32")]
    pub cipher: [u8; 32],
    /// Agrees the pairwise mask seeds with this client's neighbours.
    #[serde(with = "wire::key")]
    #[schemars(with = "wire::schema::Bytes32")]
    pub mask: [u8; 32],
    /// SHA-256 of the self-mask seed, so a seed rebuilt from bad shares is detected.
    #[serde(with = "wire::key")]
    #[schemars(with = "wire::schema::Bytes32")]
    pub self_mask_commitment: [u8; 32],
}

/// A participant's neighbour and its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Neighbour {
    pub index: u32,
    pub keys: PublicKeys,
}

/// Step 2, server → client: the client's place in the session and its neighbours' keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Roster {
    /// The client's own index.
    pub index: u32,
    /// How many of its neighbours' shares rebuild one of its secrets: more than half of them,
    /// so the server can never collect both secrets of one client.
    pub threshold: usize,
    pub neighbours: Vec<Neighbour>,
}

/// One encrypted pair of Shamir shares (of the sender's self-mask seed and of its mask key),
/// addressed to one neighbour and relayed by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Packet {
    #[serde(deserialize_with = "wire::index::deserialize")]
    #[schemars(with = "wire::schema::Index")]
    pub from: u32,
    #[serde(deserialize_with = "wire::index::deserialize")]
    #[schemars(with = "wire::schema::Index")]
    pub to: u32,
    #[serde(with = "wire::bytes")]
    #[schemars(with = "wire::schema::Base64")]
    pub ciphertext: Vec<u8>,
}

/// Step 2, client → server: one packet for each neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharePackets {
    pub packets: Vec<Packet>,
}

/// Step 3, server → client: the packets addressed to the client by neighbours that finished
/// step 2 (its masks cover exactly these neighbours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Inbox {
    pub packets: Vec<Packet>,
}

/// Step 3, client → server: the encoded vector plus all masks, mod 2^64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskedInput {
    #[serde(with = "wire::words")]
    #[schemars(with = "wire::schema::Words64")]
    pub masked: Vec<u64>,
}

/// Step 4, server → client: which of the client's neighbours sent a masked input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Survivors {
    pub survivors: Vec<u32>,
}

/// Which of a client's two secrets a share belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// The self-mask seed of a neighbour whose masked input arrived.
    SelfMask,
    /// The mask key of a neighbour that dropped out after step 2.
    MaskKey,
}

/// One share a client reveals in step 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealedShare {
    #[serde(deserialize_with = "wire::index::deserialize")]
    #[schemars(with = "wire::schema::Index")]
    pub owner: u32,
    pub secret: SecretKind,
    #[serde(with = "wire::bytes")]
    #[schemars(with = "wire::schema::Base64")]
    pub share: Vec<u8>,
}

/// Step 4, client → server: for each neighbour, the share of exactly one of its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unmasking {
    pub shares: Vec<RevealedShare>,
}

/// A client's message for the session's current step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Keys(PublicKeys),
    Shares(SharePackets),
    Masked(MaskedInput),
    Unmask(Unmasking),
}

impl ClientMessage {
    /// The step this message answers.
    pub fn step(&self) -> Step {
        match self {
            ClientMessage::Keys(_) => Step::Keys,
            ClientMessage::Shares(_) => Step::Shares,
            ClientMessage::Masked(_) => Step::Masked,
            ClientMessage::Unmask(_) => Step::Unmask,
        }
    }
}

/// The steps of a session, in order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Keys,
    Shares,
    Masked,
    Unmask,
    /// The server holds what it needs; nothing more is asked of clients.
    Done,
}

impl Step {
    /// The step's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Step::Keys => "keys",
            Step::Shares => "shares",
            Step::Masked => "masked",
            Step::Unmask => "unmask",
            Step::Done => "done",
        }
    }
}

/// Server → client: the session as one participant sees it. Exactly the field of the current
/// step is set, and only for a participant of that step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionView {
    pub round: u64,
    /// Changes when the server restarts a round's protocol (its keys are then new).
    pub session: u64,
    pub step: Step,
    /// Coordinates of the masked vector.
    pub dim: usize,
    /// The client takes part in the current step.
    pub participant: bool,
    /// The server holds this client's message for the current step.
    pub received: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster: Option<Roster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<Inbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survivors: Option<Survivors>,
}

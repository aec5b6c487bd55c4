//! The JSON messages of fedsyn's HTTP API, one definition for both ends: the axum handlers of
//! `fedsyn serve` serialise these types and `fedsyn client` parses them (and the reverse for
//! request bodies), so the two cannot drift apart. Request bodies refuse unknown fields.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::EmbeddingDtype;

/// `POST /v1/enrol`: a one-time enrolment token for a client token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The token the operator handed out (`fedsyn serve` writes them to a file).
    pub enrolment_token: String,
}

/// The answer to an enrolment: the client's id and its bearer token (`<id>.<secret>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Enrolment {
    pub client_id: String,
    pub token: String,
}

/// `GET /v1/tasks/next`: what the client should do now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum NextTask {
    /// Score the candidates of a round the client is sampled in.
    Task(Task),
    /// Nothing to do yet: ask again after this many milliseconds.
    Wait { retry_after_ms: u64 },
    /// The run is over: the client may exit.
    Finished,
}

/// How a round's score vectors reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Aggregation {
    /// Each client sends its clipped vector in the clear (`POST /v1/rounds/{round}/scores`);
    /// the server sums them. For a server the clients trust.
    #[default]
    #[serde(rename = "plain")]
    Plain,
    /// SecAgg+ (`/v1/rounds/{round}/secagg`): the server learns only the sum.
    #[serde(rename = "secagg+")]
    SecAggPlus,
}

/// A round the client is sampled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub round: u64,
    /// Always 0 (kept for clients of the time when a round could have several attempts).
    pub attempt: u64,
    /// The L2 bound the client clips its score vector to.
    pub clip: f64,
    /// Rows of the candidate matrix (one score per row).
    pub candidates: usize,
    /// Columns of the candidate matrix (the embedding dimension).
    pub dim: usize,
    pub dtype: EmbeddingDtype,
    /// When the round closes (Unix milliseconds).
    pub deadline_unix_ms: u64,
    /// Where to fetch the candidate matrix (relative to the server URL).
    pub candidates_url: String,
    /// How the score vector goes back (absent from older servers: plain).
    #[serde(default)]
    pub aggregation: Aggregation,
}

/// The answer to a message of a secure-aggregation session: which step it answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecAggReceipt {
    pub round: u64,
    pub session: u64,
    pub step: secure_aggregation::Step,
}

/// `POST /v1/rounds/{round}/scores`: the client's clipped score vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoresRequest {
    /// One score per candidate of the round, in candidate order: as many as the task's
    /// `candidates` (a vector of another length is answered 422).
    #[schemars(length(min = 1))]
    pub scores: Vec<f64>,
}

/// The receipt of an accepted submission: the SHA-256 of the vector's bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Receipt {
    pub round: u64,
    /// SHA-256 of the vector's little-endian f64 bytes, lower-case hex.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub receipt: String,
}

/// The most enrolment tokens one request may ask for.
pub const MAX_ENROLMENT_TOKENS: usize = 10_000;

/// `POST /v1/admin/enrolment-tokens`: how many one-time tokens to issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokensRequest {
    /// A whole number; `3.0` is one too, as JSON Schema's `integer` says.
    #[serde(deserialize_with = "whole_number")]
    #[schemars(range(min = 1, max = MAX_ENROLMENT_TOKENS))]
    pub count: usize,
}

/// A non-negative whole number written as an integer or as a float without a fraction.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let value = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = value.as_u64() {
        return usize::try_from(n).map_err(serde::de::Error::custom);
    }
    match value.as_f64() {
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= usize::MAX as f64 => Ok(x as usize),
        _ => Err(serde::de::Error::custom(format!(
            "{value} is not a whole number >= 0"
        ))),
    }
}

/// The issued enrolment tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tokens {
    pub tokens: Vec<String>,
}

/// `GET /v1/health`: whether the server answers, and what the run is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: Liveness,
    pub state: RunState,
    /// The open round, if any.
    pub round: Option<u64>,
}

/// The server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Liveness {
    #[serde(rename = "ok")]
    Ok,
}

/// What a served run is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Loading models, or fewer than `serve.min_clients` are enrolled.
    WaitingForClients,
    /// A round is being prepared, collected or trained on.
    Running,
    /// The admin paused the run: no new round opens.
    Paused,
    /// Every round is done (or the run was stopped) and the outputs are written.
    Finished,
}

/// An error (RFC 9457), served as `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// `urn:fedsyn:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What was wrong and what to do.
    pub detail: String,
}

/// `GET /v1/privacy`: the budget and every charged round. Every field is a function of the
/// configuration and of released, noised results only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PrivacyReport {
    pub target_epsilon: f64,
    pub delta: f64,
    /// ε spent so far at `delta`.
    pub accountants: EpsilonSpent,
    pub rounds: Vec<ChargedRound>,
}

/// ε spent, by accountant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EpsilonSpent {
    pub rdp: f64,
    pub pld: f64,
}

/// One round's ledger event and the ε spent after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChargedRound {
    pub round: u64,
    /// The noise multiplier σ.
    pub sigma: f64,
    /// How the cohort was sampled, as the ledger accounts for it.
    pub sampling: serde_json::Value,
    pub epsilon_rdp: f64,
    pub epsilon_pld: f64,
    pub committed_unix_ms: u64,
}

/// The admin's view of a served run (`GET /v1/admin/run`, and the answer to pause, resume and
/// stop). It holds the open round's sampled and submitted counts: the operator is trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunStatus {
    pub state: RunState,
    /// The open round, if any.
    pub round: Option<u64>,
    pub attempt: Option<u32>,
    /// Whether the open round still takes submissions.
    pub round_open: Option<bool>,
    /// Clients enrolled.
    pub enrolled: usize,
    /// Clients sampled into the open round (0 when none is open).
    pub sampled: usize,
    /// Plain aggregation: clients of the open round that submitted.
    pub submitted: usize,
    /// `secagg+`: the session of the open round.
    pub secure_aggregation: Option<SecureAggregationStatus>,
    pub rounds_charged: usize,
    pub epsilon_spent: EpsilonSpent,
    /// The noise multiplier, once planned.
    pub sigma: Option<f64>,
    pub config: ServedConfig,
}

/// Where the open round's SecAgg+ session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecureAggregationStatus {
    pub step: secure_aggregation::Step,
    /// Participants of the step whose message has not arrived.
    pub awaiting: usize,
    /// Masked inputs received.
    pub masked_inputs: usize,
}

/// The settings of a served run that the admin sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServedConfig {
    pub name: String,
    pub rounds: u64,
    pub target_epsilon: f64,
    pub delta: f64,
    pub clip: f64,
    pub prompts: usize,
    pub candidates_per_prompt: usize,
    pub min_clients: usize,
    pub quorum: f64,
    pub round_deadline_seconds: u64,
    pub aggregation: Aggregation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip_in_the_wire_shape() {
        let task = NextTask::Task(Task {
            round: 3,
            attempt: 0,
            clip: 1.0,
            candidates: 96,
            dim: 384,
            dtype: EmbeddingDtype::F16,
            deadline_unix_ms: 1_700_000_000_000,
            candidates_url: "/v1/rounds/3/candidates".into(),
            aggregation: Aggregation::SecAggPlus,
        });
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["state"], "task");
        assert_eq!(json["dtype"], "f16");
        assert_eq!(json["candidates_url"], "/v1/rounds/3/candidates");
        assert_eq!(json["aggregation"], "secagg+");
        assert_eq!(serde_json::from_value::<NextTask>(json).unwrap(), task);
        let wait = serde_json::to_value(NextTask::Wait { retry_after_ms: 5 }).unwrap();
        assert_eq!(
            wait,
            serde_json::json!({"state": "wait", "retry_after_ms": 5})
        );
        let finished = serde_json::to_value(NextTask::Finished).unwrap();
        assert_eq!(finished, serde_json::json!({"state": "finished"}));
    }

    #[test]
    fn request_bodies_refuse_unknown_fields_and_fractional_counts() {
        assert!(serde_json::from_str::<ScoresRequest>(r#"{"scores": [1], "x": 1}"#).is_err());
        assert!(serde_json::from_str::<EnrolRequest>(r#"{"enrolment_token": "t"}"#).is_ok());
        let count = |json: &str| serde_json::from_str::<TokensRequest>(json).map(|r| r.count);
        assert_eq!(count(r#"{"count": 3}"#).unwrap(), 3);
        // JSON Schema's `integer` (the published schema) admits 3314.0.
        assert_eq!(count(r#"{"count": 3314.0}"#).unwrap(), 3314);
        assert!(count(r#"{"count": 3.5}"#).is_err());
        assert!(count(r#"{"count": -1}"#).is_err());
    }
}

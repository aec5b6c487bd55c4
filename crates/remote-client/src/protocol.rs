//! The JSON messages of fedsyn's HTTP API, one definition for both ends: the axum handlers of
//! `fedsyn serve` serialise these types and `fedsyn client` parses them (and the reverse for
//! request bodies), so the two cannot drift apart. Request bodies refuse unknown fields.

use serde::{Deserialize, Serialize};

use crate::wire::EmbeddingDtype;

/// `POST /v1/enrol`: a one-time enrolment token for a client token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The token the operator handed out (`fedsyn serve` writes them to a file).
    pub enrolment_token: String,
}

/// The answer to an enrolment: the client's id and its bearer token (`<id>.<secret>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolment {
    pub client_id: String,
    pub token: String,
}

/// `GET /v1/tasks/next`: what the client should do now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecAggReceipt {
    pub round: u64,
    pub session: u64,
    pub step: secure_aggregation::Step,
}

/// `POST /v1/rounds/{round}/scores`: the client's clipped score vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoresRequest {
    pub scores: Vec<f64>,
}

/// The receipt of an accepted submission: the SHA-256 of the vector's bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub round: u64,
    pub receipt: String,
}

/// `POST /v1/admin/enrolment-tokens`: how many one-time tokens to issue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensRequest {
    /// A whole number; `3.0` is one too, as JSON Schema's `integer` says.
    #[serde(deserialize_with = "whole_number")]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub tokens: Vec<String>,
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

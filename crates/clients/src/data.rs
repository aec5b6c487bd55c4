//! Federated text data: documents tagged with the client that owns them, read from JSONL, and
//! split per client into training text (what the client scores candidates with) and held-out
//! evaluation text (for diagnostics only).

use std::collections::BTreeMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{io_error, ClientsError, Result};
use crate::hash::fnv1a_64;

/// What every line of a federated JSONL file must look like; quoted in error messages.
const LINE_FORMAT: &str =
    "every non-blank line must be one JSON object {\"client_id\": string, \"text\": string}";

/// One private document and the client that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// The owning client (the unit of privacy).
    pub client_id: String,
    /// The document's text.
    pub text: String,
}

/// Reads a federated JSONL file: one `{"client_id": ..., "text": ...}` object a line (other
/// fields are ignored), blank lines skipped. A malformed line, a missing or non-string field,
/// an empty client id or an empty/whitespace-only text is an error naming `path:line`.
pub fn read_documents(path: &Path) -> Result<Vec<Document>> {
    let contents = std::fs::read_to_string(path).map_err(io_error(path))?;
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(&contents);
    contents
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_document(line).map_err(|problem| bad_line(path, index + 1, problem))
        })
        .collect()
}

/// Parses one JSONL line; the error is the problem, without the location.
fn parse_document(line: &str) -> std::result::Result<Document, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(fields) = value else {
        return Err(format!("a JSON {} instead of an object", json_type(&value)));
    };
    let string_field = |name: &str| match fields.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field \"{name}\" is a JSON {} instead of a string",
            json_type(other)
        )),
        None => Err(format!("field \"{name}\" is missing")),
    };
    let client_id = string_field("client_id")?;
    if client_id.trim().is_empty() {
        return Err("field \"client_id\" is empty".to_string());
    }
    let text = string_field("text")?;
    if text.trim().is_empty() {
        return Err("field \"text\" is empty or only whitespace".to_string());
    }
    Ok(Document { client_id, text })
}

fn bad_line(path: &Path, line: usize, problem: String) -> ClientsError {
    ClientsError::BadDocument {
        path: path.to_path_buf(),
        line,
        problem,
        fix: LINE_FORMAT,
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One client's documents, split into training and held-out evaluation text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientData {
    /// The client's id.
    pub id: String,
    /// Texts the client scores candidates with (never empty).
    pub train: Vec<String>,
    /// Held-out texts, used only for (non-private) evaluation diagnostics.
    pub eval: Vec<String>,
}

/// The private data of every client, sorted by client id so that client indices are
/// deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FederatedData {
    /// The clients, sorted by id; each has at least one training text.
    pub clients: Vec<ClientData>,
    /// Evaluation texts of clients that have no training text (from a separate eval file);
    /// they take part in evaluation only.
    pub eval_only: Vec<String>,
}

/// Only a simulation holds every client's raw data in its process, so only it can make
/// non-private values (`dp_mechanics::NonPrivate::measured`).
impl dp_mechanics::RawClientData for FederatedData {}

impl FederatedData {
    /// Groups `docs` by client and holds out, per client with n documents, round(fraction·n)
    /// of them for evaluation (at least 1 when n ≥ 2 and the fraction is positive, never all:
    /// a client with one document keeps it for training). Which documents are held out is
    /// decided by a shuffle seeded from `seed` and the client id, so a client's split does not
    /// depend on the other clients or on the order of the file. Documents keep their file
    /// order within train and eval.
    pub fn split(docs: Vec<Document>, eval_fraction: f64, seed: u64) -> Result<FederatedData> {
        if !(0.0..1.0).contains(&eval_fraction) {
            return Err(ClientsError::InvalidArgument {
                name: "eval fraction",
                message: format!("{eval_fraction} is not in [0, 1)"),
            });
        }
        let clients = group_by_client(docs)
            .into_iter()
            .map(|(id, texts)| {
                let held_out = held_out_count(texts.len(), eval_fraction);
                let eval_positions = seeded_sample(seed, &id, texts.len(), held_out);
                let (eval, train) = partition_by_position(texts, &eval_positions);
                ClientData { id, train, eval }
            })
            .collect();
        FederatedData {
            clients,
            eval_only: Vec::new(),
        }
        .validated()
    }

    /// Builds the clients from data that ships its own evaluation file: every client of
    /// `train_docs` trains on its documents there and evaluates on its documents in
    /// `eval_docs`; evaluation documents of clients absent from `train_docs` are kept in
    /// [`eval_only`](Self::eval_only).
    pub fn from_train_eval(
        train_docs: Vec<Document>,
        eval_docs: Vec<Document>,
    ) -> Result<FederatedData> {
        let mut eval_by_client = group_by_client(eval_docs);
        let clients = group_by_client(train_docs)
            .into_iter()
            .map(|(id, train)| {
                let eval = eval_by_client.remove(&id).unwrap_or_default();
                ClientData { id, train, eval }
            })
            .collect();
        let eval_only = eval_by_client.into_values().flatten().collect();
        FederatedData { clients, eval_only }.validated()
    }

    /// Checks that every client has training text (the fields are public, so a caller may
    /// have built the value by hand).
    fn validated(self) -> Result<FederatedData> {
        match self.clients.iter().find(|client| client.train.is_empty()) {
            Some(client) => Err(ClientsError::NoTrainText {
                client: client.id.clone(),
            }),
            None => Ok(self),
        }
    }

    /// The number of clients.
    pub fn num_clients(&self) -> usize {
        self.clients.len()
    }

    /// The number of training texts over all clients.
    pub fn train_len(&self) -> usize {
        self.clients.iter().map(|client| client.train.len()).sum()
    }

    /// Every client's training texts, client after client (the row order
    /// [`SimulatedPopulation::new`](crate::SimulatedPopulation::new) expects its embeddings
    /// in).
    pub fn train_texts(&self) -> Vec<&str> {
        self.clients
            .iter()
            .flat_map(|client| client.train.iter().map(String::as_str))
            .collect()
    }

    /// All held-out evaluation texts (every client's, then [`eval_only`](Self::eval_only)):
    /// the private evaluation set for diagnostics.
    pub fn eval_texts(&self) -> Vec<&str> {
        self.clients
            .iter()
            .flat_map(|client| client.eval.iter())
            .chain(self.eval_only.iter())
            .map(String::as_str)
            .collect()
    }
}

/// At most `max` documents of each client (a sample seeded by `seed` and the client id, kept in
/// file order); clients are otherwise unchanged. For quick runs on data with many documents per
/// client.
pub fn sample_per_client(docs: Vec<Document>, max: usize, seed: u64) -> Vec<Document> {
    group_by_client(docs)
        .into_iter()
        .flat_map(|(client_id, texts)| {
            let kept = seeded_sample(seed, &client_id, texts.len(), max.min(texts.len()));
            let (texts, _) = partition_by_position(texts, &kept);
            texts.into_iter().map(move |text| Document {
                client_id: client_id.clone(),
                text,
            })
        })
        .collect()
}

/// Texts per client id, ids sorted, texts in input order.
fn group_by_client(docs: Vec<Document>) -> BTreeMap<String, Vec<String>> {
    let mut by_client: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for doc in docs {
        by_client.entry(doc.client_id).or_default().push(doc.text);
    }
    by_client
}

/// How many of a client's `n` documents go to evaluation.
fn held_out_count(n: usize, fraction: f64) -> usize {
    if n < 2 || fraction == 0.0 {
        return 0;
    }
    let rounded = (fraction * n as f64).round() as usize;
    rounded.clamp(1, n - 1)
}

/// `count` distinct positions out of `0..n`, drawn by a shuffle seeded from `seed` and
/// `client_id`, returned sorted.
fn seeded_sample(seed: u64, client_id: &str, n: usize, count: usize) -> Vec<usize> {
    let mut seed_bytes = seed.to_le_bytes().to_vec();
    seed_bytes.extend_from_slice(client_id.as_bytes());
    let mut rng = ChaCha8Rng::seed_from_u64(fnv1a_64(&seed_bytes));
    let mut positions: Vec<usize> = (0..n).collect();
    positions.shuffle(&mut rng);
    positions.truncate(count);
    positions.sort_unstable();
    positions
}

/// Splits `texts` into (those at `positions`, the rest), both in their original order.
/// `positions` must be sorted.
fn partition_by_position(texts: Vec<String>, positions: &[usize]) -> (Vec<String>, Vec<String>) {
    let mut chosen = Vec::with_capacity(positions.len());
    let mut rest = Vec::with_capacity(texts.len() - positions.len());
    for (index, text) in texts.into_iter().enumerate() {
        if positions.binary_search(&index).is_ok() {
            chosen.push(text);
        } else {
            rest.push(text);
        }
    }
    (chosen, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_per_client_keeps_at_most_max_in_file_order() {
        let docs: Vec<Document> = (0..10)
            .map(|i| Document {
                client_id: if i < 7 { "a" } else { "b" }.to_string(),
                text: format!("text {i}"),
            })
            .collect();
        let sampled = sample_per_client(docs.clone(), 4, 3);
        let of = |id: &str| -> Vec<String> {
            sampled
                .iter()
                .filter(|d| d.client_id == id)
                .map(|d| d.text.clone())
                .collect()
        };
        assert_eq!(of("a").len(), 4);
        assert_eq!(of("b"), ["text 7", "text 8", "text 9"]);
        let mut sorted = of("a");
        sorted.sort_by_key(|t| t[5..].parse::<u32>().unwrap());
        assert_eq!(of("a"), sorted, "file order is kept");
        assert_eq!(sample_per_client(docs, 4, 3), sampled, "seeded");
    }

    #[test]
    fn held_out_counts_round_and_keep_training_text() {
        assert_eq!(held_out_count(1, 0.5), 0);
        assert_eq!(held_out_count(2, 0.1), 1);
        assert_eq!(held_out_count(10, 0.1), 1);
        assert_eq!(held_out_count(15, 0.1), 2); // 1.5 rounds away from zero
        assert_eq!(held_out_count(24, 0.1), 2);
        assert_eq!(held_out_count(25, 0.1), 3);
        assert_eq!(held_out_count(3, 0.9), 2);
        assert_eq!(held_out_count(10, 0.0), 0);
    }

    #[test]
    fn seeded_sample_depends_on_seed_and_client_only() {
        let a = seeded_sample(7, "alice", 50, 10);
        assert_eq!(a, seeded_sample(7, "alice", 50, 10));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[9] < 50);
        assert_ne!(a, seeded_sample(8, "alice", 50, 10));
        assert_ne!(a, seeded_sample(7, "bob", 50, 10));
    }
}

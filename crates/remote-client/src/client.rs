//! A client of a `fedsyn serve` server: it enrols once with a one-time enrolment token, then
//! polls for round tasks, downloads each round's candidate embeddings ([`protocol::wire`]),
//! scores them against its own texts ([`score_candidates`], the arithmetic of
//! `clients::client_score_vector` without libtorch) and submits the clipped score vector,
//! until the server says the run is finished. Nothing here calls libtorch (a profile is
//! computed on a cache miss by `clients::profile`, in another process), so a polling client
//! stays small.
//!
//! Only two kinds of request body ever leave the client: the enrolment token, and the score
//! vector (in the clear to a plain server; under secure aggregation only masked, with the
//! protocol's keys and encrypted shares: see [`secure_aggregation`]). Its texts and their
//! embeddings stay in its state folder.
//!
//! Answers a retry cannot change are final for their round and the client goes on polling:
//! 403 (not sampled), 404 (unknown round), 409 (another vector already submitted), 410 (round
//! closed), 413 and 422 (the server refused the vector). Connection errors, 5xx and 429 are
//! retried with backoff (see `http.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::credentials::{read_credentials, write_credentials, Credentials};
use crate::error::{RemoteError, Result};
use crate::http::{jittered, normalise_server_url, Http, Reply, Retry};
use protocol::messages::{
    Aggregation, EnrolRequest, Enrolment, NextTask, Receipt, ScoresRequest, SecAggReceipt, Task,
};
use protocol::score_candidates;
use protocol::wire::{decode_candidates, CandidateMatrix, HEADER_LEN, MAX_VALUES};
use secure_aggregation::{ClientSession, ProtocolError, SessionView, Step};

/// The shortest and longest wait the client accepts from a "wait" answer.
const MIN_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_secs(60);
/// The pause after a round's work was refused, before polling again (so that a server that
/// offers the same task again is not hammered).
const AFTER_REFUSAL: Duration = Duration::from_secs(1);
/// The most bytes a JSON answer may have.
const MAX_JSON_BYTES: u64 = 1 << 20;
/// The most bytes of a secure-aggregation session view (a roster of 254 neighbours' keys and
/// an inbox of as many packets are ~60 KB).
const MAX_SESSION_BYTES: u64 = 1 << 22;
/// How often a client in a secure-aggregation session asks whether the next step is open.
const SESSION_POLL: Duration = Duration::from_secs(1);

/// How to reach the server and where the client keeps its state.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The server's base URL (`http://host:port` or `https://…`).
    pub server: String,
    /// A one-time enrolment token; needed only when `state_dir` holds no credentials yet.
    pub enrolment_token: Option<String>,
    /// Where the credentials (`client.json`) and the embedding cache live.
    pub state_dir: PathBuf,
    /// A PEM root certificate to trust instead of the public web roots (a self-signed server).
    pub ca_cert: Option<PathBuf>,
    /// How long one request is retried while the server is unreachable or failing.
    pub max_wait: Duration,
}

/// What happens during a run, for the caller's log.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server enrolled this client.
    Enrolled {
        /// The id the server gave it.
        client_id: String,
    },
    /// Credentials from an earlier start were found; the client goes on as this one.
    Resumed {
        /// The client's id.
        client_id: String,
    },
    /// The client is sampled in `round` and works on it.
    Task {
        /// The round.
        round: u64,
        /// The server's attempt number of the round.
        attempt: u64,
        /// The number of candidates to score.
        candidates: usize,
    },
    /// The server accepted the score vector.
    Submitted {
        /// The round.
        round: u64,
        /// The server's receipt (hex SHA-256).
        receipt: String,
        /// Whether the server had it already (an identical retry).
        replay: bool,
    },
    /// The server refused this round's work; final for the round, the client goes on.
    Refused {
        /// The round.
        round: u64,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// The client left a round's secure-aggregation session (it missed a step, or refused a
    /// server that broke the protocol); final for the round.
    LeftSession {
        /// The round.
        round: u64,
        /// Why.
        reason: String,
    },
    /// A request failed and is tried again.
    Retrying(Retry),
}

/// What a run did, once the server said it is finished.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The client's id.
    pub client_id: String,
    /// The rounds whose score vector the server accepted.
    pub rounds_submitted: Vec<u64>,
    /// The rounds whose work the server refused.
    pub rounds_refused: Vec<u64>,
    /// Requests tried again after a failure.
    pub retries: u32,
}

/// How a round's work ended.
enum RoundOutcome {
    Submitted,
    Refused,
}

/// A client connected to one server: its credentials and HTTP agent.
pub struct RemoteClient {
    http: Http,
    credentials: Credentials,
    retries: u32,
    /// Rounds whose unmasking this client answered: it never answers a second session of
    /// them (two unmasked sums over different clients would give the server their difference).
    unmasked_rounds: HashSet<u64>,
}

impl RemoteClient {
    /// Connects to `config.server` as the client whose credentials are in `config.state_dir`,
    /// or enrols with `config.enrolment_token` (and stores the credentials there, mode 0600).
    ///
    /// Errors when the URL or CA certificate is unusable, when there are no credentials and no
    /// token, when the stored credentials belong to another server, when the server refuses
    /// the token, or when it stays unreachable for `config.max_wait`.
    pub fn connect(config: &RemoteConfig, on_event: &mut dyn FnMut(ClientEvent)) -> Result<Self> {
        let server = normalise_server_url(&config.server)?;
        let http = Http::new(server.clone(), config.ca_cert.as_deref(), config.max_wait)?;
        let mut client = RemoteClient {
            http,
            credentials: Credentials {
                server,
                client_id: String::new(),
                token: String::new(),
            },
            retries: 0,
            unmasked_rounds: HashSet::new(),
        };
        match read_credentials(&config.state_dir)? {
            Some(stored) => {
                client.check_same_server(&stored, &config.state_dir)?;
                on_event(ClientEvent::Resumed {
                    client_id: stored.client_id.clone(),
                });
                client.credentials = stored;
            }
            None => {
                let token = config.enrolment_token.as_deref().ok_or_else(|| {
                    RemoteError::InvalidArgument {
                        name: "--enroll",
                        message: format!(
                            "{} holds no credentials yet; pass the one-time enrolment token the \
                             server's operator gave you with --enroll TOKEN",
                            config.state_dir.display()
                        ),
                    }
                })?;
                client.enrol(token, on_event)?;
                write_credentials(&config.state_dir, &client.credentials)?;
                on_event(ClientEvent::Enrolled {
                    client_id: client.credentials.client_id.clone(),
                });
            }
        }
        Ok(client)
    }

    /// The id the server gave this client.
    pub fn client_id(&self) -> &str {
        &self.credentials.client_id
    }

    fn check_same_server(&self, stored: &Credentials, state_dir: &Path) -> Result<()> {
        if stored.server == self.credentials.server {
            return Ok(());
        }
        Err(RemoteError::InvalidArgument {
            name: "--state-dir",
            message: format!(
                "{} holds the credentials of a client of {}, not of {}; give each server its \
                 own --state-dir",
                state_dir.display(),
                stored.server,
                self.credentials.server
            ),
        })
    }

    /// `POST /v1/enrol`: trades the one-time `token` for this client's id and bearer token.
    fn enrol(&mut self, token: &str, on_event: &mut dyn FnMut(ClientEvent)) -> Result<()> {
        let body = serde_json::to_string(&EnrolRequest {
            enrolment_token: token.to_string(),
        })
        .expect("a string serialises");
        let reply = self.post("/v1/enrol", false, body.as_bytes(), on_event)?;
        if reply.status != 201 && reply.status != 200 {
            return Err(match reply.status {
                400..=499 => RemoteError::EnrolmentRefused {
                    status: reply.status,
                    detail: reply.detail(),
                },
                _ => unexpected("POST /v1/enrol", &reply),
            });
        }
        let enrolment: Enrolment = parse_json("POST /v1/enrol", &reply)?;
        self.credentials.client_id = enrolment.client_id;
        self.credentials.token = enrolment.token;
        Ok(())
    }

    /// Polls for tasks and works on each until the server says the run is finished.
    /// `embedding_sum` is the client's [`crate::Profile::embedding_sum`].
    pub fn run(
        &mut self,
        embedding_sum: &[f32],
        on_event: &mut dyn FnMut(ClientEvent),
    ) -> Result<RunSummary> {
        let mut summary = RunSummary {
            client_id: self.credentials.client_id.clone(),
            rounds_submitted: Vec::new(),
            rounds_refused: Vec::new(),
            retries: 0,
        };
        loop {
            match self.next_task(on_event)? {
                NextTask::Finished => break,
                NextTask::Wait { retry_after_ms } => {
                    let wait = Duration::from_millis(retry_after_ms).clamp(MIN_POLL, MAX_POLL);
                    std::thread::sleep(jittered(wait));
                }
                NextTask::Task(task) => {
                    let round = task.round;
                    match self.work_on(&task, embedding_sum, on_event)? {
                        RoundOutcome::Submitted => summary.rounds_submitted.push(round),
                        RoundOutcome::Refused => {
                            summary.rounds_refused.push(round);
                            std::thread::sleep(jittered(AFTER_REFUSAL));
                        }
                    }
                }
            }
        }
        summary.retries = self.retries;
        Ok(summary)
    }

    /// `GET /v1/tasks/next`.
    fn next_task(&mut self, on_event: &mut dyn FnMut(ClientEvent)) -> Result<NextTask> {
        const REQUEST: &str = "GET /v1/tasks/next";
        let reply = self.get("/v1/tasks/next", MAX_JSON_BYTES, on_event)?;
        match reply.status {
            200 => parse_json(REQUEST, &reply),
            401 => Err(self.credentials_refused(REQUEST, &reply)),
            _ => Err(unexpected(REQUEST, &reply)),
        }
    }

    /// Downloads, scores and submits one round's work.
    fn work_on(
        &mut self,
        task: &Task,
        embedding_sum: &[f32],
        on_event: &mut dyn FnMut(ClientEvent),
    ) -> Result<RoundOutcome> {
        on_event(ClientEvent::Task {
            round: task.round,
            attempt: task.attempt,
            candidates: task.candidates,
        });
        self.check_task(task, embedding_sum.len())?;
        if task.aggregation == Aggregation::SecAggPlus {
            return self.work_on_securely(task, embedding_sum, on_event);
        }
        let Some(candidates) = self.download_candidates(task, on_event)? else {
            return Ok(RoundOutcome::Refused);
        };
        let scores = score_candidates(&candidates, embedding_sum, task.clip)?;
        drop(candidates);
        self.submit(task.round, &scores, on_event)
    }

    /// One round under secure aggregation: the client joins the round's SecAgg+ session and
    /// answers each of its steps once (keys, shares, masked input, unmasking), downloading and
    /// scoring the candidates only when its masked input is due. It leaves the session (final
    /// for the round) when it misses a step or the server breaks the protocol's rules.
    fn work_on_securely(
        &mut self,
        task: &Task,
        embedding_sum: &[f32],
        on_event: &mut dyn FnMut(ClientEvent),
    ) -> Result<RoundOutcome> {
        let round = task.round;
        let view_path = format!("/v1/rounds/{round}/secagg");
        let view_request = format!("GET {view_path}");
        let mut session: Option<ClientSession> = None;
        let mut encoded: Option<Vec<u64>> = None;
        let leave = |reason: String, on_event: &mut dyn FnMut(ClientEvent)| {
            on_event(ClientEvent::LeftSession { round, reason });
            Ok(RoundOutcome::Refused)
        };
        loop {
            let reply = self.get(&view_path, MAX_SESSION_BYTES, on_event)?;
            let view: SessionView = match reply.status {
                200 => parse_json(&view_request, &reply)?,
                // The session starts right after the round opens: ask again.
                404 if now_unix_ms() < task.deadline_unix_ms => {
                    std::thread::sleep(jittered(SESSION_POLL));
                    continue;
                }
                401 => return Err(self.credentials_refused(&view_request, &reply)),
                403 | 404 | 410 => {
                    self.refused(round, &reply, on_event);
                    return Ok(RoundOutcome::Refused);
                }
                _ => return Err(unexpected(&view_request, &reply)),
            };
            if view.round != round || view.dim != task.candidates {
                return Err(RemoteError::Protocol {
                    request: view_request,
                    problem: format!(
                        "the session is round {} over {} values; the task said round {round} \
                         with {} candidates",
                        view.round, view.dim, task.candidates
                    ),
                });
            }
            if session.as_ref().map(ClientSession::id) != Some((round, view.session)) {
                if self.unmasked_rounds.contains(&round) {
                    return leave(
                        "the server restarted the round's session after this client helped \
                         unmask it; it takes part in one session per round"
                            .into(),
                        on_event,
                    );
                }
                if view.step != Step::Keys || view.received {
                    return leave(
                        format!("joined at step `{}`, after the keys step", view.step.name()),
                        on_event,
                    );
                }
                session = Some(
                    ClientSession::new(round, view.session)
                        .map_err(|e| protocol_error(&view_request, e))?,
                );
            }
            if !view.participant || view.step == Step::Done {
                return leave(
                    format!("dropped out before step `{}` closed", view.step.name()),
                    on_event,
                );
            }
            if view.received {
                std::thread::sleep(jittered(SESSION_POLL));
                continue;
            }
            let client = session.as_mut().expect("joined above");
            let message = match view.step {
                Step::Keys => Ok(client.keys()),
                Step::Shares => match &view.roster {
                    Some(roster) => client.share_keys(roster),
                    None => Err(ProtocolError::Refused(
                        "no roster in the shares step".into(),
                    )),
                },
                Step::Masked => {
                    if encoded.is_none() {
                        let Some(candidates) = self.download_candidates(task, on_event)? else {
                            return Ok(RoundOutcome::Refused);
                        };
                        let scores = score_candidates(&candidates, embedding_sum, task.clip)?;
                        let scores: Vec<f64> = scores.iter().map(|&v| f64::from(v)).collect();
                        encoded = Some(
                            secure_aggregation::encode(&scores, task.clip)
                                .map_err(|e| protocol_error(&view_request, e))?,
                        );
                    }
                    match &view.inbox {
                        Some(inbox) => client.mask(inbox, encoded.as_deref().expect("set above")),
                        None => Err(ProtocolError::Refused("no inbox in the masked step".into())),
                    }
                }
                Step::Unmask => match &view.survivors {
                    Some(survivors) => client.unmask(survivors),
                    None => Err(ProtocolError::Refused(
                        "no survivors in the unmasking step".into(),
                    )),
                },
                Step::Done => unreachable!("handled above"),
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => return leave(error.to_string(), on_event),
            };
            let path = format!("/v1/rounds/{round}/secagg/{}", view.session);
            let request = format!("POST {path}");
            let body = serde_json::to_vec(&message).expect("protocol messages serialise");
            let reply = self.post(&path, true, &body, on_event)?;
            match reply.status {
                200..=202 => {
                    let receipt: SecAggReceipt = parse_json(&request, &reply)?;
                    if receipt.step == Step::Unmask {
                        self.unmasked_rounds.insert(round);
                        on_event(ClientEvent::Submitted {
                            round,
                            receipt: format!("secagg+ session {}", view.session),
                            replay: reply.status == 200,
                        });
                        return Ok(RoundOutcome::Submitted);
                    }
                }
                // The step closed meanwhile: look again.
                409 => std::thread::sleep(jittered(SESSION_POLL)),
                401 => return Err(self.credentials_refused(&request, &reply)),
                403 | 404 | 410 | 413 | 422 => {
                    self.refused(round, &reply, on_event);
                    return Ok(RoundOutcome::Refused);
                }
                _ => return Err(unexpected(&request, &reply)),
            }
        }
    }

    /// Errors unless the task is one this client can do: a relative candidate URL on this
    /// server, a size within the wire format's bound, the width of this client's embeddings.
    fn check_task(&self, task: &Task, dim: usize) -> Result<()> {
        let problem = if !task.candidates_url.starts_with("/v1/") {
            Some(format!(
                "candidates_url `{}` is not a path on this server",
                task.candidates_url
            ))
        } else if task.candidates == 0
            || task
                .candidates
                .checked_mul(task.dim)
                .is_none_or(|n| n > MAX_VALUES)
        {
            Some(format!(
                "{} candidates × {} is not a size between 1 and {MAX_VALUES} values",
                task.candidates, task.dim
            ))
        } else if task.dim != dim {
            Some(format!(
                "the server's candidate embeddings have width {}, this client's embedder gives \
                 {dim}: client and server must use the same sentence embedder",
                task.dim
            ))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(problem) => Err(RemoteError::Protocol {
                request: "GET /v1/tasks/next".to_string(),
                problem,
            }),
        }
    }

    /// The round's candidates, or `None` when the server refuses them (not sampled, round
    /// unknown or closed).
    fn download_candidates(
        &mut self,
        task: &Task,
        on_event: &mut dyn FnMut(ClientEvent),
    ) -> Result<Option<CandidateMatrix>> {
        let request = format!("GET {}", task.candidates_url);
        let values = task.candidates * task.dim;
        // The uncompressed size, with room for a deflate stream that did not shrink.
        let limit = HEADER_LEN + values * task.dtype.size();
        let limit = (limit + limit / 64 + 4096) as u64;
        let reply = self.get(&task.candidates_url, limit, on_event)?;
        match reply.status {
            200 => {}
            401 => return Err(self.credentials_refused(&request, &reply)),
            403 | 404 | 410 => {
                self.refused(task.round, &reply, on_event);
                return Ok(None);
            }
            _ => return Err(unexpected(&request, &reply)),
        }
        let matrix = decode_candidates(&reply.body)?;
        drop(reply);
        if (matrix.round, matrix.rows, matrix.dim) != (task.round, task.candidates, task.dim) {
            return Err(RemoteError::Protocol {
                request,
                problem: format!(
                    "the candidates are round {} with {} × {}, but the task said round {} with \
                     {} × {}",
                    matrix.round, matrix.rows, matrix.dim, task.round, task.candidates, task.dim
                ),
            });
        }
        if matrix.clip != task.clip {
            return Err(RemoteError::Protocol {
                request,
                problem: format!(
                    "the candidates carry the clip bound {}, the task {}",
                    matrix.clip, task.clip
                ),
            });
        }
        Ok(Some(matrix))
    }

    /// `POST /v1/rounds/{round}/scores` with the vector; an identical retry after a lost answer
    /// is accepted by the server as the same submission.
    fn submit(
        &mut self,
        round: u64,
        scores: &[f32],
        on_event: &mut dyn FnMut(ClientEvent),
    ) -> Result<RoundOutcome> {
        let path = format!("/v1/rounds/{round}/scores");
        let request = format!("POST {path}");
        let body = score_body(scores);
        let reply = self.post(&path, true, &body, on_event)?;
        match reply.status {
            200..=202 => {
                let receipt: Receipt = parse_json(&request, &reply)?;
                if receipt.round != round {
                    return Err(RemoteError::Protocol {
                        request,
                        problem: format!("the receipt is for round {}", receipt.round),
                    });
                }
                on_event(ClientEvent::Submitted {
                    round,
                    receipt: receipt.receipt,
                    replay: reply.status == 200,
                });
                Ok(RoundOutcome::Submitted)
            }
            401 => Err(self.credentials_refused(&request, &reply)),
            403 | 404 | 409 | 410 | 413 | 422 => {
                self.refused(round, &reply, on_event);
                Ok(RoundOutcome::Refused)
            }
            _ => Err(unexpected(&request, &reply)),
        }
    }

    fn refused(&self, round: u64, reply: &Reply, on_event: &mut dyn FnMut(ClientEvent)) {
        on_event(ClientEvent::Refused {
            round,
            status: reply.status,
            detail: reply.detail(),
        });
    }

    fn credentials_refused(&self, request: &str, reply: &Reply) -> RemoteError {
        RemoteError::ServerRefused {
            request: request.to_string(),
            status: reply.status,
            detail: format!(
                "{} (the server does not accept client {}'s token: it belongs to another run, or \
                 was revoked; enrol again with a new token and a fresh --state-dir)",
                reply.detail(),
                self.credentials.client_id
            ),
        }
    }

    fn get(
        &mut self,
        path: &str,
        limit: u64,
        on_event: &mut dyn FnMut(ClientEvent),
    ) -> Result<Reply> {
        let retries = &mut self.retries;
        self.http
            .get(path, &self.credentials.token, limit, &mut |retry| {
                *retries += 1;
                on_event(ClientEvent::Retrying(retry));
            })
    }

    fn post(
        &mut self,
        path: &str,
        authenticated: bool,
        body: &[u8],
        on_event: &mut dyn FnMut(ClientEvent),
    ) -> Result<Reply> {
        let retries = &mut self.retries;
        let token = authenticated.then_some(self.credentials.token.as_str());
        self.http.post_json(path, token, body, &mut |retry| {
            *retries += 1;
            on_event(ClientEvent::Retrying(retry));
        })
    }
}

/// `{"scores":[…]}`: the f32 values written as the f64 numbers they are exactly.
fn score_body(scores: &[f32]) -> Vec<u8> {
    let scores: Vec<f64> = scores.iter().map(|&v| f64::from(v)).collect();
    serde_json::to_vec(&ScoresRequest { scores }).expect("finite f64 serialise")
}

fn parse_json<T: serde::de::DeserializeOwned>(request: &str, reply: &Reply) -> Result<T> {
    serde_json::from_slice(&reply.body).map_err(|e| RemoteError::Protocol {
        request: request.to_string(),
        problem: format!(
            "HTTP {} with a body that is not the expected JSON ({e})",
            reply.status
        ),
    })
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn protocol_error(request: &str, error: ProtocolError) -> RemoteError {
    RemoteError::Protocol {
        request: request.to_string(),
        problem: error.to_string(),
    }
}

fn unexpected(request: &str, reply: &Reply) -> RemoteError {
    RemoteError::ServerRefused {
        request: request.to_string(),
        status: reply.status,
        detail: reply.detail(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_answers_parse_in_all_three_states() {
        let task: NextTask = serde_json::from_str(
            r#"{"state":"task","round":2,"attempt":1,"clip":1.5,"candidates":6,"dim":384,
                "dtype":"f16","deadline_unix_ms":1,"candidates_url":"/v1/rounds/2/candidates"}"#,
        )
        .unwrap();
        assert!(matches!(
            task,
            NextTask::Task(Task {
                round: 2,
                candidates: 6,
                ..
            })
        ));
        let wait: NextTask =
            serde_json::from_str(r#"{"state":"wait","retry_after_ms":250}"#).unwrap();
        assert!(matches!(
            wait,
            NextTask::Wait {
                retry_after_ms: 250
            }
        ));
        let finished: NextTask = serde_json::from_str(r#"{"state":"finished"}"#).unwrap();
        assert!(matches!(finished, NextTask::Finished));
    }

    #[test]
    fn the_score_body_holds_the_f32_values_exactly() {
        let scores = [0.1f32, -2.5, 1e-7];
        let body: serde_json::Value = serde_json::from_slice(&score_body(&scores)).unwrap();
        let sent: Vec<f32> = body["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(sent, scores);
        assert_eq!(body.as_object().unwrap().len(), 1);
    }
}

//! The round state shared by the HTTP handlers (tokio) and the engine thread (blocking): which
//! round attempt is open, who was sampled, who submitted; and [`RemoteTransport`], the engine's
//! [`ScoreTransport`] for remote clients.
//!
//! Handlers take the state lock only for short checks and one SQLite transaction; the engine
//! thread sleeps on a condition variable that every submission, pause, resume and stop wakes.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use secure_aggregation::{
    decode, per_client_units, Aggregator, ClientMessage, ProtocolError, Received, SessionView,
    Step, Unmasker,
};

use crate::digest::{hex, sha256};
use crate::engine::{CollectedScores, RoundTask, ScoreTransport};
use crate::error::{Result, ServerError};
use crate::noise::GridSum;
use crate::serve::metrics::Metrics;
use crate::serve::store::{RoundRecord, RoundStatus, Store, Submission};

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the run is doing, as `/v1/health` reports it (one definition with the protocol).
pub use protocol::messages::RunState;

/// The fixed rules of collection.
#[derive(Debug, Clone)]
pub struct CollectionRules {
    /// The clip bound C (vectors longer than C are scaled to C).
    pub clip: f64,
    /// Fraction of the sampled clients whose submissions close the round early.
    pub quorum: f64,
    /// How long a round stays open; at the deadline it is released with what arrived.
    pub deadline: Duration,
    /// Secure aggregation (SecAgg+) instead of plain submissions.
    pub secure: Option<SecureRules>,
}

/// The rules of a securely aggregated round (`serve.aggregation = "secagg+"`).
#[derive(Debug, Clone)]
pub struct SecureRules {
    /// Neighbours per client.
    pub neighbours: usize,
    /// How long each short step (keys, shares, unmasking) waits.
    pub step: Duration,
}

/// How a secure-aggregation session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The unmasked ring sum of the clients who sent a masked input.
    Sum(Vec<u64>),
    /// Too few clients stayed to unmask: nothing of anyone's vector can be recovered.
    Unrecoverable(String),
    /// The admin stopped the run.
    Stopped,
}
/// The round attempt clients can work on.
#[derive(Debug, Clone)]
pub struct OpenRound {
    pub round: u64,
    pub attempt: u32,
    sampled: HashSet<String>,
    pub sampled_count: usize,
    pub deadline_unix_ms: u64,
    /// The encoded candidate matrix, served as is (shared, never copied per request).
    pub candidates: Bytes,
    pub rows: usize,
    pub dim: usize,
    pub submitted: usize,
    /// Submissions are refused (the engine is summing, charging, training).
    pub closed: bool,
}

impl OpenRound {
    fn from_record(record: &RoundRecord, submitted: usize) -> OpenRound {
        OpenRound {
            round: record.round,
            attempt: record.attempt,
            sampled: record.sampled.iter().cloned().collect(),
            sampled_count: record.sampled.len(),
            deadline_unix_ms: record.deadline_unix_ms,
            candidates: Bytes::from(record.candidates.clone()),
            rows: record.rows,
            dim: record.dim,
            submitted,
            closed: record.status != RoundStatus::Open,
        }
    }

    /// Whether `client_id` was sampled in this attempt.
    pub fn is_sampled(&self, client_id: &str) -> bool {
        self.sampled.contains(client_id)
    }
}

/// What `GET /v1/tasks/next` tells a client.
#[derive(Debug, Clone, PartialEq)]
pub enum NextTask {
    /// Score round `round`.
    Task {
        round: u64,
        attempt: u32,
        rows: usize,
        dim: usize,
        deadline_unix_ms: u64,
    },
    /// Nothing to do now; ask again later.
    Wait { retry_after_ms: u64 },
    /// The run is over.
    Finished,
}

/// A submission the coordinator accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Stored now (202).
    New { receipt: String },
    /// The same vector was stored before (200, same receipt).
    Replay { receipt: String },
}

/// Why a request about a round was refused.
#[derive(Debug)]
pub enum RoundError {
    /// No such round was ever opened (404).
    UnknownRound(u64),
    /// The client is not sampled in the round (403).
    NotSampled(u64),
    /// A different vector was already submitted (409).
    Conflict(u64),
    /// The round no longer takes submissions (410).
    Closed(u64),
    /// Wrong length or non-finite values (422).
    Invalid(String),
    /// The round's secure-aggregation session has not started yet (404; ask again).
    NoSession(u64),
    /// The run aggregates in plain mode: there are no sessions (409).
    NotSecure,
    /// The message is for an earlier session of the round, replaced after a restart (410).
    StaleSession(u64),
    /// The session refused the message.
    Session(ProtocolError),
    /// The server failed (500).
    Internal(ServerError),
}

impl From<ServerError> for RoundError {
    fn from(error: ServerError) -> RoundError {
        RoundError::Internal(error)
    }
}

struct Shared {
    state: RunState,
    paused: bool,
    stop: bool,
    open: Option<OpenRound>,
    /// The secure-aggregation session of the open round.
    secagg: Option<Aggregator>,
}

/// The state shared between the HTTP handlers and the engine thread.
pub struct Coordinator {
    store: Arc<Store>,
    rules: CollectionRules,
    shared: Mutex<Shared>,
    changed: Condvar,
    metrics: Arc<Metrics>,
    /// Clients that were told the run is finished (so a server that exits when finished can
    /// wait until every client knows).
    told_finished: Mutex<HashSet<String>>,
}

impl Coordinator {
    /// A coordinator over `store`; an attempt the store holds open (or closed but not yet
    /// released) is taken up again, its deadline moved so the clients get time after a
    /// restart.
    pub fn new(
        store: Arc<Store>,
        rules: CollectionRules,
        metrics: Arc<Metrics>,
    ) -> Result<Coordinator> {
        let paused = store.meta("paused")?.is_some_and(|v| v == "true");
        let stop = store.meta("stopped")?.is_some_and(|v| v == "true");
        let finished = store.meta("finished")?.is_some_and(|v| v == "true");
        let coordinator = Coordinator {
            store,
            rules,
            shared: Mutex::new(Shared {
                state: if finished {
                    RunState::Finished
                } else {
                    RunState::WaitingForClients
                },
                paused,
                stop,
                open: None,
                secagg: None,
            }),
            changed: Condvar::new(),
            metrics,
            told_finished: Mutex::new(HashSet::new()),
        };
        if let Some(record) = coordinator.store.latest_round()? {
            coordinator
                .metrics
                .current_round_plus_one
                .store(record.round + 1, std::sync::atomic::Ordering::Relaxed);
            if matches!(record.status, RoundStatus::Open | RoundStatus::Closed) {
                coordinator.resume_attempt(record)?;
            }
        }
        Ok(coordinator)
    }

    fn resume_attempt(&self, mut record: RoundRecord) -> Result<()> {
        if record.status == RoundStatus::Open {
            let deadline = now_unix_ms() + self.rules.deadline.as_millis() as u64;
            if deadline > record.deadline_unix_ms {
                record.deadline_unix_ms = deadline;
                self.store
                    .set_deadline(record.round, record.attempt, deadline)?;
            }
        }
        let submitted = self.store.submission_count(record.round, record.attempt)?;
        let mut shared = self.lock();
        shared.open = Some(OpenRound::from_record(&record, submitted));
        // A round is under way: the engine takes it up as soon as its models are loaded.
        shared.state = RunState::Running;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The collection rules.
    pub fn rules(&self) -> &CollectionRules {
        &self.rules
    }

    /// (state, current round, the open attempt's sampled and submitted counts).
    pub fn snapshot(&self) -> (RunState, Option<OpenRound>) {
        let shared = self.lock();
        let state = if shared.paused && shared.state != RunState::Finished {
            RunState::Paused
        } else {
            shared.state
        };
        (state, shared.open.clone())
    }

    /// Whether the admin asked the run to stop.
    pub fn stop_requested(&self) -> bool {
        self.lock().stop
    }

    /// Pauses (`true`) or resumes the run: no new round opens while paused (persisted).
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        self.store
            .set_meta("paused", if paused { "true" } else { "false" })?;
        self.lock().paused = paused;
        self.changed.notify_all();
        Ok(())
    }

    /// No further rounds; the run writes its outputs after the current round (persisted).
    pub fn stop(&self) -> Result<()> {
        self.store.set_meta("stopped", "true")?;
        let mut shared = self.lock();
        shared.stop = true;
        shared.paused = false;
        drop(shared);
        self.changed.notify_all();
        Ok(())
    }

    /// Sets the run state (engine thread).
    pub fn set_state(&self, state: RunState) -> Result<()> {
        if state == RunState::Finished {
            self.store.set_meta("finished", "true")?;
        }
        self.lock().state = state;
        self.changed.notify_all();
        Ok(())
    }

    /// How many distinct clients were told that the run is finished.
    pub fn clients_told_finished(&self) -> usize {
        self.told_finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Wakes the engine thread (a client enrolled).
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Blocks the engine thread until at least `min_clients` are enrolled and the run is not
    /// paused; `None` when a stop was requested meanwhile.
    pub fn wait_until_ready(&self, min_clients: usize) -> Result<Option<usize>> {
        let mut shared = self.lock();
        loop {
            if shared.stop {
                return Ok(None);
            }
            if !shared.paused {
                let enrolled = self.store.enrolled()?;
                if enrolled >= min_clients {
                    shared.state = RunState::Running;
                    return Ok(Some(enrolled));
                }
                shared.state = RunState::WaitingForClients;
            }
            // Enrolments notify; the timeout is only a safety net against a missed wake-up.
            shared = self
                .changed
                .wait_timeout(shared, Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Persists a new round attempt and makes it the open one.
    pub fn open_attempt(&self, record: &RoundRecord) -> Result<()> {
        self.store.insert_round(record, now_unix_ms())?;
        self.metrics
            .current_round_plus_one
            .store(record.round + 1, std::sync::atomic::Ordering::Relaxed);
        self.lock().open = Some(OpenRound::from_record(record, 0));
        self.changed.notify_all();
        Ok(())
    }

    /// The attempt the coordinator holds (open, or closed and not yet released).
    pub fn current_attempt(&self) -> Option<OpenRound> {
        self.lock().open.clone()
    }

    /// Blocks until the open attempt has its quorum or reaches its deadline, then closes it
    /// (persisted first: from then on every submission is refused). Returns the attempt.
    pub fn wait_and_close(&self) -> Result<OpenRound> {
        let mut shared = self.lock();
        loop {
            let open = shared
                .open
                .as_ref()
                .ok_or_else(|| ServerError::internal("no round attempt is open"))?;
            if open.closed {
                return Ok(open.clone());
            }
            let needed = quorum_count(open.sampled_count, self.rules.quorum);
            let now = now_unix_ms();
            // A stop closes the attempt at once: no further rounds, and this one is not
            // released (see `RemoteTransport::collect`).
            if open.submitted >= needed || now >= open.deadline_unix_ms || shared.stop {
                self.store
                    .set_status(open.round, open.attempt, RoundStatus::Closed)?;
                let open = shared.open.as_mut().expect("checked above");
                open.closed = true;
                return Ok(open.clone());
            }
            let wait = Duration::from_millis(open.deadline_unix_ms - now);
            shared = self
                .changed
                .wait_timeout(shared, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Retires the held round (released, or abandoned by a stop): its client data is erased.
    pub fn retire(&self, round: u64, attempt: u32, status: RoundStatus) -> Result<()> {
        self.store.retire_round(round, attempt, status)?;
        let mut shared = self.lock();
        if shared
            .open
            .as_ref()
            .is_some_and(|o| o.round == round && o.attempt == attempt)
        {
            shared.open = None;
        }
        if shared.secagg.as_ref().is_some_and(|s| s.round() == round) {
            shared.secagg = None;
        }
        Ok(())
    }

    /// What client `client_id` should do next.
    pub fn next_task(&self, client_id: &str) -> Result<NextTask> {
        let shared = self.lock();
        if shared.state == RunState::Finished {
            drop(shared);
            self.told_finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(client_id.to_string());
            return Ok(NextTask::Finished);
        }
        let wait = NextTask::Wait {
            retry_after_ms: 1000,
        };
        let Some(open) = shared.open.as_ref() else {
            return Ok(wait);
        };
        if open.closed || !open.is_sampled(client_id) {
            return Ok(wait);
        }
        if self.rules.secure.is_some() {
            // The client works in the session until it has unmasked, or has dropped out of it.
            let busy = match shared.secagg.as_ref().filter(|s| s.round() == open.round) {
                None => true,
                Some(session) => {
                    session
                        .standing(client_id)
                        .is_some_and(|(participant, received)| {
                            participant && !(session.step() == Step::Unmask && received)
                        })
                }
            };
            if !busy {
                return Ok(wait);
            }
            return Ok(NextTask::Task {
                round: open.round,
                attempt: open.attempt,
                rows: open.rows,
                dim: open.dim,
                deadline_unix_ms: open.deadline_unix_ms,
            });
        }
        let round = open.round;
        let attempt = open.attempt;
        let task = NextTask::Task {
            round,
            attempt,
            rows: open.rows,
            dim: open.dim,
            deadline_unix_ms: open.deadline_unix_ms,
        };
        drop(shared);
        if self.store.submission(round, attempt, client_id)?.is_some() {
            return Ok(wait);
        }
        Ok(task)
    }

    /// The encoded candidates of `round` for a sampled client.
    pub fn candidates(
        &self,
        round: u64,
        client_id: &str,
    ) -> std::result::Result<Bytes, RoundError> {
        let mut shared = self.lock();
        let (open, _) = self.open_for(&mut shared, round, client_id)?;
        Ok(open.candidates.clone())
    }

    /// Takes client `client_id`'s score vector for `round`: checked (length, finiteness),
    /// re-clipped to C in f64, stored in its own transaction. An identical retry returns the
    /// first receipt; a different second vector is refused.
    pub fn submit(
        &self,
        round: u64,
        client_id: &str,
        scores: &[f64],
    ) -> std::result::Result<Accepted, RoundError> {
        let mut shared = self.lock();
        let Some(open) = shared.open.as_mut().filter(|o| o.round == round) else {
            drop(shared);
            return self.submit_to_held_round(round, client_id, scores);
        };
        if !open.is_sampled(client_id) {
            return Err(RoundError::NotSampled(round));
        }
        if self.rules.secure.is_some() {
            return Err(RoundError::Invalid(
                "this run aggregates securely (serve.aggregation = \"secagg+\"): the server \
                 takes no vector in the clear; send it through the round's session, \
                 /v1/rounds/{round}/secagg (fedsyn client does)"
                    .into(),
            ));
        }
        check_vector(scores, open.rows)?;
        let receipt = receipt(scores);
        if let Some(previous) = self.store.submission(round, open.attempt, client_id)? {
            return if previous.receipt == receipt {
                Ok(Accepted::Replay { receipt })
            } else {
                Err(RoundError::Conflict(round))
            };
        }
        if open.closed {
            return Err(RoundError::Closed(round));
        }
        // Re-clipped, but not counted anywhere: how many vectors were over the bound is a
        // statistic of the un-noised scores.
        let vector = reclip(scores, self.rules.clip)?;
        let submission = Submission {
            receipt: receipt.clone(),
        };
        self.store
            .insert_submission(round, open.attempt, client_id, &submission, &vector)?;
        open.submitted += 1;
        drop(shared);
        self.changed.notify_all();
        Ok(Accepted::New { receipt })
    }

    /// A submission to a round that is not the held one: unknown, or over. A released round
    /// keeps no record of its cohort (see [`Store::retire_round`]), so it is over for every
    /// client alike: 410, whether or not the client was sampled.
    fn submit_to_held_round(
        &self,
        round: u64,
        client_id: &str,
        scores: &[f64],
    ) -> std::result::Result<Accepted, RoundError> {
        let Some(record) = self.store.latest_attempt(round)? else {
            return Err(RoundError::UnknownRound(round));
        };
        check_vector(scores, record.rows)?;
        match self.store.submission(round, record.attempt, client_id)? {
            Some(previous) if previous.receipt == receipt(scores) => Ok(Accepted::Replay {
                receipt: previous.receipt,
            }),
            Some(_) => Err(RoundError::Conflict(round)),
            None => Err(RoundError::Closed(round)),
        }
    }

    /// The open round `round` for `client_id`, sampled and not closed, with its session if one
    /// runs, under the lock. A round no longer held is over for everyone (its cohort was erased
    /// with it).
    fn open_for<'a>(
        &self,
        shared: &'a mut Shared,
        round: u64,
        client_id: &str,
    ) -> std::result::Result<(&'a OpenRound, Option<&'a mut Aggregator>), RoundError> {
        match shared.open.as_ref().filter(|o| o.round == round) {
            Some(open) if !open.is_sampled(client_id) => Err(RoundError::NotSampled(round)),
            Some(open) if open.closed => Err(RoundError::Closed(round)),
            Some(open) => Ok((open, shared.secagg.as_mut().filter(|s| s.round() == round))),
            None => match self.store.latest_attempt(round)? {
                None => Err(RoundError::UnknownRound(round)),
                Some(_) => Err(RoundError::Closed(round)),
            },
        }
    }

    /// The secure-aggregation session of `round` as `client_id` sees it.
    pub fn secagg_view(
        &self,
        round: u64,
        client_id: &str,
    ) -> std::result::Result<SessionView, RoundError> {
        if self.rules.secure.is_none() {
            return Err(RoundError::NotSecure);
        }
        let mut shared = self.lock();
        match self.open_for(&mut shared, round, client_id)? {
            (_, Some(session)) => session.view(client_id).ok_or(RoundError::NotSampled(round)),
            (_, None) => Err(RoundError::NoSession(round)),
        }
    }

    /// Takes `client_id`'s message for session `session` of `round`: the step it answered,
    /// and whether it was new or a retry.
    pub fn secagg_receive(
        &self,
        round: u64,
        session: u64,
        client_id: &str,
        message: ClientMessage,
    ) -> std::result::Result<(Step, Received), RoundError> {
        if self.rules.secure.is_none() {
            return Err(RoundError::NotSecure);
        }
        let mut shared = self.lock();
        let (_, aggregator) = self.open_for(&mut shared, round, client_id)?;
        let aggregator = aggregator.ok_or(RoundError::NoSession(round))?;
        if aggregator.session() != session {
            return Err(RoundError::StaleSession(round));
        }
        let step = message.step();
        let received = aggregator
            .receive(client_id, message)
            .map_err(RoundError::Session)?;
        drop(shared);
        self.changed.notify_all();
        Ok((step, received))
    }

    /// Runs the secure-aggregation session of the open round (engine thread): each step
    /// closes when every participant answered or at its deadline (the masked-input step at
    /// the round's deadline), then the masks are removed.
    pub fn run_secure_session(&self, rules: &SecureRules) -> Result<SessionEnd> {
        let open = self
            .current_attempt()
            .ok_or_else(|| ServerError::internal("no round attempt is open"))?;
        let mut cohort: Vec<String> = open.sampled.iter().cloned().collect();
        cohort.sort();
        let aggregator = Aggregator::new(open.round, &cohort, open.rows, rules.neighbours)
            .map_err(|e| ServerError::internal(format!("secure aggregation: {e}")))?;
        let step_ms = rules.step.as_millis() as u64;
        let mut shared = self.lock();
        shared.secagg = Some(aggregator);
        self.changed.notify_all();
        let mut deadline = now_unix_ms() + step_ms;
        loop {
            if shared.stop {
                shared.secagg = None;
                return Ok(SessionEnd::Stopped);
            }
            let session = shared.secagg.as_mut().expect("set above");
            let now = now_unix_ms();
            if session.awaiting() == 0 || now >= deadline {
                let next = session.advance();
                self.changed.notify_all();
                deadline = match next {
                    Step::Done => break,
                    Step::Masked => open.deadline_unix_ms.max(now + step_ms),
                    _ => now + step_ms,
                };
                continue;
            }
            shared = self
                .changed
                .wait_timeout(shared, Duration::from_millis(deadline - now))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let unmasker = shared.secagg.as_mut().expect("set above").unmasker();
        // The masks are expanded without the lock: the handlers keep answering meanwhile.
        drop(shared);
        Ok(match unmasker.and_then(Unmasker::finish) {
            Ok(sum) => SessionEnd::Sum(sum),
            Err(error) => SessionEnd::Unrecoverable(error.to_string()),
        })
    }

    /// The open round's secure-aggregation session for the operator: its step, the participants
    /// it still waits for, and the clients who sent a masked input so far (the operator's
    /// server sees all three anyway: the protocol needs them). `None` without a session.
    pub fn secagg_progress(&self) -> Option<(Step, usize, usize)> {
        let shared = self.lock();
        let session = shared.secagg.as_ref()?;
        Some((session.step(), session.awaiting(), session.contributors()))
    }

    /// Marks the held attempt closed (its sum is kept in the store).
    fn mark_closed(&self, round: u64) {
        let mut shared = self.lock();
        if let Some(open) = shared.open.as_mut().filter(|o| o.round == round) {
            open.closed = true;
        }
    }
}

/// Submissions that close an attempt of `sampled` clients early: ⌈quorum·sampled⌉, at least 1
/// when anyone was sampled (an empty Poisson cohort closes at once).
pub fn quorum_count(sampled: usize, quorum: f64) -> usize {
    if sampled == 0 {
        return 0;
    }
    ((quorum * sampled as f64).ceil() as usize).clamp(1, sampled)
}

/// SHA-256 (hex) of the vector's canonical bytes (f64 little-endian, as received).
pub fn receipt(scores: &[f64]) -> String {
    let bytes: Vec<u8> = scores.iter().flat_map(|v| v.to_le_bytes()).collect();
    hex(&sha256(&bytes))
}

fn check_vector(scores: &[f64], expected: usize) -> std::result::Result<(), RoundError> {
    if scores.len() != expected {
        return Err(RoundError::Invalid(format!(
            "the score vector has {} values; this round has {expected} candidates, one score \
             each",
            scores.len()
        )));
    }
    if let Some(index) = scores.iter().position(|v| !v.is_finite()) {
        return Err(RoundError::Invalid(format!(
            "score {index} is not a finite number; send finite values only"
        )));
    }
    Ok(())
}

/// `scores` scaled to L2 norm ≤ `clip` (f64), by the one server-side clip
/// ([`dp_mechanics::clip_in_place`]). Any excess is scaled away, however small: a slack here
/// would let every client add more than the C the round is charged for.
pub fn reclip(scores: &[f64], clip: f64) -> Result<Vec<f64>> {
    let mut vector = scores.to_vec();
    dp_mechanics::clip_in_place(&mut vector, clip)?;
    Ok(vector)
}

/// The engine's transport to remote clients. The run loop opens the round (its cohort drawn
/// once, persisted) before the engine calls [`ScoreTransport::collect`]; collect waits for the
/// quorum or the deadline and returns the f64 sum of the vectors that arrived.
///
/// # Why a round is released with whoever answered, and never sampled again
///
/// The ledger charges each round as one subsampled Gaussian mechanism: every client is in the
/// round's cohort with probability q (Poisson) or as one of a uniformly drawn cohort, once, and
/// the release is the sum of the cohort's clipped vectors plus N(0, σ²C²). A sampled client
/// that does not answer adds the zero vector. Zero is a vector of norm ≤ C, so "absent" is just
/// one of the contributions the analysis already allows: whatever the absent clients, the
/// sum's sensitivity to any one client is still C, each client is still included with at most
/// the charged probability (absence only removes), and the release is the charged mechanism
/// run on a dataset where some clients sent zeros. The accounting stays valid whoever stays
/// silent, including an adversary who silences clients on purpose.
///
/// Drawing a new cohort when too few answered does not: the decision to redraw depends on who
/// answered, and every redraw gives each client another chance of inclusion. An adversary who
/// controls the other clients (or the network) can stay silent until a cohort holding the
/// target is drawn, so the target's inclusion probability becomes about 1 instead of q while
/// the ledger charges q: the amplification by subsampling that σ was planned with is lost (ε
/// ≈ 80 instead of 1 in the example). So a round's cohort is drawn once; at the
/// deadline the round is released and charged with what arrived, even nothing.
///
/// The one exception is the admin's stop: the open round is then abandoned (nothing released,
/// nothing charged) and no round follows, so no cohort is ever drawn again.
pub struct RemoteTransport {
    coordinator: Arc<Coordinator>,
    /// How many clients the round samples from (clients enrolled when it opened).
    population: usize,
    /// The round's sampled count, for the ledger row.
    sampled: usize,
    /// The round was abandoned because the admin stopped the run (not a failure).
    stopped: bool,
}

impl RemoteTransport {
    /// A transport for one round over a population of `population` clients.
    pub fn new(coordinator: Arc<Coordinator>, population: usize) -> RemoteTransport {
        RemoteTransport {
            coordinator,
            population,
            sampled: 0,
            stopped: false,
        }
    }

    /// Whether collection ended because the run was stopped (nothing was charged).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// How many clients the round sampled.
    pub fn sampled(&self) -> usize {
        self.sampled
    }
}

impl ScoreTransport for RemoteTransport {
    fn population(&self) -> usize {
        self.population
    }

    fn collect(&mut self, task: &RoundTask<'_>, _sampled: &[usize]) -> Result<CollectedScores> {
        if let Some(rules) = self.coordinator.rules().secure.clone() {
            return self.collect_secure(task, &rules);
        }
        let closed = self.coordinator.wait_and_close()?;
        if closed.round != task.round {
            return Err(ServerError::Http(format!(
                "the open round is {}, the engine runs {} (a bug in the server)",
                closed.round, task.round
            )));
        }
        let store = self.coordinator.store();
        let charged = store.ledger_rows()?.iter().any(|r| r.round == closed.round);
        if self.coordinator.stop_requested() && !charged {
            return self.abandon_stopped(closed.round, closed.attempt);
        }
        self.sampled = closed.sampled_count;
        let units = store.sum_submissions(
            closed.round,
            closed.attempt,
            closed.rows,
            task.mechanism.grid(),
        )?;
        Ok(CollectedScores {
            sum: GridSum::from_units(task.mechanism, units.iter().map(|&u| u as i64).collect())?,
            nonprivate: None,
        })
    }
}

impl RemoteTransport {
    /// Abandons the attempt `attempt` of round `round` because the admin stopped the run:
    /// nothing of it is charged or released, and [`Self::stopped`] says so.
    fn abandon_stopped(&mut self, round: u64, attempt: u32) -> Result<CollectedScores> {
        self.coordinator
            .retire(round, attempt, RoundStatus::Abandoned)?;
        self.stopped = true;
        Err(ServerError::Http(format!(
            "round {round} abandoned: the run was stopped"
        )))
    }

    /// [`ScoreTransport::collect`] under secure aggregation: one SecAgg+ session, whose
    /// unmasked sum is kept (and the round closed) in one transaction before it is used, so a
    /// restart charges and releases that sum and never aggregates the round again.
    ///
    /// The sum is clamped per coordinate to the population times one honest client's largest
    /// coordinate (`secure_aggregation::decode`): no honest sum changes, a malicious client's
    /// out-of-range vector is bounded, and the bound does not depend on who was sampled. A
    /// session that cannot be unmasked (too many clients left in its last step) is released as
    /// the sum of nobody: absent clients add zero, as in a plain round.
    fn collect_secure(
        &mut self,
        task: &RoundTask<'_>,
        rules: &SecureRules,
    ) -> Result<CollectedScores> {
        let open = self
            .coordinator
            .current_attempt()
            .ok_or_else(|| ServerError::internal("no round attempt is open"))?;
        if open.round != task.round {
            return Err(ServerError::internal(format!(
                "the open round is {}, the engine runs {}",
                open.round, task.round
            )));
        }
        self.sampled = open.sampled_count;
        let store = self.coordinator.store();
        if !open.closed {
            let sum = match self.coordinator.run_secure_session(rules)? {
                SessionEnd::Stopped => return self.abandon_stopped(open.round, open.attempt),
                SessionEnd::Sum(sum) => sum,
                SessionEnd::Unrecoverable(why) => {
                    eprintln!(
                        "warning: round {}: {why}; the round is released as the sum of no \
                         client (give the clients more time with serve.secagg_step_seconds, \
                         or more neighbours with serve.secagg_neighbours)",
                        open.round
                    );
                    vec![0; open.rows]
                }
            };
            let mechanism = task.mechanism;
            let bound = (self.population as i64)
                .saturating_mul(per_client_units(mechanism.sensitivity(), mechanism.grid()));
            store.keep_sum_and_close(open.round, open.attempt, &decode(&sum, bound))?;
            self.coordinator.mark_closed(open.round);
        }
        let units =
            store.sum_submissions(open.round, open.attempt, open.rows, task.mechanism.grid())?;
        Ok(CollectedScores {
            sum: GridSum::from_units(task.mechanism, units.iter().map(|&u| u as i64).collect())?,
            nonprivate: None,
        })
    }
}

// The transport's answer is the sum only: how many clients answered, how many vectors were
// re-clipped and their norms are statistics of un-noised data that a served run never computes
// (`CollectedScores::nonprivate` is `None`: there is no client data here to witness one).

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::GaussianMechanism;

    /// The release of the tests' two-candidate rounds (σ 1, C 1: grid 2^−20).
    static MECHANISM: std::sync::LazyLock<GaussianMechanism> =
        std::sync::LazyLock::new(|| GaussianMechanism::new(1.0, 1.0, 2).unwrap());
    use crate::serve::scratch_dir;
    use crate::serve::store::DATABASE_FILE;
    use privacy_accounting::{LedgerEvent, Sampling};

    fn coordinator(name: &str, rules: CollectionRules) -> Arc<Coordinator> {
        let dir = scratch_dir(&format!("coord-{name}"));
        let store = Arc::new(Store::open(&dir.join(DATABASE_FILE)).unwrap());
        Arc::new(Coordinator::new(store, rules, Arc::new(Metrics::default())).unwrap())
    }

    /// A coordinator (plain aggregation) with round `round` open for `sampled` until
    /// `deadline_ms` from now.
    fn open_round(name: &str, round: u64, sampled: &[&str], deadline_ms: u64) -> Arc<Coordinator> {
        let coordinator = coordinator(name, rules(deadline_ms));
        coordinator
            .open_attempt(&record(round, sampled, deadline_ms))
            .unwrap();
        coordinator
    }

    fn rules(deadline_ms: u64) -> CollectionRules {
        CollectionRules {
            clip: 1.0,
            quorum: 1.0,
            deadline: Duration::from_millis(deadline_ms),
            secure: None,
        }
    }

    fn record(round: u64, sampled: &[&str], deadline_ms: u64) -> RoundRecord {
        RoundRecord {
            round,
            attempt: 0,
            status: RoundStatus::Open,
            population: 3,
            sampled: sampled.iter().map(|s| s.to_string()).collect(),
            deadline_unix_ms: now_unix_ms() + deadline_ms,
            texts: vec!["x".into(), "y".into()],
            prompts: 1,
            per_prompt: 2,
            rows: 2,
            dim: 4,
            candidates: vec![9; 10],
        }
    }

    fn transport(coordinator: &Arc<Coordinator>) -> RemoteTransport {
        RemoteTransport::new(coordinator.clone(), 3)
    }

    /// Collects round `round` of the tests' two candidates through `transport`.
    fn collect(
        transport: &mut RemoteTransport,
        round: u64,
        sampled: &[usize],
    ) -> Result<CollectedScores> {
        let candidates = tch::Tensor::zeros([2, 4], (tch::Kind::Float, tch::Device::Cpu));
        let task = RoundTask {
            round,
            clip: 1.0,
            mechanism: &MECHANISM,
            candidates: &candidates,
        };
        transport.collect(&task, sampled)
    }

    #[test]
    fn quorum_closes_the_round_before_the_deadline() {
        let coordinator = open_round("quorum", 0, &["a", "b"], 600_000);
        for (client, scores) in [("a", [0.6, 0.8]), ("b", [3.0, 4.0])] {
            let accepted = coordinator.submit(0, client, &scores).unwrap();
            assert!(matches!(accepted, Accepted::New { .. }));
        }
        let collected = collect(&mut transport(&coordinator), 0, &[0, 1]).unwrap();
        // b's vector (norm 5) was re-clipped to norm 1 on the server (and counted nowhere).
        assert!((collected.sum.values_nonprivate()[0] - 1.2).abs() < 1e-5);
        assert!((collected.sum.values_nonprivate()[1] - 1.6).abs() < 1e-5);
        assert!(collected.nonprivate.is_none());
        // Closed: a late submission is refused, a replay still gets its receipt.
        assert!(matches!(
            coordinator.submit(0, "c", &[0.0, 0.0]),
            Err(RoundError::NotSampled(0))
        ));
        let late = coordinator.submit(0, "a", &[0.1, 0.1]);
        assert!(matches!(late, Err(RoundError::Conflict(0))), "{late:?}");
        assert!(matches!(
            coordinator.submit(0, "a", &[0.6, 0.8]),
            Ok(Accepted::Replay { .. })
        ));
    }

    #[test]
    fn the_deadline_closes_the_round_and_late_submissions_are_gone() {
        let coordinator = open_round("deadline", 0, &["a", "b"], 50);
        coordinator.submit(0, "a", &[0.0, 1.0]).unwrap();
        let collected = collect(&mut transport(&coordinator), 0, &[0, 1]).unwrap();
        assert_eq!(collected.sum.values_nonprivate(), vec![0.0, 1.0]);
        assert!(matches!(
            coordinator.submit(0, "b", &[0.0, 1.0]),
            Err(RoundError::Closed(0))
        ));
        assert!(matches!(
            coordinator.candidates(0, "b"),
            Err(RoundError::Closed(0))
        ));
        assert!(matches!(
            coordinator.submit(7, "b", &[0.0, 1.0]),
            Err(RoundError::UnknownRound(7))
        ));
    }

    #[test]
    fn a_mostly_silent_cohort_is_released_at_the_deadline_and_never_sampled_again() {
        let coordinator = open_round("silent", 3, &["a", "b", "c"], 50);
        coordinator.submit(3, "c", &[1.0, 0.0]).unwrap();
        let mut transport = transport(&coordinator);
        let collected = collect(&mut transport, 3, &[0, 1, 2]).unwrap();
        // Two of three silent: released with the one vector (the others add zero), the same
        // cohort, no second attempt.
        assert_eq!(collected.sum.values_nonprivate(), vec![1.0, 0.0]);
        assert!(!transport.stopped());
        assert_eq!(transport.sampled(), 3);
        let store = coordinator.store();
        let round = store.latest_attempt(3).unwrap().unwrap();
        assert_eq!((round.attempt, round.sampled.len()), (0, 3));
        let event = LedgerEvent::gaussian(1.0, Sampling::Full, 1).with_round(3);
        assert!(store
            .commit_round(&event, 0, 2, MECHANISM.grid(), 3, 1)
            .unwrap());
        coordinator.retire(3, 0, RoundStatus::Released).unwrap();
        assert_eq!(store.ledger_rows().unwrap().len(), 1);
        assert!(coordinator.current_attempt().is_none());
        // Released: over for everyone alike, and nobody's membership is on record.
        for client in ["a", "c", "z"] {
            assert!(matches!(
                coordinator.submit(3, client, &[1.0, 0.0]),
                Err(RoundError::Closed(3))
            ));
            assert!(matches!(
                coordinator.candidates(3, client),
                Err(RoundError::Closed(3))
            ));
        }
        assert!(store.latest_attempt(3).unwrap().unwrap().sampled.is_empty());

        // Nobody answers at all: still released (a sum of zeros), still one cohort.
        coordinator
            .open_attempt(&record(4, &["a", "b"], 50))
            .unwrap();
        let collected = collect(&mut transport, 4, &[0, 1]).unwrap();
        assert_eq!(collected.sum.values_nonprivate(), vec![0.0, 0.0]);
        assert_eq!(store.latest_attempt(4).unwrap().unwrap().attempt, 0);
    }

    #[test]
    fn a_stop_abandons_the_open_round_without_a_charge() {
        let coordinator = open_round("stop", 1, &["a", "b"], 600_000);
        coordinator.submit(1, "a", &[0.5, 0.5]).unwrap();
        coordinator.stop().unwrap();
        let mut transport = transport(&coordinator);
        assert!(collect(&mut transport, 1, &[0, 1]).is_err());
        assert!(transport.stopped());
        let store = coordinator.store();
        assert!(store.ledger_rows().unwrap().is_empty());
        let round = store.latest_attempt(1).unwrap().unwrap();
        assert_eq!((round.attempt, round.status), (0, RoundStatus::Abandoned));
    }

    #[test]
    fn invalid_vectors_are_refused_before_anything_is_stored() {
        let coordinator = open_round("invalid", 0, &["a"], 600_000);
        for bad in [vec![1.0], vec![f64::NAN, 0.0], vec![f64::INFINITY, 0.0]] {
            assert!(matches!(
                coordinator.submit(0, "a", &bad),
                Err(RoundError::Invalid(_))
            ));
        }
        assert_eq!(coordinator.store().submission_count(0, 0).unwrap(), 0);
        assert!(matches!(
            coordinator.next_task("a").unwrap(),
            NextTask::Task { round: 0, .. }
        ));
        assert!(matches!(
            coordinator.next_task("z").unwrap(),
            NextTask::Wait { .. }
        ));
    }

    /// Waits until the session of round 0 is at `step` for `client`, and returns its view.
    fn view_at(coordinator: &Coordinator, client: &str, step: Step) -> SessionView {
        let started = std::time::Instant::now();
        loop {
            if let Ok(view) = coordinator.secagg_view(0, client) {
                if view.step == step {
                    return view;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no step {step:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_secure_round_releases_the_sum_of_the_clients_who_finished() {
        let mut rules = rules(1000);
        rules.secure = Some(SecureRules {
            neighbours: 64,
            step: Duration::from_millis(300),
        });
        let coordinator = coordinator("secagg", rules);
        let ids = ["c0", "c1", "c2", "c3", "c4", "c5"];
        coordinator.open_attempt(&record(0, &ids, 1000)).unwrap();
        let engine = {
            let coordinator = coordinator.clone();
            std::thread::spawn(move || {
                let mut transport = RemoteTransport::new(coordinator, 6);
                collect(&mut transport, 0, &[]).map(|c| c.sum.values_nonprivate())
            })
        };
        let vectors = [
            [0.6, 0.8],
            [3.0, 4.0],
            [-0.5, 0.1],
            [0.0, 0.25],
            [0.9, 0.1],
            [0.3, 0.3],
        ];
        // c4 leaves after the keys step, c5 after the shares step.
        let leaves = |i: usize, step: Step| {
            (i == 4 && step >= Step::Shares) || (i == 5 && step >= Step::Masked)
        };
        let mut sessions: Vec<Option<secure_aggregation::ClientSession>> =
            (0..6).map(|_| None).collect();
        for step in [Step::Keys, Step::Shares, Step::Masked, Step::Unmask] {
            for (i, id) in ids.iter().enumerate() {
                if leaves(i, step) {
                    continue;
                }
                let view = view_at(&coordinator, id, step);
                let message = match step {
                    Step::Keys => {
                        let session =
                            secure_aggregation::ClientSession::new(0, view.session).unwrap();
                        let keys = session.keys();
                        sessions[i] = Some(session);
                        keys
                    }
                    Step::Shares => sessions[i]
                        .as_mut()
                        .unwrap()
                        .share_keys(view.roster.as_ref().unwrap())
                        .unwrap(),
                    Step::Masked => {
                        // Plain submissions are refused in a secure round.
                        assert!(matches!(
                            coordinator.submit(0, id, &vectors[i]),
                            Err(RoundError::Invalid(_))
                        ));
                        let encoded = secure_aggregation::encode(&vectors[i], 1.0).unwrap();
                        sessions[i]
                            .as_mut()
                            .unwrap()
                            .mask(view.inbox.as_ref().unwrap(), &encoded)
                            .unwrap()
                    }
                    Step::Unmask => sessions[i]
                        .as_mut()
                        .unwrap()
                        .unmask(view.survivors.as_ref().unwrap())
                        .unwrap(),
                    Step::Done => unreachable!(),
                };
                let answered = coordinator.secagg_receive(0, view.session, id, message);
                assert!(
                    matches!(answered, Ok((s, Received::New)) if s == step),
                    "{answered:?}"
                );
                assert!(matches!(
                    coordinator.secagg_receive(
                        0,
                        view.session + 1,
                        id,
                        sessions[i].as_ref().unwrap().keys()
                    ),
                    Err(RoundError::StaleSession(0))
                ));
            }
        }
        let sum = engine.join().unwrap().unwrap();
        // The operator's view: the session is done, with the four masked inputs.
        assert_eq!(coordinator.secagg_progress(), Some((Step::Done, 0, 4)));
        // c1's vector (norm 5) is clipped to norm 1 by its client: (0.6, 0.8).
        let expected = [0.6 + 0.6 - 0.5 + 0.0, 0.8 + 0.8 + 0.1 + 0.25];
        for (got, want) in sum.iter().zip(expected) {
            assert!((got - want).abs() < 4.0 * MECHANISM.grid(), "{sum:?}");
        }
        // Nothing in the clear was stored, the sum is kept and the round closed.
        let store = coordinator.store();
        assert_eq!(store.submission_count(0, 0).unwrap(), 0);
        assert_eq!(
            store.latest_attempt(0).unwrap().unwrap().status,
            RoundStatus::Closed
        );
        assert!(matches!(
            coordinator.secagg_view(0, "c0"),
            Err(RoundError::Closed(0))
        ));
    }

    #[test]
    fn reclip_scales_only_long_vectors() {
        let v = reclip(&[3.0, 4.0], 1.0).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-15 && (v[1] - 0.8).abs() < 1e-15);
        assert!(v.iter().map(|x| x * x).sum::<f64>() <= 1.0);
        assert_eq!(reclip(&[0.6, 0.8], 1.0).unwrap(), vec![0.6, 0.8]);
        assert_eq!(quorum_count(0, 1.0), 0);
        assert_eq!(quorum_count(10, 0.5), 5);
        assert_eq!(quorum_count(3, 0.01), 1);
    }

    #[test]
    fn a_restarted_coordinator_takes_up_the_open_attempt() {
        let path = scratch_dir("coord-restart").join(DATABASE_FILE);
        {
            let store = Arc::new(Store::open(&path).unwrap());
            let first =
                Coordinator::new(store, rules(600_000), Arc::new(Metrics::default())).unwrap();
            first.open_attempt(&record(2, &["a", "b"], 10)).unwrap();
            first.submit(2, "a", &[0.5, 0.5]).unwrap();
        }
        let store = Arc::new(Store::open(&path).unwrap());
        let second = Coordinator::new(store, rules(600_000), Arc::new(Metrics::default())).unwrap();
        let open = second.current_attempt().unwrap();
        assert_eq!((open.round, open.submitted, open.closed), (2, 1, false));
        // The deadline was moved past the restart.
        assert!(open.deadline_unix_ms > now_unix_ms() + 1000);
        assert!(matches!(
            second.submit(2, "a", &[0.5, 0.5]),
            Ok(Accepted::Replay { .. })
        ));
        assert!(matches!(
            second.submit(2, "b", &[0.5, 0.5]),
            Ok(Accepted::New { .. })
        ));
    }
}

//! The server's durable state in SQLite (`server.sqlite` in the run directory): the admin token's
//! hash, enrolment tokens, clients, round attempts, submissions and the privacy ledger.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a transaction that returned is on
//! disk, so a `kill -9` right after it loses nothing. Every multi-row change (enrolment, a
//! submission, closing, releasing) is one transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use privacy_accounting::{Ledger, LedgerEvent};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::{Result, ServerError};

/// The database file in a run directory.
pub const DATABASE_FILE: &str = "server.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enrolment_tokens (
    id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS clients (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    secret_hash BLOB NOT NULL, enrolled_unix_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
    population INTEGER NOT NULL, sampled TEXT NOT NULL, deadline_unix_ms INTEGER NOT NULL,
    texts TEXT NOT NULL, prompts INTEGER NOT NULL, per_prompt INTEGER NOT NULL,
    rows INTEGER NOT NULL, dim INTEGER NOT NULL, candidates BLOB NOT NULL,
    opened_unix_ms INTEGER NOT NULL, PRIMARY KEY (round, attempt));
CREATE TABLE IF NOT EXISTS submissions (
    round INTEGER NOT NULL, attempt INTEGER NOT NULL, client_id TEXT NOT NULL,
    receipt TEXT NOT NULL, vector BLOB, reclipped INTEGER NOT NULL, pre_clip_norm REAL NOT NULL,
    PRIMARY KEY (round, attempt, client_id));
CREATE TABLE IF NOT EXISTS ledger (
    round INTEGER PRIMARY KEY, event TEXT NOT NULL, clients_sampled INTEGER NOT NULL,
    clients_submitted INTEGER NOT NULL, committed_unix_ms INTEGER NOT NULL);
";

/// Where a round attempt is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundStatus {
    /// Sampled clients may fetch the task and submit.
    Open,
    /// Submissions are refused; the sum may be (or has been) charged and used.
    Closed,
    /// Noise, DPO and the checkpoint are done; the client vectors are deleted.
    Released,
    /// Too few submissions at the deadline: nothing used, nothing charged, vectors deleted.
    Abandoned,
}

impl RoundStatus {
    fn as_str(self) -> &'static str {
        match self {
            RoundStatus::Open => "open",
            RoundStatus::Closed => "closed",
            RoundStatus::Released => "released",
            RoundStatus::Abandoned => "abandoned",
        }
    }

    fn parse(text: &str) -> Option<RoundStatus> {
        Some(match text {
            "open" => RoundStatus::Open,
            "closed" => RoundStatus::Closed,
            "released" => RoundStatus::Released,
            "abandoned" => RoundStatus::Abandoned,
            _ => return None,
        })
    }
}

/// One attempt at a round, as persisted when it opened.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRecord {
    pub round: u64,
    pub attempt: u32,
    pub status: RoundStatus,
    /// Clients enrolled when the round opened (the sampling population).
    pub population: usize,
    /// Ids of the sampled clients.
    pub sampled: Vec<String>,
    pub deadline_unix_ms: u64,
    /// The candidate texts (prompt-major), kept so that DPO after a restart trains on exactly
    /// the texts the clients scored.
    pub texts: Vec<String>,
    pub prompts: usize,
    pub per_prompt: usize,
    /// Rows (J·K) and width of the embedding matrix.
    pub rows: usize,
    pub dim: usize,
    /// The encoded candidate matrix (wire format) every sampled client downloads.
    pub candidates: Vec<u8>,
}

/// A stored submission's receipt and whether its vector was scaled down to the clip bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub receipt: String,
    pub reclipped: bool,
    pub pre_clip_norm: f64,
}

/// The sum of a round attempt's stored vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSum {
    pub sum: Vec<f64>,
    pub clients: usize,
    pub reclipped: usize,
    pub mean_pre_clip_norm: f64,
}

/// One committed ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    pub round: u64,
    pub event: LedgerEvent,
    pub clients_sampled: usize,
    pub clients_submitted: usize,
    pub committed_unix_ms: u64,
}

/// The SQLite store. One connection behind a mutex: every operation is short, and a single
/// writer is what SQLite wants anyway.
pub struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (creating when absent) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let connection = Connection::open(path).map_err(|e| sql_error(path, e))?;
        let store = Store {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        };
        store.with(|c| {
            // WAL: readers do not block the writer; FULL: a commit is on disk when it returns.
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            c.execute_batch(SCHEMA)
        })?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still usable.
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut connection).map_err(|e| sql_error(&self.path, e))
    }

    /// A value of the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    /// Sets a value of the `meta` table.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(drop)
        })
    }

    /// Stores fresh enrolment tokens (`(id, SHA-256 of the secret)` each).
    pub fn add_enrolment_tokens(&self, tokens: &[(String, [u8; 32])]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO enrolment_tokens (id, secret_hash, used) VALUES (?1, ?2, 0)",
                )?;
                for (id, hash) in tokens {
                    insert.execute(params![id, &hash[..]])?;
                }
            }
            tx.commit()
        })
    }

    /// The secret hash of unused enrolment token `id`.
    pub fn unused_enrolment_token(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.query_row(
                "SELECT secret_hash FROM enrolment_tokens WHERE id = ?1 AND used = 0",
                [id],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Marks enrolment token `token_id` used and enrols client `client_id` with the hash of its
    /// bearer secret, in one transaction; false when the token was used meanwhile.
    pub fn enrol(
        &self,
        token_id: &str,
        client_id: &str,
        secret_hash: &[u8; 32],
        now_unix_ms: u64,
    ) -> Result<bool> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let used = tx.execute(
                "UPDATE enrolment_tokens SET used = 1 WHERE id = ?1 AND used = 0",
                [token_id],
            )?;
            if used != 1 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO clients (id, secret_hash, enrolled_unix_ms) VALUES (?1, ?2, ?3)",
                params![client_id, &secret_hash[..], now_unix_ms as i64],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// The secret hash of enrolled client `id`.
    pub fn client_secret_hash(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.query_row("SELECT secret_hash FROM clients WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    /// The number of enrolled clients.
    pub fn enrolled(&self) -> Result<usize> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM clients", [], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
        })
    }

    /// The first `limit` enrolled clients' ids, in enrolment order (the sampling population).
    pub fn clients_in_order(&self, limit: usize) -> Result<Vec<String>> {
        self.with(|c| {
            let mut query = c.prepare("SELECT id FROM clients ORDER BY seq LIMIT ?1")?;
            let ids = query
                .query_map([limit as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
    }

    /// Persists a new round attempt (status open).
    pub fn insert_round(&self, record: &RoundRecord, now_unix_ms: u64) -> Result<()> {
        let sampled = json(&record.sampled);
        let texts = json(&record.texts);
        self.with(|c| {
            c.execute(
                "INSERT INTO rounds (round, attempt, status, population, sampled, \
                 deadline_unix_ms, texts, prompts, per_prompt, rows, dim, candidates, \
                 opened_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    record.round as i64,
                    record.attempt,
                    record.status.as_str(),
                    record.population as i64,
                    sampled,
                    record.deadline_unix_ms as i64,
                    texts,
                    record.prompts as i64,
                    record.per_prompt as i64,
                    record.rows as i64,
                    record.dim as i64,
                    record.candidates,
                    now_unix_ms as i64,
                ],
            )
            .map(drop)
        })
    }

    /// The latest attempt of `round`.
    pub fn latest_attempt(&self, round: u64) -> Result<Option<RoundRecord>> {
        self.round_query(
            "SELECT * FROM rounds WHERE round = ?1 ORDER BY attempt DESC LIMIT 1",
            round,
        )
    }

    /// The latest attempt of the latest round.
    pub fn latest_round(&self) -> Result<Option<RoundRecord>> {
        self.round_query(
            "SELECT * FROM rounds WHERE ?1 >= 0 ORDER BY round DESC, attempt DESC LIMIT 1",
            0,
        )
    }

    fn round_query(&self, sql: &str, round: u64) -> Result<Option<RoundRecord>> {
        let raw = self.with(|c| {
            c.query_row(sql, [round as i64], |r| {
                Ok(RawRound {
                    round: r.get("round")?,
                    attempt: r.get("attempt")?,
                    status: r.get("status")?,
                    population: r.get("population")?,
                    sampled: r.get("sampled")?,
                    deadline_unix_ms: r.get("deadline_unix_ms")?,
                    texts: r.get("texts")?,
                    prompts: r.get("prompts")?,
                    per_prompt: r.get("per_prompt")?,
                    rows: r.get("rows")?,
                    dim: r.get("dim")?,
                    candidates: r.get("candidates")?,
                })
            })
            .optional()
        })?;
        raw.map(|raw| raw.into_record(&self.path)).transpose()
    }

    /// Sets the status of a round attempt.
    pub fn set_status(&self, round: u64, attempt: u32, status: RoundStatus) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE rounds SET status = ?3 WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt, status.as_str()],
            )
            .map(drop)
        })
    }

    /// Moves the deadline of a round attempt (a restarted server gives the clients time again).
    pub fn set_deadline(&self, round: u64, attempt: u32, deadline_unix_ms: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE rounds SET deadline_unix_ms = ?3 WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt, deadline_unix_ms as i64],
            )
            .map(drop)
        })
    }

    /// Sets the status of a round attempt to released or abandoned and deletes its client
    /// vectors (the receipts stay), in one transaction: no individual vector outlives its round.
    pub fn retire_round(&self, round: u64, attempt: u32, status: RoundStatus) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE rounds SET status = ?3 WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt, status.as_str()],
            )?;
            tx.execute(
                "UPDATE submissions SET vector = NULL WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt],
            )?;
            tx.commit()
        })
    }

    /// The submission of `client_id` to a round attempt.
    pub fn submission(
        &self,
        round: u64,
        attempt: u32,
        client_id: &str,
    ) -> Result<Option<Submission>> {
        self.with(|c| {
            c.query_row(
                "SELECT receipt, reclipped, pre_clip_norm FROM submissions \
                 WHERE round = ?1 AND attempt = ?2 AND client_id = ?3",
                params![round as i64, attempt, client_id],
                |r| {
                    Ok(Submission {
                        receipt: r.get(0)?,
                        reclipped: r.get::<_, i64>(1)? != 0,
                        pre_clip_norm: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Stores a (re-clipped) submission in its own transaction.
    pub fn insert_submission(
        &self,
        round: u64,
        attempt: u32,
        client_id: &str,
        submission: &Submission,
        vector: &[f64],
    ) -> Result<()> {
        let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.with(|c| {
            c.execute(
                "INSERT INTO submissions (round, attempt, client_id, receipt, vector, reclipped, \
                 pre_clip_norm) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    round as i64,
                    attempt,
                    client_id,
                    submission.receipt,
                    bytes,
                    submission.reclipped as i64,
                    submission.pre_clip_norm,
                ],
            )
            .map(drop)
        })
    }

    /// The number of submissions to a round attempt.
    pub fn submission_count(&self, round: u64, attempt: u32) -> Result<usize> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM submissions WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
        })
    }

    /// The f64 sum of the stored vectors of a round attempt (each of length `len`).
    pub fn sum_submissions(&self, round: u64, attempt: u32, len: usize) -> Result<StoredSum> {
        let rows = self.with(|c| {
            let mut query = c.prepare(
                "SELECT vector, reclipped, pre_clip_norm FROM submissions \
                 WHERE round = ?1 AND attempt = ?2 ORDER BY client_id",
            )?;
            let rows = query
                .query_map(params![round as i64, attempt], |r| {
                    Ok((
                        r.get::<_, Option<Vec<u8>>>(0)?,
                        r.get::<_, i64>(1)? != 0,
                        r.get::<_, f64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        let mut sum = vec![0.0f64; len];
        let (mut reclipped, mut norms) = (0, 0.0);
        for (vector, was_reclipped, norm) in &rows {
            let vector = vector.as_ref().ok_or_else(|| ServerError::Store {
                path: self.path.clone(),
                message: format!(
                    "round {round} attempt {attempt}: a submission's vector was already deleted \
                     (the round was released or abandoned)"
                ),
            })?;
            if vector.len() != len * 8 {
                return Err(ServerError::Store {
                    path: self.path.clone(),
                    message: format!(
                        "round {round}: a stored vector has {} bytes, expected {}",
                        vector.len(),
                        len * 8
                    ),
                });
            }
            for (total, chunk) in sum.iter_mut().zip(vector.chunks_exact(8)) {
                let bytes: [u8; 8] = chunk.try_into().expect("chunks_exact(8)");
                *total += f64::from_le_bytes(bytes);
            }
            reclipped += usize::from(*was_reclipped);
            norms += norm;
        }
        Ok(StoredSum {
            sum,
            clients: rows.len(),
            reclipped,
            mean_pre_clip_norm: if rows.is_empty() {
                0.0
            } else {
                norms / rows.len() as f64
            },
        })
    }

    /// Commits the ledger event of `round` (one transaction); false when the round was charged
    /// already (the primary key makes a second charge of a round impossible).
    pub fn commit_ledger(
        &self,
        event: &LedgerEvent,
        clients_sampled: usize,
        clients_submitted: usize,
        now_unix_ms: u64,
    ) -> Result<bool> {
        let round = event.round.ok_or_else(|| ServerError::Store {
            path: self.path.clone(),
            message: "a ledger event without a round number (a bug in the server)".into(),
        })?;
        let text = serde_json::to_string(event).map_err(|e| ServerError::Store {
            path: self.path.clone(),
            message: format!("the ledger event cannot be serialised: {e}"),
        })?;
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO ledger (round, event, clients_sampled, clients_submitted, \
                 committed_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    round as i64,
                    text,
                    clients_sampled as i64,
                    clients_submitted as i64,
                    now_unix_ms as i64
                ],
            )
            .map(|inserted| inserted == 1)
        })
    }

    /// Every committed ledger row, by round.
    pub fn ledger_rows(&self) -> Result<Vec<LedgerRow>> {
        let raw = self.with(|c| {
            let mut query = c.prepare(
                "SELECT round, event, clients_sampled, clients_submitted, committed_unix_ms \
                 FROM ledger ORDER BY round",
            )?;
            let rows = query
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        raw.into_iter()
            .map(|(round, event, sampled, submitted, committed)| {
                let event = serde_json::from_str(&event).map_err(|e| ServerError::Store {
                    path: self.path.clone(),
                    message: format!("the ledger event of round {round} is corrupt: {e}"),
                })?;
                Ok(LedgerRow {
                    round: round as u64,
                    event,
                    clients_sampled: sampled as usize,
                    clients_submitted: submitted as usize,
                    committed_unix_ms: committed as u64,
                })
            })
            .collect()
    }

    /// The ledger of every committed round, at `delta`.
    pub fn ledger(&self, delta: f64) -> Result<Ledger> {
        let mut ledger = Ledger::new();
        ledger.delta = Some(delta);
        for row in self.ledger_rows()? {
            ledger.push(row.event)?;
        }
        Ok(ledger)
    }
}

/// A `rounds` row before its JSON columns are parsed.
struct RawRound {
    round: i64,
    attempt: u32,
    status: String,
    population: i64,
    sampled: String,
    deadline_unix_ms: i64,
    texts: String,
    prompts: i64,
    per_prompt: i64,
    rows: i64,
    dim: i64,
    candidates: Vec<u8>,
}

impl RawRound {
    fn into_record(self, path: &Path) -> Result<RoundRecord> {
        let corrupt = |what: &str| ServerError::Store {
            path: path.to_path_buf(),
            message: format!("round {} has a corrupt {what} column", self.round),
        };
        Ok(RoundRecord {
            round: self.round as u64,
            attempt: self.attempt,
            status: RoundStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?,
            population: self.population as usize,
            sampled: serde_json::from_str(&self.sampled).map_err(|_| corrupt("sampled"))?,
            deadline_unix_ms: self.deadline_unix_ms as u64,
            texts: serde_json::from_str(&self.texts).map_err(|_| corrupt("texts"))?,
            prompts: self.prompts as usize,
            per_prompt: self.per_prompt as usize,
            rows: self.rows as usize,
            dim: self.dim as usize,
            candidates: self.candidates,
        })
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("lists of strings serialise")
}

fn sql_error(path: &Path, error: rusqlite::Error) -> ServerError {
    ServerError::Store {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privacy_accounting::Sampling;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fedsyn-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(DATABASE_FILE)
    }

    fn record(round: u64, attempt: u32) -> RoundRecord {
        RoundRecord {
            round,
            attempt,
            status: RoundStatus::Open,
            population: 3,
            sampled: vec!["a".into(), "b".into()],
            deadline_unix_ms: 1234,
            texts: vec!["one".into(), "two".into()],
            prompts: 1,
            per_prompt: 2,
            rows: 2,
            dim: 3,
            candidates: vec![1, 2, 3],
        }
    }

    #[test]
    fn rounds_submissions_and_ledger_survive_reopening() {
        let path = scratch("reopen");
        {
            let store = Store::open(&path).unwrap();
            store.insert_round(&record(0, 0), 1).unwrap();
            let submission = Submission {
                receipt: "r1".into(),
                reclipped: true,
                pre_clip_norm: 2.0,
            };
            store
                .insert_submission(0, 0, "a", &submission, &[1.0, -0.5])
                .unwrap();
            let event = LedgerEvent::gaussian(1.0, Sampling::Full, 1).with_round(0);
            assert!(store.commit_ledger(&event, 2, 1, 5).unwrap());
            // A second charge of the same round is refused by the primary key.
            assert!(!store.commit_ledger(&event, 2, 1, 6).unwrap());
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.latest_round().unwrap(), Some(record(0, 0)));
        assert_eq!(store.submission(0, 0, "a").unwrap().unwrap().receipt, "r1");
        assert!(store.submission(0, 0, "b").unwrap().is_none());
        let sum = store.sum_submissions(0, 0, 2).unwrap();
        assert_eq!(sum.sum, vec![1.0, -0.5]);
        assert_eq!((sum.clients, sum.reclipped), (1, 1));
        let rows = store.ledger_rows().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].committed_unix_ms, 5);
        assert_eq!(store.ledger(1e-5).unwrap().events.len(), 1);
    }

    #[test]
    fn a_second_submission_of_a_client_is_refused() {
        let store = Store::open(&scratch("duplicate")).unwrap();
        store.insert_round(&record(0, 0), 1).unwrap();
        let submission = Submission {
            receipt: "r".into(),
            reclipped: false,
            pre_clip_norm: 1.0,
        };
        store
            .insert_submission(0, 0, "a", &submission, &[0.0, 0.0])
            .unwrap();
        assert!(store
            .insert_submission(0, 0, "a", &submission, &[0.0, 0.0])
            .is_err());
        assert_eq!(store.submission_count(0, 0).unwrap(), 1);
    }

    #[test]
    fn retiring_a_round_deletes_its_vectors_but_keeps_receipts() {
        let store = Store::open(&scratch("retire")).unwrap();
        store.insert_round(&record(4, 1), 1).unwrap();
        let submission = Submission {
            receipt: "r".into(),
            reclipped: false,
            pre_clip_norm: 1.0,
        };
        store
            .insert_submission(4, 1, "b", &submission, &[1.0, 1.0])
            .unwrap();
        store.retire_round(4, 1, RoundStatus::Released).unwrap();
        let latest = store.latest_attempt(4).unwrap().unwrap();
        assert_eq!(latest.status, RoundStatus::Released);
        assert!(store.sum_submissions(4, 1, 2).is_err());
        assert!(store.submission(4, 1, "b").unwrap().is_some());
    }

    #[test]
    fn an_enrolment_token_enrols_once() {
        let store = Store::open(&scratch("enrol")).unwrap();
        store
            .add_enrolment_tokens(&[("t1".into(), [7u8; 32])])
            .unwrap();
        assert_eq!(
            store.unused_enrolment_token("t1").unwrap(),
            Some(vec![7u8; 32])
        );
        assert!(store.enrol("t1", "c1", &[1u8; 32], 10).unwrap());
        assert!(!store.enrol("t1", "c2", &[2u8; 32], 11).unwrap());
        assert!(store.unused_enrolment_token("t1").unwrap().is_none());
        assert_eq!(store.enrolled().unwrap(), 1);
        assert_eq!(store.clients_in_order(10).unwrap(), vec!["c1".to_string()]);
        assert_eq!(store.client_secret_hash("c1").unwrap(), Some(vec![1u8; 32]));
    }
}

//! The server's durable state in SQLite (`server.sqlite` in the run directory): the admin token's
//! hash, enrolment tokens, clients, round attempts, submissions and the privacy ledger.
//!
//! The database runs in WAL mode with `synchronous = FULL`: a transaction that returned is on
//! disk, so a `kill -9` right after it loses nothing. Every multi-row change (enrolment, a
//! submission, closing, charging, releasing) is one transaction.
//!
//! The files (`server.sqlite`, `-wal`, `-shm`) are owner-only (0600): they hold the clients'
//! token hashes and, while a round is open, their score vectors. A vector lives only until its
//! round is charged: the transaction that commits the ledger row keeps the sum and erases the
//! vectors, with `secure_delete` (freed content overwritten with zeros) and a truncating WAL
//! checkpoint afterwards, so no copy of a client's vector stays in either file. The sum is
//! erased the same way when the round is released. Receipts (SHA-256) stay.

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
CREATE TABLE IF NOT EXISTS round_sums (round INTEGER PRIMARY KEY, sum BLOB NOT NULL);
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
    /// The run was stopped while the round was open: nothing released, nothing charged,
    /// vectors deleted, and no round ever follows (a stopped run only writes its outputs). No
    /// round is abandoned for any other reason: see `coordinator::RemoteTransport`.
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

/// A stored submission's receipt. Nothing else about the vector is kept: whether it was
/// re-clipped or how long it was would be statistics of un-noised data outliving the round
/// (the `reclipped` and `pre_clip_norm` columns of older databases are written as 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub receipt: String,
}

/// One committed ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    pub round: u64,
    pub event: LedgerEvent,
    pub clients_sampled: usize,
    pub committed_unix_ms: u64,
}

/// The SQLite store. One connection behind a mutex: every operation is short, and a single
/// writer is what SQLite wants anyway.
pub struct Store {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (creating when absent) the database at `path`, owner-only.
    pub fn open(path: &Path) -> Result<Store> {
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the mode of
        // the database file, and nothing is ever written to a file others can read.
        owner_only(path, true).map_err(|e| ServerError::io(path, e))?;
        let connection = Connection::open(path).map_err(|e| sql_error(path, e))?;
        let store = Store {
            path: path.to_path_buf(),
            connection: Mutex::new(connection),
        };
        store.with(|c| {
            // WAL: readers do not block the writer; FULL: a commit is on disk when it returns.
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            // Deleted content (client vectors, round sums) is overwritten with zeros.
            c.pragma_update(None, "secure_delete", "ON")?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            c.execute_batch(SCHEMA)
        })?;
        // Files of an older fedsyn (or made under a lax umask) are narrowed too.
        for file in store.files() {
            owner_only(&file, false).map_err(|e| ServerError::io(&file, e))?;
        }
        Ok(store)
    }

    /// The database file and its WAL and shared-memory files.
    pub fn files(&self) -> [PathBuf; 3] {
        let with_suffix = |suffix: &str| {
            let mut name = self.path.as_os_str().to_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        [self.path.clone(), with_suffix("-wal"), with_suffix("-shm")]
    }

    /// Copies every WAL frame into the database and truncates the WAL to zero bytes, so that
    /// pages holding erased data (already zeroed by `secure_delete` in their latest version)
    /// leave no older copy in the WAL file.
    fn truncate_wal(&self) -> Result<()> {
        self.with(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
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

    /// Keeps the unmasked sum of a securely aggregated round (grid units) and closes the
    /// round, in one transaction: from then on the round is charged and released with this
    /// sum, never aggregated a second time (two sums over different survivors would give the
    /// server their difference).
    pub fn keep_sum_and_close(&self, round: u64, attempt: u32, units: &[i64]) -> Result<()> {
        let bytes: Vec<u8> = units
            .iter()
            .flat_map(|&u| (u as f64).to_le_bytes())
            .collect();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO round_sums (round, sum) VALUES (?1, ?2)",
                params![round as i64, bytes],
            )?;
            tx.execute(
                "UPDATE rounds SET status = ?3 WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt, RoundStatus::Closed.as_str()],
            )?;
            tx.commit()
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

    /// Sets the status of a round attempt to released or abandoned and erases what is left of
    /// its client data, in one transaction: vectors not yet erased at the charge, the kept sum,
    /// and who was in the cohort (the sampled ids, and the client id of each receipt). The
    /// amplification by subsampling the ledger charges needs the cohorts to stay secret, so no
    /// record of who was sampled or who answered outlives the round; the receipts (SHA-256)
    /// stay, as the round's set of contributions.
    pub fn retire_round(&self, round: u64, attempt: u32, status: RoundStatus) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE rounds SET status = ?3, sampled = '[]' WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt, status.as_str()],
            )?;
            tx.execute(
                "UPDATE submissions SET vector = NULL, client_id = 'erased-' || rowid \
                 WHERE round = ?1 AND attempt = ?2",
                params![round as i64, attempt],
            )?;
            tx.execute("DELETE FROM round_sums WHERE round = ?1", [round as i64])?;
            tx.commit()
        })?;
        self.truncate_wal()
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
                "SELECT receipt FROM submissions \
                 WHERE round = ?1 AND attempt = ?2 AND client_id = ?3",
                params![round as i64, attempt, client_id],
                |r| Ok(Submission { receipt: r.get(0)? }),
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
                 pre_clip_norm) VALUES (?1, ?2, ?3, ?4, ?5, 0, 0)",
                params![round as i64, attempt, client_id, submission.receipt, bytes],
            )
            .map(drop)
        })
    }

    /// The receipts of a round attempt (sorted; after the release, unlinked from the clients).
    pub fn receipts(&self, round: u64, attempt: u32) -> Result<Vec<String>> {
        self.with(|c| {
            let mut query = c.prepare(
                "SELECT receipt FROM submissions WHERE round = ?1 AND attempt = ?2 \
                 ORDER BY receipt",
            )?;
            let receipts = query
                .query_map(params![round as i64, attempt], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(receipts)
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

    /// The sum of the stored vectors of a round attempt (each of length `len`), each rounded to
    /// multiples of `grid` first, in grid units (exact integers held in f64), or the kept sum
    /// once the round is charged (its vectors are erased then).
    pub fn sum_submissions(
        &self,
        round: u64,
        attempt: u32,
        len: usize,
        grid: f64,
    ) -> Result<Vec<f64>> {
        let path = self.path.clone();
        self.with(|c| stored_sum(c, round, attempt, len, grid))?
            .map_err(|message| ServerError::Store { path, message })
    }

    /// Charges round `event.round` (attempt `attempt`, vectors of length `len`) in one
    /// transaction: the ledger row, the sum of the stored vectors kept for a restart before the
    /// release, and the vectors erased; then the WAL is truncated. False when the round was
    /// charged already (the primary key makes a second charge impossible; nothing changes).
    #[allow(clippy::too_many_arguments)]
    pub fn commit_round(
        &self,
        event: &LedgerEvent,
        attempt: u32,
        len: usize,
        grid: f64,
        clients_sampled: usize,
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
        let path = self.path.clone();
        let committed = self
            .with(|c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // `clients_submitted` (a column of older databases) is not recorded: the exact
                // number of clients who answered is a statistic of the un-noised data.
                let inserted = tx.execute(
                "INSERT OR IGNORE INTO ledger (round, event, clients_sampled, clients_submitted, \
                 committed_unix_ms) VALUES (?1, ?2, ?3, 0, ?4)",
                params![round as i64, text, clients_sampled as i64, now_unix_ms as i64],
            )? == 1;
                if !inserted {
                    return Ok(Ok(false));
                }
                let sum = match stored_sum(&tx, round, attempt, len, grid)? {
                    Ok(sum) => sum,
                    Err(message) => return Ok(Err(message)),
                };
                let bytes: Vec<u8> = sum.iter().flat_map(|v| v.to_le_bytes()).collect();
                tx.execute(
                    "INSERT OR REPLACE INTO round_sums (round, sum) VALUES (?1, ?2)",
                    params![round as i64, bytes],
                )?;
                tx.execute(
                    "UPDATE submissions SET vector = NULL WHERE round = ?1 AND attempt = ?2",
                    params![round as i64, attempt],
                )?;
                tx.commit()?;
                Ok(Ok(true))
            })?
            .map_err(|message| ServerError::Store { path, message })?;
        if committed {
            self.truncate_wal()?;
        }
        Ok(committed)
    }

    /// Every committed ledger row, by round.
    pub fn ledger_rows(&self) -> Result<Vec<LedgerRow>> {
        let raw = self.with(|c| {
            let mut query = c.prepare(
                "SELECT round, event, clients_sampled, committed_unix_ms \
                 FROM ledger ORDER BY round",
            )?;
            let rows = query
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })?;
        raw.into_iter()
            .map(|(round, event, sampled, committed)| {
                let event = serde_json::from_str(&event).map_err(|e| ServerError::Store {
                    path: self.path.clone(),
                    message: format!("the ledger event of round {round} is corrupt: {e}"),
                })?;
                Ok(LedgerRow {
                    round: round as u64,
                    event,
                    clients_sampled: sampled as usize,
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

/// The sum of round `round`: the kept one once charged, else that of the stored vectors of
/// `attempt`; `Err(message)` when the data is inconsistent.
fn stored_sum(
    c: &Connection,
    round: u64,
    attempt: u32,
    len: usize,
    grid: f64,
) -> rusqlite::Result<std::result::Result<Vec<f64>, String>> {
    let kept: Option<Vec<u8>> = c
        .query_row(
            "SELECT sum FROM round_sums WHERE round = ?1",
            [round as i64],
            |r| r.get(0),
        )
        .optional()?;
    // The kept sum is already in grid units; client vectors are rounded to the grid one by one
    // (the release's sensitivity is that of one rounded vector, see dp_mechanics::release).
    let scale = if kept.is_some() { None } else { Some(grid) };
    let vectors = match kept {
        Some(bytes) => vec![Some(bytes)],
        None => {
            let mut query = c.prepare(
                "SELECT vector FROM submissions WHERE round = ?1 AND attempt = ?2 \
                 ORDER BY client_id",
            )?;
            let rows = query
                .query_map(params![round as i64, attempt], |r| {
                    r.get::<_, Option<Vec<u8>>>(0)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        }
    };
    let mut sum = vec![0.0f64; len];
    for vector in &vectors {
        let Some(vector) = vector else {
            return Ok(Err(format!(
                "round {round} attempt {attempt}: a submission's vector was already erased \
                 (the round was released or abandoned)"
            )));
        };
        if vector.len() != len * 8 {
            return Ok(Err(format!(
                "round {round}: a stored vector has {} bytes, expected {}",
                vector.len(),
                len * 8
            )));
        }
        for (total, chunk) in sum.iter_mut().zip(vector.chunks_exact(8)) {
            let bytes: [u8; 8] = chunk.try_into().expect("chunks_exact(8)");
            let value = f64::from_le_bytes(bytes);
            *total += match scale {
                Some(grid) => (value / grid).round(),
                None => value,
            };
        }
    }
    Ok(Ok(sum))
}

/// Makes `path` readable and writable by its owner only (Unix), creating it empty when
/// `create` and it is absent; a file that is absent and not to be created is left alone.
fn owner_only(path: &Path, create: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if create {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)?;
        }
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(()),
            other => other,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, create);
        Ok(())
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

    /// A release grid (2^−20, that of a clip bound in [1, 2)).
    const GRID: f64 = 1.0 / (1u64 << 20) as f64;
    use privacy_accounting::Sampling;

    fn scratch(name: &str) -> PathBuf {
        crate::serve::scratch_dir(&format!("store-{name}")).join(DATABASE_FILE)
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

    fn submission(receipt: &str) -> Submission {
        Submission {
            receipt: receipt.into(),
        }
    }

    #[test]
    fn rounds_submissions_and_ledger_survive_reopening() {
        let path = scratch("reopen");
        let event = LedgerEvent::gaussian(1.0, Sampling::Full, 1).with_round(0);
        {
            let store = Store::open(&path).unwrap();
            store.insert_round(&record(0, 0), 1).unwrap();
            store
                .insert_submission(0, 0, "a", &submission("r1"), &[1.0, -0.5])
                .unwrap();
            store
                .insert_submission(0, 0, "b", &submission("r2"), &[0.5, 0.25])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.latest_round().unwrap(), Some(record(0, 0)));
        assert_eq!(store.submission(0, 0, "a").unwrap().unwrap().receipt, "r1");
        assert!(store.submission(0, 0, "c").unwrap().is_none());
        assert_eq!(
            store.sum_submissions(0, 0, 2, 0.25).unwrap(),
            vec![6.0, -1.0]
        );
        assert!(store.commit_round(&event, 0, 2, 0.25, 2, 5).unwrap());
        // A second charge of the same round is refused by the primary key.
        assert!(!store.commit_round(&event, 0, 2, 0.25, 2, 6).unwrap());
        // Charged: the vectors are gone, the sum is kept for a restart before the release.
        assert_eq!(
            store.sum_submissions(0, 0, 2, 0.25).unwrap(),
            vec![6.0, -1.0]
        );
        let rows = store.ledger_rows().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].committed_unix_ms, rows[0].clients_sampled), (5, 2));
        assert_eq!(store.ledger(1e-5).unwrap().events.len(), 1);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.sum_submissions(0, 0, 2, 0.25).unwrap(),
            vec![6.0, -1.0]
        );
        store.retire_round(0, 0, RoundStatus::Released).unwrap();
        assert!(store.sum_submissions(0, 0, 2, 0.25).is_err());
        assert!(store.submission(0, 0, "b").unwrap().is_none());
        assert_eq!(store.receipts(0, 0).unwrap(), vec!["r1", "r2"]);
    }

    #[test]
    fn a_second_submission_of_a_client_is_refused() {
        let store = Store::open(&scratch("duplicate")).unwrap();
        store.insert_round(&record(0, 0), 1).unwrap();
        store
            .insert_submission(0, 0, "a", &submission("r"), &[0.0, 0.0])
            .unwrap();
        assert!(store
            .insert_submission(0, 0, "a", &submission("r"), &[0.0, 0.0])
            .is_err());
        assert_eq!(store.submission_count(0, 0).unwrap(), 1);
    }

    #[test]
    fn retiring_a_round_erases_its_vectors_and_its_cohort_but_keeps_receipts() {
        let store = Store::open(&scratch("retire")).unwrap();
        store.insert_round(&record(4, 1), 1).unwrap();
        for (client, receipt) in [("a", "r"), ("b", "r")] {
            store
                .insert_submission(4, 1, client, &submission(receipt), &[1.0, 1.0])
                .unwrap();
        }
        store.retire_round(4, 1, RoundStatus::Released).unwrap();
        let latest = store.latest_attempt(4).unwrap().unwrap();
        assert_eq!(latest.status, RoundStatus::Released);
        assert!(store.sum_submissions(4, 1, 2, 0.25).is_err());
        // Who was sampled and who answered is gone; the receipts stay (two identical vectors
        // give two identical receipts).
        assert!(latest.sampled.is_empty());
        assert!(store.submission(4, 1, "a").unwrap().is_none());
        assert!(store.submission(4, 1, "b").unwrap().is_none());
        assert_eq!(store.receipts(4, 1).unwrap(), vec!["r", "r"]);
    }

    /// Whether `needle` occurs in the database file or its WAL.
    fn files_contain(store: &Store, needle: &[u8]) -> bool {
        store.files()[..2].iter().any(|file| {
            std::fs::read(file)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        })
    }

    #[test]
    fn no_vector_bytes_stay_on_disk_once_the_round_is_charged_and_the_files_are_private() {
        let path = scratch("erase");
        let store = Store::open(&path).unwrap();
        let mut round = record(0, 0);
        round.rows = 16;
        store.insert_round(&round, 1).unwrap();
        // Two planted vectors whose bytes cannot occur by chance.
        let planted: Vec<Vec<f64>> = (0..2)
            .map(|c| {
                (0..16)
                    .map(|i| 0.1234567 + c as f64 * 0.01 + i as f64 * 1e-3)
                    .collect()
            })
            .collect();
        let bytes = |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        for (client, vector) in ["a", "b"].iter().zip(&planted) {
            store
                .insert_submission(0, 0, client, &submission(client), vector)
                .unwrap();
        }
        assert!(
            files_contain(&store, &bytes(&planted[0])),
            "the test plants nothing"
        );
        let event = LedgerEvent::gaussian(1.0, Sampling::Full, 1).with_round(0);
        assert!(store.commit_round(&event, 0, 16, GRID, 2, 5).unwrap());
        for vector in &planted {
            assert!(
                !files_contain(&store, &bytes(vector)),
                "a vector outlived the charge"
            );
        }
        // The kept sum is in grid units: each vector rounded to the grid, then added.
        let sum: Vec<f64> = planted[0]
            .iter()
            .zip(&planted[1])
            .map(|(a, b)| (a / GRID).round() + (b / GRID).round())
            .collect();
        assert_eq!(store.sum_submissions(0, 0, 16, GRID).unwrap(), sum);
        store.retire_round(0, 0, RoundStatus::Released).unwrap();
        assert!(
            !files_contain(&store, &bytes(&sum)),
            "the sum outlived the release"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in store.files() {
                if let Ok(metadata) = std::fs::metadata(&file) {
                    assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{file:?}");
                }
            }
            assert!(store.files()[1].exists() || store.files()[2].exists());
        }
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

//! Load on the submission path of `fedsyn serve`: N concurrent clients (default 1,000) each
//! submit one score vector of J·K = 18,000 values to an open round, on loopback. Prints one
//! JSON object: submissions/s, latency percentiles, the server's peak RSS, and how many
//! accepted submissions are missing from the server's store (must be 0).
//!
//! The server runs in a child process (this executable again, `FEDSYN_SERVE_LOAD_ROLE=server`)
//! so that its memory is measured apart from the load generator's: the store, coordinator
//! and router of `fedsyn serve` with one round attempt opened directly in the store (no
//! generator: the round's candidates are a random matrix), every client already enrolled.
//! Run it with `benches/run-serve.sh`.
//!
//! With `FEDSYN_LOAD_SECURE=1` the round is aggregated with SecAgg+ (`serve.aggregation =
//! "secagg+"`, 64 neighbours): every client runs the protocol's four steps over HTTP (polling
//! the session once a second, as `fedsyn client` does), the server's session runs on a thread
//! of the server process, and "lost" compares the unmasked sum with the plain sum of every
//! client's encoded vector (one lost masked input would change it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use protocol::{encode_candidates, CandidateMatrix, EmbeddingDtype};
use runs::config::RunConfig;
use secure_aggregation::{ClientSession, SessionView, Step};
use server::serve::coordinator::{
    now_unix_ms, CollectionRules, Coordinator, SecureRules, SessionEnd,
};
use server::serve::store::{RoundRecord, RoundStatus, Store};
use server::serve::{auth, http, limits, metrics, openapi};

const ROLE_VAR: &str = "FEDSYN_SERVE_LOAD_ROLE";
/// J·K of the benchmark's round (prompt-major rows of the candidate matrix).
const PROMPTS: usize = 1000;
const PER_PROMPT: usize = 18;
const DIM: usize = 384;
const CLIP: f64 = 1.0;
/// The longest one submission may take before the generator gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Tries per submission (the first and the retries after connection errors).
const MAX_TRIES: u32 = 6;
/// The secure mode's neighbours per client.
const NEIGHBOURS: usize = 64;
/// Where the server role writes the unmasked sum (secure mode).
const SUM_FILE: &str = "secure-sum.json";

fn secure_mode() -> bool {
    std::env::var("FEDSYN_LOAD_SECURE").as_deref() == Ok("1")
}

fn main() {
    let clients: usize = std::env::var("FEDSYN_LOAD_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = std::env::var_os("FEDSYN_LOAD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("fedsyn-load-{}", std::process::id()))
        });
    if std::env::var(ROLE_VAR).as_deref() == Ok("server") {
        run_server(&dir, clients);
    } else if secure_mode() {
        run_secure_load(&dir, clients);
    } else {
        run_load(&dir, clients);
    }
}

/// The server: enrols `clients`, opens round 0 with all of them sampled, serves until killed.
/// Prints `listening on URL` once ready; the clients' ids and tokens are in `dir/clients.txt`.
fn run_server(dir: &Path, clients: usize) {
    let config = RunConfig::from_toml(
        "[data]\ntrain = \"sotu\"\n[prompts]\ntopics = [\"load\"]\n[privacy]\nclip = 1.0\n\
         [serve]\nrate_limit_per_minute = 120\n",
        dir,
    )
    .expect("the benchmark configuration is valid");
    let store = Arc::new(Store::open(&dir.join("server.sqlite")).expect("the store opens"));
    let metrics = Arc::new(metrics::Metrics::default());
    let rules = CollectionRules {
        clip: CLIP,
        quorum: 1.0,
        deadline: Duration::from_secs(3600),
        secure: secure_mode().then_some(SecureRules {
            neighbours: NEIGHBOURS,
            step: Duration::from_secs(600),
        }),
    };
    let secure = rules.secure.clone();
    let coordinator =
        Arc::new(Coordinator::new(store.clone(), rules, metrics).expect("the coordinator starts"));
    let enrolment = http::create_enrolment_tokens(&coordinator, clients).expect("tokens");
    let mut lines = String::new();
    let mut ids = Vec::with_capacity(clients);
    for token in &enrolment {
        let (token_id, _) = auth::split(token).expect("a token splits");
        let client = auth::issue("c");
        assert!(store
            .enrol(token_id, &client.id, &client.secret_hash, now_unix_ms())
            .expect("enrolment"));
        lines.push_str(&format!("{} {}\n", client.id, client.token));
        ids.push(client.id);
    }
    std::fs::write(dir.join("clients.txt"), lines).expect("clients.txt");
    coordinator
        .open_attempt(&round_record(ids))
        .expect("round 0 opens");
    if let Some(rules) = secure {
        // The engine's side of the round: the session, then the unmasked sum to a file.
        let coordinator = coordinator.clone();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            let sum = match coordinator
                .run_secure_session(&rules)
                .expect("the session runs")
            {
                SessionEnd::Sum(sum) => sum,
                other => panic!("the session ended without a sum: {other:?}"),
            };
            let units: Vec<i64> = sum.iter().map(|&w| w as i64).collect();
            let text = serde_json::to_string(&units).expect("JSON");
            std::fs::write(dir.join(SUM_FILE), text).expect("the sum file");
        });
    }

    let values = PROMPTS * PER_PROMPT;
    let state = Arc::new(http::AppState {
        coordinator,
        config: config.clone(),
        limiter: limits::RateLimiter::new(config.serve.rate_limit_per_minute),
        address_limiter: limits::RateLimiter::new(config.serve.rate_limit_per_minute),
        openapi: openapi::document(),
    });
    let app = http::router(state, config.serve.body_limit(values));
    // As `fedsyn serve`: two worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio starts");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        println!("listening on http://{}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        axum::serve(listener, app).await.expect("serves");
    });
}

/// Round 0, attempt 0, every client sampled, a random candidate matrix.
fn round_record(sampled: Vec<String>) -> RoundRecord {
    let rows = PROMPTS * PER_PROMPT;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let values = (0..rows * DIM)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let matrix = CandidateMatrix {
        round: 0,
        clip: CLIP,
        rows,
        dim: DIM,
        values,
    };
    RoundRecord {
        round: 0,
        attempt: 0,
        status: RoundStatus::Open,
        population: sampled.len(),
        sampled,
        deadline_unix_ms: now_unix_ms() + 3_600_000,
        texts: (0..rows).map(|i| format!("candidate {i}")).collect(),
        prompts: PROMPTS,
        per_prompt: PER_PROMPT,
        rows,
        dim: DIM,
        candidates: encode_candidates(&matrix, EmbeddingDtype::F16, true),
    }
}

/// Starts the server role in a child process over a fresh `dir` with `clients` enrolled:
/// the process, its address and the clients' (id, token) pairs.
fn start_server(dir: &Path, clients: usize) -> (Child, String, Vec<(String, String)>) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("the benchmark folder");
    let mut server = Command::new(std::env::current_exe().expect("this executable"))
        .env(ROLE_VAR, "server")
        .env("FEDSYN_LOAD_DIR", dir)
        .env("FEDSYN_LOAD_CLIENTS", clients.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut first_line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first_line)
        .expect("the server prints its address");
    let address = first_line
        .trim()
        .strip_prefix("listening on http://")
        .expect("`listening on URL`")
        .to_string();
    let credentials = std::fs::read_to_string(dir.join("clients.txt"))
        .expect("clients.txt")
        .lines()
        .map(|line| {
            let (id, token) = line.split_once(' ').expect("id token");
            (id.to_string(), token.to_string())
        })
        .collect();
    (server, address, credentials)
}

/// Runs one thread per client (`job(index, token)` makes its work), all released together by
/// a barrier; their results in client order, and when they were released.
fn all_at_once<T, F, J>(
    credentials: &[(String, String)],
    stack_size: usize,
    job: J,
) -> (Vec<T>, Instant)
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
    J: Fn(usize, String) -> F,
{
    let barrier = Arc::new(Barrier::new(credentials.len() + 1));
    let workers: Vec<_> = credentials
        .iter()
        .enumerate()
        .map(|(index, (_, token))| {
            let work = job(index, token.clone());
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(stack_size)
                .spawn(move || {
                    barrier.wait();
                    work()
                })
                .expect("a client thread")
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let results = workers
        .into_iter()
        .map(|w| w.join().expect("a client thread"))
        .collect();
    (results, started)
}

/// One submission's outcome.
struct Outcome {
    status: u16,
    latency: Duration,
    receipt: Option<String>,
    /// The connection error, when no answer came.
    error: Option<String>,
    /// Tries made (connection errors are retried).
    tries: u32,
}

/// The load generator: starts the server, submits once per client, all at the same moment.
fn run_load(dir: &Path, clients: usize) {
    let (mut server, address, credentials) = start_server(dir, clients);
    let idle_rss = peak_rss_kib(server.id());
    let (outcomes, started) = all_at_once(&credentials, 256 << 10, |index, token| {
        let body = score_body(index);
        let address = address.clone();
        move || submit(&address, &token, &body)
    });
    let wall = started.elapsed();
    let server_peak_rss = peak_rss_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();

    // Every accepted submission must be in the store, under its receipt.
    let store = Store::open(&dir.join("server.sqlite")).expect("the store reopens");
    let mut accepted = 0;
    let mut lost = 0;
    for ((id, _), outcome) in credentials.iter().zip(&outcomes) {
        if (200..300).contains(&outcome.status) {
            accepted += 1;
            let stored = store.submission(0, 0, id).expect("the store answers");
            if stored.map(|s| s.receipt) != outcome.receipt {
                lost += 1;
            }
        }
    }
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .map(|o| o.latency.as_secs_f64() * 1e3)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let mut statuses: Vec<u16> = outcomes.iter().map(|o| o.status).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let mut errors: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).collect();
    errors.sort_unstable();
    let failed = errors.len();
    errors.dedup();
    let result = serde_json::json!({
        "benchmark": "serve_load",
        "clients": clients,
        "values_per_submission": PROMPTS * PER_PROMPT,
        "body_bytes_mean": credentials.iter().enumerate().map(|(i, _)| score_body(i).len()).sum::<usize>() / clients.max(1),
        "accepted": accepted,
        "lost": lost,
        "statuses": statuses,
        "connection_errors": failed,
        "retries": outcomes.iter().map(|o| o.tries - 1).sum::<u32>(),
        "connection_error_kinds": errors,
        "wall_seconds": wall.as_secs_f64(),
        "submissions_per_second": accepted as f64 / wall.as_secs_f64(),
        "latency_ms_p50": percentile(0.5),
        "latency_ms_p99": percentile(0.99),
        "latency_ms_max": latencies.last(),
        "server_rss_mib_before_load": idle_rss as f64 / 1024.0,
        "server_peak_rss_mib": server_peak_rss as f64 / 1024.0,
    });
    println!("{result}");
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(lost, 0, "accepted submissions missing from the store");
}

/// What one secure client did.
struct SecureOutcome {
    requests: u32,
    upload_bytes: usize,
    /// Seconds from the start to the accepted unmasking message.
    seconds: f64,
    /// Its encoded vector.
    encoded: Vec<u64>,
}

/// The load generator of the secure mode: every client runs the SecAgg+ session over HTTP.
fn run_secure_load(dir: &Path, clients: usize) {
    let (mut server, address, credentials) = start_server(dir, clients);
    let idle_rss = peak_rss_kib(server.id());
    let (outcomes, started) = all_at_once(&credentials, 512 << 10, |index, token| {
        let address = address.clone();
        move || secure_client(&address, &token, index)
    });
    let sum_path = dir.join(SUM_FILE);
    while !sum_path.exists() && started.elapsed() < REQUEST_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let round_seconds = started.elapsed().as_secs_f64();
    let server_peak_rss = peak_rss_kib(server.id());
    let _ = server.kill();
    let _ = server.wait();
    let unmasked: Vec<i64> =
        serde_json::from_str(&std::fs::read_to_string(&sum_path).expect("the sum file"))
            .expect("the sum");
    let mut plain = vec![0i64; PROMPTS * PER_PROMPT];
    for outcome in &outcomes {
        plain
            .iter_mut()
            .zip(&outcome.encoded)
            .for_each(|(p, &e)| *p += e as i64);
    }
    let mut seconds: Vec<f64> = outcomes.iter().map(|o| o.seconds).collect();
    seconds.sort_by(f64::total_cmp);
    let result = serde_json::json!({
        "benchmark": "serve_load_secagg",
        "clients": clients,
        "values_per_submission": PROMPTS * PER_PROMPT,
        "neighbours": NEIGHBOURS,
        "unmasked_sum_equals_plain_sum": unmasked == plain,
        "lost": if unmasked == plain { 0 } else { clients },
        "requests_per_client_mean": outcomes.iter().map(|o| o.requests as f64).sum::<f64>() / clients as f64,
        "upload_bytes_per_client_mean": outcomes.iter().map(|o| o.upload_bytes as f64).sum::<f64>() / clients as f64,
        "client_done_seconds_p50": seconds[seconds.len() / 2],
        "client_done_seconds_max": seconds.last(),
        "round_seconds": round_seconds,
        "server_rss_mib_before_load": idle_rss as f64 / 1024.0,
        "server_peak_rss_mib": server_peak_rss as f64 / 1024.0,
    });
    println!("{result}");
    let _ = std::fs::remove_dir_all(dir);
    assert!(unmasked == plain, "the unmasked sum is not the plain sum");
}

/// One client's SecAgg+ session of round 0 over HTTP, polling once a second.
fn secure_client(address: &str, token: &str, index: usize) -> SecureOutcome {
    let started = Instant::now();
    let scores: serde_json::Value = serde_json::from_slice(&score_body(index)).expect("JSON");
    let scores: Vec<f64> = scores["scores"]
        .as_array()
        .expect("scores")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect();
    let encoded = secure_aggregation::encode(&scores, CLIP).expect("encodes");
    let mut session: Option<ClientSession> = None;
    let (mut requests, mut upload_bytes) = (0u32, 0usize);
    loop {
        requests += 1;
        let (status, body) = exchange(address, "GET", "/v1/rounds/0/secagg", token, b"");
        if status != 200 {
            assert!(
                status == 404 || status == 429 || status == 0,
                "{status}: {body}"
            );
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let view: SessionView = serde_json::from_str(&body).expect("a session view");
        assert!(view.participant, "client {index} dropped out: {body}");
        if view.received {
            std::thread::sleep(Duration::from_millis(1000));
            continue;
        }
        let message = match view.step {
            Step::Keys => {
                let client = ClientSession::new(0, view.session).expect("keys");
                let keys = client.keys();
                session = Some(client);
                Ok(keys)
            }
            Step::Shares => session
                .as_mut()
                .unwrap()
                .share_keys(view.roster.as_ref().unwrap()),
            Step::Masked => session
                .as_mut()
                .unwrap()
                .mask(view.inbox.as_ref().unwrap(), &encoded),
            Step::Unmask => session
                .as_mut()
                .unwrap()
                .unmask(view.survivors.as_ref().unwrap()),
            Step::Done => panic!("the session ended before client {index} unmasked"),
        }
        .expect("the protocol step");
        let body = serde_json::to_vec(&message).expect("JSON");
        upload_bytes += body.len();
        let path = format!("/v1/rounds/0/secagg/{}", view.session);
        loop {
            requests += 1;
            let (status, reply) = exchange(address, "POST", &path, token, &body);
            match status {
                200 | 202 => break,
                0 | 429 => std::thread::sleep(Duration::from_millis(500)),
                _ => panic!("client {index}: {status}: {reply}"),
            }
        }
        if view.step == Step::Unmask {
            return SecureOutcome {
                requests,
                upload_bytes,
                seconds: started.elapsed().as_secs_f64(),
                encoded,
            };
        }
    }
}

/// One request over a fresh connection, as a client process makes it: status and body.
fn request(
    address: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// [`request`], with status 0 for a connection error (the secure client retries those).
fn exchange(address: &str, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, String) {
    request(address, method, path, token, body).unwrap_or((0, String::new()))
}

/// `{"scores":[…]}` for client `index`: a deterministic vector of norm 0.9 (< the clip).
fn score_body(index: usize) -> Vec<u8> {
    let n = PROMPTS * PER_PROMPT;
    let raw: Vec<f64> = (0..n)
        .map(|k| (((k * 7919 + index * 104_729) % 10_007) as f64 / 10_007.0) - 0.5)
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    let scores: Vec<f64> = raw
        .iter()
        .map(|v| f64::from((v * 0.9 / norm) as f32))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "scores": scores })).expect("JSON")
}

/// One `POST /v1/rounds/0/scores` over a fresh connection (as a client process would),
/// retried after a connection error as `fedsyn client` does (backoff with jitter, at most
/// [`MAX_TRIES`] tries); the latency spans all tries.
fn submit(address: &str, token: &str, body: &[u8]) -> Outcome {
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let mut outcome = submit_once(address, token, body);
        if outcome.error.is_none() || tries == MAX_TRIES {
            outcome.latency = started.elapsed();
            outcome.tries = tries;
            return outcome;
        }
        // 250 ms doubling, half fixed and half "random" (from the start time's nanoseconds).
        let ceiling = Duration::from_millis(250) * (1 << (tries - 1));
        let jitter = f64::from(started.elapsed().subsec_nanos() % 1000) / 2000.0;
        std::thread::sleep(ceiling / 2 + ceiling.mul_f64(jitter));
    }
}

/// One try of [`submit`].
fn submit_once(address: &str, token: &str, body: &[u8]) -> Outcome {
    let started = Instant::now();
    let result = request(address, "POST", "/v1/rounds/0/scores", token, body);
    let latency = started.elapsed();
    match result {
        Ok((status, body)) => Outcome {
            status,
            latency,
            receipt: serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["receipt"].as_str().map(str::to_string)),
            error: None,
            tries: 1,
        },
        Err(error) => Outcome {
            status: 0,
            latency,
            receipt: None,
            error: Some(error.kind().to_string()),
            tries: 1,
        },
    }
}

/// The peak resident set (VmHWM) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

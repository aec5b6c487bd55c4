//! End-to-end tests of `fedsyn serve` (a real server process on 127.0.0.1:0 with the installed
//! SmolLM2 and MiniLM and a tiny configuration), driven from here with a small HTTP client:
//! the malformed-input suite (status, problem+json body, and nothing changed), the OpenAPI
//! document against the live routes, `kill -9` during an open round then `--resume`, and HTTPS.

mod common;
use common::federation::PUBLIC_SEEDS;
use common::{fedsyn_command, scratch_dir, scratch_dir_for_models, words};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// J = 4 prompts × K = 2 candidates, 12 new tokens, one DPO step per round.
fn write_config(dir: &Path, privacy: &str, serve: &str) -> PathBuf {
    std::fs::write(dir.join("seeds.txt"), PUBLIC_SEEDS).unwrap();
    let config = format!(
        r#"
[run]
name = "serve-e2e"
seed = 7
device = "cpu"
threads = 1

[data]
train = "sotu"

[prompts]
seed_file = "seeds.txt"
num_prompts = 4
examples_per_prompt = 2

[generation]
candidates_per_prompt = 2
max_new_tokens = 12
truncate_tokens = 12
batch_size = 8

[pairs]
rejected_rank = 1

[lora]
r = 4
alpha = 8

[dpo]
lr = 1e-3
schedule = "constant"
batch_size = 4
max_steps = 1
max_prompt_length = 128
max_length = 160

[output]
synthetic_samples = 2

[eval]
fid = false

{privacy}

{serve}
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// The number of candidates (J·K) of the test configuration.
const CANDIDATES: usize = 8;

/// A running `fedsyn serve`, killed when dropped.
struct Server {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// A new run in a fresh scratch folder `name`: the config of `privacy` and `serve`, then
    /// `fedsyn serve --config … --out DIR/run` with `extra` arguments. Returns the server and
    /// the run directory; `None` (the test is skipped) without the default models.
    fn new_run(
        name: &str,
        privacy: &str,
        serve: &str,
        extra: &[&str],
    ) -> Option<(Server, PathBuf)> {
        let dir = scratch_dir_for_models(name)?;
        let config = write_config(&dir, privacy, serve);
        let out = dir.join("run");
        let line = format!("--config {} --out {}", config.display(), out.display());
        let mut args = words(&line);
        args.extend_from_slice(extra);
        Some((Server::start(&out, &args), out))
    }

    /// Starts `fedsyn serve ARGS --bind 127.0.0.1:0` and waits for its listening line.
    fn start(dir: &Path, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--bind", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut child = fedsyn_command(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fedsyn serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next()
            .expect("fedsyn serve prints its listening line")
            .unwrap();
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let address = url.split("://").nth(1).unwrap().to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            address,
            dir: dir.to_path_buf(),
        }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Reply {
        let stream = TcpStream::connect(&self.address).unwrap();
        exchange(stream, method, path, token, body)
    }

    fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call("GET", path, token, None)
    }

    fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.call("POST", path, token, Some(body.to_string().as_bytes()))
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn enrolment_tokens(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("enrolment-tokens.txt"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Enrols with `token`; the client's bearer token.
    fn enrol(&self, token: &str) -> String {
        let reply = self.post_json("/v1/enrol", None, &json!({ "enrolment_token": token }));
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply.json()["token"].as_str().unwrap().to_string()
    }

    fn run_status(&self) -> Value {
        let admin = self.admin_token();
        let reply = self.get("/v1/admin/run", Some(&admin));
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    /// Polls until `done(admin status)` holds (bounded: a hung server fails the test).
    fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let status = self.run_status();
            if done(&status) {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "gave up waiting for {what}: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until round `round` is open for submissions.
    fn wait_for_open_round(&self, round: u64) -> Value {
        self.wait_for(&format!("round {round} to open"), |s| {
            s["round"] == round && s["round_open"] == true
        })
    }

    /// Polls `GET /v1/tasks/next` for each client until it says "finished" (a server started
    /// with `--exit-when-finished` exits once every client was told).
    fn wait_until_told_finished(&self, clients: &[String]) {
        let start = Instant::now();
        for client in clients {
            loop {
                let reply = self.get("/v1/tasks/next", Some(client));
                if reply.status == 200 && reply.json()["state"] == "finished" {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(600),
                    "the run did not finish: {}",
                    reply.text()
                );
                std::thread::sleep(Duration::from_millis(1000));
            }
        }
    }

    /// Waits for the process to exit (bounded); its exit status.
    fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "the server did not exit"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What must not change when a request is refused: the admin's counts and the ledger.
    fn observable_state(&self, client: &str) -> (Value, Value, Value) {
        let status = self.run_status();
        let privacy = self.get("/v1/privacy", Some(client)).json();
        (
            status["submitted"].clone(),
            status["enrolled"].clone(),
            privacy,
        )
    }
}

/// An HTTP response.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts a problem+json error with `status` and a non-empty detail; the body.
    fn assert_problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let body = self.json();
        assert_eq!(body["status"], status);
        assert!(body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:fedsyn:problem:"));
        assert!(!body["title"].as_str().unwrap().is_empty());
        assert!(body["detail"].as_str().unwrap().len() > 10, "{body}");
        body
    }
}

/// One HTTP/1.1 request on `stream` (`Connection: close`), and its response.
fn exchange(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Reply {
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (413) and close before reading an oversized body: ignore write
    // errors and read what it said.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush());
    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    let header_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buffer).expect("a response");
        assert!(n > 0, "the connection closed before the response headers");
        raw.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8(raw[..header_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[header_end + 4..].to_vec();
    let length: Option<usize> = headers.get("content-length").map(|v| v.parse().unwrap());
    loop {
        if length.is_some_and(|length| body.len() >= length) {
            break;
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buffer[..n]),
        }
    }
    if let Some(length) = length {
        assert_eq!(body.len(), length, "truncated body");
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn scores(values: &[f64]) -> Value {
    json!({ "scores": values })
}

/// Raw JSON text as a body (for values serde_json would refuse to write, such as NaN).
fn raw(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

#[test]
fn malformed_inputs_are_refused_and_change_nothing_and_the_api_matches_its_document() {
    let Some((mut server, out)) = Server::new_run(
        "serve-api",
        "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 2\nsampling = \"cohort\"\ncohort = 2",
        "[serve]\nmin_clients = 3\nround_deadline_seconds = 15\nrate_limit_per_minute = 100000",
        &["--enrolment-tokens", "4", "--exit-when-finished"],
    ) else {
        return;
    };
    let health = server.get("/v1/health", None).json();
    assert_eq!(health["status"], "ok");

    // Enrolment: each token once.
    let tokens = server.enrolment_tokens();
    assert_eq!(tokens.len(), 4);
    let clients: Vec<String> = tokens[..3].iter().map(|t| server.enrol(t)).collect();
    server
        .post_json("/v1/enrol", None, &json!({ "enrolment_token": tokens[0] }))
        .assert_problem(401);
    server
        .post_json("/v1/enrol", None, &json!({ "enrolment_token": "e1.nope" }))
        .assert_problem(401);
    server
        .call("POST", "/v1/enrol", None, Some(b"{not json"))
        .assert_problem(422);

    server.wait_for_open_round(0);
    // A cohort of 2 of the 3 clients: which ones?
    let mut sampled = Vec::new();
    let mut unsampled = Vec::new();
    for client in &clients {
        let task = server.get("/v1/tasks/next", Some(client)).json();
        match task["state"].as_str().unwrap() {
            "task" => {
                assert_eq!(task["round"], 0);
                assert_eq!(task["candidates"], CANDIDATES);
                assert_eq!(task["candidates_url"], "/v1/rounds/0/candidates");
                sampled.push(client.clone());
            }
            "wait" => unsampled.push(client.clone()),
            other => panic!("unexpected task state {other}"),
        }
    }
    assert_eq!((sampled.len(), unsampled.len()), (2, 1));
    let (first, second, outsider) = (&sampled[0], &sampled[1], &unsampled[0]);

    let candidates = server.get("/v1/rounds/0/candidates", Some(first));
    assert_eq!(candidates.status, 200);
    assert_eq!(&candidates.body[..8], b"FSCAND01");
    server
        .get("/v1/rounds/0/candidates", Some(outsider))
        .assert_problem(403);
    server
        .get("/v1/rounds/9/candidates", Some(first))
        .assert_problem(404);

    // The malformed-input suite: each refused with its status and changing nothing.
    let before = server.observable_state(first);
    let good = vec![0.1; CANDIDATES];
    let path = "/v1/rounds/0/scores";
    let oversized = format!("{{\"scores\":[{}]}}", vec!["0.25"; 20_000].join(","));
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        (
            "missing token",
            None,
            scores(&good).to_string().into_bytes(),
            401,
        ),
        (
            "bad token",
            Some("c0123.deadbeef"),
            scores(&good).to_string().into_bytes(),
            401,
        ),
        (
            "not a token",
            Some("garbage"),
            scores(&good).to_string().into_bytes(),
            401,
        ),
        (
            "wrong length",
            Some(first),
            scores(&[0.1, 0.2]).to_string().into_bytes(),
            422,
        ),
        ("empty vector", Some(first), raw(r#"{"scores":[]}"#), 422),
        (
            "infinity",
            Some(first),
            raw(r#"{"scores":[1e999,0,0,0,0,0,0,0]}"#),
            422,
        ),
        (
            "NaN",
            Some(first),
            raw(r#"{"scores":[NaN,0,0,0,0,0,0,0]}"#),
            422,
        ),
        ("not JSON", Some(first), raw("scores=1,2,3"), 422),
        (
            "unknown field",
            Some(first),
            raw(r#"{"scores":[0,0,0,0,0,0,0,0],"x":1}"#),
            422,
        ),
        ("oversized body", Some(first), oversized.into_bytes(), 413),
        (
            "not sampled",
            Some(outsider),
            scores(&good).to_string().into_bytes(),
            403,
        ),
    ];
    for (name, token, body, status) in &cases {
        let reply = server.call("POST", path, *token, Some(body));
        let problem = reply.assert_problem(*status);
        assert_eq!(
            server.observable_state(first),
            before,
            "{name} changed the state"
        );
        eprintln!("{name}: {status} {}", problem["detail"]);
    }
    server
        .post_json("/v1/rounds/99/scores", Some(first), &scores(&good))
        .assert_problem(404);
    assert_eq!(server.observable_state(first), before);

    // Accepted once; an identical retry gets the same receipt; a different vector is refused.
    let accepted = server.post_json(path, Some(first), &scores(&good));
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let receipt = accepted.json();
    assert_eq!(receipt["round"], 0);
    assert_eq!(receipt["receipt"].as_str().unwrap().len(), 64);
    let after_first = server.observable_state(first);
    assert_eq!(after_first.0, 1);
    let replay = server.post_json(path, Some(first), &scores(&good));
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json(), receipt);
    let mut different = good.clone();
    different[0] = 0.2;
    server
        .post_json(path, Some(first), &scores(&different))
        .assert_problem(409);
    assert_eq!(server.observable_state(first), after_first);
    // A sampled client that submitted gets no second task.
    assert_eq!(
        server.get("/v1/tasks/next", Some(first)).json()["state"],
        "wait"
    );

    // The second sampled client misses the deadline: the round closes with one submission
    // and its late vector is refused.
    let closed = server.wait_for("round 0 to close", |s| s["round_open"] != true);
    server
        .post_json(path, Some(second), &scores(&good))
        .assert_problem(410);
    let ledger_round_0 = server.wait_for("round 0's ledger entry", |s| {
        s["rounds_charged"].as_u64() >= Some(1)
    });
    let privacy = server.get("/v1/privacy", Some(first)).json();
    let row = &privacy["rounds"][0];
    assert_eq!(row["round"], 0);
    assert_eq!(row["sampling"]["kind"], "fixed_cohort", "{row}");
    // No count of who answered (nor of who was sampled) on a route clients can read.
    assert!(row.get("clients_submitted").is_none(), "{row}");
    assert!(row.get("clients_sampled").is_none(), "{row}");
    eprintln!("closed: {closed}\nafter round 0: {ledger_round_0}");

    let metrics = server.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for private in ["accepted", "reclipped", "clipped", "norm"] {
        assert!(!text.contains(private), "{private} in\n{text}");
    }
    for line in [
        "fedsyn_enrolments_total 3",
        "fedsyn_submissions_rejected_total{reason=\"late\"} 1",
        "fedsyn_submissions_rejected_total{reason=\"conflict\"} 1",
        "fedsyn_submissions_rejected_total{reason=\"not_sampled\"} 1",
        "fedsyn_submissions_rejected_total{reason=\"too_large\"} 1",
        "fedsyn_submissions_rejected_total{reason=\"unknown_round\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    check_openapi_against_the_routes(&server, first, &tokens[3]);

    // The check above stopped the run: it finishes, tells the clients, and exits 0 with its
    // outputs.
    server.wait_until_told_finished(&clients);
    let status = server.wait_for_exit();
    assert!(status.success(), "{status:?}");
    for file in ["synthetic.jsonl", "privacy-statement.md", "ledger.json"] {
        assert!(out.join(file).exists(), "{file}");
    }
}

/// The served document is OpenAPI 3.1, and every documented operation answers (not 404/405)
/// with its documented credentials while other methods on its path answer 405. Ends with the
/// admin's stop (the document's last operation).
fn check_openapi_against_the_routes(server: &Server, client: &str, unused_enrolment: &str) {
    let reply = server.get("/v1/openapi.json", None);
    assert_eq!(reply.status, 200);
    let document = reply.json();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["info"]["title"].is_string());
    let admin = server.admin_token();
    let paths = document["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations.push((path.clone(), method.to_ascii_uppercase(), operation.clone()));
        }
    }
    // Stop last: it ends the run.
    operations.sort_by_key(|(path, _, _)| path.ends_with("/stop"));
    assert!(operations.len() >= 13, "{}", operations.len());
    for (path, method, operation) in &operations {
        let concrete = path.replace("{round}", "0").replace("{session}", "0");
        let security = operation["security"].as_array().unwrap();
        let token = match security.first().and_then(|s| s.as_object()) {
            Some(scheme) if scheme.contains_key("admin") && security.len() == 1 => {
                Some(admin.as_str())
            }
            Some(_) => Some(client),
            None => None,
        };
        let body = if path == "/v1/enrol" {
            json!({ "enrolment_token": unused_enrolment }).to_string()
        } else if path.ends_with("/enrolment-tokens") {
            json!({ "count": 1 }).to_string()
        } else {
            scores(&[0.0; CANDIDATES]).to_string()
        };
        let body = (method == "POST").then_some(body.as_bytes());
        let reply = server.call(method, &concrete, token, body);
        assert!(
            reply.status != 404 && reply.status != 405,
            "{method} {path}: {} {}",
            reply.status,
            reply.text()
        );
        let documented = operation["responses"][reply.status.to_string()].is_object();
        assert!(
            documented,
            "{method} {path} answered undocumented {}",
            reply.status
        );
        let other = if method == "GET" { "DELETE" } else { "GET" };
        server
            .call(other, &concrete, token, None)
            .assert_problem(405);
    }
    server.get("/v1/no-such-thing", None).assert_problem(404);
}

#[test]
fn a_server_killed_during_an_open_round_continues_it_after_resume() {
    let Some((mut server, out)) = Server::new_run(
        "serve-kill",
        "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 2",
        "[serve]\nmin_clients = 2\nround_deadline_seconds = 600",
        &["--enrolment-tokens", "2"],
    ) else {
        return;
    };
    let clients: Vec<String> = server
        .enrolment_tokens()
        .iter()
        .map(|t| server.enrol(t))
        .collect();
    let vector =
        |seed: f64| -> Vec<f64> { (0..CANDIDATES).map(|i| (i as f64 - seed) * 0.1).collect() };

    server.wait_for_open_round(0);
    for (i, client) in clients.iter().enumerate() {
        let reply = server.post_json(
            "/v1/rounds/0/scores",
            Some(client),
            &scores(&vector(i as f64)),
        );
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    server.wait_for_open_round(1);
    let first = server.post_json(
        "/v1/rounds/1/scores",
        Some(&clients[0]),
        &scores(&vector(5.0)),
    );
    assert_eq!(first.status, 202);

    // kill -9 with round 1 open and one vector stored.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let mut server = Server::start(
        &out,
        &["--resume", out.to_str().unwrap(), "--exit-when-finished"],
    );
    // The same round continues: the stored submission counts (a retry gets its receipt) and
    // the other client still has its task.
    let replay = server.post_json(
        "/v1/rounds/1/scores",
        Some(&clients[0]),
        &scores(&vector(5.0)),
    );
    assert_eq!(replay.status, 200, "{}", replay.text());
    assert_eq!(replay.json(), first.json());
    let task = server.get("/v1/tasks/next", Some(&clients[1])).json();
    assert_eq!(task["state"], "task", "{task}");
    assert_eq!(task["round"], 1);
    let second = server.post_json(
        "/v1/rounds/1/scores",
        Some(&clients[1]),
        &scores(&vector(6.0)),
    );
    assert_eq!(second.status, 202, "{}", second.text());
    server.wait_until_told_finished(&clients);
    let status = server.wait_for_exit();
    assert!(status.success(), "{status:?}");

    // Exactly one ledger event per released round; no client vector outlived its round.
    for seed in [0.0, 1.0, 5.0, 6.0] {
        assert_no_vector_bytes(&out, &vector(seed));
    }
    let db = rusqlite::Connection::open(out.join("server.sqlite")).unwrap();
    assert_two_rounds_released_and_charged_once(&db);
    let vectors: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM submissions WHERE vector IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(vectors, 0);
    let ledger_json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ledger.json")).unwrap()).unwrap();
    let rounds: Vec<u64> = ledger_json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, vec![0, 1]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    assert!(out.join("checkpoints/round-0001").is_dir());
}

#[test]
fn https_with_a_self_signed_certificate() {
    let Some(dir) = scratch_dir_for_models("serve-tls") else {
        return;
    };
    let config = write_config(
        &dir,
        "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 1",
        "",
    );
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let out = dir.join("run");
    let mut command_args = vec![
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let mut child = fedsyn_command(&{
        let mut all = vec!["serve", "--bind", "127.0.0.1:0"];
        all.append(&mut command_args);
        all
    })
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(tls), name).unwrap();
    let stream = rustls::StreamOwned::new(connection, TcpStream::connect(&address).unwrap());
    let reply = exchange(stream, "GET", "/v1/health", None, None);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["status"], "ok");
}

#[test]
fn a_client_over_its_rate_limit_gets_429_with_retry_after() {
    let Some(dir) = scratch_dir_for_models("serve-rate") else {
        return;
    };
    let config = write_config(
        &dir,
        "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 1",
        "[serve]\nrate_limit_per_minute = 2",
    );
    let out = dir.join("run");
    let admin = "3f9a0c5e7b21d4f86a0e9c3b5d7f1a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f";
    let mut command = fedsyn_command(&words(&format!(
        "serve --bind 127.0.0.1:0 --config {} --out {} --enrolment-tokens 1",
        config.display(),
        out.display()
    )));
    command.env("FEDSYN_ADMIN_TOKEN", admin);
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let server = Server {
        child,
        address: line
            .trim()
            .trim_start_matches("listening on http://")
            .to_string(),
        dir: out.clone(),
    };
    // The admin token came from the environment: no token file, and it works.
    assert!(!out.join("admin-token").exists());
    assert_eq!(server.get("/v1/admin/run", Some(admin)).status, 200);
    server
        .get(
            "/v1/admin/run",
            Some("3f9a0c5e7b21d4f86a0e9c3b5d7f1a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4e"),
        )
        .assert_problem(401);

    let client = server.enrol(&server.enrolment_tokens()[0]);
    for _ in 0..2 {
        assert_eq!(server.get("/v1/tasks/next", Some(&client)).status, 200);
    }
    let limited = server.get("/v1/tasks/next", Some(&client));
    let problem = limited.assert_problem(429);
    let retry: u64 = limited.headers["retry-after"].parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("2 requests a minute"));

    // Routes without a client token are limited per source address (10 × the client rate:
    // 20 a minute here); 3 requests were made from this address so far.
    let mut limited = None;
    for _ in 0..30 {
        let reply = server.get("/v1/health", None);
        if reply.status != 200 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("the per-address limit never answered 429");
    let problem = limited.assert_problem(429);
    assert!(limited.headers["retry-after"].parse::<u64>().unwrap() >= 1);
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("from this address"));
    // The enrolment and admin routes share that address's bucket.
    server
        .post_json("/v1/enrol", None, &json!({ "enrolment_token": "e1.guess" }))
        .assert_problem(429);
    server.get("/v1/admin/run", Some(admin)).assert_problem(429);
}

/// Asserts that no stored file of the run (the database and its WAL) holds `vector`'s bytes
/// (f64 little-endian, as stored; the test vectors are within the clip bound, so unscaled).
fn assert_no_vector_bytes(out: &Path, vector: &[f64]) {
    let needle: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    for file in ["server.sqlite", "server.sqlite-wal"] {
        let bytes = std::fs::read(out.join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
            "{file} still holds a client's vector"
        );
    }
}

/// `fedsyn serve ARGS` expected to refuse at start: exit status 2; its stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = fedsyn_command(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn serve_refuses_test_seeds_weak_admin_tokens_and_plain_http_off_loopback() {
    let dir = scratch_dir("serve-refusals");
    for key in ["noise_seed", "sampling_seed"] {
        let config = write_config(
            &dir,
            &format!("[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 1\n{key} = 3"),
            "",
        );
        let out = dir.join(format!("run-{key}"));
        let stderr = refused(
            &[
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--config",
                config.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(stderr.contains(&format!("privacy.{key}")), "{stderr}");
        assert!(stderr.contains("remove"), "{stderr}");
        assert!(!out.exists(), "a refused start created {}", out.display());
    }

    let config = write_config(
        &dir,
        "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 1",
        "",
    );
    let out = dir.join("run");
    let start = |bind: &str| {
        vec![
            "serve".to_string(),
            "--bind".to_string(),
            bind.to_string(),
            "--config".to_string(),
            config.to_str().unwrap().to_string(),
            "--out".to_string(),
            out.to_str().unwrap().to_string(),
        ]
    };
    let args = start("127.0.0.1:0");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused(
        &args,
        &[("FEDSYN_ADMIN_TOKEN", "operator-chosen-admin-secret")],
    );
    assert!(
        stderr.contains("FEDSYN_ADMIN_TOKEN") && stderr.contains("256 bits"),
        "{stderr}"
    );

    let args = start("0.0.0.0:0");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused(&args, &[]);
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("--insecure-http"),
        "{stderr}"
    );
    assert!(!out.join("server.sqlite").exists());

    // With --insecure-http it serves, and says what that means.
    let mut all = args.clone();
    all.push("--insecure-http");
    let mut child = fedsyn_command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(line.starts_with("listening on http://0.0.0.0:"), "{line:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: --insecure-http") && stderr.contains("unencrypted"),
        "{stderr}"
    );
}

#[test]
fn a_second_process_on_a_run_directory_exits_2_naming_the_holders_pid() {
    let Some((server, out)) = Server::new_run(
        "serve-lock",
        "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 1",
        "[serve]\nmin_clients = 5",
        &[],
    ) else {
        return;
    };
    let holder = format!("pid {}", server.child.id());
    let out_arg = out.to_str().unwrap();
    let config = out.parent().unwrap().join("config.toml");
    for args in [
        vec!["serve", "--bind", "127.0.0.1:0", "--resume", out_arg],
        vec![
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out_arg,
        ],
        vec!["simulate", "--resume", out_arg],
    ] {
        let stderr = refused(&args, &[]);
        assert!(stderr.contains(&holder), "{args:?}: {stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
    }
    // The first server is unaffected.
    assert_eq!(server.get("/v1/health", None).status, 200);
}

#[test]
fn a_mostly_silent_cohort_is_released_at_the_deadline_without_a_second_cohort() {
    let Some((mut server, out)) = Server::new_run(
        "serve-silent",
        "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 2",
        "[serve]\nmin_clients = 3\nround_deadline_seconds = 3",
        &["--enrolment-tokens", "3", "--exit-when-finished"],
    ) else {
        return;
    };
    let clients: Vec<String> = server
        .enrolment_tokens()
        .iter()
        .map(|t| server.enrol(t))
        .collect();
    // Round 0: every client is sampled, one answers, two stay silent. Round 1: nobody answers.
    // Each round is released at its deadline with the one cohort it drew.
    let planted: Vec<f64> = (0..CANDIDATES).map(|i| 0.01 * i as f64 + 0.0123).collect();
    let status = server.wait_for_open_round(0);
    assert_eq!(status["sampled"], 3, "{status}");
    let reply = server.post_json("/v1/rounds/0/scores", Some(&clients[0]), &scores(&planted));
    assert_eq!(reply.status, 202, "{}", reply.text());
    server.wait_until_told_finished(&clients);
    let status = server.wait_for_exit();
    assert!(status.success(), "{status:?}");

    let db = rusqlite::Connection::open(out.join("server.sqlite")).unwrap();
    assert_two_rounds_released_and_charged_once(&db);
    // Released rounds keep their receipts but no record of who was sampled or who answered.
    let cohorts: Vec<String> = column(&db, "SELECT sampled FROM rounds");
    assert_eq!(cohorts, vec!["[]", "[]"]);
    let (receipts, linked): (i64, i64) = db
        .query_row(
            "SELECT COUNT(*), COUNT(c.id) FROM submissions s LEFT JOIN clients c \
             ON s.client_id = c.id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((receipts, linked), (1, 0));
    drop(db);
    assert_no_vector_bytes(&out, &planted);

    // Nothing measured on the un-noised vectors in the run's outputs.
    for file in ["metrics.jsonl", "ledger.json", "privacy-statement.md"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        for private in [
            "pre_clip_norm",
            "clipped_fraction",
            "signal_to_noise",
            "\"clients\"",
            "clients_submitted",
        ] {
            assert!(!text.contains(private), "{private} in {file}:\n{text}");
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in ["server.sqlite", "admin-token", "enrolment-tokens.txt"] {
            let mode = std::fs::metadata(out.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}

/// The first column of every row `sql` selects from the server's store.
fn column<T: rusqlite::types::FromSql>(db: &rusqlite::Connection, sql: &str) -> Vec<T> {
    db.prepare(sql)
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Rounds 0 and 1 were each released at their first attempt and charged exactly once.
fn assert_two_rounds_released_and_charged_once(db: &rusqlite::Connection) {
    let ledger: Vec<i64> = column(db, "SELECT round FROM ledger ORDER BY round");
    assert_eq!(ledger, vec![0, 1]);
    let rounds: Vec<(i64, i64, String)> = db
        .prepare("SELECT round, attempt, status FROM rounds ORDER BY round, attempt")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let released = |round| (round, 0, "released".to_string());
    assert_eq!(rounds, vec![released(0), released(1)]);
}

//! End-to-end tests of `fedsyn serve` with many `fedsyn client` processes on loopback, with
//! the installed SmolLM2 and MiniLM: 50 clients complete 2 rounds; a server killed with
//! SIGKILL in the middle of a round is restarted on its run directory and the run finishes
//! with exactly one ledger event per released round. Neither test lets a client's text reach
//! anything the server wrote.

mod common;
use common::federation::{tiny_config, PUBLIC_SEEDS};
use common::{fedsyn_command, scratch_dir_for_models, words};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clients::profile::client_profile_with;
use models::{Assets, SentenceEmbedder};
use privacy_accounting::Ledger;
use secure_aggregation::{ClientSession, SessionView, Step};
use serde_json::Value;

/// How long a whole run may take before the test gives up (2 cores shared with other tests).
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// Client `c`'s three texts; each holds a marker no public text has, so that a leak of any
/// of them into the server's files is found by substring search.
fn client_texts(c: usize) -> Vec<String> {
    let topics = [
        "the harbour",
        "wheat prices",
        "canal locks",
        "libraries",
        "postal routes",
    ];
    (0..3)
        .map(|t| {
            format!(
                "Resident qx{c:03}z{t} wrote about {} and asked the council for an answer \
                 before the spring session of {}.",
                topics[(c + t) % topics.len()],
                1850 + c + 60 * t
            )
        })
        .collect()
}

/// A test folder: the public seeds, the run configuration and one data file per client.
struct Setup {
    dir: PathBuf,
    clients: usize,
}

impl Setup {
    /// The scratch folder of test `name`: the run's config, the public seeds and the data of
    /// `clients` clients. `None` (the test is skipped) when the default models are missing.
    fn new(name: &str, clients: usize) -> Option<Setup> {
        let dir = scratch_dir_for_models(&format!("serve-{name}"))?;
        std::fs::write(dir.join("seeds.txt"), PUBLIC_SEEDS).unwrap();
        std::fs::write(dir.join("config.toml"), config(clients)).unwrap();
        for c in 0..clients {
            let lines: String = client_texts(c)
                .iter()
                .map(|text| serde_json::json!({ "text": text }).to_string() + "\n")
                .collect();
            std::fs::write(dir.join(format!("client-{c}.jsonl")), lines).unwrap();
        }
        Some(Setup { dir, clients })
    }

    /// [`check_finished_run`], then removes the scratch folder.
    fn check_finished_run_and_remove(self) {
        check_finished_run(&self);
        std::fs::remove_dir_all(&self.dir).unwrap();
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn state_dir(&self, c: usize) -> PathBuf {
        self.dir.join(format!("state-{c}"))
    }

    /// Embeds the texts of `clients` into their state folders in this process, with one
    /// model load: 50 client processes embedding at once would each load MiniLM (~0.5 GB).
    fn prepare_profiles(&self, clients: impl Iterator<Item = usize>) {
        let dir = Assets::discover().minilm_dir().unwrap();
        let embedder = SentenceEmbedder::load(&dir, tch::Device::Cpu).unwrap();
        for c in clients {
            client_profile_with(&client_texts(c), &embedder, &self.state_dir(c)).unwrap();
        }
    }

    /// `fedsyn client` for client `c`, enrolling with `token` when given.
    fn start_client(&self, c: usize, url: &str, token: Option<&str>) -> Child {
        self.start_client_with(c, url, token, &[])
    }

    /// [`Setup::start_client`] with `extra` arguments.
    fn start_client_with(&self, c: usize, url: &str, token: Option<&str>, extra: &[&str]) -> Child {
        let line = format!(
            "client --json --server {url} --data {} --state-dir {} --max-wait-seconds 120",
            self.dir.join(format!("client-{c}.jsonl")).display(),
            self.state_dir(c).display()
        );
        let mut args = words(&line);
        if let Some(token) = token {
            args.extend(["--enroll", token]);
        }
        args.extend(extra);
        let log = std::fs::File::create(self.dir.join(format!("client-{c}.log"))).unwrap();
        fedsyn_command(&args)
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("fedsyn client starts")
    }

    /// `fedsyn serve` on the run folder, with `extra` arguments; returns the process and its
    /// URL (read from the `listening on` line).
    fn start_server(&self, extra: &[&str]) -> (Child, String) {
        let line = format!(
            "serve --config {} --out {} --exit-when-finished",
            self.dir.join("config.toml").display(),
            self.run_dir().display()
        );
        let mut args = words(&line);
        args.extend(extra);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut child = fedsyn_command(&args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("fedsyn serve starts");
        match listening_url(child.stdout.take().unwrap()) {
            Some(url) => (child, url),
            None => {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                self.fail(
                    &mut [&mut child],
                    &format!("the server did not start: {log}"),
                )
            }
        }
    }

    fn enrolment_tokens(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.run_dir().join("enrolment-tokens.txt")).unwrap();
        let tokens: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(tokens.len(), self.clients);
        tokens
    }

    /// Fails naming the logs' folder, after killing `children`.
    fn fail(&self, children: &mut [&mut Child], message: &str) -> ! {
        for child in children {
            let _ = child.kill();
        }
        panic!("{message} (logs in {})", self.dir.display());
    }
}

/// The run configuration: tiny prompts and generations, 2 rounds, every client in every
/// round, a round closing once all of them submitted.
fn config(clients: usize) -> String {
    // `[data]` is required by the configuration schema; `fedsyn serve` never reads private data.
    let extra = format!(
        r#"[eval]
fid = false

[privacy]
epsilon = 2.0
delta = 1e-5
rounds = 2

[serve]
min_clients = {clients}
round_deadline_seconds = 600
quorum = 1.0
rate_limit_per_minute = 6000
"#
    );
    tiny_config("serve-e2e", "train = \"sotu\"", &extra)
}

/// The URL of `listening on URL`, the first line the server prints; `None` when it exits or
/// prints something else first.
fn listening_url(stdout: ChildStdout) -> Option<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = sender.send(line);
        }
        // Keep draining so that the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = receiver.recv_timeout(Duration::from_secs(300)).ok()?;
    Some(line.strip_prefix("listening on ")?.trim().to_string())
}

/// `GET path` on `url` (plain HTTP), with the bearer `token` when given: status and body.
fn http_get(url: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    http(url, "GET", path, token, None)
}

/// `POST path` on `url` (plain HTTP) with a JSON `body`, with the bearer `token` when given:
/// status and body.
fn http_post(url: &str, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
    http(url, "POST", path, token, Some(body))
}

/// One request of `method` over a fresh connection: status and body; `None` when no answer.
fn http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let host = url.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let content = body.map_or(String::new(), |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )
    });
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{authorization}{content}Connection: \
         close\r\n\r\n{}",
        body.unwrap_or("")
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A client of a secure run driven by the test, over HTTP: it enrols with `enrolment`, and in
/// each round takes part in the SecAgg+ session until step `leave_before` (which it never
/// answers), sending `scores` as its vector if it gets that far. Returns the rounds it helped
/// unmask.
fn scripted_secure_client(
    url: &str,
    enrolment: &str,
    scores: &[f64],
    leave_before: Step,
) -> Vec<u64> {
    let body = serde_json::json!({ "enrolment_token": enrolment }).to_string();
    let (status, reply) = http_post(url, "/v1/enrol", None, &body).unwrap();
    assert_eq!(status, 201, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    let token = reply["token"].as_str().unwrap().to_string();
    let started = Instant::now();
    let mut seen_rounds = Vec::new();
    let mut unmasked = Vec::new();
    loop {
        assert!(started.elapsed() < RUN_TIMEOUT, "the run did not finish");
        let pause = || std::thread::sleep(Duration::from_millis(100));
        let Some((200, next)) = http_get(url, "/v1/tasks/next", Some(&token)) else {
            pause();
            continue;
        };
        let next: Value = serde_json::from_str(&next).unwrap();
        match next["state"].as_str().unwrap() {
            "finished" => return unmasked,
            "task" => {}
            _ => {
                pause();
                continue;
            }
        }
        assert_eq!(next["aggregation"], "secagg+");
        let round = next["round"].as_u64().unwrap();
        if seen_rounds.contains(&round) {
            pause();
            continue;
        }
        seen_rounds.push(round);
        let clip = next["clip"].as_f64().unwrap();
        let mut session: Option<ClientSession> = None;
        loop {
            let Some((status, view)) =
                http_get(url, &format!("/v1/rounds/{round}/secagg"), Some(&token))
            else {
                pause();
                continue;
            };
            if status == 404 {
                pause();
                continue;
            }
            assert_eq!(status, 200, "{view}");
            let view: SessionView = serde_json::from_str(&view).unwrap();
            if !view.participant || view.step >= leave_before {
                break;
            }
            if view.received {
                pause();
                continue;
            }
            let message = match view.step {
                Step::Keys => {
                    let client = ClientSession::new(round, view.session).unwrap();
                    let keys = client.keys();
                    session = Some(client);
                    keys
                }
                Step::Shares => session
                    .as_mut()
                    .unwrap()
                    .share_keys(view.roster.as_ref().unwrap())
                    .unwrap(),
                Step::Masked => session
                    .as_mut()
                    .unwrap()
                    .mask(
                        view.inbox.as_ref().unwrap(),
                        &secure_aggregation::encode(scores, clip).unwrap(),
                    )
                    .unwrap(),
                Step::Unmask => session
                    .as_mut()
                    .unwrap()
                    .unmask(view.survivors.as_ref().unwrap())
                    .unwrap(),
                Step::Done => break,
            };
            let path = format!("/v1/rounds/{round}/secagg/{}", view.session);
            let body = serde_json::to_string(&message).unwrap();
            let (status, reply) = http_post(url, &path, Some(&token), &body).unwrap();
            assert!(status == 202 || status == 200, "{status}: {reply}");
            if view.step == Step::Unmask {
                unmasked.push(round);
                break;
            }
        }
    }
}

/// The value of the Prometheus sample `name` (without labels) in `/metrics`.
fn metric(url: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(url, "/metrics", None)?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Resident and proportional set sizes of a process, in KiB (0 once it has exited).
fn memory_kib(pid: u32) -> (u64, u64) {
    let field = |file: &str, key: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

/// The peak of the summed RSS and PSS of a set of processes, sampled.
#[derive(Default)]
struct MemoryPeak {
    rss_kib: u64,
    pss_kib: u64,
}

impl MemoryPeak {
    fn sample(&mut self, pids: &[u32]) {
        let (rss, pss) = pids
            .iter()
            .map(|&pid| memory_kib(pid))
            .fold((0, 0), |(r, p), (rss, pss)| (r + rss, p + pss));
        self.rss_kib = self.rss_kib.max(rss);
        self.pss_kib = self.pss_kib.max(pss);
    }
}

/// Waits for every client to exit, sampling their memory; returns each one's summary.
fn wait_for_clients(
    setup: &Setup,
    server: &mut Child,
    clients: &mut [Child],
    peak: &mut MemoryPeak,
) -> Vec<Value> {
    let started = Instant::now();
    let mut summaries = vec![Value::Null; clients.len()];
    let mut running: Vec<usize> = (0..clients.len()).collect();
    while !running.is_empty() {
        let pids: Vec<u32> = running.iter().map(|&c| clients[c].id()).collect();
        peak.sample(&pids);
        let mut still = Vec::new();
        for c in running {
            match clients[c].try_wait().unwrap() {
                None => still.push(c),
                Some(status) if status.success() => {
                    let mut stdout = String::new();
                    let pipe = clients[c].stdout.as_mut().unwrap();
                    pipe.read_to_string(&mut stdout).unwrap();
                    summaries[c] = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
                        panic!("client {c} printed no JSON summary ({e}): {stdout}")
                    });
                }
                Some(status) => {
                    let mut all: Vec<&mut Child> = clients.iter_mut().collect();
                    all.push(server);
                    setup.fail(&mut all, &format!("client {c} failed: {status}"));
                }
            }
        }
        running = still;
        if started.elapsed() > RUN_TIMEOUT {
            let mut all: Vec<&mut Child> = clients.iter_mut().collect();
            all.push(server);
            setup.fail(&mut all, "the clients did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    summaries
}

/// Each client's summary says it submitted both rounds.
fn assert_both_rounds_submitted(summaries: &[Value]) {
    for summary in summaries {
        assert_eq!(
            summary["rounds_submitted"],
            serde_json::json!([0, 1]),
            "{summary}"
        );
    }
}

/// Waits for the server to exit by itself (`--exit-when-finished`, once every client has
/// been told the run is finished) and checks that it exits cleanly.
fn wait_for_exit(setup: &Setup, server: &mut Child) {
    let started = Instant::now();
    loop {
        if let Some(status) = server.try_wait().unwrap() {
            if status.success() {
                return;
            }
            setup.fail(&mut [], &format!("the server failed: {status}"));
        }
        if started.elapsed() > Duration::from_secs(120) {
            setup.fail(&mut [server], "the server did not exit after the run");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks the finished run: one ledger event per released round (0 and 1), one metrics row
/// each, the synthetic set, and none of the clients' texts in any file the server wrote.
fn check_finished_run(setup: &Setup) {
    let run = setup.run_dir();
    let ledger = Ledger::load(&run.join("ledger.json")).unwrap();
    let rounds: Vec<Option<u64>> = ledger.events.iter().map(|e| e.round).collect();
    assert_eq!(
        rounds,
        [Some(0), Some(1)],
        "one ledger event per released round"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let released: Vec<u64> = metrics
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["round"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(released, [0, 1], "each round released once");
    let synthetic = std::fs::read_to_string(run.join("synthetic.jsonl")).unwrap();
    assert_eq!(synthetic.lines().count(), 3);

    let mut files = Vec::new();
    collect_files(&run, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("server.sqlite")),
        "{files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for c in 0..setup.clients {
            for (t, text) in client_texts(c).iter().enumerate() {
                let marker = format!("qx{c:03}z{t}");
                assert!(
                    !contains(&bytes, marker.as_bytes()) && !contains(&bytes, text.as_bytes()),
                    "client {c}'s text {t} is in {}",
                    file.display()
                );
            }
        }
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn fifty_client_processes_complete_two_rounds() {
    const CLIENTS: usize = 50;
    let Some(setup) = Setup::new("fifty", CLIENTS) else {
        return;
    };
    // Two clients embed their own texts (the model load on a cache miss); the others find
    // their profile prepared.
    setup.prepare_profiles(2..CLIENTS);
    let started = Instant::now();
    let (mut server, url) =
        setup.start_server(&["--bind", "127.0.0.1:0", "--enrolment-tokens", "50"]);
    let tokens = setup.enrolment_tokens();
    let mut clients: Vec<Child> = (0..CLIENTS)
        .map(|c| setup.start_client(c, &url, Some(&tokens[c])))
        .collect();
    let mut peak = MemoryPeak::default();
    let summaries = wait_for_clients(&setup, &mut server, &mut clients, &mut peak);
    wait_for_exit(&setup, &mut server);
    eprintln!(
        "{CLIENTS} clients, 2 rounds in {:.1} s; peak summed client RSS {:.0} MiB, PSS {:.0} MiB \
         ({:.1} MiB PSS per client)",
        started.elapsed().as_secs_f64(),
        mib(peak.rss_kib),
        mib(peak.pss_kib),
        mib(peak.pss_kib) / CLIENTS as f64
    );

    let mut ids: Vec<&str> = summaries
        .iter()
        .map(|s| s["client_id"].as_str().unwrap())
        .collect();
    for summary in &summaries {
        assert_eq!(
            summary["rounds_submitted"],
            serde_json::json!([0, 1]),
            "{summary}"
        );
        assert_eq!(
            summary["rounds_refused"],
            serde_json::json!([]),
            "{summary}"
        );
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CLIENTS, "every client enrolled as itself");
    for c in 0..CLIENTS {
        let credentials = setup.state_dir(c).join("client.json");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&credentials)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", credentials.display());
        }
    }
    // `fedsyn client` does not link libtorch (the two cold clients embedded in a child
    // `fedsyn-ml client-embed` that has exited): a few MB each, not the ~400 MB of a libtorch
    // process.
    assert!(
        mib(peak.pss_kib) / (CLIENTS as f64) < 50.0,
        "clients hold {:.0} MiB PSS each",
        mib(peak.pss_kib) / CLIENTS as f64
    );
    setup.check_finished_run_and_remove();
}

#[test]
fn a_server_killed_mid_round_resumes_and_charges_each_round_once() {
    const CLIENTS: usize = 8;
    let Some(setup) = Setup::new("kill", CLIENTS) else {
        return;
    };
    setup.prepare_profiles(0..CLIENTS);
    let (mut server, url) = setup.start_server(&[
        "--bind",
        "127.0.0.1:0",
        "--enrolment-tokens",
        &CLIENTS.to_string(),
    ]);
    let port = url.rsplit(':').next().unwrap().to_string();
    let tokens = setup.enrolment_tokens();
    let mut clients: Vec<Child> = (0..CLIENTS - 1)
        .map(|c| setup.start_client(c, &url, Some(&tokens[c])))
        .collect();
    // The last client enrols (round 0 needs every client) and is killed at once, before the
    // round opens: round 0 then waits for its submission, so the server is killed mid-round
    // whatever the timing. It comes back after the server's restart, from its credentials.
    let last = CLIENTS - 1;
    let mut late = setup.start_client(last, &url, Some(&tokens[last]));
    let credentials = setup.state_dir(last).join("client.json");
    let started = Instant::now();
    while !credentials.exists() {
        if started.elapsed() > Duration::from_secs(300) {
            setup.fail(
                &mut [&mut server, &mut late],
                "the last client never enrolled",
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    late.kill().unwrap();
    late.wait().unwrap();

    // Kill -9 once the server has accepted a submission of round 0 and released nothing.
    loop {
        // The operator's status holds the open round's submission count (`/metrics` does not:
        // it is a statistic of the un-noised data).
        let admin = std::fs::read_to_string(setup.run_dir().join("admin-token")).unwrap();
        let accepted = http_get(&url, "/v1/admin/run", Some(admin.trim()))
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|status| status["submitted"].as_u64())
            .unwrap_or(0);
        if accepted >= 1 {
            let released = metric(&url, "fedsyn_rounds_released_total");
            assert_eq!(
                released,
                Some(0.0),
                "round 0 cannot close without the last client"
            );
            break;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let mut all: Vec<&mut Child> = clients.iter_mut().collect();
            all.push(&mut server);
            setup.fail(&mut all, "no submission of round 0 was accepted");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(!setup.run_dir().join("synthetic.jsonl").exists());

    // The same run directory and port; the clients have been retrying meanwhile.
    let (mut server, url) = setup.start_server(&["--bind", &format!("127.0.0.1:{port}")]);
    clients.push(setup.start_client(last, &url, None));
    let mut peak = MemoryPeak::default();
    let summaries = wait_for_clients(&setup, &mut server, &mut clients, &mut peak);
    wait_for_exit(&setup, &mut server);
    for summary in &summaries {
        let submitted = summary["rounds_submitted"].as_array().unwrap();
        assert!(submitted.contains(&Value::from(1)), "{summary}");
    }
    setup.check_finished_run_and_remove();
}

#[test]
fn clients_join_over_https_trusting_the_servers_certificate() {
    const CLIENTS: usize = 3;
    let Some(setup) = Setup::new("tls", CLIENTS) else {
        return;
    };
    setup.prepare_profiles(0..CLIENTS);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (setup.dir.join("cert.pem"), setup.dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let (mut server, url) = setup.start_server(&[
        "--bind",
        "127.0.0.1:0",
        "--enrolment-tokens",
        &CLIENTS.to_string(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let url = url.replace("https://127.0.0.1", "https://localhost");
    assert!(url.starts_with("https://localhost:"), "{url}");
    let tokens = setup.enrolment_tokens();

    // Without --ca-cert the self-signed certificate is not trusted: the client stops at once
    // (no retry can mend it) and its token stays unused.
    let output = fedsyn_command(&[
        "client",
        "--server",
        &url,
        "--enroll",
        &tokens[0],
        "--data",
        setup.dir.join("client-0.jsonl").to_str().unwrap(),
        "--state-dir",
        setup.state_dir(0).to_str().unwrap(),
        "--max-wait-seconds",
        "60",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("POST /v1/enrol"), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(
        !stderr.contains("retry 1"),
        "a certificate error is not retried: {stderr}"
    );
    assert!(!setup.state_dir(0).join("client.json").exists());

    let ca = ["--ca-cert", cert.to_str().unwrap()];
    let mut clients: Vec<Child> = (0..CLIENTS)
        .map(|c| setup.start_client_with(c, &url, Some(&tokens[c]), &ca))
        .collect();
    let summaries = wait_for_clients(
        &setup,
        &mut server,
        &mut clients,
        &mut MemoryPeak::default(),
    );
    wait_for_exit(&setup, &mut server);
    assert_both_rounds_submitted(&summaries);
    setup.check_finished_run_and_remove();
}

#[test]
fn a_secure_run_releases_each_round_with_clients_leaving_mid_session_and_no_vector_in_the_clear() {
    // Five `fedsyn client` processes and three clients scripted here: one sends a planted
    // vector through every step, one leaves after the keys step, one after the shares step
    // (its masks are removed with its mask key, rebuilt from its neighbours' shares).
    const PROCESSES: usize = 5;
    let Some(setup) = Setup::new("secagg", PROCESSES + 3) else {
        return;
    };
    let config = std::fs::read_to_string(setup.dir.join("config.toml")).unwrap();
    let config = config.replace(
        "round_deadline_seconds = 600",
        "round_deadline_seconds = 30\naggregation = \"secagg+\"\nsecagg_step_seconds = 5",
    );
    std::fs::write(setup.dir.join("config.toml"), config).unwrap();
    setup.prepare_profiles(0..PROCESSES);
    let (mut server, url) =
        setup.start_server(&["--bind", "127.0.0.1:0", "--enrolment-tokens", "8"]);
    let tokens = setup.enrolment_tokens();
    // Nine candidates (3 prompts × 3); a vector no real client would send.
    let planted: Vec<f64> = (0..9)
        .map(|i| 0.0123 * (i as f64 + 1.0) * if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let scripted: Vec<_> = [(Step::Done, 5), (Step::Shares, 6), (Step::Masked, 7)]
        .into_iter()
        .map(|(leave_before, c)| {
            let (url, token, planted) = (url.clone(), tokens[c].clone(), planted.clone());
            std::thread::spawn(move || scripted_secure_client(&url, &token, &planted, leave_before))
        })
        .collect();
    let mut clients: Vec<Child> = (0..PROCESSES)
        .map(|c| setup.start_client(c, &url, Some(&tokens[c])))
        .collect();
    let summaries = wait_for_clients(
        &setup,
        &mut server,
        &mut clients,
        &mut MemoryPeak::default(),
    );
    wait_for_exit(&setup, &mut server);
    let unmasked: Vec<Vec<u64>> = scripted.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(unmasked, [vec![0, 1], vec![], vec![]]);
    assert_both_rounds_submitted(&summaries);
    check_finished_run(&setup);
    let statement = std::fs::read_to_string(setup.run_dir().join("privacy-statement.md")).unwrap();
    assert!(statement.contains("SecAgg+"), "{statement}");

    // The planted vector, in every form it could take, is in no file the server wrote.
    let clip = 1.0;
    let encoded = secure_aggregation::encode(&planted, clip).unwrap();
    let words: Vec<u8> = encoded.iter().flat_map(|w| w.to_le_bytes()).collect();
    let masked_json =
        serde_json::to_string(&secure_aggregation::MaskedInput { masked: encoded }).unwrap();
    let base64 = masked_json.split('"').nth(3).unwrap().to_string();
    let floats: Vec<u8> = planted.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut files = vec![setup.dir.join("server.log")];
    collect_files(&setup.run_dir(), &mut files);
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for (form, needle) in [
            ("ring words", &words),
            ("base64", &base64.clone().into_bytes()),
            ("f64", &floats),
        ] {
            assert!(
                !contains(&bytes, needle),
                "the planted vector ({form}) is in {}",
                file.display()
            );
        }
    }
    std::fs::remove_dir_all(&setup.dir).unwrap();
}

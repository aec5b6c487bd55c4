//! One SecAgg+ session in one process, at the scale of POPri's paper: J·K = 18,000 candidates
//! and 1,000 clients (override with `SECAGG_DIM`, `SECAGG_CLIENTS`, `SECAGG_NEIGHBOURS`,
//! `SECAGG_DROPOUT`), beside the plain mode (each client's clipped f64 vector as JSON, summed
//! by the server). Every message crosses as JSON text, as over HTTP. Prints one JSON object:
//! per-client CPU seconds and upload bytes (the slowest client and the mean), the server's CPU
//! seconds per round, and the sum's check against the plain sum.
//!
//! CPU time is measured per thread (`CLOCK_THREAD_CPUTIME_ID`) around each party's own work,
//! so a client's figure is what one phone-class core would spend on it (at this machine's
//! speed), independent of the other clients simulated in the same process.

use std::time::Instant;

use secure_aggregation::{
    decode, encode, per_client_units, Aggregator, ClientMessage, ClientSession, SessionView, Step,
    Unmasker,
};

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A deterministic score vector of norm about 1 (a standardised, clipped POPri vector).
fn scores(client: usize, dim: usize) -> Vec<f64> {
    let mut state = client as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    (0..dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state % 2001) as f64 / 1000.0 - 1.0) * 1.7 / (dim as f64).sqrt()
        })
        .collect()
}

fn main() {
    let dim = env("SECAGG_DIM", 18_000);
    let clients = env("SECAGG_CLIENTS", 1_000);
    let neighbours = env("SECAGG_NEIGHBOURS", 64);
    let dropout_percent = env("SECAGG_DROPOUT", 5);
    let clip = 1.0;
    let ids: Vec<String> = (0..clients).map(|c| format!("client-{c:05}")).collect();
    // Clients that leave before their masked input (their masks are removed from shares).
    let leaves = |c: usize| c % 100 < dropout_percent;

    let wall = Instant::now();
    let mut server_cpu = 0.0;
    let mut client_cpu = vec![0.0f64; clients];
    let mut client_upload = vec![0usize; clients];
    let mut client_download = vec![0usize; clients];

    let clock = thread_cpu_seconds();
    let mut server = Aggregator::new(0, &ids, dim, neighbours).expect("a valid session");
    server_cpu += thread_cpu_seconds() - clock;
    let mut sessions: Vec<Option<ClientSession>> = (0..clients).map(|_| None).collect();
    let mut encoded: Vec<Option<Vec<u64>>> = vec![None; clients];
    for step in [Step::Keys, Step::Shares, Step::Masked, Step::Unmask] {
        for c in 0..clients {
            if step >= Step::Masked && leaves(c) {
                continue;
            }
            let clock = thread_cpu_seconds();
            let view = server.view(&ids[c]).expect("in the cohort");
            let view_text = serde_json::to_string(&view).expect("serialises");
            server_cpu += thread_cpu_seconds() - clock;
            if !view.participant {
                continue;
            }
            client_download[c] += view_text.len();
            let clock = thread_cpu_seconds();
            let view: SessionView = serde_json::from_str(&view_text).expect("parses");
            let session = &mut sessions[c];
            let message = match step {
                Step::Keys => {
                    let client = ClientSession::new(0, view.session).expect("keys");
                    let keys = client.keys();
                    *session = Some(client);
                    keys
                }
                Step::Shares => session
                    .as_mut()
                    .unwrap()
                    .share_keys(view.roster.as_ref().unwrap())
                    .expect("shares"),
                Step::Masked => {
                    let vector = encode(&scores(c, dim), clip).expect("encodes");
                    let message = session
                        .as_mut()
                        .unwrap()
                        .mask(view.inbox.as_ref().unwrap(), &vector)
                        .expect("masks");
                    encoded[c] = Some(vector);
                    message
                }
                Step::Unmask => session
                    .as_mut()
                    .unwrap()
                    .unmask(view.survivors.as_ref().unwrap())
                    .expect("unmasks"),
                Step::Done => unreachable!(),
            };
            let text = serde_json::to_string(&message).expect("serialises");
            client_cpu[c] += thread_cpu_seconds() - clock;
            client_upload[c] += text.len();
            let clock = thread_cpu_seconds();
            let message: ClientMessage = serde_json::from_str(&text).expect("parses");
            server.receive(&ids[c], message).expect("accepted");
            server_cpu += thread_cpu_seconds() - clock;
        }
        let clock = thread_cpu_seconds();
        server.advance();
        server_cpu += thread_cpu_seconds() - clock;
    }
    let clock = thread_cpu_seconds();
    let sum = server
        .unmasker()
        .and_then(Unmasker::finish)
        .expect("unmasks");
    let grid = dp_mechanics::grid_for(clip);
    let sensitivity = clip * (1.0 + 2f64.powi(-30)) + grid * (dim as f64).sqrt() / 2.0;
    let units = decode(&sum, clients as i64 * per_client_units(sensitivity, grid));
    server_cpu += thread_cpu_seconds() - clock;
    let secure_wall = wall.elapsed().as_secs_f64();

    let mut plain = vec![0i64; dim];
    for vector in encoded.iter().flatten() {
        plain
            .iter_mut()
            .zip(vector)
            .for_each(|(p, &v)| *p += v as i64);
    }
    assert_eq!(units, plain, "the unmasked sum is the plain sum");

    // The plain mode: each client clips and sends its f64 vector as JSON; the server parses,
    // re-clips and sums on the grid.
    let mut plain_client_cpu = 0.0f64;
    let mut plain_upload = 0usize;
    let mut plain_server_cpu = 0.0;
    let mut total = vec![0i64; dim];
    for c in (0..clients).filter(|&c| !leaves(c)) {
        let clock = thread_cpu_seconds();
        let mut vector = scores(c, dim);
        dp_mechanics::clip_in_place(&mut vector, clip).expect("clips");
        let text = serde_json::to_string(&serde_json::json!({ "scores": vector })).unwrap();
        plain_client_cpu = plain_client_cpu.max(thread_cpu_seconds() - clock);
        plain_upload = plain_upload.max(text.len());
        let clock = thread_cpu_seconds();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut values: Vec<f64> = parsed["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        dp_mechanics::clip_in_place(&mut values, clip).expect("clips");
        total
            .iter_mut()
            .zip(&values)
            .for_each(|(t, v)| *t += (v / grid).round() as i64);
        plain_server_cpu += thread_cpu_seconds() - clock;
    }

    let finishers: Vec<usize> = (0..clients).filter(|&c| !leaves(c)).collect();
    let mean = |v: &[f64]| finishers.iter().map(|&c| v[c]).sum::<f64>() / finishers.len() as f64;
    let max_f = |v: &[f64]| finishers.iter().map(|&c| v[c]).fold(0.0, f64::max);
    let upload: Vec<f64> = client_upload.iter().map(|&b| b as f64).collect();
    let download: Vec<f64> = client_download.iter().map(|&b| b as f64).collect();
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "secagg_session",
            "dim": dim,
            "clients": clients,
            "neighbours": neighbours,
            "left_before_masked_input": clients - finishers.len(),
            "secure": {
                "client_cpu_s_mean": mean(&client_cpu),
                "client_cpu_s_max": max_f(&client_cpu),
                "client_upload_bytes_mean": mean(&upload),
                "client_upload_bytes_max": max_f(&upload),
                "client_download_bytes_max": max_f(&download),
                "server_cpu_s": server_cpu,
                "one_process_wall_s": secure_wall,
            },
            "plain": {
                "client_cpu_s_max": plain_client_cpu,
                "client_upload_bytes_max": plain_upload,
                "server_cpu_s": plain_server_cpu,
            },
        })
    );
}

//! `fedsyn client`'s handling of bad input (exit 2, a message naming the problem) and of a
//! server that refuses the enrolment or cannot be reached, without models: the client's
//! profile is planted in its state folder for a stand-in embedder folder.

mod common;
use common::{assert_refused, fedsyn, scratch_dir, words};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use remote_client::profile::store_profile;

/// A data file with `lines`, and a state folder whose profile matches its texts for a
/// stand-in embedder folder (the profile key reads only these three files).
fn setup(name: &str, lines: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch_dir(name);
    let data = dir.join("my.jsonl");
    std::fs::write(&data, lines).unwrap();
    let embedder = dir.join("embedder");
    std::fs::create_dir_all(&embedder).unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::write(embedder.join(file), "{}").unwrap();
    }
    let state = dir.join("state");
    if let Ok(texts) = remote_client::read_client_texts(&data) {
        store_profile(&texts, &embedder, &state, vec![0.5; 4]).unwrap();
    }
    (data, embedder, state)
}

fn client(server: &str, data: &Path, embedder: &Path, state: &Path) -> std::process::Output {
    let line = format!(
        "client --enroll token --data {} --embedder {} --state-dir {} --max-wait-seconds 1",
        data.display(),
        embedder.display(),
        state.display()
    );
    // The server argument may hold spaces (it is the bad input under test).
    let mut args = words(&line);
    args.extend(["--server", server]);
    fedsyn(&args)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_arguments_and_data_exit_2_naming_the_problem() {
    let (data, embedder, state) = setup("client-bad", "{\"text\": \"a private note\"}\n");
    for (url, expected) in [
        ("127.0.0.1:8080", "does not start with http:// or https://"),
        ("http://host/v1", "has a path"),
        ("not a url", "--server"),
    ] {
        assert_refused(&client(url, &data, &embedder, &state), expected);
    }
    let dir = data.parent().unwrap();
    let absent = dir.join("absent.jsonl");
    let output = client("http://127.0.0.1:9", &absent, &embedder, &state);
    assert_refused(&output, "absent.jsonl");

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let output = client("http://127.0.0.1:9", &bad, &embedder, &state);
    assert_refused(&output, "bad.jsonl:2: field \"text\" is missing");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_refused_enrolment_exits_2_and_an_absent_server_exits_1() {
    let (data, embedder, state) = setup("client-refused", "{\"text\": \"a private note\"}\n");
    // A stand-in server that refuses every enrolment token, and records what it was sent.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            request.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        request.push_str(&String::from_utf8(body).unwrap());
        let problem = r#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"unknown or used enrolment token"}"#;
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/problem+json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{problem}",
            problem.len()
        )
        .unwrap();
        request
    });
    let output = client(&url, &data, &embedder, &state);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("enrolment refused")
            && stderr(&output).contains("unknown or used enrolment token"),
        "{}",
        stderr(&output)
    );
    let request = server.join().unwrap();
    assert!(request.starts_with("POST /v1/enrol "), "{request}");
    assert!(
        request.ends_with(r#"{"enrolment_token":"token"}"#),
        "{request}"
    );
    assert!(!request.contains("private note"), "{request}");
    assert!(!state.join("client.json").exists());

    // Nothing listens there any more: retried for --max-wait-seconds, then exit 1.
    let output = client(&url, &data, &embedder, &state);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("gave up after"),
        "{}",
        stderr(&output)
    );
    std::fs::remove_dir_all(data.parent().unwrap()).unwrap();
}

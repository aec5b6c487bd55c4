//! Federated JSONL reading and per-client splitting.

use std::path::PathBuf;

use clients::{read_documents, ClientsError, Document, FederatedData};

/// A JSONL file with `contents` in a fresh temporary folder.
fn jsonl_file(name: &str, contents: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("fedsyn-clients-data-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("docs.jsonl");
    std::fs::write(&path, contents).unwrap();
    path
}

fn doc(client: &str, text: &str) -> Document {
    Document {
        client_id: client.to_string(),
        text: text.to_string(),
    }
}

#[test]
fn documents_are_read_in_order_and_blank_lines_skipped() {
    let path = jsonl_file(
        "ok",
        "{\"client_id\": \"b\", \"text\": \"first\", \"extra\": 1}\n\n  \n{\"client_id\":\"a\",\"text\":\"second\"}\n",
    );
    let docs = read_documents(&path).unwrap();
    assert_eq!(docs, [doc("b", "first"), doc("a", "second")]);
}

#[test]
fn every_bad_line_is_reported_with_its_file_line_and_the_fix() {
    let cases = [
        ("{\"client_id\": \"a\", \"text\": ", "not valid JSON"),
        ("[1, 2]", "a JSON array instead of an object"),
        ("{\"text\": \"hello\"}", "field \"client_id\" is missing"),
        (
            "{\"client_id\": 7, \"text\": \"hello\"}",
            "field \"client_id\" is a JSON number",
        ),
        ("{\"client_id\": \"a\"}", "field \"text\" is missing"),
        (
            "{\"client_id\": \"a\", \"text\": null}",
            "field \"text\" is a JSON null",
        ),
        (
            "{\"client_id\": \"a\", \"text\": \" \\n\\t\"}",
            "\"text\" is empty or only whitespace",
        ),
        (
            "{\"client_id\": \"\", \"text\": \"hello\"}",
            "field \"client_id\" is empty",
        ),
    ];
    for (i, (bad_line, problem)) in cases.iter().enumerate() {
        // One good line and a blank one first: the bad line is line 3.
        let contents = format!("{{\"client_id\": \"a\", \"text\": \"fine\"}}\n\n{bad_line}\n");
        let path = jsonl_file(&format!("bad{i}"), &contents);
        let err = read_documents(&path).unwrap_err();
        assert!(
            matches!(err, ClientsError::BadDocument { line: 3, .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{}:3: ", path.display())),
            "{message}"
        );
        assert!(message.contains(problem), "{message} lacks {problem}");
        assert!(
            message.contains("{\"client_id\": string, \"text\": string}"),
            "{message}"
        );
    }
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("fedsyn-clients-no-such-file.jsonl");
    let err = read_documents(&path).unwrap_err().to_string();
    assert!(err.contains("fedsyn-clients-no-such-file.jsonl"), "{err}");
}

/// `per_client[i]` documents for client `c{i}`, listed interleaved.
fn documents(per_client: &[usize]) -> Vec<Document> {
    let longest = per_client.iter().copied().max().unwrap_or(0);
    (0..longest)
        .flat_map(|k| {
            per_client
                .iter()
                .enumerate()
                .filter(move |(_, &n)| k < n)
                .map(move |(c, _)| doc(&format!("c{c}"), &format!("c{c} doc {k}")))
        })
        .collect()
}

#[test]
fn split_is_deterministic_and_sized_per_client() {
    let per_client = [1, 2, 10, 25, 7];
    let data = FederatedData::split(documents(&per_client), 0.1, 42).unwrap();
    assert_eq!(
        data,
        FederatedData::split(documents(&per_client), 0.1, 42).unwrap()
    );
    let ids: Vec<&str> = data.clients.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c0", "c1", "c2", "c3", "c4"]);
    let eval_sizes: Vec<usize> = data.clients.iter().map(|c| c.eval.len()).collect();
    // round(0.1·n), at least 1 when n ≥ 2, none for a single document.
    assert_eq!(eval_sizes, [0, 1, 1, 3, 1]);
    for (client, &n) in data.clients.iter().zip(&per_client) {
        assert_eq!(client.train.len() + client.eval.len(), n);
        // Every document once, each part in file order.
        let mut all: Vec<&String> = client.train.iter().chain(&client.eval).collect();
        all.sort_by_key(|text| text.rsplit(' ').next().unwrap().parse::<usize>().unwrap());
        let expected: Vec<String> = (0..n).map(|k| format!("{} doc {k}", client.id)).collect();
        assert_eq!(all, expected.iter().collect::<Vec<_>>());
        assert!(client.train.is_sorted_by_key(|t| t
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()));
    }
    assert_eq!(data.num_clients(), 5);
    assert_eq!(data.train_len(), 45 - 6);
    assert_eq!(data.eval_texts().len(), 6);
    assert_eq!(data.train_texts().len(), 39);
    assert_eq!(data.train_texts()[0], "c0 doc 0");
}

#[test]
fn a_clients_split_depends_on_the_seed_but_not_on_the_other_clients() {
    let held_out = |docs: Vec<Document>, seed: u64| {
        let data = FederatedData::split(docs, 0.3, seed).unwrap();
        data.clients
            .iter()
            .find(|c| c.id == "c3")
            .unwrap()
            .eval
            .clone()
    };
    let alone = held_out(documents(&[0, 0, 0, 20]), 9);
    assert_eq!(alone.len(), 6);
    assert_eq!(alone, held_out(documents(&[4, 9, 1, 20]), 9));
    assert_ne!(alone, held_out(documents(&[0, 0, 0, 20]), 10));
}

#[test]
fn split_rejects_fractions_outside_zero_to_one() {
    for fraction in [-0.1, 1.0, f64::NAN] {
        let err = FederatedData::split(documents(&[3]), fraction, 0).unwrap_err();
        assert!(err.to_string().contains("eval fraction"), "{err}");
    }
    let none = FederatedData::split(documents(&[3, 5]), 0.0, 0).unwrap();
    assert_eq!(none.eval_texts().len(), 0);
}

#[test]
fn separate_eval_files_keep_unknown_clients_for_evaluation_only() {
    let train = vec![doc("b", "b1"), doc("a", "a1"), doc("b", "b2")];
    let eval = vec![doc("a", "a-eval"), doc("z", "z-eval")];
    let data = FederatedData::from_train_eval(train, eval).unwrap();
    assert_eq!(data.num_clients(), 2);
    assert_eq!(data.clients[0].id, "a");
    assert_eq!(data.clients[0].eval, ["a-eval"]);
    assert_eq!(data.clients[1].train, ["b1", "b2"]);
    assert_eq!(data.eval_only, ["z-eval"]);
    assert_eq!(data.eval_texts(), ["a-eval", "z-eval"]);
}

//! End-to-end tests of `fedsyn embed`: the binary as a user runs it (forwarded by `fedsyn` to
//! `fedsyn-ml`).

mod common;
use common::{fedsyn, installed, scratch_dir, words};

use std::path::PathBuf;

use models::{Assets, SentenceEmbedder};
use serde_json::Value;

/// The all-MiniLM-L6-v2 folder; `None` (skip) when absent, a failure under CI.
fn minilm_dir() -> Option<PathBuf> {
    installed(Assets::discover().minilm_dir())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
        * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

#[test]
fn embeds_every_line_in_input_order_with_ids() {
    let Some(model_dir) = minilm_dir() else {
        return;
    };
    let dir = scratch_dir("ok");
    let input = dir.join("speeches.jsonl");
    let out = dir.join("embeddings.jsonl");
    // Lengths differ so that length-sorted batching reorders them; the first and last texts
    // are equal; one line has no id; a blank line is skipped.
    let texts = [
        "To be, or not to be.",
        "Now is the winter of our discontent made glorious summer by this sun of York; and all \
         the clouds that lour'd upon our house in the deep bosom of the ocean buried.",
        "Ça va? 😀",
        "To be, or not to be.",
    ];
    let lines = [
        format!(
            r#"{{"id": "a", "text": {}}}"#,
            serde_json::to_string(texts[0]).unwrap()
        ),
        format!(
            r#"{{"id": 7, "text": {}}}"#,
            serde_json::to_string(texts[1]).unwrap()
        ),
        String::new(),
        format!(
            r#"{{"text": {}, "other": 1}}"#,
            serde_json::to_string(texts[2]).unwrap()
        ),
        format!(
            r#"{{"id": "d", "text": {}}}"#,
            serde_json::to_string(texts[3]).unwrap()
        ),
    ];
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    let result = fedsyn(&words(&format!(
        "embed {} --device cpu --batch-size 2 --out {}",
        input.display(),
        out.display()
    )));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "fedsyn embed failed: {stderr}");

    let written: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each output line is JSON"))
        .collect();
    assert_eq!(written.len(), texts.len());
    let embeddings: Vec<Vec<f32>> = written
        .iter()
        .map(|line| {
            line["embedding"]
                .as_array()
                .expect("an embedding array")
                .iter()
                .map(|x| x.as_f64().expect("numbers") as f32)
                .collect()
        })
        .collect();
    let expected_ids = [
        Some(Value::from("a")),
        Some(Value::from(7)),
        None,
        Some(Value::from("d")),
    ];
    for (i, (line, embedding)) in written.iter().zip(&embeddings).enumerate() {
        assert_eq!(line["index"], i, "{line}");
        assert_eq!(line.get("id").cloned(), expected_ids[i], "{line}");
        assert_eq!(embedding.len(), 384);
        let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }

    // Order: each line holds the embedding of its own text.
    let embedder = SentenceEmbedder::load(&model_dir, tch::Device::Cpu).unwrap();
    let direct = embedder.embed(&texts, 1).unwrap();
    for (i, (from_cli, alone)) in embeddings.iter().zip(&direct).enumerate() {
        assert!(
            cosine(from_cli, alone) > 0.99999,
            "line {i} holds another text's embedding"
        );
    }
    assert!(cosine(&embeddings[0], &embeddings[3]) > 0.99999);
    assert!(cosine(&embeddings[0], &embeddings[1]) < 0.9);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_malformed_line_exits_2_and_names_the_line() {
    let dir = scratch_dir("bad");
    let input = dir.join("broken.jsonl");
    std::fs::write(&input, "{\"text\": \"fine\"}\n{\"text\": \"unterminated\n").unwrap();
    let result = fedsyn(&["embed", input.to_str().unwrap(), "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("broken.jsonl line 2") && stderr.contains("not valid JSON"),
        "{stderr}"
    );
    assert!(result.stdout.is_empty());

    std::fs::write(
        &input,
        "{\"text\": \"fine\"}\n\n{\"body\": \"no text here\"}\n",
    )
    .unwrap();
    let result = fedsyn(&["embed", input.to_str().unwrap(), "--device", "cpu"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("line 3") && stderr.contains("no field `text`") && stderr.contains("body"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

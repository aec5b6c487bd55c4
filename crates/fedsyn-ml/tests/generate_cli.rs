//! End-to-end tests of `fedsyn generate`: the binary as a user runs it (forwarded by `fedsyn`
//! to `fedsyn-ml`), checked against the transformers reference of
//! `scripts/reference/generator.py` (crates/models/tests/fixtures/generator_reference.json).

mod common;
use common::{fedsyn, installed, json_of};

use models::Assets;
use serde_json::Value;

/// Whether the SmolLM2 GGUF is installed; a failure under CI when it is not.
fn have_smollm2() -> bool {
    installed(Assets::discover().smollm2_gguf()).is_some()
}

/// The JSON report of a successful `fedsyn generate … --json`.
fn generate_json(args: &[&str]) -> Value {
    let mut all = vec!["generate", "--device", "cpu", "--json"];
    all.extend_from_slice(args);
    json_of(&all)
}

fn texts(report: &Value) -> Vec<String> {
    report["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| s["text"].as_str().expect("text").to_string())
        .collect()
}

/// The report counts as many prompt tokens as the transformers reference has.
fn assert_prompt_tokens_match(report: &Value, case: &Value) {
    let reference = case["prompt_ids"].as_array().unwrap().len();
    assert_eq!(report["prompt_tokens"], reference);
}

fn reference_case(index: usize) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tests/fixtures/generator_reference.json"
    );
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    reference["cases"][index].clone()
}

#[test]
fn greedy_output_is_transformers_greedy_output_in_every_row() {
    if !have_smollm2() {
        return;
    }
    let case = reference_case(2);
    let prompt = case["text"].as_str().unwrap();
    let report = generate_json(&[
        "--prompt",
        prompt,
        "--greedy",
        "--max-tokens",
        "24",
        "-n",
        "2",
    ]);
    let expected = case["greedy_text"].as_str().unwrap();
    assert_eq!(texts(&report), [expected, expected]);
    assert_eq!(report["samples"][0]["tokens"], 24);
    assert_eq!(report["samples"][0]["finish_reason"], "length");
    assert_prompt_tokens_match(&report, &case);
}

#[test]
fn chat_format_and_stop_strings_cut_the_greedy_answer() {
    if !have_smollm2() {
        return;
    }
    let case = reference_case(1);
    let prompt = case["text"].as_str().unwrap();
    let report = generate_json(&["--prompt", prompt, "--chat", "--greedy", "--stop", ","]);
    let full = case["greedy_text"].as_str().unwrap();
    let before_comma = &full[..full.find(',').expect("the reference answer has a comma")];
    assert_eq!(texts(&report), [before_comma]);
    assert_eq!(report["samples"][0]["finish_reason"], "stop");
    assert_prompt_tokens_match(&report, &case);
}

#[test]
fn seeded_sampling_repeats_and_rows_and_seeds_differ() {
    if !have_smollm2() {
        return;
    }
    let run = |seed: &str| {
        texts(&generate_json(&[
            "--prompt",
            "The river",
            "-n",
            "2",
            "--max-tokens",
            "12",
            "--seed",
            seed,
            "--temperature",
            "1.0",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
        ]))
    };
    let first = run("11");
    assert_eq!(first, run("11"), "the same seed must give the same samples");
    assert_ne!(first[0], first[1], "rows draw from different streams");
    assert_ne!(first, run("12"), "another seed gives other samples");
}

/// Decoding through weights packed once per generation (`FEDSYN_CPU_MATMUL=mkl-packed`)
/// samples what libtorch's per-call products sample, with the same log-probabilities, also
/// after finished rows are dropped (a stop string ends the rows at different steps, and the
/// weights are packed again for the rows left).
#[test]
fn packed_decoding_samples_what_per_call_products_sample() {
    if !have_smollm2() {
        return;
    }
    let run = |backend: &str| -> Value {
        let output = common::fedsyn_command(&[
            "generate",
            "--device",
            "cpu",
            "--json",
            "--prompt",
            "The river",
            "-n",
            "6",
            "--max-tokens",
            "24",
            "--seed",
            "5",
            "--temperature",
            "0.8",
            "--stop",
            ".",
            "--logprobs",
        ])
        .env("FEDSYN_CPU_MATMUL", backend)
        .output()
        .expect("fedsyn runs");
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let (per_call, packed) = (run("torch"), run("mkl-packed"));
    let lengths: Vec<u64> = per_call["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tokens"].as_u64().unwrap())
        .collect();
    assert!(
        lengths.iter().any(|&n| n < 24) && lengths.contains(&24),
        "some rows stop early, some run to the end: {lengths:?}"
    );
    for (a, b) in per_call["samples"]
        .as_array()
        .unwrap()
        .iter()
        .zip(packed["samples"].as_array().unwrap())
    {
        assert_eq!(a["token_ids"], b["token_ids"]);
        for (p, q) in a["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["logprobs"].as_array().unwrap())
        {
            let (p, q) = (p.as_f64().unwrap(), q.as_f64().unwrap());
            assert!((p - q).abs() < 1e-3, "log-probabilities {p} and {q}");
        }
    }
}

#[test]
fn bad_arguments_exit_with_status_2() {
    let cases: [&[&str]; 7] = [
        &["generate"],
        &["generate", "--prompt", "x", "--top-p", "0"],
        &["generate", "--prompt", "x", "--temperature", "-1"],
        &["generate", "--prompt", "x", "-n", "0"],
        &["generate", "--prompt", "x", "--max-tokens", "0"],
        &["generate", "--prompt", "x", "--device", "tpu"],
        &[
            "generate",
            "--prompt",
            "x",
            "--device",
            "cpu",
            "--model",
            "/nonexistent/model.gguf",
        ],
    ];
    for args in cases {
        let result = fedsyn(args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{args:?} says what is wrong");
    }
}

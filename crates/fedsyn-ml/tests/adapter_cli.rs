//! End-to-end tests of `fedsyn generate --adapter`: a PEFT adapter (the fixture written by
//! scripts/reference/peft_adapter.py) on the tiny Llama, sampled through the binary.

mod common;
use common::{assert_refused, fedsyn, path_str};

#[path = "../../models/tests/support/tiny_llama.rs"]
mod tiny_llama;

use std::process::Output;

use models::{Generator, SamplingParams};
use serde_json::Value;
use tiny_llama::{peft_adapter_dir, tiny_llama_dir};

const PROMPT: &str = "w5 w6 w7 w8";

/// `fedsyn generate` of PROMPT on the tiny Llama, greedy, with `extra` arguments.
fn generate(extra: &[&str]) -> Output {
    let model = tiny_llama_dir();
    let mut args = vec![
        "generate",
        "--device",
        "cpu",
        "--model",
        path_str(&model),
        "--prompt",
        PROMPT,
        "--greedy",
        "--max-tokens",
        "8",
        "--json",
    ];
    args.extend_from_slice(extra);
    fedsyn(&args)
}

fn sample_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "fedsyn failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    report["samples"][0]["text"]
        .as_str()
        .expect("a text")
        .to_string()
}

#[test]
fn generate_samples_from_the_adapted_model() {
    let adapter = peft_adapter_dir();
    let with_adapter = sample_text(&generate(&["--adapter", path_str(&adapter)]));
    let without = sample_text(&generate(&[]));
    assert!(!with_adapter.is_empty());
    assert_ne!(with_adapter, without, "the adapter changes the greedy text");

    // The same adapter loaded in-process gives the same text.
    let mut generator = Generator::load(&tiny_llama_dir(), tch::Device::Cpu).unwrap();
    generator.model_mut().load_adapter(&adapter).unwrap();
    let params = SamplingParams {
        max_new_tokens: 8,
        greedy: true,
        ..SamplingParams::default()
    };
    let expected = generator
        .generate(&[PROMPT.to_string()], false, &params)
        .unwrap();
    assert_eq!(with_adapter, expected[0].text);
}

#[test]
fn bad_adapter_folders_exit_with_status_2_and_the_reason() {
    let not_an_adapter = tiny_llama_dir();
    let cases = [
        ("/nonexistent/adapter", "no such folder"),
        (path_str(&not_an_adapter), "adapter_config.json"),
    ];
    for (dir, expected) in cases {
        let output = generate(&["--adapter", dir]);
        assert_refused(&output, expected);
    }
}

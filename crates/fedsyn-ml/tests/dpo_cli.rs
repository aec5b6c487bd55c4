//! End-to-end tests of `fedsyn dpo` on the tiny Llama fixture (word-level vocabulary
//! `w0 … w59`, end-of-sequence id 2): the binary as a user runs it, forwarded by `fedsyn` to
//! `fedsyn-ml`.

mod common;
use common::{fedsyn, json_of, scratch_dir, words};

#[path = "../../models/tests/support/tiny_llama.rs"]
mod tiny_llama;

use std::path::{Path, PathBuf};

use models::CausalLm;
use serde_json::Value;

/// Writes `lines` as a JSONL file in `dir`.
fn pairs_file(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Eight learnable pairs: chosen completions use low word ids, rejected ones high ids.
fn toy_lines() -> Vec<String> {
    (0..8)
        .map(|i| {
            serde_json::json!({
                "prompt": format!("w{} w{} w{}", 4 + i, 20 + 2 * i, 9 + i),
                "chosen": format!("w{} w{} w7", 5 + i % 3, 6 + i % 4),
                "rejected": format!("w{} w{}", 50 + i % 5, 58 - i % 3),
            })
            .to_string()
        })
        .collect()
}

/// `fedsyn dpo` on the tiny Llama with small-model settings, plus `extra`; its JSON report.
fn dpo_json(pairs: &Path, out: &Path, extra: &[&str]) -> Value {
    let model = tiny_llama::tiny_llama_dir();
    let line = format!(
        "dpo --json --device cpu --model {} --pairs {} --out {} --lora-r 4 --lora-alpha 8 \
         --beta 0.1 --lr 5e-3 --schedule constant --batch-size 4 --grad-accum 1",
        model.display(),
        pairs.display(),
        out.display()
    );
    let mut args = words(&line);
    args.extend_from_slice(extra);
    json_of(&args)
}

fn step_values(report: &Value, field: &str) -> Vec<f64> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            s[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} in {s}"))
        })
        .collect()
}

#[test]
fn trains_saves_a_loadable_adapter_and_resumes() {
    let dir = scratch_dir("train");
    let pairs = pairs_file(&dir, "pairs.jsonl", &toy_lines());
    let out = dir.join("round1");
    let report = dpo_json(&pairs, &out, &["--epochs", "4"]);
    assert_eq!(report["pairs"], 8);
    assert_eq!(report["global_step"], 8);
    let accuracy = step_values(&report, "rewards/accuracies");
    let margin = step_values(&report, "rewards/margins");
    assert_eq!(accuracy[0], 0.0, "a fresh adapter is the reference");
    assert!(accuracy[7] >= 0.75 && margin[7] > margin[0], "{report:#}");

    let mut model = CausalLm::from_hf_dir(&tiny_llama::tiny_llama_dir(), tch::Device::Cpu).unwrap();
    model.load_adapter(&out).expect("the saved adapter loads");
    assert_eq!(model.lora_config().map(|c| c.rank), Some(4));
    for file in [
        "trainer_state.json",
        "optimizer.safetensors",
        "optimizer.json",
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }

    let resumed = dpo_json(
        &pairs,
        &dir.join("round2"),
        &["--resume", out.to_str().unwrap(), "--max-steps", "1"],
    );
    assert_eq!(resumed["global_step"], 9);
    assert_eq!(step_values(&resumed, "step"), [9.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sft_reads_prompt_and_completion_lines() {
    let dir = scratch_dir("sft");
    let lines: Vec<String> = (0..4)
        .map(|i| {
            format!(
                r#"{{"prompt": "w{i} w3", "completion": "w{} w8 w9"}}"#,
                10 + i
            )
        })
        .collect();
    let pairs = pairs_file(&dir, "sft.jsonl", &lines);
    let report = dpo_json(
        &pairs,
        &dir.join("out"),
        &["--loss", "sft", "--epochs", "3"],
    );
    assert_eq!(report["loss"], "sft");
    let losses = step_values(&report, "loss");
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0], "{losses:?}");
    assert!(report["steps"][0].get("rewards/margins").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_lines_and_arguments_exit_2_naming_the_line() {
    let dir = scratch_dir("bad");
    let model = tiny_llama::tiny_llama_dir();
    let run = |pairs: &Path, extra: &[&str]| -> (Option<i32>, String) {
        let line = format!(
            "dpo --device cpu --model {} --pairs {} --out {}",
            model.display(),
            pairs.display(),
            dir.join("out").display()
        );
        let mut args = words(&line);
        args.extend_from_slice(extra);
        let result = fedsyn(&args);
        (
            result.status.code(),
            String::from_utf8_lossy(&result.stderr).into_owned(),
        )
    };
    let good = toy_lines()[0].clone();
    let missing = pairs_file(
        &dir,
        "missing.jsonl",
        &[
            good.clone(),
            r#"{"prompt": "w1", "chosen": "w2"}"#.to_string(),
        ],
    );
    let (code, stderr) = run(&missing, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("missing.jsonl line 2") && stderr.contains("rejected"),
        "{stderr}"
    );
    let not_json = pairs_file(&dir, "broken.jsonl", &[good.clone(), "{".to_string()]);
    let (code, stderr) = run(&not_json, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("broken.jsonl line 2: not valid JSON"),
        "{stderr}"
    );
    let ok = pairs_file(&dir, "ok.jsonl", &[good]);
    let (code, stderr) = run(&ok, &["--loss", "kto"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("dpo, ipo or sft"), "{stderr}");
    let (code, stderr) = run(&dir.join("absent.jsonl"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("absent.jsonl"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! End-to-end tests of `fedsyn simulate` on a small federated data set (written here) with the
//! installed SmolLM2 and MiniLM: the run directory, the ledger, the stop-at-budget rule, resume
//! after `kill -9`, and that no client text reaches a prompt.

mod common;
use common::federation::{
    client_text, tiny_config, write_clients_and_seeds, CLIENT_DATA, CLIENT_TOPICS, PUBLIC_SEEDS,
};
use common::{
    assert_refused, epsilon_between_one_and_two_rounds, fedsyn, have_default_models,
    kill_after_first_checkpoint_then_resume, metrics_rows, read_text, scratch_dir, simulate_json,
    without_timings, words,
};

use std::path::{Path, PathBuf};

use privacy_accounting::{AccountantKind, Ledger, Sampling};
use serde_json::Value;

/// A folder with the data, the public seeds and the tiny config with `extra` appended.
fn setup(name: &str, extra: &str) -> PathBuf {
    let dir = scratch_dir(&format!("sim-{name}"));
    write_clients_and_seeds(&dir);
    let extra = format!("[eval]\nfid_all_candidates = true\n\n{extra}");
    std::fs::write(
        dir.join("config.toml"),
        tiny_config("e2e", CLIENT_DATA, &extra),
    )
    .unwrap();
    dir
}

/// The standard privacy section: 2 rounds at ε = 2, with a fixed noise seed (test-only opt-in)
/// so that runs can be compared.
const PRIVACY: &str = "[privacy]\nepsilon = 2.0\ndelta = 1e-5\nrounds = 2\nnoise_seed = 42\n";

fn simulate(dir: &Path, run_dir: &str) -> Value {
    simulate_json(&dir.join("config.toml"), &dir.join(run_dir), &[])
}

#[test]
fn simulate_writes_a_complete_run_and_keeps_client_text_out_of_prompts() {
    if !have_default_models() {
        return;
    }
    let dir = setup("complete", PRIVACY);
    let summary = simulate(&dir, "run");
    let run_dir = dir.join("run");

    assert_eq!(summary["rounds"], 2);
    assert_eq!(summary["stop_reason"], "rounds_completed");
    // Unasked (`model.generator_dtype` auto), the CPU computes in fp32.
    if models::device::cuda_device_count() == 0 {
        assert_eq!(summary["generator_dtype"], "f32");
    }
    let epsilon = summary["epsilon_rdp"].as_f64().unwrap();
    assert!(epsilon > 0.5 && epsilon <= 2.0, "ε {epsilon}");

    let ledger = Ledger::load(&run_dir.join("ledger.json")).unwrap();
    assert_eq!(ledger.events.len(), 2);
    let rounds: Vec<Option<u64>> = ledger.events.iter().map(|e| e.round).collect();
    assert_eq!(rounds, [Some(0), Some(1)]);
    // The charged sensitivity is the clip bound plus the release grid's share (dp_mechanics::release).
    assert!(ledger
        .events
        .iter()
        .all(|e| e.sampling == Sampling::Full
            && e.clip_bound.is_some_and(|c| (1.0..1.001).contains(&c))));
    let rdp = ledger.epsilon(AccountantKind::Rdp, 1e-5).unwrap().epsilon;
    assert!(
        (rdp - epsilon).abs() < 1e-9,
        "ledger ε {rdp} vs summary {epsilon}"
    );

    let rows = metrics_rows(&run_dir);
    assert_eq!(rows.len(), 2);
    for (round, row) in rows.iter().enumerate() {
        assert_eq!(row["round"], round as u64);
        // Public: everyone takes part. Un-noised statistics only under `nonprivate`.
        assert_eq!(row["cohort"], 6);
        assert!(row.get("clients").is_none() && row.get("signal_to_noise").is_none());
        let nonprivate = &row["nonprivate"];
        assert_eq!(nonprivate["clients_nonprivate"], 6);
        assert!(nonprivate["fid_nonprivate"].as_f64().unwrap() > 0.0);
        assert!(nonprivate["signal_to_noise_nonprivate"].as_f64().is_some());
        for key in nonprivate.as_object().unwrap().keys() {
            assert!(key.ends_with("_nonprivate"), "{key}");
        }
        assert!(row["train_loss"].as_f64().unwrap().is_finite());
        assert!(row["epsilon_pld"].as_f64().unwrap() <= row["epsilon_rdp"].as_f64().unwrap());
    }
    for round in ["round-0000", "round-0001"] {
        let checkpoint = run_dir.join("checkpoints").join(round);
        for file in [
            "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json",
            "trainer/trainer_state.json",
            "state.json",
        ] {
            assert!(checkpoint.join(file).is_file(), "{round}/{file} missing");
        }
    }
    let synthetic = read_text(&run_dir.join("synthetic.jsonl"));
    assert_eq!(synthetic.lines().count(), 3);
    for line in synthetic.lines() {
        let sample: Value = serde_json::from_str(line).unwrap();
        assert!(sample["text"].is_string());
    }
    assert!(read_text(&run_dir.join("rounds.svg")).starts_with("<svg"));
    // A test seed voids the guarantee, and the statement says so on its first line.
    let statement = read_text(&run_dir.join("privacy-statement.md"));
    let first = statement.lines().next().unwrap();
    assert!(
        first.contains("NOT differentially private") && first.contains("privacy.noise_seed"),
        "{statement}"
    );
    assert!(!statement.contains("This run satisfies"), "{statement}");
    assert!(read_text(&run_dir.join("config.toml")).contains("noise_seed = 42"));
    // The round's cohort is private state, gone once the round is checkpointed.
    assert!(!run_dir.join("private/open-cohort.json").exists());

    // The prompts are built from the public seeds only: no client sentence (nor any
    // distinctive fragment of one) appears in them.
    let prompts: Vec<String> =
        serde_json::from_str(&read_text(&run_dir.join("prompts.json"))).unwrap();
    assert_eq!(prompts.len(), 3);
    for text in (0..CLIENT_TOPICS.len()).flat_map(|c| (0..4).map(move |t| client_text(c, t))) {
        for prompt in &prompts {
            assert!(
                !prompt.contains(&text[..40]),
                "client text in prompt: {prompt}"
            );
            assert!(
                !prompt.contains("Citizen"),
                "client text in prompt: {prompt}"
            );
        }
    }
    assert!(prompts
        .iter()
        .all(|p| PUBLIC_SEEDS.lines().any(|seed| p.contains(seed))));
}

/// `model.generator_dtype = "bf16"` reaches the generator: the run samples and trains in bf16
/// where the CPU has native bf16 (AVX512-BF16), and in fp32, saying so, where it has not; the
/// summary records which.
#[test]
fn simulate_runs_the_generator_in_bf16_when_asked() {
    if !have_default_models() {
        return;
    }
    let privacy = "[privacy]\nepsilon = 2.0\ndelta = 1e-5\nrounds = 1\nnoise_seed = 42\n";
    let dir = setup("bf16", privacy);
    let config = dir.join("config.toml");
    let output = fedsyn(&[
        "simulate",
        "--json",
        "--config",
        common::path_str(&config),
        "--out",
        common::path_str(&dir.join("run")),
        "--set",
        "model.generator_dtype=bf16",
    ]);
    assert!(output.status.success(), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let on_cpu = models::device::cuda_device_count() == 0;
    if on_cpu && !models::cpu_has_native_bf16() {
        assert_eq!(summary["generator_dtype"], "f32");
        assert!(stderr.contains("AVX512-BF16"), "{stderr}");
    } else {
        assert_eq!(summary["generator_dtype"], "bf16");
    }
    let rows = metrics_rows(&dir.join("run"));
    assert!(rows[0]["train_loss"].as_f64().unwrap().is_finite());
    assert!(read_text(&dir.join("run/config.toml")).contains("generator_dtype = \"bf16\""));
}

#[test]
fn simulate_stops_before_a_round_would_exceed_the_budget() {
    if !have_default_models() {
        return;
    }
    // σ = 2 with everyone every round: one round costs ε₁, two cost ε₂ > ε₁; a target between
    // them allows exactly one round of the three planned.
    let target = epsilon_between_one_and_two_rounds();
    let privacy = format!(
        "[privacy]\nepsilon = {target}\ndelta = 1e-5\nrounds = 3\nnoise_multiplier = 2.0\n\
         noise_seed = 1\n"
    );
    let dir = setup("budget", &privacy);
    let summary = simulate(&dir, "run");
    assert_eq!(summary["stop_reason"], "budget_exhausted");
    assert_eq!(summary["rounds"], 1);
    let ledger = Ledger::load(&dir.join("run/ledger.json")).unwrap();
    assert_eq!(
        ledger.events.len(),
        1,
        "no budget is spent on a round that does not run"
    );
    assert!(summary["epsilon_rdp"].as_f64().unwrap() <= target);
    // The outputs of the one finished round are still written.
    assert_eq!(
        read_text(&dir.join("run/synthetic.jsonl")).lines().count(),
        3
    );
}

#[test]
fn resume_after_kill_gives_the_uninterrupted_result() {
    if !have_default_models() {
        return;
    }
    let dir = setup("resume", PRIVACY);
    simulate(&dir, "uninterrupted");

    // The same run, killed (SIGKILL) once round 0 is checkpointed, then resumed.
    let config = dir.join("config.toml");
    let killed = dir.join("killed");
    kill_after_first_checkpoint_then_resume(
        &[
            "--config",
            config.to_str().unwrap(),
            "--out",
            killed.to_str().unwrap(),
        ],
        &killed,
    );

    let uninterrupted = dir.join("uninterrupted");
    assert_eq!(
        read_text(&killed.join("synthetic.jsonl")),
        read_text(&uninterrupted.join("synthetic.jsonl"))
    );
    let strip = |rows: Vec<Value>| rows.into_iter().map(without_timings).collect::<Vec<_>>();
    assert_eq!(
        strip(metrics_rows(&killed)),
        strip(metrics_rows(&uninterrupted))
    );
    let adapter = "checkpoints/round-0001/adapter/adapter_model.safetensors";
    assert!(
        std::fs::read(killed.join(adapter)).unwrap()
            == std::fs::read(uninterrupted.join(adapter)).unwrap(),
        "the final adapters differ"
    );
    // Budget neither lost nor counted twice.
    let events = |run: &Path| {
        Ledger::load(&run.join("ledger.json"))
            .unwrap()
            .events
            .into_iter()
            .map(|e| (e.round, e.noise_multiplier))
            .collect::<Vec<_>>()
    };
    assert_eq!(events(&killed), events(&uninterrupted));
}

#[test]
fn bad_config_and_bad_data_are_named_with_exit_status_2() {
    let dir = setup("bad", &format!("{PRIVACY}epsilom = 1.0\n"));
    let config = dir.join("config.toml");
    let output = fedsyn(&["simulate", "--config", config.to_str().unwrap()]);
    assert_refused(&output, "privacy.epsilom");
    let config = setup("bad-set", PRIVACY).join("config.toml");
    let output = fedsyn(&words(&format!(
        "simulate --config {} --set privacy.epsilon=1 --set generation.tempreature=0.5",
        config.display()
    )));
    assert_refused(&output, "generation.temperature");

    if !have_default_models() {
        return;
    }
    let dir = setup("bad-data", PRIVACY);
    let data = dir.join("clients.jsonl");
    let mut text = read_text(&data);
    text.push_str("{\"client_id\": \"client-9\", \"text\": \"   \"}\n");
    std::fs::write(&data, text).unwrap();
    let out = dir.join("run");
    let output = fedsyn(&words(&format!(
        "simulate --config {} --out {}",
        dir.join("config.toml").display(),
        out.display()
    )));
    assert_refused(&output, "clients.jsonl:25");
}

//! End-to-end tests of `fedsyn simulate` with Private Evolution (`pe`) and PE+SFT (`pe-sft`)
//! on a six-client data set (written here) with the installed SmolLM2 and MiniLM: the run
//! directory, the ledger within the target ε, the synthetic set, and resume after `kill -9`.

mod common;
use common::federation::{tiny_config, write_clients_and_seeds, CLIENT_DATA};
use common::{
    epsilon_between_one_and_two_rounds, fedsyn, have_default_models,
    kill_after_first_checkpoint_then_resume, metrics_rows, read_text, scratch_dir, simulate_json,
    without_timings,
};

use std::path::{Path, PathBuf};

use privacy_accounting::{AccountantKind, Ledger, Sampling};
use serde_json::Value;

/// The target ε of every run here.
const EPSILON: f64 = 2.0;

/// A folder with the data, the public seeds and a small config: M = 3 survivors, 2 variations
/// each plus the survivors (9 samples a round), 10 tokens a sample, 2 rounds at ε = 2 with a
/// fixed noise seed (test-only opt-in) so that runs can be compared.
fn setup(name: &str) -> PathBuf {
    let dir = scratch_dir(&format!("pe-{name}"));
    write_clients_and_seeds(&dir);
    // The POPri sections PE does not read (candidates, pairs, β) are left as they are.
    let extra = format!(
        "[pe]\npopulation = 3\nvariations = 2\nkeep_survivors = true\n\n\
         [privacy]\nepsilon = {EPSILON}\ndelta = 1e-5\nrounds = 2\nnoise_seed = 42\n"
    );
    let config = tiny_config("pe-e2e", CLIENT_DATA, &extra);
    std::fs::write(dir.join("config.toml"), config).unwrap();
    dir
}

/// `fedsyn simulate --json` of `method` into `dir/run_dir`; its summary.
fn simulate(dir: &Path, method: &str, run_dir: &str) -> Value {
    simulate_with(dir, method, run_dir, &[])
}

/// [`simulate`] with `--set` overrides.
fn simulate_with(dir: &Path, method: &str, run_dir: &str, overrides: &[&str]) -> Value {
    let method = format!("run.method={method}");
    let mut args = vec!["--set", method.as_str()];
    for assignment in overrides {
        args.extend(["--set", assignment]);
    }
    simulate_json(&dir.join("config.toml"), &dir.join(run_dir), &args)
}

fn synthetic_texts(run_dir: &Path) -> Vec<String> {
    read_text(&run_dir.join("synthetic.jsonl"))
        .lines()
        .map(|line| {
            let sample: Value = serde_json::from_str(line).unwrap();
            sample["text"]
                .as_str()
                .expect("a text per line")
                .to_string()
        })
        .collect()
}

/// The checks every PE or PE+SFT run must pass: two rounds within the budget, one ledger
/// event per round with sensitivity 1, metrics rows, checkpoints holding `files`, the
/// synthetic set, the plot and the statement.
fn check_complete_run(run_dir: &Path, summary: &Value, checkpoint_files: &[&str]) {
    assert_eq!(summary["rounds"], 2);
    assert_eq!(summary["stop_reason"], "rounds_completed");
    let epsilon = summary["epsilon_rdp"].as_f64().unwrap();
    assert!(epsilon > 0.5 && epsilon <= EPSILON, "ε {epsilon}");

    let ledger = Ledger::load(&run_dir.join("ledger.json")).unwrap();
    let rounds: Vec<Option<u64>> = ledger.events.iter().map(|e| e.round).collect();
    assert_eq!(rounds, [Some(0), Some(1)]);
    for event in &ledger.events {
        assert_eq!(event.sampling, Sampling::Full);
        // Histograms have L2 norm ≤ 1; the release grid adds its share (dp_mechanics::release).
        let bound = event.clip_bound.unwrap();
        assert!((1.0..1.0001).contains(&bound), "{bound}");
        assert!(event.label.starts_with("pe round"), "{}", event.label);
    }
    for kind in [AccountantKind::Rdp, AccountantKind::Pld] {
        let spent = ledger.epsilon(kind, 1e-5).unwrap().epsilon;
        assert!(spent <= EPSILON, "{kind}: ε {spent} > {EPSILON}");
    }

    let rows = metrics_rows(run_dir);
    assert_eq!(rows.len(), 2);
    for (round, row) in rows.iter().enumerate() {
        assert_eq!(row["round"], round as u64);
        assert_eq!(row["cohort"], 6);
        assert_eq!(row["nonprivate"]["clients_nonprivate"], 6);
        assert_eq!(row["clip"], 1.0);
        let (std, sigma) = (
            row["noise_std"].as_f64().unwrap(),
            row["sigma"].as_f64().unwrap(),
        );
        assert!(std >= sigma && std < sigma * 1.0001, "{row}");
        assert!(row["nonprivate"]["fid_nonprivate"].as_f64().unwrap() > 0.0);
        let histogram = &row["noisy_score_histogram"]["counts"];
        let counted: u64 = histogram
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(counted, 9, "one noisy count per sample of the population");
    }
    for round in ["round-0000", "round-0001"] {
        let checkpoint = run_dir.join("checkpoints").join(round);
        for file in checkpoint_files.iter().chain(&["state.json"]) {
            assert!(checkpoint.join(file).is_file(), "{round}/{file} missing");
        }
    }
    assert_eq!(synthetic_texts(run_dir).len(), 3);
    assert_eq!(summary["synthetic_samples"], 3);
    assert!(read_text(&run_dir.join("rounds.svg")).starts_with("<svg"));
    let statement = read_text(&run_dir.join("privacy-statement.md"));
    assert!(
        statement
            .lines()
            .next()
            .unwrap()
            .contains("NOT differentially private"),
        "a test seed voids the guarantee: {statement}"
    );
    let saved: Value = serde_json::from_str(&read_text(&run_dir.join("summary.json"))).unwrap();
    assert_eq!(saved["rounds"], 2);

    // The generator's prompts come from the public seeds only.
    let prompts: Vec<String> =
        serde_json::from_str(&read_text(&run_dir.join("prompts.json"))).unwrap();
    assert!(prompts.iter().all(|p| !p.contains("Citizen")));
}

#[test]
fn pe_writes_a_complete_run_within_the_budget() {
    if !have_default_models() {
        return;
    }
    let dir = setup("complete");
    let summary = simulate(&dir, "pe", "run");
    let run_dir = dir.join("run");
    check_complete_run(&run_dir, &summary, &[]);
    assert!(read_text(&run_dir.join("config.toml")).contains("method = \"pe\""));
    // PE trains nothing: no adapter, no training loss.
    assert!(!run_dir.join("checkpoints/round-0000/adapter").exists());
    assert!(metrics_rows(&run_dir)
        .iter()
        .all(|row| row["train_loss"].is_null()));
    // The synthetic set is the last survivors first: they are in the last round's population.
    let state: Value = serde_json::from_str(&read_text(
        &run_dir.join("checkpoints/round-0001/state.json"),
    ))
    .unwrap();
    let first_survivor = state["survivors"][0]["text"].as_str().unwrap();
    assert_eq!(synthetic_texts(&run_dir)[0], first_survivor);
    assert_eq!(state["next_population"].as_array().unwrap().len(), 9);
}

/// A synthetic set larger than the final population (9 samples, of which the 3 survivors) is
/// topped up with more rephrasings of the survivors, so PE writes as many texts as the other
/// methods; the survivors still come first.
#[test]
fn pe_fills_a_synthetic_set_larger_than_its_population() {
    if !have_default_models() {
        return;
    }
    let dir = setup("fill");
    let summary = simulate_with(&dir, "pe", "run", &["output.synthetic_samples=15"]);
    let run_dir = dir.join("run");
    let texts = synthetic_texts(&run_dir);
    assert_eq!(summary["synthetic_samples"], texts.len());
    assert_eq!(texts.len(), 15, "{texts:#?}");
    let distinct: std::collections::HashSet<&String> = texts.iter().collect();
    assert_eq!(distinct.len(), texts.len(), "the texts are distinct");
    let state: Value = serde_json::from_str(&read_text(
        &run_dir.join("checkpoints/round-0001/state.json"),
    ))
    .unwrap();
    let survivors: Vec<&str> = state["survivors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert_eq!(&texts[..survivors.len()], survivors.as_slice());
}

#[test]
fn pe_sft_fine_tunes_the_generator_on_the_selected_samples() {
    if !have_default_models() {
        return;
    }
    let dir = setup("sft");
    let summary = simulate(&dir, "pe-sft", "run");
    let run_dir = dir.join("run");
    check_complete_run(
        &run_dir,
        &summary,
        &[
            "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json",
            "trainer/trainer_state.json",
        ],
    );
    for row in metrics_rows(&run_dir) {
        let loss = row["train_loss"]
            .as_f64()
            .expect("the SFT loss of the round");
        assert!(loss.is_finite() && loss > 0.0, "SFT loss {loss}");
    }
    // Every survivor trained on was written by a public prompt.
    let state: Value = serde_json::from_str(&read_text(
        &run_dir.join("checkpoints/round-0000/state.json"),
    ))
    .unwrap();
    assert!(state["survivors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["prompt"].is_u64()));

    // Resuming the finished run reloads the last adapter and trainer, runs no round and
    // samples the same synthetic set again.
    let before = synthetic_texts(&run_dir);
    let output = fedsyn(&["simulate", "--json", "--resume", run_dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(synthetic_texts(&run_dir), before);
    assert_eq!(metrics_rows(&run_dir).len(), 2);
    assert_eq!(
        Ledger::load(&run_dir.join("ledger.json"))
            .unwrap()
            .events
            .len(),
        2
    );
}

/// PE+SFT takes POPri's chat prompts (`prompts.style = "chat"`), so that a comparison can give
/// both methods the same prompts and sampling: the round prompts are chat turns on the public
/// topics, and the run completes as with few-shot prompts.
#[test]
fn pe_sft_runs_on_chat_prompts() {
    if !have_default_models() {
        return;
    }
    let dir = setup("chat");
    let config = read_text(&dir.join("config.toml")).replace(
        "seed_file = \"seeds.txt\"",
        "style = \"chat\"\ntopics = [\"rivers\", \"bread\"]",
    );
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let summary = simulate(&dir, "pe-sft", "run");
    let run_dir = dir.join("run");
    check_complete_run(&run_dir, &summary, &["adapter/adapter_model.safetensors"]);
    let prompts: Vec<String> =
        serde_json::from_str(&read_text(&run_dir.join("prompts.json"))).unwrap();
    assert_eq!(prompts.len(), 3);
    for prompt in &prompts {
        assert!(
            prompt.contains("<|im_start|>user") && prompt.ends_with("<|im_start|>assistant\n"),
            "a chat turn of the generator's template: {prompt:?}"
        );
        assert!(
            prompt.contains("about rivers") || prompt.contains("about bread"),
            "{prompt:?}"
        );
    }
    assert!(!dir.join("run/seed-pool.json").exists(), "no seed pool");
}

#[test]
fn pe_stops_before_a_round_would_exceed_the_budget() {
    if !have_default_models() {
        return;
    }
    // σ = 2 with everyone every round: a target between the ε of one and of two rounds allows
    // exactly one of the three planned.
    let target = epsilon_between_one_and_two_rounds();
    let dir = setup("budget");
    let epsilon = format!("privacy.epsilon={target}");
    let summary = simulate_with(
        &dir,
        "pe",
        "run",
        &[&epsilon, "privacy.rounds=3", "privacy.noise_multiplier=2.0"],
    );
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
    assert_eq!(synthetic_texts(&dir.join("run")).len(), 3);
}

#[test]
fn pe_resume_after_kill_gives_the_uninterrupted_result() {
    if !have_default_models() {
        return;
    }
    let dir = setup("resume");
    simulate(&dir, "pe", "uninterrupted");

    // The same run, killed (SIGKILL) once round 0 is checkpointed, then resumed.
    let config = dir.join("config.toml");
    let killed = dir.join("killed");
    kill_after_first_checkpoint_then_resume(
        &[
            "--config",
            config.to_str().unwrap(),
            "--set",
            "run.method=pe",
            "--out",
            killed.to_str().unwrap(),
        ],
        &killed,
    );

    let uninterrupted = dir.join("uninterrupted");
    assert_eq!(synthetic_texts(&killed), synthetic_texts(&uninterrupted));
    let strip = |rows: Vec<Value>| rows.into_iter().map(without_timings).collect::<Vec<_>>();
    assert_eq!(
        strip(metrics_rows(&killed)),
        strip(metrics_rows(&uninterrupted))
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

//! End-to-end tests of `fedsyn simulate --method dp-fedavg` on the small federation with the
//! installed SmolLM2: the clip and noise in the metrics and the ledger, adaptive clipping, the
//! final adapter, and a resume that re-runs a charged round without charging it twice.

mod common;
use common::federation::write_small_federation;
use common::{fedsyn, metrics_rows, scratch_dir_for_models, simulate_json};

use std::path::Path;

use privacy_accounting::Ledger;

const FEDAVG: &str = "[fedavg]\nlocal_steps = 1\nlocal_batch = 2\nlocal_lr = 1e-3\n";

fn ledger(run_dir: &Path) -> Ledger {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("ledger.json")).unwrap()).unwrap()
}

#[test]
fn adaptive_cohort_rounds_clip_noise_and_charge_one_joint_mechanism() {
    let Some(dir) = scratch_dir_for_models("fedavg-adaptive") else {
        return;
    };
    let privacy = "[privacy]\nepsilon = 2.0\ndelta = 1e-5\nrounds = 2\nclip = 0.05\n\
                   sampling = \"cohort\"\ncohort = 3\nnoise_seed = 42\n";
    let config = write_small_federation(
        &dir,
        &format!("{FEDAVG}adaptive_clip_quantile = 0.5\n{privacy}"),
    );
    let run = dir.join("run");
    let summary = simulate_json(&config, &run, &["--set", "run.method=dp-fedavg"]);
    assert_eq!(summary["rounds"], 2);
    assert_eq!(
        summary["synthetic_samples"], 0,
        "DP-FedAvg releases a model"
    );
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(run.join("model").join(file).is_file(), "model/{file}");
    }
    assert!(run.join("privacy-statement.md").is_file());

    let rows = metrics_rows(&run);
    let ledger = ledger(&run);
    assert_eq!(rows.len(), 2);
    assert_eq!(ledger.events.len(), 2, "one charge per round");
    let sigma = summary["sigma"].as_f64().unwrap();
    for (row, event) in rows.iter().zip(&ledger.events) {
        assert_eq!(row["cohort"], 3, "a fixed cohort of 3");
        assert_eq!(row["q"], 0.5);
        let clip = row["clip"].as_f64().unwrap();
        let bound = event.clip_bound.unwrap();
        assert!(
            bound >= clip && bound < clip * 1.001,
            "the ledger records the round's bound (plus the grid's share): {bound} vs {clip}"
        );
        assert_eq!(event.noise_multiplier, sigma);
        assert!(event.label.contains("noisy count"), "{}", event.label);
        // The update sum's σ_Δ is above σ (part of the budget went to the count).
        let noise_std = row["noise_std"].as_f64().unwrap();
        assert!(
            noise_std > sigma * clip && noise_std < 1.05 * sigma * clip,
            "{row}"
        );
        let nonprivate = &row["nonprivate"];
        let fraction = nonprivate["clipped_fraction_nonprivate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&fraction));
        assert!(
            nonprivate["mean_pre_clip_norm_nonprivate"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(nonprivate["local_loss_nonprivate"].as_f64().unwrap() > 0.0);
        assert!(nonprivate["update_norm_nonprivate"].as_f64().unwrap() > 0.0);
        assert_eq!(nonprivate["clients_nonprivate"], 3);
    }
    assert_eq!(rows[0]["clip"], 0.05);
    assert_ne!(
        rows[1]["clip"], rows[0]["clip"],
        "adaptive clipping moved the bound"
    );
    let epsilon = summary["epsilon_rdp"].as_f64().unwrap();
    assert!(epsilon > 1.5 && epsilon <= 2.0 + 1e-9, "{epsilon}");
}

#[test]
fn a_resumed_round_is_charged_once_and_ends_where_an_uninterrupted_run_ends() {
    let Some(dir) = scratch_dir_for_models("fedavg-resume") else {
        return;
    };
    let privacy = "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 2\nclip = 0.05\n\
                   noise_seed = 9\n";
    let config = write_small_federation(&dir, &format!("{FEDAVG}{privacy}"));
    let whole = dir.join("whole");
    simulate_json(&config, &whole, &["--set", "run.method=dp-fedavg"]);

    // A kill after round 1 was charged but before its checkpoint: the round's checkpoint,
    // metrics row and the final outputs are gone, its ledger entry stays.
    let cut = dir.join("cut");
    simulate_json(&config, &cut, &["--set", "run.method=dp-fedavg"]);
    let mut checkpoints: Vec<_> = std::fs::read_dir(cut.join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    checkpoints.sort();
    assert_eq!(checkpoints.len(), 2);
    std::fs::remove_dir_all(&checkpoints[1]).unwrap();
    std::fs::remove_dir_all(cut.join("model")).unwrap();
    let first_row = std::fs::read_to_string(cut.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(cut.join("metrics.jsonl"), first_row + "\n").unwrap();
    let output = fedsyn(&["simulate", "--json", "--resume", cut.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        ledger(&cut).events.len(),
        2,
        "round 1 re-ran under its charge"
    );
    assert_eq!(metrics_rows(&cut).len(), 2);
    let weights = |run: &Path| std::fs::read(run.join("model/adapter_model.safetensors")).unwrap();
    assert_eq!(
        weights(&whole),
        weights(&cut),
        "test-seeded noise and seeded local training: the same final adapter"
    );
}

//! End-to-end tests of `fedsyn eval` with the installed SmolLM2 and MiniLM on the small
//! federation: a POPri run (train on its synthetic set, epoch chosen on validation), a
//! DP-FedAvg run (its own adapter), the ε = ∞ and ε = 0 references, and bad input.

mod common;
use common::federation::write_small_federation;
use common::{
    assert_refused, fedsyn, json_of, read_json, scratch_dir_for_models, simulate_json, words,
};

use std::path::Path;

use serde_json::Value;

fn simulate(config: &Path, out: &Path, method: &str) {
    simulate_json(config, out, &["--set", &format!("run.method={method}")]);
}

fn eval_file(dir: &Path) -> Value {
    read_json(&dir.join("eval.json"))
}

/// Checks the parts of `eval.json` every method has.
fn check_downstream(report: &Value) {
    assert_eq!(report["schema"], 1);
    let downstream = &report["downstream"];
    let accuracy = downstream["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
    assert!(
        downstream["eval_tokens"].as_u64().unwrap() > 50,
        "{downstream}"
    );
    assert!(downstream["model"].as_str().unwrap().contains("SmolLM2"));
    // Each test token's outcome, for `fedsyn compare`'s paired bootstrap: as many as scored,
    // and as many right as the accuracy says.
    let hits = &downstream["test_hits"];
    let positions = hits["positions"].as_u64().unwrap();
    assert_eq!(positions, downstream["eval_tokens"].as_u64().unwrap());
    let bits = hits["bits"].as_str().unwrap();
    assert_eq!(bits.len() as u64, positions.div_ceil(8) * 2);
    let correct: u32 = (0..bits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&bits[i..i + 2], 16)
                .unwrap()
                .count_ones()
        })
        .sum();
    assert!((f64::from(correct) / positions as f64 - accuracy).abs() < 1e-12);
}

#[test]
fn a_popri_run_is_scored_on_test_with_the_epoch_chosen_on_validation() {
    let Some(dir) = scratch_dir_for_models("eval-popri") else {
        return;
    };
    let privacy = "[privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 1\nnoise_seed = 3\n";
    let config = write_small_federation(&dir, privacy);
    let run = dir.join("run");
    simulate(&config, &run, "popri");
    // A planted copy of a client's text among the synthetic ones, for the memorisation
    // diagnostic to find.
    let planted = "Citizen 0 wrote note 1 about the harbour lighthouse, asking the council for a \
                   clear answer before the spring session of 1851.";
    let mut synthetic = std::fs::read_to_string(run.join("synthetic.jsonl")).unwrap();
    synthetic.push_str(&format!("{}\n", serde_json::json!({ "text": planted })));
    std::fs::write(run.join("synthetic.jsonl"), synthetic).unwrap();
    let printed = json_of(&words(&format!(
        "eval --json {} --epochs 2 --max-train-texts 4",
        run.display()
    )));
    let report = eval_file(&run);
    assert_eq!(printed, report, "--json prints what eval.json holds");
    check_downstream(&report);
    assert_eq!(report["method"], "popri");
    assert_eq!(report["epsilon_target"], 4.0);
    assert!(report["epsilon_rdp"].as_f64().unwrap() <= 4.0);
    let downstream = &report["downstream"];
    assert_eq!(
        downstream["train_texts"], 4,
        "--max-train-texts caps the synthetic set"
    );
    let curve = downstream["validation"].as_array().unwrap();
    assert_eq!(curve.len(), 2);
    let best = curve
        .iter()
        .map(|e| e["accuracy"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    let chosen = downstream["chosen_epoch"].as_u64().unwrap() as usize;
    assert_eq!(curve[chosen - 1]["accuracy"].as_f64().unwrap(), best);
    let distribution = &report["distribution"];
    assert_eq!(
        distribution["synthetic_texts"], 7,
        "every synthetic text is embedded (6 and the planted copy)"
    );
    // The planted copy: 22 words, of which at least the 16 after its note number occur in
    // client 0's training texts (the note itself may be held out for evaluation), and its
    // nearest private text is one of client 0's.
    let memorisation = &report["memorisation_nonprivate"];
    assert_eq!(memorisation["synthetic_texts"], 7);
    assert_eq!(
        memorisation["private_texts"], 24,
        "4 training texts of 6 clients"
    );
    let longest = memorisation["longest_shared_words"].as_array().unwrap();
    let cosines = memorisation["nearest_cosine"].as_array().unwrap();
    assert_eq!((longest.len(), cosines.len()), (7, 7));
    assert!(longest[6].as_u64().unwrap() >= 16, "{memorisation}");
    assert!(cosines[6].as_f64().unwrap() > 0.9, "{memorisation}");
    assert!(
        memorisation["nearest_index"][6].as_u64().unwrap() < 4,
        "client 0's texts come first"
    );
    let histogram: u64 = memorisation["shared_words_histogram"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(histogram, 7);
    assert_eq!(
        distribution["eval_texts"], 12,
        "both eval halves: 2 texts of 6 clients"
    );
    assert!(distribution["fid"].as_f64().unwrap() > 0.0);
    for key in ["precision", "recall", "mauve"] {
        let value = distribution[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&value), "{key} {value}");
    }
}

#[test]
fn a_dp_fedavg_run_is_scored_with_its_own_adapter() {
    let Some(dir) = scratch_dir_for_models("eval-fedavg") else {
        return;
    };
    let extra = "[fedavg]\nlocal_steps = 1\nlocal_batch = 2\n\
                 [privacy]\nepsilon = 4.0\ndelta = 1e-5\nrounds = 1\nclip = 0.05\nnoise_seed = 3\n";
    let config = write_small_federation(&dir, extra);
    let run = dir.join("run");
    simulate(&config, &run, "dp-fedavg");
    json_of(&["eval", "--json", run.to_str().unwrap()]);
    let report = eval_file(&run);
    check_downstream(&report);
    assert_eq!(report["method"], "dp-fedavg");
    assert_eq!(report["distribution"], Value::Null, "no text to compare");
    assert_eq!(report["downstream"]["validation"], serde_json::json!([]));
    assert!(report["downstream"]["model"]
        .as_str()
        .unwrap()
        .contains("DP-FedAvg"));
}

#[test]
fn references_score_the_public_model_and_training_on_real_texts() {
    let Some(dir) = scratch_dir_for_models("eval-references") else {
        return;
    };
    let config = write_small_federation(&dir, "[privacy]\nepsilon = 4.0\n");
    let reference = |name: &str| -> Value {
        let out = dir.join(name);
        json_of(&words(&format!(
            "eval --json --reference {} --config {} --out {} --epochs 1",
            name,
            config.display(),
            out.display()
        )));
        assert!(out.join("config.toml").is_file());
        eval_file(&out)
    };
    let public = reference("public");
    let real = reference("real");
    for (report, method) in [(&public, "public"), (&real, "real")] {
        check_downstream(report);
        assert_eq!(report["method"], method);
        assert_eq!(report["epsilon_target"], Value::Null);
        assert_eq!(report["run_dir"], Value::Null);
    }
    assert_eq!(
        public["downstream"]["eval_tokens"], real["downstream"]["eval_tokens"],
        "both score the same test half"
    );
    assert_eq!(
        public["downstream"]["test_hits"]["tokens_sha256"],
        real["downstream"]["test_hits"]["tokens_sha256"],
        "the same tokens: the two can be compared by a paired bootstrap"
    );
    assert_eq!(public["distribution"], Value::Null);
    assert_eq!(
        real["downstream"]["train_texts"], 6,
        "as many of the clients' 24 training texts as a run's synthetic set (output.synthetic_samples)"
    );
    assert_eq!(real["distribution"]["synthetic_texts"], 6);

    // Bad input exits 2 and names the problem.
    let output = fedsyn(&words(&format!(
        "eval --reference infinite --config {} --out {}",
        config.display(),
        dir.join("x").display()
    )));
    assert_refused(&output, "--reference");
    let output = fedsyn(&["eval", dir.join("no-such-run").to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

//! Every configuration in `experiments/` parses and passes validation (the files users start
//! from must not rot as the schema changes).

use std::path::Path;

use runs::RunConfig;

/// The repository's `experiments/` folder.
const EXPERIMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments");

#[test]
fn every_experiment_config_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(EXPERIMENTS).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config =
                RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the sotu, shakespeare and paper-scale configs"
    );
}

/// A comparison must differ only in the method: PE and PE+SFT on a data set use POPri's public
/// prompts and sampling settings (until 2026-12-08 the SOTU PE configs still sampled the
/// paper's few-shot prompts at temperature 1 while POPri used the measured chat recipe).
#[test]
fn baselines_share_popri_prompts_and_sampling() {
    let load = |name: &str| {
        RunConfig::load(&Path::new(EXPERIMENTS).join(name), &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let mut compared = 0;
    for data in ["sotu", "shakespeare"] {
        let popri = load(&format!("{data}-popri.toml"));
        for baseline in ["pe", "pe-sft"] {
            let name = format!("{data}-{baseline}.toml");
            let config = load(&name);
            assert_eq!(config.prompts, popri.prompts, "{name}: [prompts]");
            assert_eq!(config.generation, popri.generation, "{name}: [generation]");
            assert_eq!(config.privacy, popri.privacy, "{name}: [privacy]");
            compared += 1;
        }
    }
    assert_eq!(compared, 4);
}

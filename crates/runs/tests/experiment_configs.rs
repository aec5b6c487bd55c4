//! Every configuration in `experiments/` parses and passes validation (the files users start
//! from must not rot as the schema changes).

use runs::RunConfig;

#[test]
fn every_experiment_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
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

//! Helpers shared by the integration tests.

use std::path::PathBuf;

use models::Assets;

/// The SmolLM2 GGUF file installed by `scripts/setup.sh`, or `None` (with a note on stderr)
/// when it is absent. Under CI (`CI` set) a missing file fails the test instead, since CI runs
/// the setup script first and must not pass by skipping.
pub fn smollm2_gguf() -> Option<PathBuf> {
    match Assets::discover().smollm2_gguf() {
        Ok(path) => Some(path),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have the model: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

//! Helpers shared by the unit tests of several modules.

use std::path::PathBuf;

/// The folder `fedsyn-{label}-{process id}` in the temporary directory, created if need be
/// (one per test process, so that concurrent runs of the tests do not share files).
pub(crate) fn scratch_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder in the temporary directory");
    dir
}

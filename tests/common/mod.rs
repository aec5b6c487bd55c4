//! Helpers shared by the end-to-end tests of the `fedsyn` binary.
#![allow(dead_code)] // each test file uses some of them

pub mod federation;

use std::path::PathBuf;
use std::process::{Command, Output};

use models::Assets;

/// `fedsyn ARGS` ready to run. Tests run in parallel and every fedsyn process that loads
/// libtorch starts one OpenMP thread per core: with libgomp's default busy-waiting they starve
/// one another (minutes instead of seconds on 2 cores); sleeping waits keep them fair.
/// Results do not depend on it.
pub fn fedsyn_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fedsyn"));
    command.args(args).env("OMP_WAIT_POLICY", "PASSIVE");
    command
}

/// Runs `fedsyn ARGS` to the end.
pub fn fedsyn(args: &[&str]) -> Output {
    fedsyn_command(args)
        .output()
        .expect("the fedsyn binary runs")
}

/// A fresh folder for test `name` of this test process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether the default models (SmolLM2 GGUF, all-MiniLM-L6-v2) are installed: `false` (skip)
/// when not, and a failure under CI, which must have them.
pub fn have_default_models() -> bool {
    let assets = Assets::discover();
    match assets.smollm2_gguf().and_then(|_| assets.minilm_dir()) {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have the models: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            false
        }
    }
}

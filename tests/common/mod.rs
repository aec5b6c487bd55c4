//! Helpers shared by the end-to-end tests of the `fedsyn` binary.
#![allow(dead_code)] // each test file uses some of them

pub mod federation;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// `fedsyn simulate --json --config CONFIG --out OUT EXTRA…`, which must succeed; its summary.
pub fn simulate_json(config: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "simulate",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = fedsyn(&args);
    assert!(
        output.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints the summary")
}

/// Runs `fedsyn simulate --quiet ARGS` (which must write into `run_dir`), kills it (SIGKILL)
/// once round 0 is checkpointed, checks that it had not finished, then resumes it with
/// `fedsyn simulate --json --resume RUN_DIR` and returns the resumed run's output.
pub fn kill_after_first_checkpoint_then_resume(args: &[&str], run_dir: &Path) -> Output {
    let mut all = vec!["simulate", "--quiet"];
    all.extend_from_slice(args);
    let mut child = fedsyn_command(&all)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fedsyn starts");
    let first_checkpoint = run_dir.join("checkpoints/round-0000");
    let started = Instant::now();
    while !first_checkpoint.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run_dir.join("synthetic.jsonl").exists());
    let output = fedsyn(&["simulate", "--json", "--resume", run_dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
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

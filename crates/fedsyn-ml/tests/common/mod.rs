//! Helpers shared by the end-to-end tests of the `fedsyn` command line. They run `fedsyn`, the
//! users' front door, which forwards the model commands to the `fedsyn-ml` this package builds.
#![allow(dead_code)] // each test file uses some of them

pub mod federation;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use models::Assets;

/// The `fedsyn` executable next to this package's `fedsyn-ml`. It belongs to the root package,
/// which cargo builds there when the tests run for the whole workspace (`cargo test
/// --workspace`, as scripts/test.sh does); `cargo test -p fedsyn-ml` alone does not build it.
pub fn fedsyn_binary() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_fedsyn-ml"))
        .with_file_name(format!("fedsyn{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build -p \
         fedsyn` first with the same profile)",
        binary.display()
    );
    if let Some(source) = source_newer_than(&binary) {
        panic!(
            "{} is older than {}: `cargo test -p fedsyn-ml` does not rebuild it; run the tests \
             with `cargo test --workspace` (or `cargo build -p fedsyn` first with the same profile)",
            binary.display(),
            source.display()
        );
    }
    binary
}

/// A source file of `binary` changed since it was built, if any: cargo's dep-info file beside
/// it (`fedsyn.d`) lists every file it was compiled from.
fn source_newer_than(binary: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).ok()?.modified().ok()?;
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).ok()?;
    let (_, sources) = dep_info.lines().next()?.split_once(": ")?;
    // Paths are separated by spaces; a space inside a path is escaped as `\ `.
    let sources = sources.replace("\\ ", "\u{0}");
    sources
        .split_whitespace()
        .map(|source| PathBuf::from(source.replace('\u{0}', " ")))
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified > built)
        })
}

/// `fedsyn ARGS` ready to run. Tests run in parallel and every fedsyn process that loads
/// libtorch starts one OpenMP thread per core: with libgomp's default busy-waiting they starve
/// one another (minutes instead of seconds on 2 cores); sleeping waits keep them fair.
/// Results do not depend on it.
pub fn fedsyn_command(args: &[&str]) -> Command {
    let mut command = Command::new(fedsyn_binary());
    command.args(args).env("OMP_WAIT_POLICY", "PASSIVE");
    command
}

/// Runs `fedsyn ARGS` to the end.
pub fn fedsyn(args: &[&str]) -> Output {
    fedsyn_command(args)
        .output()
        .expect("the fedsyn binary runs")
}

/// Runs `fedsyn ARGS`, which must succeed.
pub fn fedsyn_ok(args: &[&str]) -> Output {
    let output = fedsyn(args);
    assert!(
        output.status.success(),
        "fedsyn {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `fedsyn ARGS` (with `--json` among them), which must succeed; the object it prints.
pub fn json_of(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&fedsyn_ok(args).stdout).expect("--json prints one JSON object")
}

/// `fedsyn simulate --json --config CONFIG --out OUT EXTRA…`, which must succeed; its summary.
pub fn simulate_json(config: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let (config, out) = (path_str(config), path_str(out));
    let mut args = vec!["simulate", "--json", "--config", config, "--out", out];
    args.extend_from_slice(extra);
    json_of(&args)
}

/// Asserts that `output` is a refusal of bad input (exit 2) whose message names `expected`.
pub fn assert_refused(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

/// A command line written as one string, split at spaces. Test folders have no spaces in
/// their paths (`scratch_dir` checks that the system's temporary folder has none).
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A path as the `&str` a command line takes (test paths are UTF-8).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// The text of `path`, which must exist.
pub fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JSON document at `path`.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read_text(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of a run's `metrics.jsonl`.
pub fn metrics_rows(run_dir: &Path) -> Vec<serde_json::Value> {
    read_text(&run_dir.join("metrics.jsonl"))
        .lines()
        .map(|line| serde_json::from_str(line).expect("a metrics line is JSON"))
        .collect()
}

/// A metrics row without its timings (which differ between runs).
pub fn without_timings(mut row: serde_json::Value) -> serde_json::Value {
    let object = row.as_object_mut().unwrap();
    object.remove("seconds");
    object.remove("wall_seconds");
    row
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
    assert!(
        !dir.to_string_lossy().contains(char::is_whitespace),
        "the tests write command lines as strings (`words`): set TMPDIR to a folder without \
         spaces, not {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh scratch folder for a test of the default models, or `None` (the test is skipped)
/// when they are not installed, as [`have_default_models`] decides.
pub fn scratch_dir_for_models(name: &str) -> Option<PathBuf> {
    have_default_models().then(|| scratch_dir(name))
}

/// An ε target that σ = 2 with every client in every round (δ = 1e-5, RDP) meets after one
/// round but not after two: a run planned for more stops after exactly one.
pub fn epsilon_between_one_and_two_rounds() -> f64 {
    use privacy_accounting::{AccountantKind, Ledger, LedgerEvent, Sampling};
    let epsilon_after = |rounds: u64| {
        let mut ledger = Ledger::new();
        for round in 0..rounds {
            let event = LedgerEvent::gaussian(2.0, Sampling::Full, 1);
            ledger.push(event.with_round(round)).unwrap();
        }
        ledger.epsilon(AccountantKind::Rdp, 1e-5).unwrap().epsilon
    };
    (epsilon_after(1) + epsilon_after(2)) / 2.0
}

/// Whether the default models (SmolLM2 GGUF, all-MiniLM-L6-v2) are installed: `false` (skip)
/// when not, and a failure under CI, which must have them.
pub fn have_default_models() -> bool {
    let assets = Assets::discover();
    installed(assets.smollm2_gguf().and_then(|_| assets.minilm_dir())).is_some()
}

/// The installed model `asset` (a path from [`Assets`]): `None` (the test is skipped, saying
/// why) when it is missing, and a failure under CI, which must have every default model.
pub fn installed<T>(asset: Result<T, models::ModelError>) -> Option<T> {
    match asset {
        Ok(found) => Some(found),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have the models: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

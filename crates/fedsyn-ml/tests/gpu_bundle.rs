//! The GPU bundle (`scripts/gpu-bundle.sh`) and its GPU-side script (`scripts/gpu/gpu_check.py`)
//! run here on the CPU with tiny shapes: the same steps a lent GPU machine runs (random-weight
//! folders built by transformers, log-probabilities against transformers, sampling beside
//! `generate`, a DPO step beside PEFT, embeddings beside sentence-transformers, one POPri
//! round), so that neither rots between the sessions that have a GPU.
//!
//! Needs the Python stack `scripts/setup.sh` installs into `.venv`.

mod common;
use common::scratch_dir;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The repository root (this package is crates/fedsyn-ml).
fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Makes the bundle from this build's binaries into `dir/bundle`.
fn bundle(dir: &Path) -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_fedsyn-ml")).parent().unwrap();
    let out = dir.join("bundle");
    let status = Command::new(repo().join("scripts/gpu-bundle.sh"))
        .arg("--bin-dir")
        .arg(bin_dir)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("gpu-bundle.sh runs");
    assert!(status.success(), "gpu-bundle.sh failed");
    out
}

/// Runs the bundle's check on the CPU with tiny shapes; returns its exit code and summary.
fn check(bundle: &Path, out: &Path) -> (i32, Value) {
    let output = Command::new(repo().join(".venv/bin/python"))
        .arg(bundle.join("gpu_check.py"))
        .args(["--device", "cpu", "--tiny", "--out"])
        .arg(out)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .expect("the venv's python runs (scripts/setup.sh)");
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap_or_else(|_| {
        panic!(
            "no summary.json; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(&summary).unwrap(),
    )
}

#[test]
fn the_gpu_bundle_fits_and_its_check_passes_on_the_cpu() {
    let dir = scratch_dir("dry-run");
    let bundle = bundle(&dir);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    // 64 MiB travel to the GPU machine, the working tree included.
    assert!(manifest["bytes"].as_u64().unwrap() < 56 << 20, "{manifest}");
    assert!(manifest["torch_version"]
        .as_str()
        .unwrap()
        .starts_with("2.11.0"));

    let (code, summary) = check(&bundle, &dir.join("check"));
    let steps = &summary["steps"];
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(summary["passed"], true);
    for step in [
        "environment",
        "models",
        "logits",
        "sampling",
        "dpo",
        "embedding",
        "round",
    ] {
        assert_eq!(steps[step]["status"], "ok", "{step}: {:#}", steps[step]);
    }
    let cases = steps["logits"]["cases"].as_array().unwrap();
    assert!(cases.iter().any(|c| c["dtype"] == "bf16"));
    for case in cases {
        let error = case["max_abs_logprob_error"].as_f64().unwrap();
        assert!(error <= case["tolerance"].as_f64().unwrap(), "{case}");
    }
    // Timings are reported, not judged here (a loaded CI machine may time anything): the DPO
    // step is a difference of two calls' times and may even come out negative on a busy CPU.
    assert!(steps["sampling"]["rows"][0]["fedsyn_tokens_per_second"].as_f64() > Some(0.0));
    for field in ["fedsyn_seconds_per_step", "peft_seconds_per_step"] {
        let seconds = steps["dpo"][field].as_f64();
        assert!(
            seconds.is_some_and(f64::is_finite),
            "{field}: {:#}",
            steps["dpo"]
        );
    }
    assert!(steps["dpo"]["fedsyn_loss_first_step"]
        .as_f64()
        .is_some_and(f64::is_finite));
    for row in steps["embedding"]["rows"].as_array().unwrap() {
        assert!(row["min_cosine"].as_f64() > Some(0.99), "{row}");
    }
    let phases = &steps["round"]["phase_seconds"];
    assert!(phases["generate"].as_f64() > Some(0.0), "{phases}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A machine whose torch is not the libtorch the binaries were built against is named as
/// such, and the check stops (exit 3) before building anything.
#[test]
fn the_check_stops_with_the_reason_when_the_machines_torch_differs() {
    let dir = scratch_dir("mismatch");
    let bundle = bundle(&dir);
    let path = bundle.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    manifest["torch_version"] = "2.99.0+cu999".into();
    std::fs::write(&path, manifest.to_string()).unwrap();

    let (code, summary) = check(&bundle, &dir.join("check"));
    assert_eq!(code, 3, "{summary:#}");
    let missing = summary["missing"].as_str().unwrap();
    assert!(
        missing.contains("2.99.0") && missing.contains("rebuild the bundle"),
        "{missing}"
    );
    assert!(summary["steps"].get("models").is_none(), "{summary:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! `fedsyn doctor` reports the libtorch it loaded and finds the models scripts/setup.sh installs.

use std::process::Command;

mod common;

#[test]
fn doctor_reports_libtorch_and_the_default_models() {
    let out = Command::new(common::fedsyn_binary())
        .args(["doctor", "--json"])
        .output()
        .expect("fedsyn runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "doctor failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = report["libtorch_version"].as_str().unwrap_or_default();
    assert!(version.starts_with("2.11.0"), "libtorch {version}");
    assert!(report["threads"].as_i64().unwrap() >= 1);
    for asset in report["assets"].as_array().unwrap() {
        assert!(asset["problem"].is_null(), "{asset}");
        assert!(std::path::Path::new(asset["path"].as_str().unwrap()).exists());
    }
}

/// `doctor` reports the OpenMP wait settings libtorch started with (tests/forward.rs in the
/// root package checks that `fedsyn` passes a short spin on).
#[test]
fn doctor_reports_the_openmp_wait_settings() {
    let wait = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fedsyn-ml"));
        command
            .args(["doctor", "--json"])
            .env_remove("OMP_WAIT_POLICY")
            .env_remove("GOMP_SPINCOUNT");
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command.output().expect("fedsyn-ml runs");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["openmp_wait"].clone()
    };
    let unset = wait(&[]);
    assert!(unset["omp_wait_policy"].is_null() && unset["gomp_spincount"].is_null());
    let passive = wait(&[("OMP_WAIT_POLICY", "PASSIVE")]);
    assert_eq!(passive["omp_wait_policy"], "PASSIVE");
    assert!(passive["gomp_spincount"].is_null());
    let spin = wait(&[("GOMP_SPINCOUNT", "10")]);
    assert_eq!(spin["gomp_spincount"], "10");
}

/// `doctor` says what runs fp32 products on the CPU: libtorch's own (MKL) on this processor
/// unless it has AVX-512 and is not Intel's, and whatever `FEDSYN_CPU_MATMUL` forces (MKL with
/// decoding's weights packed, where the libtorch has MKL: x86-64 Linux's does).
#[test]
fn doctor_reports_the_cpu_matmul_backend() {
    let backend = |forced: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fedsyn-ml"));
        command
            .args(["doctor", "--json"])
            .env_remove("FEDSYN_CPU_MATMUL");
        if let Some(value) = forced {
            command.env("FEDSYN_CPU_MATMUL", value);
        }
        let out = command.output().expect("fedsyn-ml runs");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["cpu_fp32_matmul"].as_str().unwrap().to_string()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |needle: &str| cpuinfo.lines().take(30).any(|line| line.contains(needle));
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) && !cpuinfo.is_empty() {
        let onednn_wider = !has("GenuineIntel") && has(" avx512f");
        let expected = if onednn_wider { "onednn" } else { "torch" };
        assert_eq!(backend(None), expected);
        assert_eq!(backend(Some("mkl-packed")), "mkl-packed");
    }
    assert_eq!(backend(Some("torch")), "torch");
    assert_eq!(backend(Some("onednn")), "onednn");
}

#[test]
fn doctor_names_the_fix_when_models_are_missing() {
    let empty = std::env::temp_dir().join(format!("fedsyn-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(common::fedsyn_binary())
        .arg("doctor")
        .current_dir(&empty)
        .env("FEDSYN_SMOLLM2_GGUF", empty.join("no-such.gguf"))
        .output()
        .expect("fedsyn runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stdout.contains("MISSING"), "{stdout}");
    assert!(stderr.contains("scripts/setup.sh"), "{stderr}");
    std::fs::remove_dir_all(&empty).unwrap();
}

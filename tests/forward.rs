//! `fedsyn` forwards the model commands to the `fedsyn-ml` beside it: arguments untouched,
//! exit code kept, and a short OpenMP spin in its environment unless the user chose a wait
//! policy; `fedsyn client` runs `fedsyn-ml client-embed` with the same spin. A stand-in `fedsyn-ml` (a shell script that reports what it received) takes the
//! real one's place, so this needs no libtorch.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// One test at a time: a child forked by one test while another writes its executables would
/// inherit the open file, and running that file then fails with "text file busy" (ETXTBSY).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A folder holding a copy of `fedsyn` and, beside it, a stand-in `fedsyn-ml` that prints its
/// arguments (one per line), then its OpenMP settings, and exits 7.
fn fedsyn_with_stand_in(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-forward-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_fedsyn"), dir.join("fedsyn")).unwrap();
    let stand_in = dir.join("fedsyn-ml");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\nfor arg in \"$@\"; do echo \"arg=$arg\"; done\n\
         echo \"OMP_WAIT_POLICY=${OMP_WAIT_POLICY-unset}\"\n\
         echo \"GOMP_SPINCOUNT=${GOMP_SPINCOUNT-unset}\"\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
    let mut command = Command::new(dir.join("fedsyn"));
    command
        .args(args)
        .env_remove("OMP_WAIT_POLICY")
        .env_remove("GOMP_SPINCOUNT");
    for (key, value) in env {
        command.env(key, value);
    }
    let Output { status, stdout, .. } = command.output().expect("fedsyn runs");
    let lines = String::from_utf8_lossy(&stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (status.code(), lines)
}

#[test]
fn model_commands_reach_fedsyn_ml_verbatim_with_its_exit_code() {
    let _serial = one_at_a_time();
    let dir = fedsyn_with_stand_in("verbatim");
    let args = [
        "simulate",
        "--config",
        "a b.toml",
        "--set",
        "dp.epsilon=-1",
        "--unknown-flag",
        "--help",
    ];
    let (code, lines) = run(&dir, &args, &[]);
    assert_eq!(code, Some(7), "{lines:?}");
    let forwarded: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("arg="))
        .collect();
    assert_eq!(forwarded, args);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fedsyn_sets_a_short_openmp_spin_unless_the_user_chose() {
    let _serial = one_at_a_time();
    let dir = fedsyn_with_stand_in("openmp");
    let settings = |env: &[(&str, &str)]| {
        let (_, lines) = run(&dir, &["doctor"], env);
        lines
            .into_iter()
            .filter(|line| !line.starts_with("arg="))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        settings(&[]),
        ["OMP_WAIT_POLICY=unset", "GOMP_SPINCOUNT=3000"]
    );
    assert_eq!(
        settings(&[("OMP_WAIT_POLICY", "PASSIVE")]),
        ["OMP_WAIT_POLICY=PASSIVE", "GOMP_SPINCOUNT=unset"]
    );
    assert_eq!(
        settings(&[("GOMP_SPINCOUNT", "10")]),
        ["OMP_WAIT_POLICY=unset", "GOMP_SPINCOUNT=10"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_client_embeds_through_fedsyn_ml_with_the_same_spin() {
    let _serial = one_at_a_time();
    let dir = fedsyn_with_stand_in("client");
    let data = dir.join("texts.jsonl");
    std::fs::write(&data, "{\"text\": \"a private text\"}\n").unwrap();
    let state = dir.join("state");
    let (code, lines) = run(
        &dir,
        &[
            "client",
            "--server",
            "http://127.0.0.1:9",
            "--data",
            data.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ],
        &[],
    );
    // The stand-in exits 7 and leaves no profile, so the client stops before any request.
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.first().map(String::as_str), Some("arg=client-embed"));
    assert!(
        lines.iter().any(|line| line == "GOMP_SPINCOUNT=3000"),
        "{lines:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_fedsyn_ml_the_error_says_where_it_should_be() {
    let _serial = one_at_a_time();
    let dir = fedsyn_with_stand_in("missing");
    std::fs::remove_file(dir.join("fedsyn-ml")).unwrap();
    let output = Command::new(dir.join("fedsyn"))
        .arg("generate")
        .env("PATH", &dir)
        .output()
        .expect("fedsyn runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fedsyn-ml"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

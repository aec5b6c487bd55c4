//! End-to-end tests of `fedsyn budget …`: the binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `fedsyn ARGS` to the end (budgets need no libtorch: `fedsyn` answers them itself).
fn fedsyn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedsyn"))
        .args(args)
        .output()
        .expect("the fedsyn binary runs")
}

/// A fresh folder of this test process.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsyn-budget-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A command line written as one string (no argument here contains a space).
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn json_of(args: &[&str]) -> Value {
    let out = fedsyn(args);
    assert!(
        out.status.success(),
        "fedsyn {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

/// Runs a command that must be refused as bad input; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = fedsyn(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "fedsyn {args:?} should exit 2; stderr: {stderr}"
    );
    stderr
}

#[test]
fn epsilon_reproduces_the_popri_paper() {
    // POPri (ICML 2025): every client every round, T = 20, σ = 19.3, δ = 3e-6 → ε ≈ 0.997.
    let v = json_of(&words(
        "budget epsilon --q 1 --sigma 19.3 --steps 20 --delta 3e-6 --accountant rdp --json",
    ));
    let eps = v["epsilon"].as_f64().unwrap();
    assert!((eps - 0.997).abs() < 0.01, "ε = {eps}");
    assert_eq!(v["accountant"], "rdp");
    assert_eq!(v["delta"].as_f64(), Some(3e-6));
    assert!(v["order"].as_f64().unwrap() > 1.0);
}

#[test]
fn epsilon_with_all_accountants_reports_the_tightest_at_top_level() {
    let v = json_of(&words(
        "budget epsilon --q 0.01 --sigma 1.0 --steps 1e4 --delta 1e-5 --json",
    ));
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let rdp = results.iter().find(|r| r["accountant"] == "rdp").unwrap();
    let pld = results.iter().find(|r| r["accountant"] == "pld").unwrap();
    let (rdp_eps, pld_eps) = (
        rdp["epsilon"].as_f64().unwrap(),
        pld["epsilon"].as_f64().unwrap(),
    );
    assert!(
        pld_eps < rdp_eps,
        "PLD {pld_eps} should be tighter than RDP {rdp_eps}"
    );
    assert_eq!(v["epsilon"].as_f64(), Some(pld_eps));
    assert_eq!(v["accountant"], "pld");
}

#[test]
fn custom_orders_and_pld_grid_are_used() {
    let base = [
        "budget", "epsilon", "--q", "0.01", "--sigma", "1", "--steps", "1000", "--delta", "1e-5",
        "--json",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(extra.iter()).copied().collect()
    };
    let default = json_of(&with(&["--accountant", "rdp"]));
    let custom = json_of(&with(&["--accountant", "rdp", "--orders", "2,3.5,300"]));
    assert!([2.0, 3.5, 300.0].contains(&custom["order"].as_f64().unwrap()));
    assert!(custom["epsilon"].as_f64() >= default["epsilon"].as_f64());
    let fine = json_of(&with(&["--accountant", "pld", "--pld-grid", "1e-3"]));
    let coarse = json_of(&with(&["--accountant", "pld", "--pld-grid", "0.05"]));
    assert!(coarse["epsilon"].as_f64() > fine["epsilon"].as_f64());
    assert!(refused(&with(&["--accountant", "rdp", "--orders", "0.5"])).contains("orders"));
    assert!(refused(&with(&["--accountant", "pld", "--pld-grid=-1"])).contains("grid"));
}

#[test]
fn human_table_names_both_accountants() {
    let out = fedsyn(&words(
        "budget epsilon --q 0.01 --sigma 1 --steps 1000 --delta 1e-5",
    ));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rdp") && text.contains("pld") && text.contains("Poisson"),
        "{text}"
    );
}

#[test]
fn sigma_calibration_round_trips_through_epsilon() {
    let v = json_of(&words("budget sigma --target-epsilon 2 --q 0.01 --steps 10000 --delta 1e-5 --accountant rdp --json"));
    let sigma = v["sigma"].as_f64().unwrap();
    let check = json_of(&[
        "budget",
        "epsilon",
        "--q",
        "0.01",
        "--sigma",
        &sigma.to_string(),
        "--steps",
        "10000",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
        "--json",
    ]);
    let eps = check["epsilon"].as_f64().unwrap();
    assert!(eps <= 2.0 && eps > 1.99, "σ = {sigma} gives ε = {eps}");
}

#[test]
fn fixed_cohorts_cost_more_than_poisson_at_the_same_rate() {
    let poisson = json_of(&words(
        "budget epsilon --q 0.01 --sigma 2 --steps 100 --delta 1e-5 --accountant rdp --json",
    ));
    let fixed = json_of(&words("budget epsilon --cohort 10 --population 1000 --sigma 2 --steps 100 --delta 1e-5 --accountant rdp --json"));
    assert_eq!(fixed["sampling"]["kind"], "fixed_cohort");
    assert!(fixed["epsilon"].as_f64().unwrap() > poisson["epsilon"].as_f64().unwrap());
}

#[test]
fn rounds_stay_within_the_budget() {
    let v = json_of(&words(
        "budget rounds --sigma 19.3 --q 1 --target-epsilon 1 --delta 3e-6 --accountant rdp --json",
    ));
    assert_eq!(v["rounds"].as_u64(), Some(20));
    let row = &v["results"][0];
    assert!(row["epsilon"].as_f64().unwrap() <= 1.0);
    assert!(row["epsilon_next"].as_f64().unwrap() > 1.0);
}

#[test]
fn bad_arguments_are_named_and_exit_2() {
    let base = ["budget", "epsilon", "--steps", "10", "--accountant", "rdp"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(extra.iter()).copied().collect()
    };
    assert!(refused(&with(&["--q", "0", "--sigma", "1", "--delta", "1e-5"])).contains("q"));
    assert!(refused(&with(&["--q", "1.5", "--sigma", "1", "--delta", "1e-5"])).contains("q"));
    assert!(refused(&with(&["--q", "0.1", "--sigma", "-1", "--delta", "1e-5"])).contains("sigma"));
    assert!(refused(&with(&["--q", "0.1", "--sigma", "1", "--delta", "1.5"])).contains("delta"));
    assert!(refused(&with(&["--q", "0.1", "--sigma", "1", "--delta", "0"])).contains("delta"));
    assert!(refused(&with(&["--sigma", "1", "--delta", "1e-5"])).contains("--q"));
    let unreachable = refused(&words(
        "budget sigma --target-epsilon 0.001 --q 1 --steps 100 --delta 1e-5 --accountant rdp",
    ));
    assert!(unreachable.contains("unreachable"), "{unreachable}");
    assert!(refused(&words("budget epsilon --q 0.1")).contains("--sigma"));
}

fn write_ledger(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("ledger.json");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const LEDGER: &str = r#"{
  "delta": 1e-5,
  "events": [
    {"mechanism": "gaussian", "noise_multiplier": 5.0, "sampling": {"kind": "full"},
     "count": 1, "round": 0, "label": "popri round 0 scores", "clip_bound": 1.0, "timestamp": 0},
    {"mechanism": "gaussian", "noise_multiplier": 5.0, "sampling": {"kind": "full"},
     "count": 1, "round": 1, "label": "popri round 1 scores", "clip_bound": 1.0, "timestamp": 0}
  ]
}"#;

#[test]
fn report_states_unit_adjacency_and_epsilon() {
    let dir = scratch_dir("report");
    let ledger = write_ledger(&dir, LEDGER);
    let out = fedsyn(&["budget", "report", &ledger]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "add/remove one client",
        "one client",
        "rdp",
        "pld",
        "σ",
        "2 round",
    ] {
        assert!(md.contains(needle), "statement lacks {needle:?}:\n{md}");
    }
    let v = json_of(&["budget", "report", &ledger, "--format", "json"]);
    assert_eq!(v["rounds"].as_u64(), Some(2));
    assert_eq!(v["delta"].as_f64(), Some(1e-5));
    let eps = v["epsilon"].as_f64().unwrap();
    // Two full-participation Gaussian releases at σ = 5 are one Gaussian at σ = 5/√2.
    let single = json_of(&[
        "budget",
        "epsilon",
        "--q",
        "1",
        "--sigma",
        &(5.0 / 2f64.sqrt()).to_string(),
        "--steps",
        "1",
        "--delta",
        "1e-5",
        "--json",
    ]);
    assert!((eps - single["epsilon"].as_f64().unwrap()).abs() < 1e-3 * eps);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn report_refuses_bad_ledgers() {
    let dir = scratch_dir("bad-ledger");
    let no_delta = write_ledger(&dir, r#"{"events": []}"#);
    assert!(refused(&["budget", "report", &no_delta]).contains("--delta"));
    let broken = write_ledger(&dir, "{\"events\": [");
    assert!(refused(&["budget", "report", &broken]).contains("ledger"));
    let negative = write_ledger(
        &dir,
        r#"{"delta": 1e-5, "events": [{"mechanism": "gaussian", "noise_multiplier": 0,
            "sampling": {"kind": "full"}, "count": 1}]}"#,
    );
    assert!(refused(&["budget", "report", &negative]).contains("event 0"));
    assert!(refused(&words("budget report /nonexistent/ledger.json")).contains("cannot read"));
    std::fs::remove_dir_all(dir).unwrap();
}

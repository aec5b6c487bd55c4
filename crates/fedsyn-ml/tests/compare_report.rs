//! End-to-end tests of `fedsyn compare` and `fedsyn report` on run directories made from one
//! real tiny `fedsyn simulate` run (the installed SmolLM2 + MiniLM, 6 clients, 2 rounds).
//!
//! Training downstream models is `fedsyn eval`'s business (and slow): the `eval.json` files
//! here are written by the test with chosen accuracies, so that the table and the gap-closed
//! arithmetic can be checked exactly. The other directories are copies of the real run with
//! another method / ε in their config, and the references are what `fedsyn eval --reference`
//! leaves: a config.toml and an eval.json.

mod common;
use common::federation::{tiny_config, write_clients_and_seeds, CLIENT_DATA};
use common::{
    assert_refused, fedsyn, fedsyn_ok, json_of, path_str, read_json, scratch_dir,
    scratch_dir_for_models, words,
};

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The privacy and eval sections of the real run.
const EXTRA: &str = "[eval]
fid_all_candidates = true

[privacy]
epsilon = 2.0
delta = 1e-5
rounds = 2
noise_seed = 42
";

/// The real run, made once per test process.
fn real_run(dir: &Path) -> PathBuf {
    write_clients_and_seeds(dir);
    std::fs::write(
        dir.join("config.toml"),
        tiny_config("tiny", CLIENT_DATA, EXTRA),
    )
    .unwrap();
    let run = dir.join("popri-eps2");
    let output = fedsyn(&words(&format!(
        "simulate --quiet --config {} --out {}",
        dir.join("config.toml").display(),
        run.display()
    )));
    assert!(
        output.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    run
}

/// Copies the files the reports read (not the checkpoints).
fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in [
        "config.toml",
        "summary.json",
        "metrics.jsonl",
        "ledger.json",
        "synthetic.jsonl",
        "privacy-statement.md",
    ] {
        std::fs::copy(from.join(name), to.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Rewrites one `key = value` line of a TOML file (the line must exist).
fn set_toml_line(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{} has no `{from}`:\n{text}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn write_eval(dir: &Path, method: &str, epsilon: Option<f64>, accuracy: f64, mauve: f64) {
    let distribution = epsilon.is_some().then(|| {
        json!({ "fid": 0.5 + accuracy, "precision": 0.6, "recall": 0.5, "mauve": mauve,
                "synthetic_texts": 3, "eval_texts": 6 })
    });
    let report = json!({
        "schema": 1,
        "method": method,
        "run_dir": epsilon.map(|_| dir.to_path_buf()),
        "epsilon_target": epsilon,
        "epsilon_rdp": epsilon.map(|e| e * 0.98),
        "epsilon_pld": epsilon.map(|e| e * 0.9),
        "delta": epsilon.map(|_| 1e-5),
        "downstream": {
            "model": "SmolLM2-135M-Instruct + LoRA r=4",
            "accuracy": accuracy,
            "eval_tokens": 1234,
            "validation": [{"epoch": 1, "accuracy": accuracy - 0.01}, {"epoch": 2, "accuracy": accuracy}],
            "chosen_epoch": 2,
            "train_texts": 3,
            "seed": 0
        },
        "distribution": distribution,
        "memorisation_nonprivate": epsilon.map(|_| json!({
            "synthetic_texts": 3, "private_texts": 12,
            "nearest_cosine": [0.5, 0.75, 0.99], "nearest_index": [0, 4, 7],
            "longest_shared_words": [3, 5, 21],
            "cosine_histogram": {"edges": [0.5, 0.75, 1.0], "counts": [1, 2]},
            "shared_words_histogram": {"edges": [0.0, 2.0, 4.0, 6.0], "counts": [0, 1, 1]},
            "texts_sharing_anchor_run": 1
        })),
        "seconds": 1.5
    });
    std::fs::write(dir.join("eval.json"), report.to_string()).unwrap();
}

fn reference(dir: &Path, run: &Path, method: &str, accuracy: f64) -> PathBuf {
    let out = dir.join(format!("reference-{method}"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(run.join("config.toml"), out.join("config.toml")).unwrap();
    write_eval(&out, method, None, accuracy, 0.0);
    out
}

#[test]
fn compare_and_report_on_runs_made_from_a_real_run() {
    let Some(dir) = scratch_dir_for_models("compare-report") else {
        return;
    };
    let popri = real_run(&dir);
    write_eval(&popri, "popri", Some(2.0), 0.30, 0.7);

    // A "PE at ε = 7" row: the same files with another method and target.
    let pe = dir.join("pe-eps7");
    copy_run(&popri, &pe);
    set_toml_line(
        &pe.join("config.toml"),
        "method = \"popri\"",
        "method = \"pe\"",
    );
    set_toml_line(&pe.join("config.toml"), "epsilon = 2.0", "epsilon = 7.0");
    let mut summary: Value = read_json(&pe.join("summary.json"));
    summary["target_epsilon"] = json!(7.0);
    std::fs::write(pe.join("summary.json"), summary.to_string()).unwrap();
    write_eval(&pe, "pe", Some(7.0), 0.35, 0.8);

    // A run nobody evaluated yet.
    let unevaluated = dir.join("popri-unevaluated");
    copy_run(&popri, &unevaluated);

    let real = reference(&dir, &popri, "real", 0.40);
    let public = reference(&dir, &popri, "public", 0.20);
    let out = dir.join("comparison");
    let dirs = [&popri, &pe, &unevaluated, &real, &public];
    let mut args = vec!["compare", "--json", "--out", path_str(&out)];
    args.extend(dirs.iter().map(|d| path_str(d)));
    let comparison: Value = json_of(&args);

    let rows = comparison["rows"].as_array().unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["popri", "popri", "pe", "public", "real"]);
    let row_of = |dir: &Path| {
        rows.iter()
            .find(|r| r["run_dir"].as_str() == Some(path_str(dir)))
            .unwrap_or_else(|| panic!("no row for {}", dir.display()))
    };
    let close = |value: &Value, expected: f64| {
        let value = value
            .as_f64()
            .unwrap_or_else(|| panic!("{value} is not a number"));
        assert!((value - expected).abs() < 1e-9, "{value} vs {expected}");
    };
    // gap closed = (acc − 0.20) / (0.40 − 0.20).
    close(&row_of(&popri)["gap_closed"], 0.5);
    close(&row_of(&pe)["gap_closed"], 0.75);
    close(&row_of(&real)["gap_closed"], 1.0);
    close(&row_of(&public)["gap_closed"], 0.0);
    close(&row_of(&pe)["epsilon_target"], 7.0);
    close(&row_of(&pe)["mauve"], 0.8);
    assert_eq!(row_of(&real)["epsilon"], "∞");
    assert_eq!(row_of(&public)["epsilon"], "0");
    let pending = row_of(&unevaluated);
    assert_eq!(pending["evaluated"], false);
    assert!(pending["accuracy"].is_null() && pending["gap_closed"].is_null());
    // ε spent comes from the run's own summary, not from eval.json.
    let summary: Value = read_json(&popri.join("summary.json"));
    close(
        &row_of(&popri)["epsilon_rdp"],
        summary["epsilon_rdp"].as_f64().unwrap(),
    );

    for file in [
        "compare.md",
        "compare.json",
        "accuracy.svg",
        "fid-rounds.svg",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let markdown = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(markdown.contains("![Downstream accuracy by method and target ε](accuracy.svg)"));
    assert!(markdown.contains("| popri | 2 |"), "{markdown}");

    // The plain table says what to do about the unevaluated run.
    let mut args = vec!["compare"];
    args.extend(dirs.iter().map(|d| path_str(d)));
    let table = String::from_utf8(fedsyn_ok(&args).stdout).unwrap();
    assert!(
        table.contains(&format!(
            "not evaluated (run `fedsyn eval {}`)",
            unevaluated.display()
        )),
        "{table}"
    );
    assert!(
        table.contains("50.0 %") && table.contains("75.0 %"),
        "{table}"
    );
    // The memorisation check of each evaluated run (the references have none).
    assert!(
        table.contains("longest shared run † (texts sharing ≥ 8 words)"),
        "{table}"
    );
    assert!(table.contains("| 21 (1) |"), "{table}");

    // The report, with a synthetic text that would be markup if it were not escaped.
    let hostile = "<script>alert('x')</script> & <img src=\"http://example.com/a.png\"/>";
    let synthetic = std::fs::read_to_string(popri.join("synthetic.jsonl")).unwrap();
    std::fs::write(
        popri.join("synthetic.jsonl"),
        format!("{}\n{synthetic}", json!({ "text": hostile })),
    )
    .unwrap();
    let files: Value = json_of(&["report", "--json", path_str(&popri)]);
    let html_path = PathBuf::from(files["html"].as_str().unwrap());
    assert_eq!(html_path, popri.join("report.html"));
    let html = std::fs::read_to_string(&html_path).unwrap();
    check_self_contained_xhtml(&html);
    // ε per round, FID, DPO loss, reward accuracy, clipped fraction, the noisy-score
    // histograms of both rounds, the validation curve and the two memorisation histograms.
    let plots = html.matches("<svg").count();
    assert!(plots >= 8, "{plots} plots");
    assert!(
        html.contains(
            "of 3 synthetic texts, 1 share a run of at least 8 words with one of the \
                       12 private training texts (longest 21, median 5); the highest cosine to \
                       a private training text is 0.9900"
        ),
        "no memorisation summary"
    );
    assert!(html.contains("Cosine to the nearest private text"));
    assert!(
        html.contains("Noisy scores per round"),
        "no noisy-score histograms"
    );
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;img"));
    assert!(html.contains("0.3000 over 1234 tokens"));
    assert!(html.contains("non-private diagnostic"));
    let statement = std::fs::read_to_string(popri.join("privacy-statement.md")).unwrap();
    let first_sentence = statement
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap();
    let escaped = first_sentence
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    assert!(html.contains(&escaped), "the privacy statement is missing");

    let markdown = std::fs::read_to_string(popri.join("report.md")).unwrap();
    let plot_files = files["plots"].as_array().unwrap();
    assert_eq!(plot_files.len(), plots);
    for plot in plot_files {
        let plot = PathBuf::from(plot.as_str().unwrap());
        let relative = plot
            .strip_prefix(&popri)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            markdown.contains(&format!("]({relative})")),
            "{relative} not linked"
        );
        assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    }

    // A report of the unevaluated run says how to evaluate it.
    fedsyn_ok(&["report", path_str(&unevaluated)]);
    let html = std::fs::read_to_string(unevaluated.join("report.html")).unwrap();
    check_self_contained_xhtml(&html);
    assert!(html.contains("Not evaluated: run <code>fedsyn eval"));
}

/// Well-formed XML, no scripts, nothing loaded from elsewhere.
fn check_self_contained_xhtml(html: &str) {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let document = roxmltree::Document::parse_with_options(html, options)
        .unwrap_or_else(|e| panic!("report.html is not well-formed: {e}"));
    let elements: Vec<_> = document.descendants().filter(|n| n.is_element()).collect();
    assert!(elements
        .iter()
        .all(|n| !matches!(n.tag_name().name(), "script" | "link" | "iframe" | "img")));
    for node in &elements {
        for attribute in node.attributes() {
            let value = attribute.value();
            assert!(
                !value.contains("http://") && !value.contains("https://")
                    || attribute.name() == "xmlns",
                "external reference {}={value}",
                attribute.name()
            );
        }
    }
    let svgs = elements
        .iter()
        .filter(|n| n.tag_name().name() == "svg")
        .count();
    assert_eq!(
        svgs,
        html.matches("<svg").count(),
        "an <svg> outside the tree"
    );
}

#[test]
fn compare_rejects_two_references_of_one_kind_and_non_runs() {
    let dir = scratch_dir("compare-bad");
    let config = dir.join("config.toml");
    std::fs::write(dir.join("clients.jsonl"), "").unwrap();
    std::fs::write(
        &config,
        "[data]\ntrain = \"clients.jsonl\"\n[prompts]\nseed_file = \"seeds.txt\"\n",
    )
    .unwrap();
    let mut references = Vec::new();
    for name in ["a", "b"] {
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(&config, out.join("config.toml")).unwrap();
        write_eval(&out, "real", None, 0.4, 0.0);
        references.push(out);
    }
    let output = fedsyn(&words(&format!(
        "compare {} {}",
        references[0].display(),
        references[1].display()
    )));
    assert_refused(&output, "are both the `real` reference");

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let output = fedsyn(&["report", path_str(&empty)]);
    assert_refused(&output, "config.toml");

    // Both run in `fedsyn` itself: a copy of it alone, with no `fedsyn-ml` beside it or on
    // the PATH, gives the same answers (it would fail to forward them otherwise).
    let alone = dir.join("fedsyn-alone");
    std::fs::create_dir_all(&alone).unwrap();
    let binary = alone.join("fedsyn");
    std::fs::copy(common::fedsyn_binary(), &binary).unwrap();
    for args in [
        vec![
            "compare",
            path_str(&references[0]),
            path_str(&references[1]),
        ],
        vec!["report", path_str(&empty)],
    ] {
        let output = std::process::Command::new(&binary)
            .args(&args)
            .env("PATH", &alone)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("fedsyn-ml"), "{args:?}: {stderr}");
    }
}

//! Compares the SmolLM2-135M-Instruct GGUF generator with transformers loading the same file
//! (fp32), through `tests/fixtures/generator_reference.json` written by
//! `scripts/reference/generator.py`: prompt ids (chat template included), last-position logits
//! within 1e-3, and identical greedy continuations.

mod common;

use models::llama::{generate_ids, Generator, SamplingParams};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-3;

#[derive(Deserialize)]
struct Reference {
    eos_id: u32,
    greedy_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    chat: bool,
    prompt_ids: Vec<u32>,
    last_logits: LogitSummary,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

#[derive(Deserialize)]
struct LogitSummary {
    top_ids: Vec<i64>,
    top_values: Vec<f64>,
    strided_every: usize,
    strided_values: Vec<f64>,
    logsumexp: f64,
    mean: f64,
}

fn reference() -> Reference {
    serde_json::from_str(include_str!("fixtures/generator_reference.json")).expect("fixture parses")
}

fn check_logits(case: &Case, logits: &Tensor) {
    let values = Vec::<f32>::try_from(logits.to_kind(Kind::Float)).unwrap();
    let summary = &case.last_logits;
    let mut worst = 0f64;
    for (&id, &want) in summary.top_ids.iter().zip(&summary.top_values) {
        worst = worst.max((f64::from(values[id as usize]) - want).abs());
    }
    for (i, &want) in summary.strided_values.iter().enumerate() {
        worst = worst.max((f64::from(values[i * summary.strided_every]) - want).abs());
    }
    assert!(worst < TOLERANCE, "{:?}: max |Δ logit| {worst}", case.text);
    let logsumexp = f64::try_from(logits.to_kind(Kind::Double).logsumexp([0], false)).unwrap();
    let mean = f64::try_from(logits.to_kind(Kind::Double).mean(Kind::Double)).unwrap();
    assert!(
        (logsumexp - summary.logsumexp).abs() < TOLERANCE,
        "{logsumexp} vs {}",
        summary.logsumexp
    );
    assert!(
        (mean - summary.mean).abs() < TOLERANCE,
        "{mean} vs {}",
        summary.mean
    );
    let argmax = i64::try_from(logits.argmax(0, false)).unwrap();
    assert_eq!(
        argmax, summary.top_ids[0],
        "{:?}: most likely next token",
        case.text
    );
}

#[test]
fn smollm2_matches_transformers() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let reference = reference();
    let generator = Generator::from_gguf(&path, Device::Cpu).unwrap();
    let model = generator.model();
    assert_eq!(generator.eos_ids(), [reference.eos_id]);

    // Tokenisation, with the chat template rendered by minijinja for the chat case.
    for case in &reference.cases {
        let ids = generator.encode_prompt(&case.text, case.chat).unwrap();
        assert_eq!(
            ids, case.prompt_ids,
            "{:?} (chat: {})",
            case.text, case.chat
        );
    }

    // One prompt alone, then all three left-padded into one batch: the padded rows must give
    // the logits of their unpadded runs.
    let first = &reference.cases[0];
    let ids: Vec<i64> = first.prompt_ids.iter().map(|&t| i64::from(t)).collect();
    let n = ids.len() as i64;
    let logits = model
        .forward(
            &Tensor::from_slice(&ids).view([1, n]),
            &Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]),
            &Tensor::ones([1, n], (Kind::Int64, Device::Cpu)),
            None,
        )
        .unwrap();
    check_logits(first, &logits.get(0).get(n - 1));

    let prompts: Vec<Vec<u32>> = reference
        .cases
        .iter()
        .map(|c| c.prompt_ids.clone())
        .collect();
    let (padded, mask, positions) = common::left_padded(&prompts, 2);
    let hidden = model
        .forward_hidden(&padded, &positions, &mask, None)
        .unwrap();
    let width = padded.size()[1];
    let last = model.logits(&hidden.select(1, width - 1));
    for (row, case) in reference.cases.iter().enumerate() {
        check_logits(case, &last.get(row as i64));
    }

    // Greedy continuations of the padded batch, through the key/value cache.
    let params = SamplingParams::greedy(reference.greedy_tokens);
    let generated = generate_ids(model, &prompts, &params, generator.eos_ids(), 2, |_, _| {
        false
    })
    .unwrap();
    for (case, row) in reference.cases.iter().zip(&generated) {
        assert_eq!(row.ids, case.greedy_ids, "{:?}", case.text);
    }

    // Rows with the same prompt share one prefill (its cache rows and logits are copied):
    // every row still continues exactly as transformers does from that prompt alone.
    let order = [0, 0, 1, 0, 2, 1, 1];
    let repeated: Vec<Vec<u32>> = order
        .iter()
        .map(|&i| reference.cases[i].prompt_ids.clone())
        .collect();
    let generated = generate_ids(model, &repeated, &params, generator.eos_ids(), 2, |_, _| {
        false
    })
    .unwrap();
    for (&i, row) in order.iter().zip(&generated) {
        let case = &reference.cases[i];
        assert_eq!(row.ids, case.greedy_ids, "shared prefill: {:?}", case.text);
    }
    let completions = generator
        .generate(&[reference.cases[2].text.clone()], false, &params)
        .unwrap();
    assert_eq!(completions[0].text, reference.cases[2].greedy_text);
}

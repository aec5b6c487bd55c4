//! How far SmolLM2-135M-Instruct's bf16 forward pass drifts from its fp32 one on real text: the
//! next-token logits and distributions at every position of N State of the Union excerpts,
//! and the sum of the log-probabilities of each excerpt's last C tokens (the sequence score
//! DPO compares).
//!
//! `cargo run --release -p models --example bf16_drift -- [N] [TOKENS] [C]`
//! (default: 16 excerpts of 256 tokens, scores over the last 64).

use models::llama::Generator;
use models::Assets;
use tch::{Device, Kind, Tensor};

// The benchmarks' helpers (SOTU excerpts as token ids).
#[path = "../benches/support/mod.rs"]
mod support;

/// fp32 log-probabilities `[batch, seq, vocab]` of the model in `kind` on `ids`.
fn log_probs(generator: &Generator, ids: &Tensor) -> Tensor {
    let (batch, seq) = (ids.size()[0], ids.size()[1]);
    let positions = Tensor::arange(seq, (Kind::Int64, Device::Cpu))
        .unsqueeze(0)
        .repeat([batch, 1]);
    let mask = Tensor::ones([batch, seq], (Kind::Int64, Device::Cpu));
    let _no_grad = tch::no_grad_guard();
    generator
        .model()
        .forward(ids, &positions, &mask, None)
        .expect("forward")
        .log_softmax(-1, Kind::Float)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("N, TOKENS and C are whole numbers"))
        .collect();
    let arg = |i: usize, default: usize| *args.get(i).unwrap_or(&default);
    let (count, length, scored) = (arg(0, 16), arg(1, 256), arg(2, 64));
    tch::set_num_threads(2);
    let path = Assets::discover()
        .smollm2_gguf()
        .expect("scripts/setup.sh installs SmolLM2");
    let fp32 = Generator::load_as(&path, Device::Cpu, Kind::Float).unwrap();
    let bf16 = Generator::load_as(&path, Device::Cpu, Kind::BFloat16).unwrap();
    let rows = support::address_ids(&fp32, count, length);
    let flat: Vec<i64> = rows.iter().flatten().map(|&id| id as i64).collect();
    let ids = Tensor::from_slice(&flat).view([count as i64, length as i64]);

    let (p32, p16) = (log_probs(&fp32, &ids), log_probs(&bf16, &ids));
    // Logits up to a per-position constant: compare log-probabilities, which fix it.
    let diff = (&p16 - &p32).abs();
    let max_diff = f64::try_from(diff.max()).unwrap();
    // Where the fp32 model puts its mass: the expected absolute difference under p32.
    let expected_diff = f64::try_from(
        (p32.exp() * &diff)
            .sum_dim_intlist(-1, false, Kind::Float)
            .mean(Kind::Float),
    )
    .unwrap();
    let kl = (p32.exp() * (&p32 - &p16))
        .sum_dim_intlist(-1, false, Kind::Float)
        .mean(Kind::Float);
    let top1 = p32
        .argmax(-1, false)
        .eq_tensor(&p16.argmax(-1, false))
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    // Sequence scores: log p of each actual next token, summed over the last `scored` ones.
    let next = ids.narrow(1, 1, length as i64 - 1).unsqueeze(-1);
    let token_lp = |p: &Tensor| {
        p.narrow(1, 0, length as i64 - 1)
            .gather(2, &next, false)
            .squeeze_dim(-1)
            .narrow(1, length as i64 - 1 - scored as i64, scored as i64)
            .sum_dim_intlist(-1, false, Kind::Float)
    };
    let (s32, s16) = (token_lp(&p32), token_lp(&p16));
    let score_diff = (&s16 - &s32).abs();
    let spread = f64::try_from(s32.std(true)).unwrap();
    println!(
        "{count} SOTU excerpts of {length} tokens, SmolLM2-135M-Instruct, bf16 against fp32 (CPU):"
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| max abs log-prob difference, any token | {max_diff:.4} |");
    println!("| mean abs log-prob difference, weighted by p(fp32) | {expected_diff:.5} |");
    println!(
        "| mean KL(p_fp32 ‖ p_bf16) per position (nats) | {:.6} |",
        f64::try_from(kl).unwrap()
    );
    println!("| top-1 agreement | {:.4} |", f64::try_from(top1).unwrap());
    println!(
        "| sequence score (last {scored} tokens): mean abs difference (nats) | {:.4} |",
        f64::try_from(score_diff.mean(Kind::Float)).unwrap()
    );
    println!(
        "| the same: largest | {:.4} |",
        f64::try_from(score_diff.max()).unwrap()
    );
    println!("| spread of the fp32 sequence scores across excerpts (sd, nats) | {spread:.2} |");
}

//! Times K samples of each of J prompts (rows sharing a prompt share one prefill) against J·K
//! distinct prompts of the same token length (nothing to share: the cost before sharing).
//! `cargo run --release -p models --example shared_prefill -- [J] [K] [NEW_TOKENS]`

use std::time::Instant;

use models::llama::{generate_ids, Generator, SamplingParams};
use models::Assets;
use tch::Device;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (j, k, new_tokens) = (
        *args.first().unwrap_or(&4),
        *args.get(1).unwrap_or(&4),
        *args.get(2).unwrap_or(&32),
    );
    tch::set_num_threads(2);
    let path = Assets::discover()
        .smollm2_gguf()
        .expect("scripts/setup.sh installs SmolLM2");
    let generator = Generator::from_gguf(&path, Device::Cpu).unwrap();
    // A demo-like prompt: a few hundred tokens of instructions and examples.
    let base = "Here are examples of State of the Union addresses. Write one more paragraph in \
                the same style, about the economy, jobs, trade and the budget of the nation. "
        .repeat(6);
    let prompt = |i: usize| {
        let mut ids = generator.encode_prompt(&base, true).unwrap();
        // Distinct prompts differ in their first real token only: the same length and work.
        ids[1] = 1000 + i as u32;
        ids
    };
    let shared: Vec<Vec<u32>> = (0..j)
        .flat_map(|p| std::iter::repeat_n(prompt(p), k))
        .collect();
    let distinct: Vec<Vec<u32>> = (0..j * k).map(prompt).collect();
    let params = SamplingParams {
        max_new_tokens: new_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    let eos = generator.eos_ids().to_vec();
    let time = |rows: &[Vec<u32>]| {
        let clock = Instant::now();
        generate_ids(generator.model(), rows, &params, &eos, 2, |_, _| false).unwrap();
        clock.elapsed().as_secs_f64()
    };
    time(&shared[..k]); // warm-up
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        without.push(time(&distinct));
        with.push(time(&shared));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (with, without) = (median(&mut with), median(&mut without));
    println!(
        "{{\"prompts\": {j}, \"samples_per_prompt\": {k}, \"prompt_tokens\": {}, \
         \"new_tokens\": {new_tokens}, \"distinct_seconds\": {without:.3}, \
         \"shared_seconds\": {with:.3}, \"speedup\": {:.3}}}",
        shared[0].len(),
        without / with
    );
}

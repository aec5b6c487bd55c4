//! Where sampling's time goes, phase by phase, against the machine's own matrix-product
//! limit: the prefill of J prompts (the demo's chat requests, one topic each, left-padded),
//! then for each of T steps the decoder layers over the J·K rows (their linear layers and
//! attention), the LM head and the sampler (temperature 0.9 and top-p 0.95, the demo's). Each phase's FLOPs are counted from the model's shapes, and its rate is compared
//! with an fp32 matrix product of the same layer's size measured on the same threads first
//! (`peak`), so the table says how far each phase is from what the hardware does.
//!
//! `cargo run --release -p models --example sampling_profile -- [J] [K] [NEW_TOKENS] [f32|bf16]`
//! (default: the demo round's 24 × 4, 48 new tokens, fp32; with bf16 the model and the
//! limit's products run in bf16).

use std::time::Instant;

use models::llama::{nucleus_prefix_widths, Generator, Sampler, SamplingParams};
use models::Assets;
use tch::{Device, Kind, Tensor};

/// FLOPs of a product of `[m, k]` by `[k, n]`.
fn matmul_flops(m: usize, k: usize, n: usize) -> f64 {
    2.0 * (m * k * n) as f64
}

/// Seconds per call of `f`, best of `repeats` (after one warm-up call).
fn best_of(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let kind = match args.get(3).map(String::as_str) {
        None | Some("f32") => Kind::Float,
        Some("bf16") => Kind::BFloat16,
        Some(other) => panic!("unknown dtype {other}: use f32 or bf16"),
    };
    args.truncate(3);
    let args: Vec<usize> = args
        .iter()
        .map(|a| a.parse().expect("J, K and NEW_TOKENS are whole numbers"))
        .collect();
    let arg = |i: usize, default: usize| *args.get(i).unwrap_or(&default);
    let (j, k, new_tokens) = (arg(0, 24), arg(1, 4), arg(2, 48));
    let rows = j * k;
    tch::set_num_threads(2);
    let path = Assets::discover()
        .smollm2_gguf()
        .expect("scripts/setup.sh installs SmolLM2");
    let generator = Generator::load_as(&path, Device::Cpu, kind).unwrap();
    let model = generator.model();
    let c = model.config().clone();
    let (d, kv_dim) = (c.hidden_size, c.num_kv_heads * c.head_dim);
    let _no_grad = tch::no_grad_guard();

    // The linear layers of one block, as (out, in) shapes: q, k, v, o, gate, up, down.
    let linears = [
        (c.num_heads * c.head_dim, d),
        (kv_dim, d),
        (kv_dim, d),
        (d, c.num_heads * c.head_dim),
        (c.intermediate_size, d),
        (c.intermediate_size, d),
        (d, c.intermediate_size),
    ];
    let block_linear_flops = |tokens: usize| -> f64 {
        linears
            .iter()
            .map(|&(o, i)| matmul_flops(tokens, i, o))
            .sum()
    };
    // Attention of `queries` new positions against `context` positions, per block: QKᵀ and
    // the weighted sum of V, each 2·queries·context·(heads·head_dim) FLOPs.
    let attention_flops = |queries: usize, context: usize| -> f64 {
        4.0 * (queries * context * c.num_heads * c.head_dim) as f64
    };

    // The limit: products (in the model's dtype) of the shapes that dominate (the MLP's up projection for the
    // decode rows and for the prefill tokens, and the LM head), best of 5 runs of 30.
    let peak = |m: usize, k_: usize, n: usize| {
        let a = Tensor::randn([m as i64, k_ as i64], (kind, Device::Cpu));
        let b = Tensor::randn([k_ as i64, n as i64], (kind, Device::Cpu));
        // 30 products back to back, as a decode step runs its layers: the threads stay
        // awake, as they do in the model.
        30.0 * matmul_flops(m, k_, n)
            / best_of(5, || {
                for _ in 0..30 {
                    let _ = a.matmul(&b);
                }
            })
    };

    // Prefill: the demo's chat requests (experiments/sotu-popri.toml), left-padded.
    let topics = [
        "the economy and public finances",
        "foreign relations and treaties",
        "the army and the navy",
        "agriculture and farmers",
        "education and schools",
        "taxes and tariffs",
        "roads, railroads and canals",
        "immigration and citizenship",
        "health care",
        "energy and the environment",
        "civil rights",
        "war and peace",
        "the national debt",
        "trade with other nations",
        "jobs and wages",
        "science and exploration",
    ];
    let prompts: Vec<Vec<u32>> = (0..j)
        .map(|p| {
            let request = format!(
                "Write one short paragraph of a State of the Union address about {}. Reply \
                 with the paragraph only.",
                topics[p % topics.len()]
            );
            generator.encode_prompt(&request, true).unwrap()
        })
        .collect();
    let prompt_len = prompts.iter().map(Vec::len).max().unwrap();
    let shortest = prompts.iter().map(Vec::len).min().unwrap();
    let (mut ids, mut pad) = (Vec::new(), Vec::new());
    for prompt in &prompts {
        let padding = prompt_len - prompt.len();
        ids.extend(std::iter::repeat_n(0i64, padding));
        ids.extend(prompt.iter().map(|&t| i64::from(t)));
        pad.extend((0..prompt_len).map(|i| i64::from(i >= padding)));
    }
    let shape = [j as i64, prompt_len as i64];
    let ids = Tensor::from_slice(&ids).view(shape);
    let mask = Tensor::from_slice(&pad).view(shape);
    let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let peak_decode = peak(rows, d, c.intermediate_size);
    let peak_prefill = peak(j * prompt_len, d, c.intermediate_size);
    let peak_head = peak(rows, d, c.vocab_size);
    let mut cache = model.new_cache(j, prompt_len + new_tokens).unwrap();
    let start = Instant::now();
    let hidden = model
        .forward_hidden(&ids, &positions, &mask, Some(&mut cache))
        .unwrap();
    let prefill_seconds = start.elapsed().as_secs_f64();
    // Padded positions are computed too: count them (the work done), not only real tokens.
    let prefill_flops = c.num_layers as f64
        * (block_linear_flops(j * prompt_len) + j as f64 * attention_flops(prompt_len, prompt_len));
    let start = Instant::now();
    let mut logits = model.logits(&hidden.select(1, prompt_len as i64 - 1));
    let mut head_seconds = start.elapsed().as_secs_f64();
    let mut head_flops = matmul_flops(j, d, c.vocab_size);
    // The K samples of each prompt share its prefill: copy its cache rows.
    let expand = Tensor::arange(j as i64, (Kind::Int64, Device::Cpu))
        .repeat_interleave_self_int(k as i64, 0, None);
    cache.keep_rows(&expand);
    logits = logits.index_select(0, &expand);
    let row_mask = mask.index_select(0, &expand);
    // As `generate_ids` does: the decoder's weights packed once for the decoding steps (a
    // no-op unless `FEDSYN_CPU_MATMUL=mkl-packed`).
    let _packed = model.pack_for_decoding(rows as i64);
    let first_position = positions
        .select(1, prompt_len as i64 - 1)
        .index_select(0, &expand)
        + 1;

    let params = SamplingParams {
        max_new_tokens: new_tokens,
        temperature: 0.9,
        top_p: 0.95,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(&params, rows);
    let slots: Vec<usize> = (0..rows).collect();
    let (mut layers_seconds, mut sample_seconds) = (0.0, 0.0);
    let (mut layers_flops, mut attention_share) = (0.0, 0.0);
    // How many row-steps the sampler draws from each prefix width (its partial sorts, or the
    // whole vocabulary), as the sampler itself decides.
    let mut nucleus_widths = std::collections::BTreeMap::<i64, usize>::new();
    for step in 0..new_tokens {
        for width in nucleus_prefix_widths(&params, &logits) {
            *nucleus_widths.entry(width).or_default() += 1;
        }
        let start = Instant::now();
        let tokens = sampler.sample(&logits, &slots);
        let _host = Vec::<i64>::try_from(&tokens).unwrap();
        sample_seconds += start.elapsed().as_secs_f64();
        if step + 1 == new_tokens {
            break;
        }
        let context = prompt_len + step + 1;
        let position = (&first_position + step as i64).view([-1, 1]);
        let step_mask = Tensor::cat(
            &[
                row_mask.shallow_clone(),
                Tensor::ones([rows as i64, (step + 1) as i64], (Kind::Int64, Device::Cpu)),
            ],
            1,
        );
        let start = Instant::now();
        let hidden = model
            .forward_hidden(
                &tokens.view([-1, 1]),
                &position,
                &step_mask,
                Some(&mut cache),
            )
            .unwrap();
        layers_seconds += start.elapsed().as_secs_f64();
        let attention = c.num_layers as f64 * rows as f64 * attention_flops(1, context);
        layers_flops += c.num_layers as f64 * block_linear_flops(rows) + attention;
        attention_share += attention;
        let start = Instant::now();
        logits = model.logits(&hidden.squeeze_dim(1));
        head_seconds += start.elapsed().as_secs_f64();
        head_flops += matmul_flops(rows, d, c.vocab_size);
    }
    let total = prefill_seconds + layers_seconds + head_seconds + sample_seconds;
    println!(
        "J = {j}, K = {k}: {rows} rows, prompts of {shortest}–{prompt_len} tokens, {new_tokens} new tokens; \
         {} layers, d = {d}, vocab = {}; 2 threads",
        c.num_layers, c.vocab_size
    );
    println!(
        "matmul peak ({kind:?}, GFLOP/s): decode MLP {:.1}, prefill MLP {:.1}, LM head {:.1}",
        peak_decode / 1e9,
        peak_prefill / 1e9,
        peak_head / 1e9
    );
    println!("| phase | s | share of time | GFLOP | GFLOP/s | of the matmul peak |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, seconds: f64, flops: f64, peak: f64| {
        let rate = flops / seconds;
        println!(
            "| {name} | {seconds:.2} | {:.0} % | {:.1} | {:.1} | {} |",
            100.0 * seconds / total,
            flops / 1e9,
            rate / 1e9,
            if peak > 0.0 {
                format!("{:.0} %", 100.0 * rate / peak)
            } else {
                "-".to_string()
            }
        );
    };
    row(
        "prefill (J prompts)",
        prefill_seconds,
        prefill_flops,
        peak_prefill,
    );
    row(
        "decode: decoder layers",
        layers_seconds,
        layers_flops,
        peak_decode,
    );
    row("decode: LM head", head_seconds, head_flops, peak_head);
    row(
        "decode: sampler (T 0.9, top-p 0.95)",
        sample_seconds,
        0.0,
        0.0,
    );
    println!(
        "attention is {:.1} % of the decoder layers' FLOPs; total {total:.2} s",
        100.0 * attention_share / layers_flops
    );
    println!(
        "row-steps by the number of most likely tokens they were drawn from: {nucleus_widths:?}"
    );
    let scaled = &logits / params.temperature;
    for (name, seconds) in [
        (
            "topk 256",
            best_of(3, || drop(scaled.topk(256, -1, true, true))),
        ),
        (
            "topk 4096",
            best_of(3, || drop(scaled.topk(4096, -1, true, true))),
        ),
        ("full sort", best_of(3, || drop(scaled.sort(-1, true)))),
        (
            "logsumexp",
            best_of(3, || drop(scaled.logsumexp([-1], true))),
        ),
    ] {
        println!(
            "{name} of [{rows}, {}]: {:.1} ms",
            c.vocab_size,
            1e3 * seconds
        );
    }
}

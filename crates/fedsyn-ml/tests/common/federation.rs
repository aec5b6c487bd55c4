//! The small federated data sets and run configurations of the end-to-end tests: six clients
//! with distinctive texts (a leak into a prompt or a server file is found by substring
//! search), public seed texts, and tiny model sizes (LoRA r 2–4, generations of 10–12 tokens).

use std::path::{Path, PathBuf};

/// The topic of each of the six clients.
pub const CLIENT_TOPICS: [&str; 6] = [
    "the harbour lighthouse",
    "winter wheat prices",
    "the new canal locks",
    "school libraries",
    "the postal routes",
    "river flood defences",
];

/// The public seed texts the prompts are built from (`seeds.txt`).
pub const PUBLIC_SEEDS: &str = "\
The committee met in the morning and agreed to publish its annual report.
Farmers in the valley planted early this year because the rains came in March.
The city opened a reading room for workers who finish their shifts at night.
Engineers proposed a bridge of iron to replace the old wooden crossing.
";

/// Client `c`'s text number `t`.
pub fn client_text(c: usize, t: usize) -> String {
    format!(
        "Citizen {c} wrote note {t} about {}, asking the council for a clear answer before the \
         spring session of {}.",
        CLIENT_TOPICS[c],
        1850 + 7 * c + t
    )
}

/// `clients.jsonl` of the six clients with `texts_per_client` texts each.
pub fn client_jsonl(texts_per_client: usize) -> String {
    let mut jsonl = String::new();
    for c in 0..CLIENT_TOPICS.len() {
        for t in 0..texts_per_client {
            let row = serde_json::json!({ "client_id": format!("client-{c}"), "text": client_text(c, t) });
            jsonl.push_str(&row.to_string());
            jsonl.push('\n');
        }
    }
    jsonl
}

/// Writes `clients.jsonl` (four texts a client) and `seeds.txt` into `dir`.
pub fn write_clients_and_seeds(dir: &Path) {
    std::fs::write(dir.join("clients.jsonl"), client_jsonl(4)).unwrap();
    std::fs::write(dir.join("seeds.txt"), PUBLIC_SEEDS).unwrap();
}

/// The tiny POPri configuration: run `name`, the `[data]` section's body `data`, J = 3
/// prompts × K = 3 candidates of 10 tokens, LoRA r 4, one DPO step of 3 pairs, 3 synthetic
/// samples; then `extra` (`[eval]`, `[privacy]`, …).
pub fn tiny_config(name: &str, data: &str, extra: &str) -> String {
    format!(
        r#"
[run]
name = "{name}"
seed = 7
device = "cpu"
threads = 1

[data]
{data}

[prompts]
seed_file = "seeds.txt"
num_prompts = 3
examples_per_prompt = 2

[generation]
candidates_per_prompt = 3
max_new_tokens = 10
truncate_tokens = 10
batch_size = 9

[pairs]
rejected_rank = 2

[lora]
r = 4
alpha = 8

[dpo]
beta = 0.1
lr = 1e-3
schedule = "constant"
batch_size = 3
grad_accum = 1
max_prompt_length = 128
max_length = 160

[output]
synthetic_samples = 3

{extra}"#
    )
}

/// The `[data]` body of the runs on [`write_clients_and_seeds`]' data.
pub const CLIENT_DATA: &str = "train = \"clients.jsonl\"\neval_fraction = 0.25";

/// Writes `clients.jsonl`, `seeds.txt` and `config.toml` (the shared sections, then `extra`)
/// into `dir`; returns the config's path.
pub fn write_small_federation(dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(dir.join("clients.jsonl"), client_jsonl(6)).unwrap();
    std::fs::write(dir.join("seeds.txt"), PUBLIC_SEEDS).unwrap();
    let config = format!(
        r#"
[run]
name = "small"
seed = 7
device = "cpu"
threads = 1

[data]
train = "clients.jsonl"
eval_fraction = 0.34

[prompts]
seed_file = "seeds.txt"
num_prompts = 3
examples_per_prompt = 2

[generation]
candidates_per_prompt = 3
max_new_tokens = 12
truncate_tokens = 12
batch_size = 9

[pairs]
rejected_rank = 2

[lora]
r = 2
alpha = 4
targets = ["q_proj", "v_proj"]

[dpo]
beta = 0.1
lr = 1e-3
schedule = "constant"
batch_size = 3
max_prompt_length = 128
max_length = 160

[output]
synthetic_samples = 6

[eval]
fid_all_candidates = true

{extra}"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

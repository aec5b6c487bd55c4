//! A small federated data set and run configuration for end-to-end runs of every method: six
//! clients with six distinctive texts each (two of each held out for evaluation), public seed
//! texts, and tiny model sizes (LoRA r 2 on q and v, short generations).

use std::path::{Path, PathBuf};

/// Writes `clients.jsonl`, `seeds.txt` and `config.toml` (the shared sections, then `extra`)
/// into `dir`; returns the config's path.
pub fn write_small_federation(dir: &Path, extra: &str) -> PathBuf {
    let topics = [
        "the harbour lighthouse",
        "winter wheat prices",
        "the new canal locks",
        "school libraries",
        "the postal routes",
        "river flood defences",
    ];
    let mut jsonl = String::new();
    for (c, topic) in topics.iter().enumerate() {
        for t in 0..6 {
            let text = format!(
                "Citizen {c} wrote note {t} about {topic}, asking the council for a clear answer \
                 before the spring session of {}.",
                1850 + 7 * c + t
            );
            let row = serde_json::json!({ "client_id": format!("client-{c}"), "text": text });
            jsonl.push_str(&row.to_string());
            jsonl.push('\n');
        }
    }
    std::fs::write(dir.join("clients.jsonl"), jsonl).unwrap();
    std::fs::write(
        dir.join("seeds.txt"),
        "The committee met in the morning and agreed to publish its annual report.\n\
         Farmers in the valley planted early this year because the rains came in March.\n\
         The city opened a reading room for workers who finish their shifts at night.\n",
    )
    .unwrap();
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

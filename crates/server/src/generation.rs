//! What every method that samples the generator shares: the seed of each sampling stream, the
//! adapter merged for sampling, and the cut of a text to a token budget. Below the methods
//! (POPri's engine, PE, DP-FedAvg, the set-up), so that none of them imports another for it.

use models::Generator;

use crate::error::{Result, ServerError};

/// A seed for stream (`a`, `b`) of the run seed: splitmix64 of the three, so neighbouring
/// rounds and batches get unrelated streams.
pub fn derive_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut x = seed;
    for part in [a, b] {
        x = splitmix64(x ^ splitmix64(part.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    }
    x
}

/// `sample(owner)` with the adapter of `owner`'s generator merged into the base weights
/// (sampling at base-model speed), and unmerged after, whether or not sampling succeeded,
/// restoring the base weights bit for bit. Without an adapter, just `sample(owner)`.
pub(crate) fn with_adapter_merged<S, T>(
    owner: &mut S,
    generator: fn(&mut S) -> &mut Generator,
    sample: impl FnOnce(&S) -> Result<T>,
) -> Result<T> {
    let has_adapter = generator(owner).model().lora_config().is_some();
    if has_adapter {
        generator(owner).model_mut().merge_lora()?;
    }
    let sampled = sample(owner);
    if has_adapter {
        generator(owner).model_mut().unmerge_lora()?;
    }
    sampled
}

/// `text` cut to its first `max_tokens` tokens of `generator`'s tokenizer (trimmed when cut).
pub(crate) fn truncate_to_tokens(
    generator: &Generator,
    text: &str,
    max_tokens: usize,
) -> Result<String> {
    let tokenizer = generator.tokenizer();
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| ServerError::Tokenizer(e.to_string()))?;
    let ids = encoding.get_ids();
    if ids.len() <= max_tokens {
        return Ok(text.to_string());
    }
    tokenizer
        .decode(&ids[..max_tokens], true)
        .map(|t| t.trim().to_string())
        .map_err(|e| ServerError::Tokenizer(e.to_string()))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

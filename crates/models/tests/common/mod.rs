//! Helpers shared by the integration tests.

#![allow(dead_code)] // each including test uses some of these

use std::fmt::Display;
use std::path::PathBuf;

use models::Assets;
use tch::{Kind, Tensor};

/// The SmolLM2 GGUF file installed by `scripts/setup.sh`, or `None` (with a note on stderr)
/// when it is absent; see [`installed`].
pub fn smollm2_gguf() -> Option<PathBuf> {
    installed(Assets::discover().smollm2_gguf(), "the model")
}

/// The all-MiniLM-L6-v2 folder installed by `scripts/setup.sh`, or `None` (with a note on
/// stderr) when it is absent; see [`installed`].
pub fn minilm_dir() -> Option<PathBuf> {
    installed(Assets::discover().minilm_dir(), "MiniLM")
}

/// The path an asset look-up found, or `None` (with a note on stderr) so that the test skips.
/// Under CI (`CI` set) a missing asset fails the test instead, since CI runs the setup script
/// first and must not pass by skipping.
fn installed(found: Result<PathBuf, impl Display>, what: &str) -> Option<PathBuf> {
    match found {
        Ok(path) => Some(path),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have {what}: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// `prompts` left-padded with `pad_id` into one batch: ids, 0/1 mask and positions counted
/// from each row's first real token, as `[rows, width]` tensors. The tests compare the
/// library's batches with these, so this does not call the library's padding.
pub fn left_padded(prompts: &[Vec<u32>], pad_id: i64) -> (Tensor, Tensor, Tensor) {
    let width = prompts.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(
            (0..pad)
                .map(|_| pad_id)
                .chain(prompt.iter().map(|&t| i64::from(t))),
        );
        mask.extend((0..width).map(|i| i64::from(i >= pad)));
    }
    let shape = [prompts.len() as i64, width as i64];
    let mask = Tensor::from_slice(&mask).view(shape);
    let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    (Tensor::from_slice(&ids).view(shape), mask, positions)
}

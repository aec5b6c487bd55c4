//! Model files for fedsyn: reading GGUF files and dequantising their tensors
//! ([`gguf`]), building tokenizers from GGUF metadata or `tokenizer.json` ([`tokenizer`]),
//! and finding the model files and data that `scripts/setup.sh` installs
//! ([`assets`]). Pure Rust: no torch, no Python.

pub mod assets;
pub mod device;
pub mod error;
pub mod gguf;
pub mod tokenizer;

pub use assets::Assets;
pub use device::{compute_kind, DeviceChoice};
pub use error::{ModelError, Result};
pub use gguf::{GgmlType, GgufFile, GgufValue, TensorInfo};
/// The Hugging Face tokenizers crate, whose `Tokenizer` [`tokenizer`] returns.
pub use tokenizers;

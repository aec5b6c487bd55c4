//! Model files for fedsyn: reading GGUF files and dequantising their tensors
//! ([`gguf`]), building tokenizers from GGUF metadata or `tokenizer.json` ([`tokenizer`]),
//! and finding the model files and data that `scripts/setup.sh` installs
//! ([`assets`]); these are pure Rust. No Python anywhere.
//!
//! On libtorch (tch): the sentence embedder ([`bert`], all-MiniLM-L6-v2 as sentence-transformers
//! runs it), whose weights [`safetensors_io`] reads; preference training (DPO, IPO, SFT) of a
//! generator's LoRA adapter ([`train`]).

pub mod assets;
pub mod bert;
pub mod device;
pub mod error;
pub mod gguf;
pub mod llama;
pub mod safetensors_io;
pub mod tokenizer;
pub mod train;

#[cfg(test)]
mod test_support;

pub use assets::Assets;
pub use bert::SentenceEmbedder;
pub use device::{compute_kind, cpu_has_native_bf16, dtype_name, DeviceChoice, DtypeChoice};
pub use error::{ModelError, Result};
pub use gguf::{GgmlType, GgufFile, GgufValue, TensorInfo};
pub use llama::{CausalLm, Generator, LoraConfig, LoraTarget, SamplingParams};
/// The Hugging Face tokenizers crate, whose `Tokenizer` [`tokenizer`] returns.
pub use tokenizers;

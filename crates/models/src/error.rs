//! Errors of the models crate: each names the file, tensor or key at fault and, where there is
//! one, the fix.

use std::path::PathBuf;

use thiserror::Error;

use crate::gguf::GgmlType;

/// Everything that can go wrong while finding, reading or decoding model files.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The operating system refused to open, map or read a file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic bytes.
    #[error("{file} is not a GGUF file: it starts with {found:?} instead of \"GGUF\"")]
    NotGguf {
        /// The file's name (or the label of an in-memory buffer).
        file: String,
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The GGUF version is one this reader does not understand.
    #[error("{file} is GGUF version {version}; fedsyn reads versions 2 and 3 (re-convert the model with a current llama.cpp)")]
    UnsupportedVersion {
        /// The file's name.
        file: String,
        /// The version in the header.
        version: u32,
    },
    /// The file ended (or a length ran past its end) while reading a structure.
    #[error(
        "{file} is truncated or corrupt: {what} at byte {offset} runs past the end ({len} bytes)"
    )]
    Truncated {
        /// The file's name.
        file: String,
        /// What was being read (e.g. `value of key tokenizer.ggml.tokens`).
        what: String,
        /// Where the read started.
        offset: u64,
        /// The file's length.
        len: u64,
    },
    /// A structural field holds a value the format does not allow.
    #[error("{file} is corrupt: {what}")]
    Corrupt {
        /// The file's name.
        file: String,
        /// What is wrong, naming the key or tensor.
        what: String,
    },
    /// A metadata key the caller needs is absent.
    #[error("{file} has no metadata key `{key}`")]
    MissingKey {
        /// The file's name.
        file: String,
        /// The key that was asked for.
        key: String,
    },
    /// A metadata key holds a value of another type than the caller needs.
    #[error("metadata key `{key}` in {file} holds {found}, but {expected} was expected")]
    WrongType {
        /// The file's name.
        file: String,
        /// The key.
        key: String,
        /// The type the caller needs.
        expected: &'static str,
        /// The type (and, for numbers, the value) found.
        found: String,
    },
    /// No tensor of that name is in the file.
    #[error("{file} has no tensor named `{tensor}`")]
    MissingTensor {
        /// The file's name.
        file: String,
        /// The tensor's name.
        tensor: String,
    },
    /// The tensor's data type has no dequantiser here.
    #[error("tensor {tensor} has type {ggml_type}, which fedsyn cannot dequantise; supported: {supported}")]
    UnsupportedTensorType {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// The supported types, comma-separated.
        supported: String,
    },
    /// A byte buffer handed to a dequantiser does not hold the number of values claimed.
    #[error("tensor {tensor}: {n_values} values of type {ggml_type} need {expected_bytes} bytes, got {actual_bytes}")]
    DataSize {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// The number of values claimed.
        n_values: usize,
        /// The bytes that many values occupy.
        expected_bytes: usize,
        /// The bytes supplied.
        actual_bytes: usize,
    },
    /// A value count that does not fill whole blocks of a block-quantised type.
    #[error(
        "tensor {tensor}: {n_values} values do not fill whole {ggml_type} blocks of {block_size}"
    )]
    PartialBlock {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        ggml_type: GgmlType,
        /// The number of values claimed.
        n_values: usize,
        /// Values per block of the type.
        block_size: usize,
    },
    /// A tokenizer could not be built or loaded.
    #[error("tokenizer from {source_name}: {message}")]
    Tokenizer {
        /// Where the tokenizer came from (a file, or the GGUF metadata key at fault).
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// A model file or folder that `scripts/setup.sh` installs cannot be found.
    #[error("{what} not found: {detail}; run scripts/setup.sh (it writes .cache/models.env) or set {variable}")]
    AssetMissing {
        /// What was looked for (e.g. `the SmolLM2 GGUF file`).
        what: &'static str,
        /// Where it was looked for.
        detail: String,
        /// The environment variable that overrides the location.
        variable: &'static str,
    },
    /// A `--device` value that is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device `{0}`: use auto, cpu, cuda or cuda:N")]
    UnknownDevice(String),
    /// A `--dtype` (or `model.generator_dtype`) value that is not `auto`, `f32` or `bf16`.
    #[error("unknown dtype `{0}`: use auto, f32 or bf16")]
    UnknownDtype(String),
    /// A CUDA device was asked for but libtorch sees none (or fewer).
    #[error("{asked} was asked for, but libtorch sees {available} CUDA device(s){hint}")]
    DeviceUnavailable {
        /// The device asked for.
        asked: String,
        /// How many CUDA devices libtorch sees.
        available: usize,
        /// What to do about it.
        hint: &'static str,
    },
    /// A `.safetensors` file whose header or tensor data cannot be used.
    #[error("{file}: {message}; re-download the model (scripts/setup.sh)")]
    Safetensors {
        /// The file.
        file: PathBuf,
        /// What is wrong, naming the tensor where there is one.
        message: String,
    },
    /// A weight tensor has another shape than the model's config implies.
    #[error("{file}: tensor {tensor} has shape {found:?}, but the model config implies {expected:?}; the weights and config.json do not belong together")]
    TensorShape {
        /// The weights file.
        file: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// A model configuration file (config.json, modules.json, …) is missing a field, does not
    /// parse, or describes a model fedsyn does not implement.
    #[error("{file}: {message}")]
    ModelConfig {
        /// The configuration file.
        file: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// An argument to a model call is out of range (e.g. a batch size of 0).
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A chat template that does not parse or fails while rendering a conversation.
    #[error("chat template of {source_name}: {message}")]
    ChatTemplate {
        /// Where the template came from (a GGUF file or tokenizer_config.json).
        source_name: String,
        /// What went wrong, with the template line where minijinja knows it.
        message: String,
    },
    /// A saved training state (optimiser, scheduler, trainer) that cannot be read back or does
    /// not fit the model it is resumed with.
    #[error("training state {path}: {message}")]
    TrainingState {
        /// The state file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A LoRA adapter folder (PEFT format) that cannot be read or does not fit the model.
    #[error("LoRA adapter {path}: {message}")]
    Adapter {
        /// The adapter file at fault.
        path: PathBuf,
        /// What is wrong, naming the key or tensor, and the fix.
        message: String,
    },
    /// A LoRA operation that the model's adapter state does not allow (merging twice,
    /// unmerging unmerged adapters, training while merged, adding a second adapter).
    #[error("LoRA: {0}")]
    LoraState(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl From<training_config::InvalidHyperparameter> for ModelError {
    fn from(e: training_config::InvalidHyperparameter) -> Self {
        ModelError::InvalidArgument {
            name: e.name,
            message: e.message,
        }
    }
}

impl ModelError {
    /// [`ModelError::InvalidArgument`]: argument `name` is wrong, as `message` says.
    pub(crate) fn invalid_argument(name: &'static str, message: impl Into<String>) -> ModelError {
        ModelError::InvalidArgument {
            name,
            message: message.into(),
        }
    }

    /// Whether the user can fix this in what they gave (a model file, a device, an argument):
    /// a libtorch failure or an adapter state the code should never reach is not bad input.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, ModelError::Torch(_) | ModelError::LoraState(_))
    }
}

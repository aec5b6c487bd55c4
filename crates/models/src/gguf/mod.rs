//! Reading GGUF files (versions 2 and 3): metadata, tensor infos and tensor data, with
//! dequantisation of the common ggml types to `f32`.
//!
//! ```no_run
//! # fn main() -> models::Result<()> {
//! let gguf = models::gguf::GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! assert_eq!(gguf.metadata_str("general.architecture")?, "llama");
//! let embeddings = gguf.dequantize("token_embd.weight")?;
//! # Ok(()) }
//! ```

mod dequant;
mod ggml_type;
mod parse;
#[cfg(test)]
pub(crate) mod test_writer;
mod value;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{ModelError, Result};

pub use dequant::dequantize as dequantize_bytes;
pub use ggml_type::{GgmlType, DEQUANTISABLE};
pub use parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
pub use value::{GgufValue, ValueType};

/// Where a tensor is and what it holds, as the file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the number of values in a row, the fastest-
    /// varying index. A PyTorch weight of shape `[out, in]` is stored as `[in, out]`.
    pub dims: Vec<u64>,
    /// The data type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The number of values (the product of the dimensions; 1 for a scalar).
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in row-major (PyTorch/NumPy) order: `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Bytes the data occupies in the file.
    pub fn byte_size(&self) -> u64 {
        // Validated when the file was opened, so it neither overflows nor splits a block.
        self.checked_byte_size().unwrap_or(0)
    }

    pub(crate) fn checked_byte_size(&self) -> Option<u64> {
        let count = self
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        self.ggml_type.bytes_for(count)
    }
}

/// The bytes of a GGUF file: memory-mapped from disk, or owned (built in memory).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(vec) => vec,
        }
    }
}

/// An open GGUF file: its parsed header and access to its tensor data.
pub struct GgufFile {
    /// The path (or the label of an in-memory buffer), for error messages.
    name: String,
    path: Option<PathBuf>,
    bytes: Bytes,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_start", &self.data_start)
            .finish()
    }
}

impl GgufFile {
    /// Opens and memory-maps the GGUF file at `path` and parses its header.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io_error = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only and private to this value. Another process truncating or
        // rewriting the file while it is open would change the bytes under us; model files are
        // written once by the installer, and reads are bounds-checked against the length at
        // open time, so the worst such interference can do is produce wrong values or SIGBUS,
        // as with any memory-mapped reader (llama.cpp included).
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let mut gguf = GgufFile::from_parts(path.display().to_string(), Bytes::Mapped(map))?;
        gguf.path = Some(path.to_path_buf());
        Ok(gguf)
    }

    /// Parses a GGUF file held in memory; `label` names it in error messages.
    pub fn from_bytes(bytes: Vec<u8>, label: impl Into<String>) -> Result<GgufFile> {
        GgufFile::from_parts(label.into(), Bytes::Owned(bytes))
    }

    fn from_parts(name: String, bytes: Bytes) -> Result<GgufFile> {
        let header = parse::parse_header(bytes.as_slice(), &name)?;
        let metadata_index = index_by_name(header.metadata.iter().map(|(k, _)| k));
        let tensor_index = index_by_name(header.tensors.iter().map(|t| &t.name));
        Ok(GgufFile {
            name,
            path: None,
            bytes,
            version: header.version,
            metadata: header.metadata,
            metadata_index,
            tensors: header.tensors,
            tensor_index,
            alignment: header.alignment,
            data_start: header.data_start,
        })
    }

    /// The path the file was opened from (`None` for in-memory files).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of tensor data (`general.alignment`, 32 when absent).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The byte offset at which the data section starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// All metadata entries, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of `key`, or `None` when the file does not have it.
    pub fn metadata_value(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&GgufValue> {
        self.metadata_value(key)
            .ok_or_else(|| ModelError::MissingKey {
                file: self.name.clone(),
                key: key.to_string(),
            })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &GgufValue) -> ModelError {
        ModelError::WrongType {
            file: self.name.clone(),
            key: key.to_string(),
            expected,
            found: found.describe(),
        }
    }

    /// The value at `key` as `convert` reads it; a value it rejects is an error saying that
    /// `key` should be `expected`.
    fn metadata_as<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<T> {
        let value = self.require(key)?;
        convert(value).ok_or_else(|| self.wrong_type(key, expected, value))
    }

    /// The string at `key`.
    pub fn metadata_str(&self, key: &str) -> Result<&str> {
        self.metadata_as(key, "a string", GgufValue::as_str)
    }

    /// The integer at `key` when it fits `T`; any stored integer width is accepted, since
    /// converters differ in the widths they write.
    fn metadata_integer<T: TryFrom<i128>>(&self, key: &str, expected: &'static str) -> Result<T> {
        self.metadata_as(key, expected, |value| {
            value.as_integer().and_then(|v| T::try_from(v).ok())
        })
    }

    /// The integer at `key` as `u32`.
    pub fn metadata_u32(&self, key: &str) -> Result<u32> {
        self.metadata_integer(key, "an integer in the u32 range")
    }

    /// The integer at `key` as `u64`.
    pub fn metadata_u64(&self, key: &str) -> Result<u64> {
        self.metadata_integer(key, "an integer in the u64 range")
    }

    /// The integer at `key` as `i64`.
    pub fn metadata_i64(&self, key: &str) -> Result<i64> {
        self.metadata_integer(key, "an integer in the i64 range")
    }

    /// The float at `key` (f32 or f64) as `f64`.
    pub fn metadata_f64(&self, key: &str) -> Result<f64> {
        self.metadata_as(key, "a float", GgufValue::as_float)
    }

    /// The float at `key` as `f32`.
    pub fn metadata_f32(&self, key: &str) -> Result<f32> {
        Ok(self.metadata_f64(key)? as f32)
    }

    /// The bool at `key`.
    pub fn metadata_bool(&self, key: &str) -> Result<bool> {
        self.metadata_as(key, "a bool", |value| match value {
            GgufValue::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// The elements of the array at `key`.
    pub fn metadata_array(&self, key: &str) -> Result<&[GgufValue]> {
        self.metadata_as(key, "an array", |value| match value {
            GgufValue::Array { items, .. } => Some(items.as_slice()),
            _ => None,
        })
    }

    /// The items of the array at `key`, each as `convert` reads it; an item it rejects is an
    /// error saying that `key` should be `expected`.
    fn metadata_array_of<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnMut(&'a GgufValue) -> Option<T>,
    ) -> Result<Vec<T>> {
        match self.metadata_array(key)?.iter().map(convert).collect() {
            Some(converted) => Ok(converted),
            None => Err(self.wrong_type(key, expected, self.require(key)?)),
        }
    }

    /// The array of strings at `key` (e.g. `tokenizer.ggml.tokens`).
    pub fn metadata_array_str(&self, key: &str) -> Result<Vec<&str>> {
        self.metadata_array_of(key, "an array of strings", GgufValue::as_str)
    }

    /// The array of integers at `key` as `i64` (e.g. `tokenizer.ggml.token_type`).
    pub fn metadata_array_i64(&self, key: &str) -> Result<Vec<i64>> {
        self.metadata_array_of(key, "an array of integers", |item| {
            item.as_integer().and_then(|v| i64::try_from(v).ok())
        })
    }

    /// The array of floats at `key` as `f32` (e.g. `tokenizer.ggml.scores`).
    pub fn metadata_array_f32(&self, key: &str) -> Result<Vec<f32>> {
        self.metadata_array_of(key, "an array of floats", |item| {
            item.as_float().map(|v| v as f32)
        })
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of the tensor called `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.name.clone(),
                tensor: name.to_string(),
            })
    }

    /// The raw (possibly quantised) bytes of `tensor`, an info of this file.
    pub fn tensor_data(&self, tensor: &TensorInfo) -> &[u8] {
        // Bounds were checked against the file length when the header was parsed; an info
        // from another file may not fit, and gets an empty slice (a size error downstream).
        let start = self.data_start.saturating_add(tensor.offset);
        let end = start.saturating_add(tensor.byte_size());
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(start, end)| self.bytes.as_slice().get(start..end))
            .unwrap_or(&[])
    }

    /// The values of the tensor called `name` as `f32`, in ggml order (row-major over
    /// [`TensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let tensor = self.tensor(name)?;
        self.dequantize_tensor(tensor)
    }

    /// The values of `tensor` (an info of this file) as `f32`.
    pub fn dequantize_tensor(&self, tensor: &TensorInfo) -> Result<Vec<f32>> {
        dequant::dequantize(
            &tensor.name,
            tensor.ggml_type,
            self.tensor_data(tensor),
            tensor.element_count() as usize,
        )
    }
}

fn index_by_name<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.clone(), i)).collect()
}

#[cfg(test)]
mod tests;

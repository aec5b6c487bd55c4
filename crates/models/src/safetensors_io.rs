//! Reading `.safetensors` weight files into libtorch tensors.
//!
//! The file is memory-mapped and parsed with the `safetensors` crate; each tensor asked for is
//! copied once into a libtorch tensor, then moved to the target device and dtype. Tensors that
//! are never asked for (e.g. BERT's unused pooler) are never read.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// An open, memory-mapped safetensors file whose header has been parsed and validated.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Each tensor's dtype, shape and byte range in the file, from the header.
    entries: HashMap<String, Entry>,
}

struct Entry {
    dtype: Dtype,
    shape: Vec<i64>,
    bytes: Range<usize>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("bytes", &self.mmap.len())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Maps `path` and checks that its header parses.
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let io_error = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the mapping is read-only and private; model files are not rewritten while a
        // model is being loaded (the same assumption every mmap-based loader makes).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        // `read_metadata` checks that every tensor's byte range lies inside the file, matches
        // its shape and dtype, and that the ranges tile the data section.
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                file: path.to_path_buf(),
                message: format!("invalid header ({e:?})"),
            })?;
        let data_start = 8 + header_len;
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.iter().map(|&d| d as i64).collect(),
                    bytes: data_start + info.data_offsets.0..data_start + info.data_offsets.1,
                };
                (name, entry)
            })
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Every tensor name in the file, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The tensor `name`, which must have shape `shape`, on `device` as `kind`.
    pub fn tensor(&self, name: &str, shape: &[i64], device: Device, kind: Kind) -> Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                file: self.path.display().to_string(),
                tensor: name.to_string(),
            })?;
        if entry.shape != shape {
            return Err(ModelError::TensorShape {
                file: self.path.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
        }
        let stored_kind = kind_of(entry.dtype).ok_or_else(|| ModelError::Safetensors {
            file: self.path.clone(),
            message: format!(
                "tensor {name} has dtype {:?}; fedsyn reads F32, F16, BF16 and I64",
                entry.dtype
            ),
        })?;
        let data = &self.mmap[entry.bytes.clone()];
        // `from_data_size` copies numel × element size bytes unchecked; the header validation
        // guarantees the range holds exactly that many, but a cheap check keeps this local.
        let numel: i64 = shape.iter().product();
        if data.len() as i64 != numel * stored_kind.elt_size_in_bytes() as i64 {
            return Err(ModelError::Safetensors {
                file: self.path.clone(),
                message: format!("tensor {name}: data length does not match its shape"),
            });
        }
        let tensor = Tensor::f_from_data_size(data, shape, stored_kind)?;
        Ok(tensor.f_to_device(device)?.f_to_kind(kind)?)
    }
}

/// The libtorch kind of a safetensors dtype, for the dtypes model files use.
fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::I64 => Some(Kind::Int64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_tensors_read_back_with_shape_checks() {
        let dir = crate::test_support::scratch_dir("safetensors");
        let path = dir.join("weights.safetensors");
        let weight = Tensor::from_slice(&[1.0f32, -2.0, 3.5, 0.25, 5.0, 6.0]).reshape([2, 3]);
        Tensor::write_safetensors(&[("layer.weight", &weight)], &path).unwrap();

        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.names(), vec!["layer.weight"]);
        let read = file
            .tensor("layer.weight", &[2, 3], Device::Cpu, Kind::Float)
            .unwrap();
        assert!(read.equal(&weight));
        let as_double = file
            .tensor("layer.weight", &[2, 3], Device::Cpu, Kind::Double)
            .unwrap();
        assert_eq!(as_double.kind(), Kind::Double);

        let wrong_shape = file
            .tensor("layer.weight", &[3, 2], Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(wrong_shape.contains("layer.weight") && wrong_shape.contains("[3, 2]"));
        let missing = file
            .tensor("layer.bias", &[3], Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("layer.bias"), "{missing}");

        std::fs::write(&path, b"not a safetensors file").unwrap();
        let corrupt = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(corrupt.contains("weights.safetensors"), "{corrupt}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Parsing of a GGUF file's header: magic, version, metadata and tensor infos.
//!
//! Layout (all little-endian): `"GGUF"`, `u32` version, `u64` tensor count, `u64` metadata
//! count; then each metadata entry as a string key, a `u32` value type and the value; then each
//! tensor info as a string name, a `u32` dimension count, that many `u64` dimensions, a `u32`
//! ggml type and a `u64` offset relative to the data section, which starts at the next multiple
//! of `general.alignment` after the tensor infos. Strings are a `u64` byte length and UTF-8
//! bytes; arrays are a `u32` element type, a `u64` count and the elements.

use std::collections::HashSet;

use crate::error::{ModelError, Result};

use super::ggml_type::GgmlType;
use super::value::{GgufValue, ValueType};
use super::TensorInfo;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The metadata key that overrides the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The alignment used when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are rejected, so a hostile file cannot exhaust the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// Everything the header says, with the data section located.
#[derive(Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_start: u64,
}

/// A read position in the file's bytes that reports overruns with the file's name.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.truncated(what));
        }
        let start = self.pos;
        // n ≤ remaining ≤ usize::MAX, so the cast is lossless.
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn truncated(&self, what: &str) -> ModelError {
        ModelError::Truncated {
            file: self.file.to_string(),
            what: what.to_string(),
            offset: self.pos as u64,
            len: self.bytes.len() as u64,
        }
    }

    fn corrupt(&self, what: String) -> ModelError {
        ModelError::Corrupt {
            file: self.file.to_string(),
            what,
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let slice = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.corrupt(format!("{what} is not valid UTF-8 ({e})")))
    }

    /// Fails unless `count` values of at least `min_len` bytes each could still fit, so that
    /// a corrupt count cannot make us allocate terabytes.
    fn check_count(&self, count: u64, min_len: u64, what: &str) -> Result<usize> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        match count.checked_mul(min_len) {
            Some(needed) if needed <= remaining => Ok(count as usize),
            _ => Err(self.truncated(&format!("{what} ({count} elements)"))),
        }
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let id = self.u32(what)?;
        ValueType::from_id(id)
            .ok_or_else(|| self.corrupt(format!("{what} has unknown value type id {id}")))
    }

    fn value(&mut self, value_type: ValueType, what: &str, depth: usize) -> Result<GgufValue> {
        Ok(match value_type {
            ValueType::U8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => GgufValue::U32(self.u32(what)?),
            ValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::Bool => self.bool(what)?,
            ValueType::String => GgufValue::String(self.string(what)?),
            ValueType::Array => self.array_value(what, depth)?,
            ValueType::U64 => GgufValue::U64(self.u64(what)?),
            ValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    fn bool(&mut self, what: &str) -> Result<GgufValue> {
        match self.array::<1>(what)?[0] {
            0 => Ok(GgufValue::Bool(false)),
            1 => Ok(GgufValue::Bool(true)),
            other => Err(self.corrupt(format!("{what} is a bool stored as {other}, not 0 or 1"))),
        }
    }

    fn array_value(&mut self, what: &str, depth: usize) -> Result<GgufValue> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.corrupt(format!(
                "{what} nests arrays more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        let element_type = self.value_type(what)?;
        let count = self.u64(what)?;
        let count = self.check_count(count, element_type.min_encoded_len(), what)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(element_type, what, depth + 1)?);
        }
        Ok(GgufValue::Array {
            element_type,
            items,
        })
    }
}

/// Parses the header of the GGUF file whose bytes are `bytes`; `file` names it in errors.
pub(crate) fn parse_header(bytes: &[u8], file: &str) -> Result<Header> {
    let mut cursor = Cursor {
        bytes,
        pos: 0,
        file,
    };
    let version = read_preamble(&mut cursor)?;
    let tensor_count = cursor.u64("tensor count")?;
    let kv_count = cursor.u64("metadata count")?;
    let metadata = read_metadata(&mut cursor, kv_count)?;
    let alignment = alignment_of(&metadata, file)?;
    let tensors = read_tensor_infos(&mut cursor, tensor_count)?;
    let data_start = align_up(cursor.pos as u64, alignment);
    let header = Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    };
    check_tensor_placement(&header, bytes.len() as u64, file)?;
    Ok(header)
}

fn read_preamble(cursor: &mut Cursor<'_>) -> Result<u32> {
    let magic: [u8; 4] = cursor.array("magic")?;
    if magic != GGUF_MAGIC {
        return Err(ModelError::NotGguf {
            file: cursor.file.to_string(),
            found: magic,
        });
    }
    let version = cursor.u32("version")?;
    if version == 2 || version == 3 {
        return Ok(version);
    }
    if matches!(version.swap_bytes(), 2 | 3) {
        return Err(cursor.corrupt(
            "the file is big-endian GGUF; fedsyn reads little-endian files only".to_string(),
        ));
    }
    Err(ModelError::UnsupportedVersion {
        file: cursor.file.to_string(),
        version,
    })
}

fn read_metadata(cursor: &mut Cursor<'_>, kv_count: u64) -> Result<Vec<(String, GgufValue)>> {
    // Each entry takes at least a key length (8), a type (4) and a one-byte value.
    let count = cursor.check_count(kv_count, 13, "metadata")?;
    let mut metadata = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count);
    for index in 0..count {
        let key = cursor.string(&format!("key of metadata entry {index}"))?;
        let what = format!("value of key `{key}`");
        let value_type = cursor.value_type(&what)?;
        let value = cursor.value(value_type, &what, 0)?;
        if !seen.insert(key.clone()) {
            return Err(cursor.corrupt(format!("metadata key `{key}` appears twice")));
        }
        metadata.push((key, value));
    }
    Ok(metadata)
}

fn alignment_of(metadata: &[(String, GgufValue)], file: &str) -> Result<u64> {
    let Some((_, value)) = metadata.iter().find(|(key, _)| key == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value {
        GgufValue::U32(a) if a.is_power_of_two() => Ok(u64::from(*a)),
        other => Err(ModelError::Corrupt {
            file: file.to_string(),
            what: format!(
                "`{ALIGNMENT_KEY}` must be a u32 power of two, found {}",
                other.describe()
            ),
        }),
    }
}

fn read_tensor_infos(cursor: &mut Cursor<'_>, tensor_count: u64) -> Result<Vec<TensorInfo>> {
    // Each info takes at least a name length (8), a dimension count (4), a type (4), an
    // offset (8).
    let count = cursor.check_count(tensor_count, 24, "tensor infos")?;
    let mut tensors = Vec::with_capacity(count);
    let mut seen = HashSet::with_capacity(count);
    for index in 0..count {
        let info = read_tensor_info(cursor, index)?;
        if !seen.insert(info.name.clone()) {
            return Err(cursor.corrupt(format!("tensor `{}` appears twice", info.name)));
        }
        tensors.push(info);
    }
    Ok(tensors)
}

fn read_tensor_info(cursor: &mut Cursor<'_>, index: usize) -> Result<TensorInfo> {
    let name = cursor.string(&format!("name of tensor {index}"))?;
    let what = format!("info of tensor `{name}`");
    let n_dims = cursor.u32(&what)?;
    if n_dims > MAX_DIMS {
        return Err(cursor.corrupt(format!(
            "tensor `{name}` has {n_dims} dimensions; ggml allows at most {MAX_DIMS}"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cursor.u64(&what)?);
    }
    let type_id = cursor.u32(&what)?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
        cursor.corrupt(format!(
            "tensor `{name}` has unknown ggml type id {type_id} (a newer ggml type?)"
        ))
    })?;
    let offset = cursor.u64(&what)?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
    })
}

/// Checks that every tensor is aligned, a whole number of blocks per row, and inside the file.
fn check_tensor_placement(header: &Header, file_len: u64, file: &str) -> Result<()> {
    let corrupt = |what: String| ModelError::Corrupt {
        file: file.to_string(),
        what,
    };
    for tensor in &header.tensors {
        let name = &tensor.name;
        if tensor.offset % header.alignment != 0 {
            return Err(corrupt(format!(
                "tensor `{name}` starts at offset {}, not a multiple of the alignment {}",
                tensor.offset, header.alignment
            )));
        }
        let row = tensor.dims.first().copied().unwrap_or(1);
        let block = tensor.ggml_type.block_size() as u64;
        if row % block != 0 {
            return Err(corrupt(format!(
                "tensor `{name}` has rows of {row} values, not a multiple of the {} block size {block}",
                tensor.ggml_type.name()
            )));
        }
        let size = tensor.checked_byte_size().ok_or_else(|| {
            corrupt(format!(
                "tensor `{name}` has dimensions {:?} whose size overflows",
                tensor.dims
            ))
        })?;
        let end = header
            .data_start
            .checked_add(tensor.offset)
            .and_then(|start| start.checked_add(size));
        if end.is_none_or(|end| end > file_len) {
            return Err(corrupt(format!(
                "tensor `{name}` ({size} bytes at data offset {}) runs past the end of the file ({file_len} bytes; data starts at {})",
                tensor.offset, header.data_start
            )));
        }
    }
    Ok(())
}

/// The smallest multiple of `alignment` (a power of two) that is ≥ `pos`.
pub(crate) fn align_up(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment) * alignment
}

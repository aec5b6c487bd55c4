//! A minimal GGUF writer, used only by tests to build files byte by byte.

use super::parse::{align_up, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::{GgmlType, GgufValue};

/// A tensor to write: name, ggml-order dimensions, type and encoded bytes.
pub(crate) struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: Vec<u8>,
}

/// Builds a GGUF file in memory.
pub(crate) struct GgufWriter {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<TensorSpec>,
}

impl GgufWriter {
    pub fn new(version: u32) -> GgufWriter {
        GgufWriter {
            version,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(mut self, key: &str, value: GgufValue) -> GgufWriter {
        self.metadata.push((key.to_string(), value));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: GgmlType, data: Vec<u8>) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        self
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find_map(|(k, v)| match v {
                GgufValue::U32(a) if k == ALIGNMENT_KEY => Some(u64::from(*a)),
                _ => None,
            })
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The data offset of every tensor: each placed at the next aligned position.
    pub fn offsets(&self) -> Vec<u64> {
        let mut next = 0;
        self.tensors
            .iter()
            .map(|t| {
                let offset = align_up(next, self.alignment());
                next = offset + t.data.len() as u64;
                offset
            })
            .collect()
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = GGUF_MAGIC.to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend(value.value_type().id().to_le_bytes());
            write_value(&mut out, value);
        }
        let offsets = self.offsets();
        for (tensor, offset) in self.tensors.iter().zip(&offsets) {
            write_string(&mut out, &tensor.name);
            out.extend((tensor.dims.len() as u32).to_le_bytes());
            for d in &tensor.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(tensor.ggml_type.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
        }
        let data_start = align_up(out.len() as u64, self.alignment());
        for (tensor, offset) in self.tensors.iter().zip(&offsets) {
            out.resize((data_start + offset) as usize, 0);
            out.extend(&tensor.data);
        }
        out
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &GgufValue) {
    match value {
        GgufValue::U8(v) => out.extend(v.to_le_bytes()),
        GgufValue::I8(v) => out.extend(v.to_le_bytes()),
        GgufValue::U16(v) => out.extend(v.to_le_bytes()),
        GgufValue::I16(v) => out.extend(v.to_le_bytes()),
        GgufValue::U32(v) => out.extend(v.to_le_bytes()),
        GgufValue::I32(v) => out.extend(v.to_le_bytes()),
        GgufValue::F32(v) => out.extend(v.to_le_bytes()),
        GgufValue::Bool(v) => out.push(u8::from(*v)),
        GgufValue::String(s) => write_string(out, s),
        GgufValue::Array {
            element_type,
            items,
        } => {
            out.extend(element_type.id().to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
        GgufValue::U64(v) => out.extend(v.to_le_bytes()),
        GgufValue::I64(v) => out.extend(v.to_le_bytes()),
        GgufValue::F64(v) => out.extend(v.to_le_bytes()),
    }
}

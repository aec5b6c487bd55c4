//! Where a decoder's weights come from: a GGUF file (dequantised to f32, q/k rows put back in
//! Hugging Face order) or the safetensors shards of a Hugging Face folder. Both are addressed
//! by Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`).

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::config::{Family, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::safetensors_io::SafetensorsFile;

/// A store of named weight tensors.
pub(crate) enum WeightSource<'a> {
    /// A GGUF file and the config read from it (needed to undo the q/k permutation).
    Gguf {
        file: &'a GgufFile,
        path: &'a Path,
        config: &'a LlamaConfig,
    },
    /// The `*.safetensors` shards of a Hugging Face folder.
    Safetensors(Vec<SafetensorsFile>),
}

impl WeightSource<'_> {
    /// Whether the store has a tensor called `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        match self {
            WeightSource::Gguf { file, .. } => {
                gguf_name(name).is_some_and(|gguf| file.tensor(&gguf).is_ok())
            }
            WeightSource::Safetensors(shards) => shards.iter().any(|shard| shard.contains(name)),
        }
    }

    /// The tensor `name` with PyTorch shape `shape`, on `device` as `kind`.
    pub(crate) fn load(
        &self,
        name: &str,
        shape: &[i64],
        device: Device,
        kind: Kind,
    ) -> Result<Tensor> {
        match self {
            WeightSource::Gguf { file, path, config } => {
                let tensor = load_gguf(file, path, config, name, shape)?;
                Ok(tensor.f_to_device(device)?.f_to_kind(kind)?)
            }
            WeightSource::Safetensors(shards) => {
                let shard = shards
                    .iter()
                    .find(|shard| shard.contains(name))
                    .ok_or_else(|| ModelError::MissingTensor {
                        file: shards
                            .iter()
                            .map(|s| s.path().display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        tensor: name.to_string(),
                    })?;
                shard.tensor(name, shape, device, kind)
            }
        }
    }

    /// Opens every `*.safetensors` file in `dir` (one file or the shards of a large model).
    pub(crate) fn open_hf_dir(dir: &Path) -> Result<WeightSource<'static>> {
        let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(ModelError::ModelConfig {
                file: dir.to_path_buf(),
                message: "the folder has no *.safetensors weights (PyTorch .bin files are not \
                          read; re-save the model with safe_serialization=True)"
                    .to_string(),
            });
        }
        let shards = paths
            .iter()
            .map(|path| SafetensorsFile::open(path))
            .collect::<Result<Vec<_>>>()?;
        Ok(WeightSource::Safetensors(shards))
    }
}

/// The GGUF name llama.cpp's converter gives a Hugging Face tensor name.
fn gguf_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let (module, kind) = tail.rsplit_once('.')?;
    let gguf_module = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf_module}.{kind}"))
}

fn load_gguf(
    file: &GgufFile,
    path: &Path,
    config: &LlamaConfig,
    hf_name: &str,
    shape: &[i64],
) -> Result<Tensor> {
    let name = gguf_name(hf_name).ok_or_else(|| ModelError::MissingTensor {
        file: path.display().to_string(),
        tensor: hf_name.to_string(),
    })?;
    let info = file.tensor(&name)?;
    let found: Vec<i64> = info.shape().iter().map(|&d| d as i64).collect();
    if found != shape {
        return Err(ModelError::TensorShape {
            file: path.to_path_buf(),
            tensor: name,
            expected: shape.to_vec(),
            found,
        });
    }
    let values = file.dequantize_tensor(info)?;
    let tensor = Tensor::f_from_slice(&values)?.f_view(shape)?;
    // llama.cpp permutes the rows of Llama's q and k projections to suit its interleaved RoPE;
    // Qwen2 GGUFs keep Hugging Face's order (llama.cpp runs them with NeoX-style RoPE).
    let heads = match (config.family, hf_name) {
        (Family::Qwen2, _) => None,
        (_, n) if n.contains("self_attn.q_proj.") => Some(config.num_heads),
        (_, n) if n.contains("self_attn.k_proj.") => Some(config.num_kv_heads),
        _ => None,
    };
    Ok(match heads {
        Some(heads) => unpermute_rotary_rows(&tensor, heads as i64),
        None => tensor,
    })
}

/// Undoes llama.cpp's `permute(w, n_head)`, which reorders each head's rows from Hugging
/// Face's "first half, second half" pairing (i with i + head_dim/2) to interleaved pairs
/// (2i with 2i + 1). Works for weights `[rows, in]` and biases `[rows]`.
fn unpermute_rotary_rows(tensor: &Tensor, heads: i64) -> Tensor {
    let shape = tensor.size();
    let head_dim = shape[0] / heads;
    let mut split: Vec<i64> = vec![heads, head_dim / 2, 2];
    split.extend_from_slice(&shape[1..]);
    tensor
        .reshape(split)
        .transpose(1, 2)
        .contiguous()
        .reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's converter: `w.reshape(n_head, 2, rows / n_head / 2, ...).swapaxes(1, 2)`.
    fn llama_cpp_permute(tensor: &Tensor, heads: i64) -> Tensor {
        let shape = tensor.size();
        let mut split: Vec<i64> = vec![heads, 2, shape[0] / heads / 2];
        split.extend_from_slice(&shape[1..]);
        tensor
            .reshape(split)
            .transpose(1, 2)
            .contiguous()
            .reshape(shape)
    }

    #[test]
    fn unpermuting_inverts_llama_cpp_permutation() {
        let weight = Tensor::arange(3 * 8 * 5, (Kind::Float, Device::Cpu)).view([24, 5]);
        let round_trip = unpermute_rotary_rows(&llama_cpp_permute(&weight, 3), 3);
        assert!(round_trip.equal(&weight));
        // Head 0 of width 8: HF row 1 (pair 1, first half) sits at GGUF row 2.
        let permuted = llama_cpp_permute(&weight, 3);
        assert!(permuted.get(2).equal(&weight.get(1)));
        let bias = Tensor::arange(8, (Kind::Float, Device::Cpu));
        assert!(unpermute_rotary_rows(&llama_cpp_permute(&bias, 1), 1).equal(&bias));
    }

    #[test]
    fn hf_names_map_to_llama_cpp_names() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.o_proj.weight").as_deref(),
            Some("blk.12.attn_output.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.q_proj.bias").as_deref(),
            Some("blk.0.attn_q.bias")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(gguf_name("model.layers.0.rotary.inv_freq"), None);
    }
}

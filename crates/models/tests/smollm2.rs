//! Opens the real SmolLM2-135M-Instruct GGUF file (after `scripts/setup.sh`) and checks that
//! its metadata and tensors are those of a consistent Llama model.

mod common;

use models::gguf::GgufFile;
use models::GgmlType;

/// The dimensions a Llama checkpoint's metadata promises.
struct LlamaDims {
    blocks: u64,
    embedding: u64,
    feed_forward: u64,
    heads: u64,
    kv_heads: u64,
    vocab: u64,
}

fn llama_dims(gguf: &GgufFile) -> LlamaDims {
    let get = |key: &str| u64::from(gguf.metadata_u32(key).unwrap());
    LlamaDims {
        blocks: get("llama.block_count"),
        embedding: get("llama.embedding_length"),
        feed_forward: get("llama.feed_forward_length"),
        heads: get("llama.attention.head_count"),
        kv_heads: get("llama.attention.head_count_kv"),
        vocab: gguf
            .metadata_array_str("tokenizer.ggml.tokens")
            .unwrap()
            .len() as u64,
    }
}

/// ggml-order dimensions of every tensor a Llama model with tied embeddings has.
fn expected_tensors(d: &LlamaDims) -> Vec<(String, Vec<u64>)> {
    let head_dim = d.embedding / d.heads;
    let mut expected = vec![
        ("token_embd.weight".to_string(), vec![d.embedding, d.vocab]),
        ("output_norm.weight".to_string(), vec![d.embedding]),
    ];
    for b in 0..d.blocks {
        let t = |name: &str, dims: Vec<u64>| (format!("blk.{b}.{name}.weight"), dims);
        expected.extend([
            t("attn_norm", vec![d.embedding]),
            t("attn_q", vec![d.embedding, d.embedding]),
            t("attn_k", vec![d.embedding, head_dim * d.kv_heads]),
            t("attn_v", vec![d.embedding, head_dim * d.kv_heads]),
            t("attn_output", vec![d.embedding, d.embedding]),
            t("ffn_norm", vec![d.embedding]),
            t("ffn_gate", vec![d.embedding, d.feed_forward]),
            t("ffn_up", vec![d.embedding, d.feed_forward]),
            t("ffn_down", vec![d.feed_forward, d.embedding]),
        ]);
    }
    expected
}

#[test]
fn smollm2_is_a_consistent_llama() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.metadata_str("general.architecture").unwrap(), "llama");
    let dims = llama_dims(&gguf);
    assert_eq!(
        u64::from(gguf.metadata_u32("llama.vocab_size").unwrap()),
        dims.vocab
    );
    assert_eq!(
        u64::from(gguf.metadata_u32("llama.rope.dimension_count").unwrap()),
        dims.embedding / dims.heads
    );

    let expected = expected_tensors(&dims);
    assert_eq!(gguf.tensors().len(), expected.len());
    for (name, want) in &expected {
        let tensor = gguf.tensor(name).unwrap();
        assert_eq!(&tensor.dims, want, "dimensions of {name}");
    }
}

#[test]
fn smollm2_tokenizer_metadata_is_complete() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    assert_eq!(gguf.metadata_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let tokens = gguf.metadata_array_str("tokenizer.ggml.tokens").unwrap();
    let types = gguf
        .metadata_array_i64("tokenizer.ggml.token_type")
        .unwrap();
    let merges = gguf.metadata_array_str("tokenizer.ggml.merges").unwrap();
    assert_eq!(types.len(), tokens.len());
    assert!(
        merges.iter().all(|m| m.split(' ').count() == 2),
        "merges are 'a b' pairs"
    );
    for key in ["bos_token_id", "eos_token_id"] {
        let id = gguf.metadata_u32(&format!("tokenizer.ggml.{key}")).unwrap();
        assert!(
            (id as usize) < tokens.len(),
            "{key} {id} is outside the vocabulary"
        );
    }
    let template = gguf.metadata_str("tokenizer.chat_template").unwrap();
    assert!(template.contains("<|im_start|>"));
}

#[test]
fn every_smollm2_tensor_dequantises_to_finite_values() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    let mut types_seen = Vec::new();
    for tensor in gguf.tensors() {
        let values = gguf.dequantize_tensor(tensor).unwrap();
        assert_eq!(values.len() as u64, tensor.element_count());
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{} has non-finite values",
            tensor.name
        );
        assert!(
            values.iter().any(|&v| v != 0.0),
            "{} is all zeros",
            tensor.name
        );
        if !types_seen.contains(&tensor.ggml_type) {
            types_seen.push(tensor.ggml_type);
        }
    }
    types_seen.sort_by_key(|t| t.id());
    assert_eq!(types_seen, [GgmlType::F32, GgmlType::Q4_1, GgmlType::Q8_0]);
}

//! Tokenizers as Hugging Face `tokenizers` objects: rebuilt from a GGUF file's
//! `tokenizer.ggml.*` metadata (byte-level BPE, as SmolLM2 uses), or loaded from a
//! `tokenizer.json` (as all-MiniLM-L6-v2 ships).

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// The GGUF tokenizer model this module rebuilds (llama.cpp's name for byte-level BPE).
const BYTE_LEVEL_BPE: &str = "gpt2";

/// llama.cpp's token types (`tokenizer.ggml.token_type`) that matter here.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// How text is split before BPE, by the value of `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenization {
    /// GPT-2's regex split, bytes mapped to printable characters.
    ByteLevel,
    /// Every digit on its own, then as `ByteLevel` (StarCoder-family vocabularies, SmolLM).
    DigitsThenByteLevel,
}

/// The `tokenizer.ggml.pre` values understood, with their splitting.
const PRE_TOKENIZATIONS: [(&str, PreTokenization); 6] = [
    ("gpt-2", PreTokenization::ByteLevel),
    ("default", PreTokenization::ByteLevel),
    ("smollm", PreTokenization::DigitsThenByteLevel),
    ("starcoder", PreTokenization::DigitsThenByteLevel),
    ("refact", PreTokenization::DigitsThenByteLevel),
    ("codeshell", PreTokenization::DigitsThenByteLevel),
];

/// A tokenizer rebuilt from GGUF metadata, with the special ids a generator needs.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The tokenizer. It adds no BOS/EOS itself: callers that need them (see `add_bos`)
    /// insert them, as chat templates do.
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.bos_token_id`, when present.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`, when present.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (false when absent): whether prompts start with BOS.
    pub add_bos: bool,
    /// `tokenizer.chat_template`, when present (a Jinja template).
    pub chat_template: Option<String>,
}

/// Rebuilds the byte-level BPE tokenizer of a GGUF file from `tokenizer.ggml.tokens`,
/// `tokenizer.ggml.merges`, `tokenizer.ggml.token_type` and `tokenizer.ggml.pre`.
///
/// Tokens of type CONTROL become special added tokens (matched whole, skipped when decoding
/// with `skip_special_tokens`), USER_DEFINED ones plain added tokens, as llama.cpp's converter
/// derived them from the original `tokenizer.json`.
pub fn from_gguf(gguf: &GgufFile) -> Result<GgufTokenizer> {
    let model = gguf.metadata_str("tokenizer.ggml.model")?;
    if model != BYTE_LEVEL_BPE {
        return Err(tokenizer_error(
            "tokenizer.ggml.model",
            format!("is `{model}`; only byte-level BPE (`{BYTE_LEVEL_BPE}`) can be rebuilt"),
        ));
    }
    let tokens = gguf.metadata_array_str("tokenizer.ggml.tokens")?;
    let merges = parse_merges(&gguf.metadata_array_str("tokenizer.ggml.merges")?)?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| tokenizer_error("tokenizer.ggml.merges", e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(pre_tokenizer(pre_tokenization(gguf)?)))
        .with_decoder(Some(ByteLevelDecoder::default()))
        .with_post_processor(Some(ByteLevelProcessor::new(true, false, true)));
    add_special_tokens(gguf, &tokens, &mut tokenizer)?;

    Ok(GgufTokenizer {
        tokenizer,
        bos_id: optional_u32(gguf, "tokenizer.ggml.bos_token_id")?,
        eos_id: optional_u32(gguf, "tokenizer.ggml.eos_token_id")?,
        add_bos: match gguf.metadata_value("tokenizer.ggml.add_bos_token") {
            Some(_) => gguf.metadata_bool("tokenizer.ggml.add_bos_token")?,
            None => false,
        },
        chat_template: match gguf.metadata_value("tokenizer.chat_template") {
            Some(_) => Some(gguf.metadata_str("tokenizer.chat_template")?.to_string()),
            None => None,
        },
    })
}

/// Loads a Hugging Face `tokenizer.json` (e.g. all-MiniLM-L6-v2's WordPiece tokenizer).
pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
        source_name: path.display().to_string(),
        message: e.to_string(),
    })
}

fn tokenizer_error(key: &str, message: String) -> ModelError {
    ModelError::Tokenizer {
        source_name: format!("GGUF metadata `{key}`"),
        message,
    }
}

/// Splits each `"left right"` merge rule at its single space.
fn parse_merges(rules: &[&str]) -> Result<Merges> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| match rule.split_once(' ') {
            Some((left, right)) if !left.is_empty() && !right.is_empty() => {
                Ok((left.to_string(), right.to_string()))
            }
            _ => Err(tokenizer_error(
                "tokenizer.ggml.merges",
                format!("rule {i} is {rule:?}, not two tokens separated by one space"),
            )),
        })
        .collect()
}

/// The splitting named by `tokenizer.ggml.pre` (GPT-2's when absent, as in llama.cpp).
fn pre_tokenization(gguf: &GgufFile) -> Result<PreTokenization> {
    let Some(_) = gguf.metadata_value("tokenizer.ggml.pre") else {
        return Ok(PreTokenization::ByteLevel);
    };
    let pre = gguf.metadata_str("tokenizer.ggml.pre")?;
    PRE_TOKENIZATIONS
        .iter()
        .find(|(name, _)| *name == pre)
        .map(|(_, splitting)| *splitting)
        .ok_or_else(|| {
            let known: Vec<_> = PRE_TOKENIZATIONS.iter().map(|(name, _)| *name).collect();
            tokenizer_error(
                "tokenizer.ggml.pre",
                format!("is `{pre}`, whose splitting fedsyn does not know; known: {known:?}"),
            )
        })
}

fn pre_tokenizer(splitting: PreTokenization) -> PreTokenizerWrapper {
    // add_prefix_space = false, trim_offsets = true, use_regex = true: GPT-2's settings.
    let byte_level = ByteLevel::new(false, true, true);
    match splitting {
        PreTokenization::ByteLevel => byte_level.into(),
        PreTokenization::DigitsThenByteLevel => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
    }
}

fn add_special_tokens(gguf: &GgufFile, tokens: &[&str], tokenizer: &mut Tokenizer) -> Result<()> {
    let Some(_) = gguf.metadata_value("tokenizer.ggml.token_type") else {
        return Ok(());
    };
    let types = gguf.metadata_array_i64("tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(tokenizer_error(
            "tokenizer.ggml.token_type",
            format!("has {} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let added = |wanted: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == wanted)
            .map(|(token, _)| AddedToken::from(token.to_string(), special))
            .collect()
    };
    tokenizer.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
    tokenizer.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));
    Ok(())
}

fn optional_u32(gguf: &GgufFile, key: &str) -> Result<Option<u32>> {
    match gguf.metadata_value(key) {
        Some(_) => gguf.metadata_u32(key).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_writer::GgufWriter;
    use crate::gguf::{GgufValue, ValueType};

    fn strings(items: &[&str]) -> GgufValue {
        GgufValue::Array {
            element_type: ValueType::String,
            items: items
                .iter()
                .map(|s| GgufValue::String(s.to_string()))
                .collect(),
        }
    }

    /// A toy byte-level vocabulary: "Ġ" is the byte-level form of a space.
    fn toy_gguf(model: &str, pre: &str, merges: &[&str]) -> GgufFile {
        let tokens = [
            "<|end|>", "a", "b", "c", "1", "2", "Ġ", "ab", "abc", "Ġa", "12",
        ];
        let types = GgufValue::Array {
            element_type: ValueType::I32,
            items: (0..tokens.len())
                .map(|i| GgufValue::I32(if i == 0 { 3 } else { 1 }))
                .collect(),
        };
        let bytes = GgufWriter::new(3)
            .kv("tokenizer.ggml.model", GgufValue::String(model.to_string()))
            .kv("tokenizer.ggml.pre", GgufValue::String(pre.to_string()))
            .kv("tokenizer.ggml.tokens", strings(&tokens))
            .kv("tokenizer.ggml.token_type", types)
            .kv("tokenizer.ggml.merges", strings(merges))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(0))
            .build();
        GgufFile::from_bytes(bytes, "toy.gguf").unwrap()
    }

    fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
        tokenizer.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn merges_specials_and_digits_follow_the_metadata() {
        let merges = ["a b", "ab c", "Ġ a", "1 2"];
        let smollm = from_gguf(&toy_gguf("gpt2", "smollm", &merges)).unwrap();
        let t = &smollm.tokenizer;
        assert_eq!(ids(t, "abc"), [8]);
        assert_eq!(ids(t, "abc a"), [8, 9]);
        assert_eq!(ids(t, "ab<|end|>c"), [7, 0, 3]);
        // SmolLM splits digits apart, so the "1 2" merge never applies; GPT-2 merges them.
        assert_eq!(ids(t, "12"), [4, 5]);
        let gpt2 = from_gguf(&toy_gguf("gpt2", "gpt-2", &merges)).unwrap();
        assert_eq!(ids(&gpt2.tokenizer, "12"), [10]);
        assert_eq!(smollm.eos_id, Some(0));
        assert_eq!(smollm.bos_id, None);
        assert!(!smollm.add_bos);
        assert_eq!(t.decode(&[8, 9, 0], true).unwrap(), "abc a");
    }

    #[test]
    fn unknown_models_splittings_and_bad_merges_are_named() {
        let err = from_gguf(&toy_gguf("llama", "default", &[])).unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");
        let err = from_gguf(&toy_gguf("gpt2", "qwen2", &[])).unwrap_err();
        assert!(err.to_string().contains("`qwen2`"), "{err}");
        let err = from_gguf(&toy_gguf("gpt2", "gpt-2", &["a b", "abc"])).unwrap_err();
        assert!(err.to_string().contains("rule 1 is \"abc\""), "{err}");
    }
}

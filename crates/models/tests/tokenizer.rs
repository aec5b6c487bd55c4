//! Token ids of the crate's tokenizers against the Python `tokenizers` package, through
//! `tests/fixtures/tokenizer_reference.json` written by `scripts/reference/tokenizer_ids.py`.

mod common;

use models::gguf::GgufFile;
use models::tokenizer::{from_gguf, from_tokenizer_json};
use models::Assets;
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<String>,
    smollm2_ids: Vec<Vec<u32>>,
    minilm_ids: Vec<Vec<u32>>,
    minilm_attention_mask: Vec<Vec<u32>>,
}

fn reference() -> Reference {
    let text = include_str!("fixtures/tokenizer_reference.json");
    serde_json::from_str(text).expect("the fixture parses")
}

#[test]
fn smollm2_gguf_tokenizer_matches_python_and_round_trips() {
    let Some(path) = common::smollm2_gguf() else {
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    let smollm2 = from_gguf(&gguf).unwrap();
    assert_eq!((smollm2.bos_id, smollm2.eos_id), (Some(1), Some(2)));
    assert!(!smollm2.add_bos);
    assert!(smollm2.chat_template.is_some());
    let tokenizer = &smollm2.tokenizer;
    let reference = reference();
    for (text, expected) in reference.texts.iter().zip(&reference.smollm2_ids) {
        let encoding = tokenizer.encode(text.as_str(), false).unwrap();
        assert_eq!(encoding.get_ids(), expected.as_slice(), "ids of {text:?}");
        // Byte-level BPE is lossless.
        assert_eq!(&tokenizer.decode(expected, false).unwrap(), text);
    }
}

#[test]
fn minilm_tokenizer_json_matches_python() {
    let dir = match Assets::discover().minilm_dir() {
        Ok(dir) => dir,
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have MiniLM: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let tokenizer = from_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    let reference = reference();
    let expected = reference
        .minilm_ids
        .iter()
        .zip(&reference.minilm_attention_mask);
    for (text, (ids, mask)) in reference.texts.iter().zip(expected) {
        let encoding = tokenizer.encode(text.as_str(), true).unwrap();
        assert_eq!(encoding.get_ids(), ids.as_slice(), "ids of {text:?}");
        assert_eq!(
            encoding.get_attention_mask(),
            mask.as_slice(),
            "mask of {text:?}"
        );
    }
}

#[test]
fn a_missing_tokenizer_json_is_named() {
    let err = from_tokenizer_json(std::path::Path::new("/nonexistent/tokenizer.json")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
}

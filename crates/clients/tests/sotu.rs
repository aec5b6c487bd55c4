//! The State of the Union conversion on the installed addresses (skipped when the data is
//! absent, except under CI), and the JSONL round trip.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clients::sotu::{MAX_PASSAGE_WORDS, MIN_PASSAGE_WORDS};
use clients::{read_documents, sotu_documents, write_documents, Document};

/// The installed SOTU folder, or `None` (with a note) when absent outside CI.
fn sotu_dir() -> Option<PathBuf> {
    match models::Assets::discover().sotu_dir() {
        Ok(dir) => Some(dir),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have the SOTU data: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

#[test]
fn every_address_becomes_a_client_of_bounded_passages_keeping_every_word() {
    let Some(dir) = sotu_dir() else {
        return;
    };
    let docs = sotu_documents(&dir).unwrap();
    let mut by_client: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for doc in &docs {
        by_client.entry(&doc.client_id).or_default().push(&doc.text);
    }
    assert_eq!(by_client.len(), 233);
    assert!(by_client.contains_key("1790-george-washington"));
    assert!(by_client.contains_key("1961-john-f-kennedy"));
    // The bounds hold for every passage: no address is shorter than the minimum, the only
    // documented exception.
    for doc in &docs {
        let words = doc.text.split_whitespace().count();
        assert!(
            (MIN_PASSAGE_WORDS..=MAX_PASSAGE_WORDS).contains(&words),
            "{}: a passage of {words} words",
            doc.client_id
        );
    }
    // Every word of every address, once, in order.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "txt") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let id = stem[..stem.rfind('_').unwrap()].replace('_', "-");
        let original = std::fs::read_to_string(&path).unwrap();
        let rejoined = by_client[id.as_str()].join(" ");
        assert!(
            rejoined.split_whitespace().eq(original.split_whitespace()),
            "{id}: the passages do not hold the address's words in order"
        );
    }
}

#[test]
fn written_documents_read_back_unchanged() {
    let dir = std::env::temp_dir().join(format!("fedsyn-clients-sotu-{}", std::process::id()));
    let path = dir.join("nested").join("sotu.jsonl");
    let docs = vec![
        Document {
            client_id: "1790-george-washington".to_string(),
            text: "Fellow-Citizens: \"quoted\" and unicode — é.".to_string(),
        },
        Document {
            client_id: "2021-joseph-r-biden".to_string(),
            text: "Second passage.".to_string(),
        },
    ];
    write_documents(&path, &docs).unwrap();
    assert_eq!(read_documents(&path).unwrap(), docs);
    // No temporary file is left beside it.
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

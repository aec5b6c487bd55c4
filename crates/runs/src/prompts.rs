//! POPri's few-shot prompts, built from public seed texts only, and the cleaning of what the
//! generator writes after them.
//!
//! The reference prompt (meiyuw/POPri `generation_prompt.txt`) lists three seed examples under
//! numbered headers and ends with the header of a fourth, which the model then writes:
//!
//! ```text
//! List of diverse original text samples:
//! Original Text Sample 1
//! <example>
//! Original Text Sample 2
//! <example>
//! Original Text Sample 3
//! <example>
//! Original Text Sample 4
//! ```
//!
//! Two quirks of the reference file are not reproduced: its first line says "List of 6 diverse
//! …" while showing three examples, and it ends with a literal backslash-n (the file is read
//! verbatim and `str.format` does not interpret escapes); here the count is left out and the
//! prompt ends with a real newline.

use std::path::Path;

use rand::Rng;

use crate::config::PromptStyle;
use crate::error::{Result, RunError};

/// A prompt template: literal text with placeholders `{0}` … `{n-1}` for n examples (Python
/// `str.format` syntax as in the reference's template file; `{{` and `}}` are literal braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    segments: Vec<Segment>,
    examples: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Example(usize),
}

impl PromptTemplate {
    /// POPri's template for `examples` examples (reference: 3).
    pub fn popri(examples: usize) -> Self {
        let mut segments = vec![Segment::Text(
            "List of diverse original text samples:\n".to_string(),
        )];
        for i in 0..examples {
            segments.push(Segment::Text(format!("Original Text Sample {}\n", i + 1)));
            segments.push(Segment::Example(i));
            segments.push(Segment::Text("\n".to_string()));
        }
        segments.push(Segment::Text(format!(
            "Original Text Sample {}\n",
            examples + 1
        )));
        Self { segments, examples }
    }

    /// Parses a custom template that must use each of `{0}` … `{examples-1}` at least once and
    /// no other placeholder.
    pub fn parse(text: &str, examples: usize) -> Result<Self> {
        let invalid =
            |message: String| RunError::argument("template", format!("{text:?}"), message);
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    let index = name
                        .parse::<usize>()
                        .ok()
                        .filter(|&i| closed && i < examples);
                    let Some(index) = index else {
                        return Err(invalid(format!(
                            "`{{{name}}}` is not a placeholder: use {{0}} … {{{}}} for the \
                             {examples} examples, {{{{ and }}}} for literal braces",
                            examples.saturating_sub(1)
                        )));
                    };
                    if !literal.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Example(index));
                }
                '}' => {
                    return Err(invalid(
                        "a lone `}`: write `}}` for a literal brace".to_string(),
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Text(literal));
        }
        if let Some(missing) = (0..examples).find(|i| !segments.contains(&Segment::Example(*i))) {
            return Err(invalid(format!(
                "placeholder {{{missing}}} is missing: the template must show all {examples} \
                 examples"
            )));
        }
        Ok(Self { segments, examples })
    }

    /// How many examples the template shows.
    pub fn examples(&self) -> usize {
        self.examples
    }

    /// The prompt for these examples (one per placeholder index), each flattened to one line.
    fn render(&self, examples: &[&str]) -> String {
        let mut prompt = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => prompt.push_str(text),
                Segment::Example(i) => prompt.push_str(&flatten_whitespace(examples[*i])),
            }
        }
        prompt
    }
}

/// `count` prompts in POPri's template, each showing `examples` texts drawn at random without
/// replacement (within the prompt) from the public `seed_pool`.
pub fn build_prompts<R: Rng + ?Sized>(
    seed_pool: &[String],
    count: usize,
    examples: usize,
    rng: &mut R,
) -> Result<Vec<String>> {
    build_prompts_with(&PromptTemplate::popri(examples), seed_pool, count, rng)
}

/// [`build_prompts`] with a custom template.
pub fn build_prompts_with<R: Rng + ?Sized>(
    template: &PromptTemplate,
    seed_pool: &[String],
    count: usize,
    rng: &mut R,
) -> Result<Vec<String>> {
    let examples = template.examples();
    if examples == 0 {
        return Err(RunError::argument(
            "examples",
            0,
            "at least one example per prompt",
        ));
    }
    if seed_pool.len() < examples {
        return Err(RunError::argument(
            "seed pool",
            format!("{} texts", seed_pool.len()),
            format!(
                "at least {examples} public seed texts, as many as each prompt shows (add seed \
                 texts or lower prompts.examples_per_prompt)"
            ),
        ));
    }
    if let Some(blank) = seed_pool.iter().position(|t| t.trim().is_empty()) {
        return Err(RunError::argument(
            "seed pool",
            format!("empty text at index {blank}"),
            "every seed text must be non-empty",
        ));
    }
    Ok((0..count)
        .map(|_| {
            let picked = rand::seq::index::sample(rng, seed_pool.len(), examples);
            let texts: Vec<&str> = picked.iter().map(|i| seed_pool[i].as_str()).collect();
            template.render(&texts)
        })
        .collect())
}

/// A candidate as POPri keeps it: cut at the first "Orig" (the model starting the next
/// "Original Text Sample" header), newlines and whitespace runs flattened to single spaces,
/// trimmed. Truncation to a number of tokens is left to the caller (it needs the tokenizer).
pub fn clean_candidate(text: &str) -> String {
    let kept = text.find("Orig").map_or(text, |end| &text[..end]);
    flatten_whitespace(kept)
}

/// `count` requests of the chat style: `instruction` with `{topic}` replaced by a topic drawn
/// uniformly (with replacement) from the public `topics`. The caller renders each as one user
/// turn of the generator's chat template.
pub fn chat_requests<R: Rng + ?Sized>(
    instruction: &str,
    topics: &[String],
    count: usize,
    rng: &mut R,
) -> Vec<String> {
    (0..count)
        .map(|_| instruction.replace("{topic}", &topics[rng.gen_range(0..topics.len())]))
        .collect()
}

/// A chat-style candidate as kept: the model's reply with whitespace runs flattened, trimmed
/// (no header to cut at, unlike [`clean_candidate`]).
pub fn clean_reply(text: &str) -> String {
    flatten_whitespace(text)
}

/// A sampled completion as kept, by the style of the prompt that wrote it: a few-shot candidate
/// ends at the next sample header ([`clean_candidate`]), a chat reply is kept whole
/// ([`clean_reply`]). POPri's candidates and PE's samples on the public prompts both go through
/// here.
pub fn clean_completion(style: PromptStyle, text: &str) -> String {
    match style {
        PromptStyle::FewShot => clean_candidate(text),
        PromptStyle::Chat => clean_reply(text),
    }
}

/// Public seed texts from a file with one text per line (blank lines are skipped).
pub fn seed_pool_from_file(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| RunError::io(path, e))?;
    let mut texts = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|e| RunError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("not UTF-8 ({e}): save the seed file as UTF-8 text"),
        })?;
        let text = line.trim();
        if !text.is_empty() {
            texts.push(text.to_string());
        }
    }
    if texts.is_empty() {
        return Err(RunError::Data {
            path: path.to_path_buf(),
            line: 1,
            message: "no seed texts: put one public text per line".into(),
        });
    }
    Ok(texts)
}

fn flatten_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn pool(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("seed text {i}")).collect()
    }

    #[test]
    fn popri_template_matches_the_reference_layout() {
        let prompt = PromptTemplate::popri(3).render(&["a\nb", "c", "d\t e"]);
        assert_eq!(
            prompt,
            "List of diverse original text samples:\nOriginal Text Sample 1\na b\n\
             Original Text Sample 2\nc\nOriginal Text Sample 3\nd e\nOriginal Text Sample 4\n"
        );
    }

    #[test]
    fn prompts_show_distinct_examples_and_are_seeded() {
        let seeds = pool(5);
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let prompts = build_prompts(&seeds, 200, 3, &mut rng).unwrap();
        assert_eq!(prompts.len(), 200);
        for prompt in &prompts {
            let shown: Vec<&String> = seeds.iter().filter(|s| prompt.contains(*s)).collect();
            assert_eq!(shown.len(), 3, "{prompt}");
        }
        // With 5 seeds and 200 prompts, every seed appears somewhere.
        assert!(seeds.iter().all(|s| prompts.iter().any(|p| p.contains(s))));
        let again = build_prompts(&seeds, 200, 3, &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
        assert_eq!(prompts, again);
    }

    #[test]
    fn chat_requests_name_a_topic_each_and_are_seeded() {
        let topics = vec!["taxes".to_string(), "the navy".to_string()];
        let requests = chat_requests(
            "A paragraph about {topic}.",
            &topics,
            50,
            &mut ChaCha20Rng::seed_from_u64(1),
        );
        assert_eq!(requests.len(), 50);
        assert!(requests
            .iter()
            .all(|r| r == "A paragraph about taxes." || r == "A paragraph about the navy."));
        assert!(topics
            .iter()
            .all(|t| requests.iter().any(|r| r.contains(t.as_str()))));
        let again = chat_requests(
            "A paragraph about {topic}.",
            &topics,
            50,
            &mut ChaCha20Rng::seed_from_u64(1),
        );
        assert_eq!(requests, again);
        // A reply keeps "Original…" (only the few-shot header cut removes it).
        assert_eq!(
            clean_reply(" Original  ideas\nmatter. "),
            "Original ideas matter."
        );
        assert_eq!(clean_candidate("ideas Original Text Sample 5"), "ideas");
    }

    #[test]
    fn small_pools_are_errors() {
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        let error = build_prompts(&pool(2), 1, 3, &mut rng)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("2 texts") && error.contains("at least 3"),
            "{error}"
        );
        let blank = vec!["a".to_string(), " ".to_string()];
        assert!(build_prompts(&blank, 1, 1, &mut rng).is_err());
        // Exactly `examples` texts is enough.
        assert_eq!(build_prompts(&pool(3), 2, 3, &mut rng).unwrap().len(), 2);
    }

    #[test]
    fn custom_templates_parse_and_render() {
        let template = PromptTemplate::parse("{{x}} {1} then {0}, {1}.", 2).unwrap();
        assert_eq!(template.render(&["A", "B"]), "{x} B then A, B.");
        for bad in ["{0}", "{0} {1} {2}", "{0} {x} {1}", "{0} } {1}", "{0} {1"] {
            assert!(PromptTemplate::parse(bad, 2).is_err(), "{bad}");
        }
    }

    #[test]
    fn candidates_are_cut_and_flattened() {
        assert_eq!(
            clean_candidate("  The tax bill\n\npassed.  \nOriginal Text Sample 5\nmore"),
            "The tax bill passed."
        );
        assert_eq!(clean_candidate("Origin story"), "");
        assert_eq!(clean_candidate("no marker\there"), "no marker here");
    }

    #[test]
    fn seed_files_skip_blank_lines_and_report_bad_ones() {
        let dir = std::env::temp_dir().join(format!("server-seeds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("seeds.txt");
        std::fs::write(&good, "first text\r\n\n  \nsecond text\n").unwrap();
        assert_eq!(
            seed_pool_from_file(&good).unwrap(),
            ["first text", "second text"]
        );
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, b"ok\n\xff\xfe\n").unwrap();
        let error = seed_pool_from_file(&bad).unwrap_err().to_string();
        assert!(
            error.contains("bad.txt:2") && error.contains("UTF-8"),
            "{error}"
        );
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(seed_pool_from_file(&empty).is_err());
        assert!(seed_pool_from_file(&dir.join("missing.txt"))
            .unwrap_err()
            .to_string()
            .contains("missing.txt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

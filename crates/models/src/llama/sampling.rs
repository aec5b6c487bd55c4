//! Choosing next tokens from logits: greedy, or sampling with temperature, top-k and top-p
//! (nucleus) filtering, in that order as transformers applies them. Whole batches are
//! filtered and sampled with tensor operations; only the uniform random numbers come from
//! the host, one seeded stream per row, so a seed reproduces a run exactly on the CPU and
//! tests running in parallel never share a generator.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// How a generation run picks tokens and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Most tokens generated per row.
    pub max_new_tokens: usize,
    /// Always take the most likely token (also implied by `temperature == 0`).
    pub greedy: bool,
    /// Logits are divided by this before the softmax; must be ≥ 0.
    pub temperature: f64,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`
    /// (1 keeps all); must lie in (0, 1].
    pub top_p: f64,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Seed of the per-row random streams.
    pub seed: u64,
    /// A row stops once its generated text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
    /// Generate `max_new_tokens` even past end-of-sequence tokens (for throughput tests).
    pub ignore_eos: bool,
    /// Also return, for every generated token, its log-probability under the model's own
    /// next-token distribution (before temperature, top-k and top-p), as vLLM's `logprobs`
    /// does: the numbers a check against another implementation compares.
    pub logprobs: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 128,
            greedy: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop_strings: Vec::new(),
            ignore_eos: false,
            logprobs: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> SamplingParams {
        SamplingParams {
            max_new_tokens,
            greedy: true,
            ..SamplingParams::default()
        }
    }

    /// Whether tokens are chosen by argmax rather than drawn.
    pub fn is_greedy(&self) -> bool {
        self.greedy || self.temperature == 0.0
    }

    /// Fails with a message naming the field when a value is out of range.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            let message = "must be at least 1";
            return Err(ModelError::invalid_argument("max_new_tokens", message));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            let message = format!("{} is not a finite number ≥ 0", self.temperature);
            return Err(ModelError::invalid_argument("temperature", message));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            let message = format!("{} is not in (0, 1]", self.top_p);
            return Err(ModelError::invalid_argument("top_p", message));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            let message = "an empty stop string would stop at once";
            return Err(ModelError::invalid_argument("stop_strings", message));
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny generator whose output function mixes well
/// enough that distinct seeds give unrelated streams.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in (0, 1] with 53 random bits; never 0, so a draw never lands
    /// before the first candidate's probability mass.
    fn next_open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// Picks next tokens for a batch, with one random stream per original row.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    streams: Vec<SplitMix64>,
}

impl Sampler {
    /// A sampler for `rows` sequences; row r's stream depends only on the seed and r.
    pub fn new(params: &SamplingParams, rows: usize) -> Sampler {
        let streams = (0..rows as u64)
            .map(|row| {
                // Hash (seed, row) into a starting state, so rows do not share a stream
                // shifted by one step, as consecutive raw states would.
                let mut mixer =
                    SplitMix64::new(params.seed ^ row.wrapping_mul(0xD1B5_4A32_D192_ED03));
                SplitMix64::new(mixer.next_u64())
            })
            .collect();
        Sampler {
            params: params.clone(),
            streams,
        }
    }

    /// The next token of each row of `logits` (`[n, vocab]`, fp32); `rows[i]` is the
    /// original row that logits row i belongs to (rows are dropped as they finish).
    /// Returns int64 ids, `[n]`, on the logits' device.
    pub fn sample(&mut self, logits: &Tensor, rows: &[usize]) -> Tensor {
        let _no_grad = tch::no_grad_guard();
        if self.params.is_greedy() {
            return logits.argmax(-1, false);
        }
        let uniforms: Vec<f32> = rows
            .iter()
            .map(|&row| self.streams[row].next_open_unit() as f32)
            .collect();
        let uniforms = Tensor::from_slice(&uniforms)
            .to_device(logits.device())
            .view([-1, 1]);
        sample_filtered(&self.params, logits, &uniforms)
    }
}

/// Temperature, then top-k, then top-p, then inverse-CDF sampling with one uniform per row.
fn sample_filtered(params: &SamplingParams, logits: &Tensor, uniforms: &Tensor) -> Tensor {
    let vocab = logits.size()[1];
    let scaled = logits.to_kind(Kind::Float) / params.temperature;
    if params.top_k > 0 && (params.top_k as i64) < vocab {
        let (values, ids) = scaled.topk(params.top_k as i64, -1, true, true);
        draw_from_sorted(
            &values.softmax(-1, Kind::Float),
            &ids,
            uniforms,
            params.top_p,
        )
    } else if params.top_p < 1.0 {
        sample_nucleus(&scaled, params.top_p, uniforms)
    } else {
        // The full vocabulary in id order: no sort needed.
        draw(&scaled.softmax(-1, Kind::Float), uniforms)
    }
}

/// Inverse-CDF draws from candidates in descending order of probability (`probabilities`
/// under the distribution being filtered, `ids` their token ids), after the top-p filter: a
/// token is kept while the mass of the more likely tokens before it is below `top_p` (the
/// smallest prefix reaching `top_p`, and always the most likely token).
fn draw_from_sorted(probabilities: &Tensor, ids: &Tensor, uniforms: &Tensor, top_p: f64) -> Tensor {
    let kept = if top_p < 1.0 {
        let mass_before = probabilities.cumsum(-1, Kind::Float) - probabilities;
        probabilities * mass_before.lt(top_p).to_kind(Kind::Float)
    } else {
        probabilities.shallow_clone()
    };
    let choice = draw(&kept, uniforms);
    ids.gather(-1, &choice.unsqueeze(-1), false).squeeze_dim(-1)
}

/// For each row, the index of the first candidate whose cumulative mass reaches u · total
/// (the weights need not sum to 1).
fn draw(weights: &Tensor, uniforms: &Tensor) -> Tensor {
    let cumulative = weights.cumsum(-1, Kind::Float);
    let count = cumulative.size()[1];
    let threshold = uniforms * cumulative.narrow(1, count - 1, 1);
    cumulative
        .lt_tensor(&threshold)
        .sum_dim_intlist(-1, false, Kind::Int64)
        .clamp_max(count - 1)
}

/// Partial sorts tried before a full one, in order: most rows' nucleus lies among their few
/// hundred most likely tokens, and finding those costs a fraction of sorting the whole
/// vocabulary (which doubled the time of sampling SmolLM2 at top-p 0.95 on the CPU).
const NUCLEUS_PREFIXES: [i64; 2] = [256, 4096];

/// Top-p sampling of every row from its most likely tokens: each row is drawn from the
/// shortest prefix of [`NUCLEUS_PREFIXES`] (or the full sort) that holds its nucleus, and
/// only the rows a prefix does not cover go on to the next, longer one. (On the demo's
/// SmolLM2 round about one row in ten needs 4,096 tokens; taking them for every row because
/// one needed them cost four times the 256-token prefix.)
///
/// A prefix holds a row's nucleus of mass `top_p` when its own mass reaches `top_p` under the
/// whole distribution: every later token then has at least `top_p` before it and is dropped.
/// The margin keeps float rounding (a sum here, a cumulative sum later) from deciding.
fn sample_nucleus(scaled: &Tensor, top_p: f64, uniforms: &Tensor) -> Tensor {
    sample_nucleus_by_prefix(scaled, top_p, uniforms, &mut |_, _| {})
}

/// [`sample_nucleus`]'s draws, telling `drawn_from(rows, width)` which rows (`None`: all of
/// them) were drawn from the prefix of `width` tokens (the vocabulary size for the full sort).
/// Sampling passes a no-op, so recording costs the decoding loop nothing.
fn sample_nucleus_by_prefix(
    scaled: &Tensor,
    top_p: f64,
    uniforms: &Tensor,
    drawn_from: &mut dyn FnMut(Option<&Tensor>, i64),
) -> Tensor {
    const MARGIN: f64 = 1e-4;
    let (rows, vocab) = (scaled.size()[0], scaled.size()[1]);
    let device = scaled.device();
    let log_norm = scaled.logsumexp([-1], true);
    let mut tokens = Tensor::zeros([rows], (Kind::Int64, device));
    // The rows not drawn yet (all of them, as `None`, until a prefix covers some).
    let mut pending: Option<Tensor> = None;
    let widths = NUCLEUS_PREFIXES
        .into_iter()
        .filter(|&k| k < vocab)
        .chain([vocab]);
    for width in widths {
        let select = |t: &Tensor| match &pending {
            Some(rows) => t.index_select(0, rows),
            None => t.shallow_clone(),
        };
        let candidates = select(scaled);
        let (values, ids) = if width < vocab {
            candidates.topk(width, -1, true, true)
        } else {
            candidates.sort(-1, true)
        };
        let probabilities = (values - select(&log_norm)).exp();
        let covered = if width < vocab {
            probabilities
                .sum_dim_intlist(-1, false, Kind::Float)
                .ge(top_p + MARGIN)
        } else {
            Tensor::ones([ids.size()[0]], (Kind::Bool, device))
        };
        let left = covered.logical_not().nonzero().squeeze_dim(1);
        if pending.is_none() && left.size()[0] == 0 {
            // The usual case: the first prefix covers every row, so nothing is gathered.
            drawn_from(None, width);
            return draw_from_sorted(&probabilities, &ids, uniforms, top_p);
        }
        let here = covered.nonzero().squeeze_dim(1);
        if here.size()[0] > 0 {
            let drawn = draw_from_sorted(
                &probabilities.index_select(0, &here),
                &ids.index_select(0, &here),
                &select(uniforms).index_select(0, &here),
                top_p,
            );
            let rows_here = match &pending {
                Some(rows) => rows.index_select(0, &here),
                None => here,
            };
            tokens = tokens.index_copy(0, &rows_here, &drawn);
            drawn_from(Some(&rows_here), width);
        }
        if left.size()[0] == 0 {
            break;
        }
        pending = Some(match &pending {
            Some(rows) => rows.index_select(0, &left),
            None => left,
        });
    }
    tokens
}

/// For each row of `logits`, how many of its most likely tokens sampling with `params` sorts
/// to draw it: the top-k when there is one, else the prefix of [`NUCLEUS_PREFIXES`] that holds
/// its top-p nucleus, else the whole vocabulary (a full sort, or none without top-p). For
/// profiles of the sampler (`examples/sampling_profile.rs`).
pub fn nucleus_prefix_widths(params: &SamplingParams, logits: &Tensor) -> Vec<i64> {
    let (rows, vocab) = (logits.size()[0] as usize, logits.size()[1]);
    if params.top_k > 0 && (params.top_k as i64) < vocab {
        return vec![params.top_k as i64; rows];
    }
    if params.top_p >= 1.0 {
        return vec![vocab; rows];
    }
    let scaled = logits.to_kind(Kind::Float) / params.temperature;
    let uniforms = Tensor::ones([logits.size()[0], 1], (Kind::Float, logits.device()));
    let mut widths = vec![0; rows];
    let mut record = |drawn: Option<&Tensor>, width: i64| match drawn {
        None => widths.fill(width),
        Some(drawn) => {
            for row in Vec::<i64>::try_from(drawn).expect("row indices are Int64") {
                widths[row as usize] = width;
            }
        }
    };
    drop(sample_nucleus_by_prefix(
        &scaled,
        params.top_p,
        &uniforms,
        &mut record,
    ));
    widths
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter as it was first written: the whole vocabulary sorted.
    fn sample_fully_sorted(params: &SamplingParams, logits: &Tensor, uniforms: &Tensor) -> Tensor {
        let (values, ids) = (logits / params.temperature).sort(-1, true);
        let probabilities = values.softmax(-1, Kind::Float);
        let mass_before = probabilities.cumsum(-1, Kind::Float) - &probabilities;
        let kept = &probabilities * mass_before.lt(params.top_p).to_kind(Kind::Float);
        let cumulative = kept.cumsum(-1, Kind::Float);
        let count = cumulative.size()[1];
        let threshold = uniforms * cumulative.narrow(1, count - 1, 1);
        let choice = cumulative
            .lt_tensor(&threshold)
            .sum_dim_intlist(-1, false, Kind::Int64)
            .clamp_max(count - 1);
        ids.gather(-1, &choice.unsqueeze(-1), false).squeeze_dim(-1)
    }

    /// A peaked row (its nucleus among its 256 most likely tokens), a flatter one (among
    /// 4,096) and a flat one (the full sort), each alone and all together: every draw is the
    /// token the full sort picks.
    #[test]
    fn partial_sorts_pick_what_the_full_sort_picks() {
        tch::manual_seed(5);
        let vocab = 49_152;
        let spread = Tensor::from_slice(&[12.0f32, 4.0, 0.1]).view([3, 1]);
        let logits = Tensor::randn([3, vocab], (Kind::Float, tch::Device::Cpu)) * spread;
        let p = |top_p: f64, temperature: f64| SamplingParams {
            top_p,
            temperature,
            ..SamplingParams::default()
        };
        // Which sort each row takes at top-p 0.95, temperature 1: the mass of its prefixes.
        let log_norm = logits.logsumexp([-1], true);
        let mass = |prefix: i64| {
            let (values, _) = logits.topk(prefix, -1, true, true);
            Vec::<f64>::try_from((values - &log_norm).exp().sum_dim_intlist(
                -1,
                false,
                Kind::Double,
            ))
            .unwrap()
        };
        let widths: Vec<i64> = mass(256)
            .into_iter()
            .zip(mass(4096))
            .map(|(m256, m4096)| match (m256 >= 0.95, m4096 >= 0.95) {
                (true, _) => 256,
                (false, true) => 4096,
                _ => vocab,
            })
            .collect();
        assert_eq!(widths, [256, 4096, vocab]);
        // The sampler draws each row from that prefix, alone or batched with the others.
        assert_eq!(nucleus_prefix_widths(&p(0.95, 1.0), &logits), widths);
        let reordered = logits.index_select(0, &Tensor::from_slice(&[2i64, 0, 1, 0]));
        assert_eq!(
            nucleus_prefix_widths(&p(0.95, 1.0), &reordered),
            [vocab, 256, 4096, 256]
        );
        let first = logits.narrow(0, 0, 1);
        assert_eq!(nucleus_prefix_widths(&p(0.95, 1.0), &first), [256]);
        assert_eq!(nucleus_prefix_widths(&p(1.0, 1.0), &first), [vocab]);
        let batches = [
            vec![0i64],
            vec![1],
            vec![2],
            vec![0, 1, 2],
            vec![2, 0, 1, 0],
        ];
        for rows in batches {
            let batch = logits.index_select(0, &Tensor::from_slice(&rows));
            for (top_p, temperature) in [(0.5, 1.0), (0.9, 0.7), (0.95, 1.0)] {
                for u in [0.001f32, 0.3, 0.77, 0.999, 1.0] {
                    let uniforms = Tensor::full(
                        [rows.len() as i64, 1],
                        f64::from(u),
                        (Kind::Float, tch::Device::Cpu),
                    );
                    let params = p(top_p, temperature);
                    let got =
                        Vec::<i64>::try_from(sample_filtered(&params, &batch, &uniforms)).unwrap();
                    let want =
                        Vec::<i64>::try_from(sample_fully_sorted(&params, &batch, &uniforms))
                            .unwrap();
                    assert_eq!(
                        got, want,
                        "rows {rows:?}, top_p {top_p}, T {temperature}, u {u}"
                    );
                }
            }
        }
    }

    fn params(top_k: usize, top_p: f64) -> SamplingParams {
        SamplingParams {
            top_k,
            top_p,
            ..SamplingParams::default()
        }
    }

    /// log-probabilities 0.5, 0.3, 0.15, 0.05 for ids 0..4, in a shuffled order.
    fn logits() -> Tensor {
        Tensor::from_slice(&[0.15f32, 0.5, 0.05, 0.3])
            .log()
            .view([1, 4])
    }

    /// Draws from [`logits`] with `params` once per `(u, token)` of `draws`, each with uniform
    /// `u`, and checks that it gives `token`.
    fn assert_draws(params: &SamplingParams, draws: &[(f32, i64)]) {
        for &(u, want) in draws {
            let uniform = Tensor::from_slice(&[u]).view([1, 1]);
            let token = sample_filtered(params, &logits(), &uniform);
            assert_eq!(i64::try_from(token.squeeze()).unwrap(), want, "u = {u}");
        }
    }

    #[test]
    fn inverse_cdf_follows_the_probabilities() {
        // Id order: 0.15 (id 0), 0.5 (id 1), 0.05 (id 2), 0.3 (id 3).
        let draws = [(0.10, 0), (0.60, 1), (0.68, 2), (0.71, 3), (1.0, 3)];
        assert_draws(&params(0, 1.0), &draws);
    }

    #[test]
    fn top_k_and_top_p_drop_the_tail() {
        // Top-2 keeps ids 1 (0.5) and 3 (0.3), renormalised to 0.625 / 0.375.
        assert_draws(&params(2, 1.0), &[(0.62, 1), (0.63, 3), (1.0, 3)]);
        // top_p 0.75: 0.5 + 0.3 reaches it, so id 0 (0.15) and id 2 go.
        assert_draws(&params(0, 0.75), &[(0.99, 3)]);
        // top_p 0.4: the most likely token alone reaches it.
        assert_draws(&params(0, 0.4), &[(0.01, 1), (1.0, 1)]);
    }

    #[test]
    fn streams_repeat_per_seed_and_differ_per_row() {
        let p = SamplingParams {
            seed: 7,
            ..SamplingParams::default()
        };
        let mut a = Sampler::new(&p, 2);
        let mut b = Sampler::new(&p, 2);
        let draws = |s: &mut Sampler, row: usize| -> Vec<f64> {
            (0..4).map(|_| s.streams[row].next_open_unit()).collect()
        };
        assert_eq!(draws(&mut a, 0), draws(&mut b, 0));
        assert_ne!(draws(&mut a, 1), draws(&mut a, 0));
        let mut other = Sampler::new(&SamplingParams { seed: 8, ..p }, 1);
        assert_ne!(draws(&mut other, 0), draws(&mut b, 0));
    }

    #[test]
    fn out_of_range_parameters_are_named() {
        let bad = |p: SamplingParams| p.validate().unwrap_err().to_string();
        assert!(bad(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .contains("temperature"));
        assert!(bad(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .contains("top_p"));
        assert!(bad(SamplingParams {
            max_new_tokens: 0,
            ..Default::default()
        })
        .contains("max_new_tokens"));
        assert!(SamplingParams::greedy(4).validate().is_ok());
    }
}

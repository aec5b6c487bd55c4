//! Private Evolution's client side (Lin et al. 2024; Aug-PE, Xie et al. 2024): each of a
//! client's private texts votes for its nearest synthetic sample, and the client sends its vote
//! histogram scaled to L2 norm 1.
//!
//! "Nearest" is the smallest L2 distance between the L2-normalised embeddings, which is the
//! highest cosine; samples within [`TIE_TOLERANCE`] of the best cosine tie, and a tie goes to
//! the lowest index (duplicate samples, common in an evolving population, then share no vote
//! by rounding accident). Normalising the histogram per client bounds one client's whole
//! contribution (user-level DP, add/remove adjacency) by 1 in L2, however many texts it has;
//! a client without texts sends zeros. As with the POPri scores ([`crate::scores`]), the norm
//! of every vector is measured before it leaves, and nothing non-finite is sent.

use tch::{Device, Kind, Tensor};

use crate::data::FederatedData;
use crate::error::{ClientsError, Result};
use crate::population::{check_grid, grid_units, sampled_unit_candidates, unit_train_embeddings};
use crate::scores::{ensure_finite, ensure_rows_within, unit_candidates, unit_rows};

/// Cosines this close to a text's best one count as the best too (f64 rounding of equal
/// samples differs in the last bits between rows of a matrix product).
pub const TIE_TOLERANCE: f64 = 1e-12;
/// Histograms are scaled to norm `NORM_MARGIN` < 1: rounding the f64 vector to the f32 values
/// sent moves each by at most 2⁻²⁴ relative, so their norm stays ≤ 1 strictly, as the
/// accounting assumes.
const NORM_MARGIN: f64 = 1.0 - 1.0 / (1u64 << 22) as f64;
/// The memory one chunk of clients' similarities and histograms may take.
const CHUNK_MEMORY_BYTES: usize = 256 << 20;
/// Bytes per (text, sample) similarity of a chunk: the f64 product and its f64/bool
/// comparison temporaries.
const BYTES_PER_SIMILARITY: usize = 24;
/// Bytes per (client, sample) histogram entry of a chunk: f64 counts, scaled counts, f32 sent
/// values and their f64 copy for the sum.
const BYTES_PER_BIN: usize = 28;

/// One client's normalised vote histogram: what it sends in a PE round.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalisedVotes {
    /// One value per synthetic sample, L2 norm ≤ 1 (0 everywhere for a client without texts).
    pub values: Vec<f32>,
    /// How many of the client's texts voted.
    pub votes: usize,
}

/// The normalised vote histogram of a client whose text embeddings are the rows of `texts`
/// (`[n, d]`, n ≥ 0) over the synthetic samples' embeddings `synthetic` (`[M, d]`). Both are
/// normalised to unit rows here: the client does not trust the server to have sent unit
/// vectors.
///
/// Errors when the shapes disagree or any input or output value is not finite.
pub fn client_votes(synthetic: &Tensor, texts: &Tensor) -> Result<NormalisedVotes> {
    let synthetic = unit_candidates(synthetic)?;
    let (bins, dim) = (synthetic.size()[0], synthetic.size()[1]);
    let size = texts.size();
    if size.len() != 2 || size[1] != dim {
        return Err(ClientsError::InvalidArgument {
            name: "client text embeddings",
            message: format!("have shape {size:?}; expected [texts, {dim}]"),
        });
    }
    ensure_finite(texts, "the client text embeddings")?;
    let texts = unit_rows(&texts.f_to_device(synthetic.device())?)?;
    let owners = Tensor::f_zeros([size[0]], (Kind::Int64, synthetic.device()))?;
    let histograms = vote_histograms(&texts, &owners, 1, &synthetic)?;
    debug_assert_eq!(histograms.size(), [1, bins]);
    Ok(NormalisedVotes {
        values: Vec::<f32>::try_from(histograms.f_flatten(0, -1)?.f_to_device(Device::Cpu)?)?,
        votes: size[0] as usize,
    })
}

/// For each row of `texts` (unit, f64, `[n, d]`), the index of its nearest row of `synthetic`
/// (unit, f64, `[M, d]`): the highest cosine, ties within [`TIE_TOLERANCE`] to the lowest
/// index.
fn nearest_samples(texts: &Tensor, synthetic: &Tensor) -> Result<Tensor> {
    let cosines = texts.f_matmul(&synthetic.f_tr()?)?;
    let (best, _) = cosines.f_max_dim(1, true)?;
    let near_best = cosines.f_ge_tensor(&best.f_sub_scalar(TIE_TOLERANCE)?)?;
    // argmax of a 0/1 row is the first 1 (libtorch returns the first maximal index).
    Ok(near_best.f_to_kind(Kind::Uint8)?.f_argmax(1, false)?)
}

/// The normalised vote histograms (`[clients, M]` f32) of `clients` clients whose text rows are
/// `texts` (unit, f64, `[n, d]`), text i belonging to client `owners[i]` (`[n]` i64, each in
/// `0..clients`): the one definition of the client math, used by single clients and the
/// simulated population alike.
fn vote_histograms(
    texts: &Tensor,
    owners: &Tensor,
    clients: i64,
    synthetic: &Tensor,
) -> Result<Tensor> {
    let bins = synthetic.size()[0];
    let device = synthetic.device();
    let counts = Tensor::f_zeros([clients * bins], (Kind::Double, device))?;
    let counts = if texts.size()[0] == 0 {
        counts
    } else {
        let nearest = nearest_samples(texts, synthetic)?;
        let slots = owners.f_mul_scalar(bins)?.f_add(&nearest)?;
        let ones = Tensor::f_ones([texts.size()[0]], (Kind::Double, device))?;
        counts.f_index_add(0, &slots, &ones)?
    }
    .f_view([clients, bins])?;
    let norms = counts.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?;
    // A client without votes has norm 0: it gets the factor 0 (its norm is replaced by 1
    // first, so no 0/0 is formed).
    let voted = norms.f_gt(0.0)?;
    let factor = norms
        .f_where_scalarother(&voted, 1.0)?
        .f_reciprocal()?
        .f_mul_scalar(NORM_MARGIN)?
        .f_where_scalarother(&voted, 0.0)?;
    let values = counts.f_mul(&factor)?.f_to_kind(Kind::Float)?;
    ensure_finite(&values, "a client vote histogram")?;
    ensure_rows_within(&values, 1.0, "client vote histogram")?;
    Ok(values)
}

/// The clients of a PE simulation: every client's unit text embeddings, so that the sampled
/// clients' votes for any synthetic population can be summed in one process, in chunks of
/// bounded memory.
#[derive(Debug)]
pub struct VotingPopulation {
    ids: Vec<String>,
    /// Client i's rows are `offsets[i]..offsets[i + 1]`.
    offsets: Vec<usize>,
    /// `[texts, d]` f32 unit rows on the CPU, client after client.
    embeddings: Tensor,
}

/// The sum of the sampled clients' normalised vote histograms, before any noise.
#[derive(Debug, Clone, PartialEq)]
pub struct VoteSum {
    /// Σ over the sampled clients of their histograms, each rounded to the release grid first,
    /// in grid units (one entry per synthetic sample): exact integers.
    pub units: Vec<i64>,
    /// How many clients contributed.
    pub clients: usize,
    /// How many texts voted in all.
    pub votes: usize,
}

impl VotingPopulation {
    /// The population of `data`'s clients from the embeddings of their training texts:
    /// `train_embeddings` is `[data.train_len(), d]`, its rows in
    /// [`FederatedData::train_texts`] order (client after client).
    pub fn new(data: &FederatedData, train_embeddings: &Tensor) -> Result<VotingPopulation> {
        let embeddings = unit_train_embeddings(data, train_embeddings)?.f_to_kind(Kind::Float)?;
        let offsets = std::iter::once(0)
            .chain(data.clients.iter().scan(0, |end, client| {
                *end += client.train.len();
                Some(*end)
            }))
            .collect();
        Ok(VotingPopulation {
            ids: data.clients.iter().map(|c| c.id.clone()).collect(),
            offsets,
            embeddings,
        })
    }

    /// The number of clients.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no clients.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The embedding length d.
    pub fn dim(&self) -> usize {
        self.embeddings.size()[1] as usize
    }

    /// The sum of the normalised vote histograms of the `sampled` clients (distinct indices)
    /// over `synthetic` (`[M, d]`; the work runs on its device). `progress(done)` is called
    /// with the number of clients processed so far after each chunk. Each client's histogram
    /// is rounded to multiples of `grid` (the server's release grid) before it is added.
    pub fn vote_sum(
        &self,
        synthetic: &Tensor,
        sampled: &[usize],
        grid: f64,
        progress: impl FnMut(usize),
    ) -> Result<VoteSum> {
        self.vote_sum_within(synthetic, sampled, grid, CHUNK_MEMORY_BYTES, progress)
    }

    fn vote_sum_within(
        &self,
        synthetic: &Tensor,
        sampled: &[usize],
        grid: f64,
        budget: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<VoteSum> {
        check_grid(grid, 1.0, "1")?;
        let synthetic = sampled_unit_candidates(
            synthetic,
            "synthetic embeddings",
            self.dim(),
            &self.ids,
            sampled,
        )?;
        let bins = synthetic.size()[0];
        let device = synthetic.device();
        let mut sum = Tensor::f_zeros([bins], (Kind::Double, device))?;
        let (mut clients, mut votes) = (0, 0);
        for members in self.chunks(sampled, bins as usize, budget) {
            let (rows, owners) = self.member_rows(members);
            let texts = self
                .embeddings
                .f_index_select(0, &Tensor::f_from_slice(&rows)?)?
                .f_to_device(device)?
                .f_to_kind(Kind::Double)?;
            let owners = Tensor::f_from_slice(&owners)?.f_to_device(device)?;
            let histograms = vote_histograms(&texts, &owners, members.len() as i64, &synthetic)?;
            // Integers in f64 add exactly below 2^53 (far above any cohort's total).
            let on_grid = histograms.f_div_scalar(grid)?.f_round()?;
            sum = sum.f_add(&on_grid.f_sum_dim_intlist(0, false, Kind::Double)?)?;
            clients += members.len();
            votes += rows.len();
            progress(clients);
        }
        Ok(VoteSum {
            units: grid_units(
                Vec::<f64>::try_from(sum.f_to_device(Device::Cpu)?)?,
                "vote sum",
            )?,
            clients,
            votes,
        })
    }

    /// `sampled` cut into consecutive chunks whose similarities and histograms over `bins`
    /// samples fit `budget` bytes (a chunk holds at least one client).
    fn chunks<'s>(&self, sampled: &'s [usize], bins: usize, budget: usize) -> Vec<&'s [usize]> {
        let mut chunks = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (position, &client) in sampled.iter().enumerate() {
            let cost = (self.text_count(client) * BYTES_PER_SIMILARITY + BYTES_PER_BIN) * bins;
            if position > start && bytes + cost > budget {
                chunks.push(&sampled[start..position]);
                (start, bytes) = (position, 0);
            }
            bytes += cost;
        }
        if start < sampled.len() {
            chunks.push(&sampled[start..]);
        }
        chunks
    }

    /// The embedding rows of `members` and, for each row, its member's position in `members`.
    fn member_rows(&self, members: &[usize]) -> (Vec<i64>, Vec<i64>) {
        let mut rows = Vec::new();
        let mut owners = Vec::new();
        for (position, &client) in members.iter().enumerate() {
            for row in self.offsets[client]..self.offsets[client + 1] {
                rows.push(row as i64);
                owners.push(position as i64);
            }
        }
        (rows, owners)
    }

    fn text_count(&self, client: usize) -> usize {
        self.offsets[client + 1] - self.offsets[client]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::{data_with_text_counts, GRID};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_rows(rng: &mut ChaCha8Rng, rows: usize, dim: usize) -> Vec<Vec<f64>> {
        (0..rows)
            .map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect())
            .collect()
    }

    fn tensor_of(rows: &[Vec<f64>], dim: usize) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, dim as i64])
    }

    /// PE's vote written out: each text's nearest sample by L2 distance between unit vectors
    /// (first index on ties), the counts scaled to norm 1.
    fn direct_votes(synthetic: &[Vec<f64>], texts: &[Vec<f64>]) -> Vec<f64> {
        let unit = |v: &[f64]| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<f64>>()
        };
        let mut counts = vec![0.0; synthetic.len()];
        for text in texts {
            let text = unit(text);
            let distances: Vec<f64> = synthetic
                .iter()
                .map(|s| {
                    let s = unit(s);
                    s.iter().zip(&text).map(|(a, b)| (a - b).powi(2)).sum()
                })
                .collect();
            let best = (0..synthetic.len())
                .min_by(|&a, &b| distances[a].total_cmp(&distances[b]))
                .unwrap();
            counts[best] += 1.0;
        }
        let norm = counts.iter().map(|c| c * c).sum::<f64>().sqrt();
        counts
            .into_iter()
            .map(|c| if norm > 0.0 { c / norm } else { 0.0 })
            .collect()
    }

    fn norm(values: &[f32]) -> f64 {
        values
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn votes_match_a_direct_nearest_neighbour_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (samples, texts) in [(7, 30), (50, 3), (1, 4)] {
            let synthetic = random_rows(&mut rng, samples, 12);
            let private = random_rows(&mut rng, texts, 12);
            let votes = client_votes(&tensor_of(&synthetic, 12), &tensor_of(&private, 12)).unwrap();
            let expected = direct_votes(&synthetic, &private);
            assert_eq!(votes.votes, texts);
            for (got, want) in votes.values.iter().zip(&expected) {
                assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
            }
            let n = norm(&votes.values);
            assert!(n <= 1.0 && n > 1.0 - 1e-6, "norm {n}");
        }
    }

    #[test]
    fn one_text_is_one_unit_vote_and_many_texts_still_norm_one() {
        let synthetic = tensor_of(&[vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, 0.0]], 2);
        let one = client_votes(&synthetic, &tensor_of(&[vec![0.1, 0.9]], 2)).unwrap();
        assert!((f64::from(one.values[1]) - 1.0).abs() < 1e-6);
        assert_eq!((one.values[0], one.values[2]), (0.0, 0.0));
        // Three votes for sample 0, four for sample 2: (3, 0, 4) / 5.
        let mut texts = vec![vec![1.0, 0.2]; 3];
        texts.extend(vec![vec![-1.0, -0.3]; 4]);
        let many = client_votes(&synthetic, &tensor_of(&texts, 2)).unwrap();
        for (got, want) in many.values.iter().zip([0.6, 0.0, 0.8]) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn a_client_without_texts_sends_zeros() {
        let synthetic = tensor_of(&[vec![1.0, 0.0], vec![0.0, 1.0]], 2);
        let none = client_votes(&synthetic, &Tensor::zeros([0, 2], tch::kind::FLOAT_CPU)).unwrap();
        assert_eq!((none.values, none.votes), (vec![0.0, 0.0], 0));
    }

    #[test]
    fn ties_go_to_the_lowest_index_and_scale_does_not_matter() {
        // Samples 1 and 3 are the same direction (3 is 1 scaled by 8, exactly): every vote goes
        // to 1.
        let synthetic = tensor_of(
            &[
                vec![1.0, 0.0, 0.0],
                vec![0.25, 0.75, 0.125],
                vec![0.0, 0.0, 1.0],
                vec![2.0, 6.0, 1.0],
            ],
            3,
        );
        let texts = tensor_of(&[vec![0.2, 1.0, 0.0], vec![0.3, 0.9, 0.15]], 3);
        let votes = client_votes(&synthetic, &texts).unwrap();
        assert!((f64::from(votes.values[1]) - 1.0).abs() < 1e-6, "{votes:?}");
        assert_eq!(votes.values[3], 0.0);
    }

    #[test]
    fn bad_shapes_and_non_finite_values_are_errors() {
        let synthetic = tensor_of(&[vec![1.0, 0.0], vec![0.0, 1.0]], 2);
        let wrong_dim = client_votes(&synthetic, &Tensor::ones([2, 3], tch::kind::FLOAT_CPU));
        assert!(wrong_dim
            .unwrap_err()
            .to_string()
            .contains("expected [texts, 2]"));
        let nan = tensor_of(&[vec![f64::NAN, 1.0]], 2);
        let err = client_votes(&synthetic, &nan).unwrap_err();
        assert!(matches!(err, ClientsError::NonFinite { .. }), "{err}");
        let err = client_votes(&nan, &synthetic).unwrap_err();
        assert!(matches!(err, ClientsError::NonFinite { .. }), "{err}");
    }

    #[test]
    fn chunked_population_sum_equals_the_sum_of_single_clients() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let counts = [1, 3, 2, 5, 1, 4, 2, 2, 3];
        let data = data_with_text_counts(&counts);
        let rows = random_rows(&mut rng, data.train_len(), 8);
        let population = VotingPopulation::new(&data, &tensor_of(&rows, 8)).unwrap();
        let synthetic = random_rows(&mut rng, 6, 8);
        let synthetic_tensor = tensor_of(&synthetic, 8);
        let sampled = [7, 0, 3, 8, 5, 1];

        let mut expected = vec![0.0; 6];
        for &client in &sampled {
            let start: usize = counts[..client].iter().sum();
            let own = &rows[start..start + counts[client]];
            let votes = client_votes(&synthetic_tensor, &tensor_of(own, 8)).unwrap();
            for (e, v) in expected.iter_mut().zip(&votes.values) {
                *e += f64::from(*v);
            }
        }
        // A budget of one client's cost makes chunks of one client; a large one, one chunk.
        for budget in [1, 1200, usize::MAX / 4] {
            let mut reports = Vec::new();
            let total = population
                .vote_sum_within(&synthetic_tensor, &sampled, GRID, budget, |done| {
                    reports.push(done)
                })
                .unwrap();
            assert_eq!((total.clients, total.votes), (6, 2 + 1 + 5 + 3 + 4 + 3));
            for (got, want) in total.units.iter().map(|&u| u as f64 * GRID).zip(&expected) {
                assert!(
                    (got - want).abs() < 1e-6,
                    "budget {budget}: {got} vs {want}"
                );
            }
            assert_eq!(reports.last(), Some(&6));
            if budget == 1 {
                assert_eq!(reports, [1, 2, 3, 4, 5, 6]);
            }
        }
    }

    #[test]
    fn sampled_clients_must_be_distinct_and_in_range() {
        let data = data_with_text_counts(&[1, 2]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let population =
            VotingPopulation::new(&data, &tensor_of(&random_rows(&mut rng, 3, 4), 4)).unwrap();
        let synthetic = tensor_of(&random_rows(&mut rng, 5, 4), 4);
        let err = population
            .vote_sum(&synthetic, &[0, 2], GRID, |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("index 2 is out of range"), "{err}");
        let err = population
            .vote_sum(&synthetic, &[1, 1], GRID, |_| {})
            .unwrap_err();
        assert!(
            err.to_string().contains("`client-01`) is listed twice"),
            "{err}"
        );
        let none = population.vote_sum(&synthetic, &[], GRID, |_| {}).unwrap();
        assert_eq!((none.units, none.clients), (vec![0; 5], 0));
        let wrong = VotingPopulation::new(&data, &tensor_of(&random_rows(&mut rng, 2, 4), 4));
        assert!(wrong.unwrap_err().to_string().contains("expected [3, dim]"));
    }
}

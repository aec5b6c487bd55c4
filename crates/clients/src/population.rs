//! A simulated population of clients, for running POPri rounds in one process.
//!
//! Each client keeps only the sum of its normalised text embeddings (`[d]`) and its text count:
//! its scores for any candidates follow from the sum alone (see [`crate::scores`]), so 10⁵
//! clients cost 10⁵ × d floats. A round's sum of score vectors is computed for the sampled
//! clients in chunks, one `[chunk, d] × [d, N]` product each, so memory stays bounded by a
//! budget whatever the number of clients and candidates.

use tch::{Device, Kind, Tensor};

use crate::data::FederatedData;
use crate::error::{ClientsError, Result};
use crate::scores::{check_clip, ensure_finite, score_rows, unit_candidates, unit_rows};

/// The memory one chunk of client scores may take.
const CHUNK_MEMORY_BYTES: usize = 256 << 20;
/// Bytes per (client, candidate) score while a chunk is processed: the f64 product and the f64
/// temporaries of standardising and clipping (centred, squared, standardised, scaled), the f32
/// vectors sent and their f64 copy for the sum.
const BYTES_PER_SCORE: usize = 56;

/// The clients of a simulation, each reduced to its embedding sum and text count.
#[derive(Debug)]
pub struct SimulatedPopulation {
    ids: Vec<String>,
    text_counts: Vec<usize>,
    /// `[clients, d]` f32 on the CPU: row i is the sum of client i's unit text embeddings.
    sums: Tensor,
}

/// The sum of the sampled clients' clipped score vectors, before any noise.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSum {
    /// Σ over the sampled clients of their score vectors, each rounded to the grid first, in
    /// grid units (one entry per candidate): exact integers, whatever the order of the clients.
    pub units: Vec<i64>,
    /// How many clients contributed.
    pub clients: usize,
    /// How many of them were scaled down by clipping.
    pub clipped: usize,
    /// The mean norm of their vectors before clipping (0 when no client took part).
    pub mean_pre_clip_norm: f64,
}

/// The clients' training embeddings checked (`[data.train_len(), d]`, finite) and normalised to
/// unit rows on the CPU, as a client would use them: the one entry check of every simulated
/// population.
pub(crate) fn unit_train_embeddings(
    data: &FederatedData,
    train_embeddings: &Tensor,
) -> Result<Tensor> {
    let size = train_embeddings.size();
    if size.len() != 2 || size[0] != data.train_len() as i64 || size[1] < 1 {
        return Err(ClientsError::InvalidArgument {
            name: "training embeddings",
            message: format!(
                "have shape {size:?}; expected [{}, dim], one row per training text of \
                 FederatedData::train_texts()",
                data.train_len()
            ),
        });
    }
    ensure_finite(train_embeddings, "the training embeddings")?;
    unit_rows(&train_embeddings.f_to_device(Device::Cpu)?)
}

impl SimulatedPopulation {
    /// Builds the population of `data`'s clients from the embeddings of their training texts:
    /// `train_embeddings` is `[data.train_len(), d]`, its rows in
    /// [`FederatedData::train_texts`] order (client after client). Rows are normalised to unit
    /// length before summing, as a client would use them.
    pub fn new(data: &FederatedData, train_embeddings: &Tensor) -> Result<SimulatedPopulation> {
        let unit = unit_train_embeddings(data, train_embeddings)?;
        let text_counts: Vec<usize> = data.clients.iter().map(|c| c.train.len()).collect();
        let owners: Vec<i64> = text_counts
            .iter()
            .enumerate()
            .flat_map(|(client, &count)| std::iter::repeat_n(client as i64, count))
            .collect();
        // Summed in f64, kept in f32: d floats a client.
        let sums = Tensor::f_zeros(
            [data.num_clients() as i64, unit.size()[1]],
            (Kind::Double, Device::Cpu),
        )?
        .f_index_add(0, &Tensor::f_from_slice(&owners)?, &unit)?
        .f_to_kind(Kind::Float)?;
        Ok(SimulatedPopulation {
            ids: data.clients.iter().map(|c| c.id.clone()).collect(),
            text_counts,
            sums,
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

    /// The id of client `index` (the order of [`FederatedData::clients`]).
    ///
    /// # Panics
    /// When `index` ≥ [`len`](Self::len).
    pub fn client_id(&self, index: usize) -> &str {
        &self.ids[index]
    }

    /// The number of training texts of client `index`.
    ///
    /// # Panics
    /// When `index` ≥ [`len`](Self::len).
    pub fn text_count(&self, index: usize) -> usize {
        self.text_counts[index]
    }

    /// The embedding length d.
    pub fn dim(&self) -> usize {
        self.sums.size()[1] as usize
    }

    /// The sum of the clipped score vectors (L2 ≤ `clip`) of the `sampled` clients (distinct
    /// indices) for `candidates` (`[N, d]`; the work runs on its device). `progress(done)` is
    /// called with the number of clients processed so far after each chunk. Each client's
    /// vector is rounded to multiples of `grid` (the server's release grid, a power of two)
    /// before it is added, as the server does with a remote client's vector.
    pub fn score_sum(
        &self,
        candidates: &Tensor,
        sampled: &[usize],
        clip: f64,
        grid: f64,
        progress: impl FnMut(usize),
    ) -> Result<ScoreSum> {
        let candidate_count = candidates.size().first().copied().unwrap_or(0).max(1) as usize;
        let chunk = clients_per_chunk(candidate_count, CHUNK_MEMORY_BYTES);
        self.score_sum_in_chunks(candidates, sampled, clip, grid, chunk, progress)
    }

    fn score_sum_in_chunks(
        &self,
        candidates: &Tensor,
        sampled: &[usize],
        clip: f64,
        grid: f64,
        chunk: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<ScoreSum> {
        check_clip(clip)?;
        check_grid(grid, clip, "clip")?;
        let candidates = sampled_unit_candidates(
            candidates,
            "candidate embeddings",
            self.dim(),
            &self.ids,
            sampled,
        )?;
        let n = candidates.size()[0];
        let device = candidates.device();
        let mut sum = Tensor::f_zeros([n], (Kind::Double, device))?;
        let mut tally = ScoreSum {
            units: Vec::new(),
            clients: 0,
            clipped: 0,
            mean_pre_clip_norm: 0.0,
        };
        let mut norm_total = 0.0;
        for members in sampled.chunks(chunk.max(1)) {
            let rows: Vec<i64> = members.iter().map(|&i| i as i64).collect();
            let member_sums = self
                .sums
                .f_index_select(0, &Tensor::f_from_slice(&rows)?)?
                .f_to_device(device)?;
            let scored = score_rows(&member_sums, &candidates, clip)?;
            // Integers in f64 add exactly below 2^53 (checked below).
            let on_grid = scored.values.f_div_scalar(grid)?.f_round()?;
            sum = sum.f_add(&on_grid.f_sum_dim_intlist(0, false, Kind::Double)?)?;
            tally.clients += members.len();
            tally.clipped += scored.clipped.iter().filter(|&&c| c).count();
            norm_total += scored.pre_clip_norms.iter().sum::<f64>();
            progress(tally.clients);
        }
        let sum = Vec::<f64>::try_from(sum.f_to_device(Device::Cpu)?)?;
        tally.units = grid_units(sum, "score sum")?;
        if tally.clients > 0 {
            tally.mean_pre_clip_norm = norm_total / tally.clients as f64;
        }
        Ok(tally)
    }
}

/// A sum of grid-rounded vectors, as the exact integers it holds. A non-finite value (a NaN
/// from a client's vector compares false with every bound and would pass any clip) or one at or
/// past 2^53 (where f64 stops counting exactly) is refused instead of being cast, silently, to
/// some integer.
pub(crate) fn grid_units(sum: Vec<f64>, what: &'static str) -> Result<Vec<i64>> {
    if let Some(v) = sum
        .iter()
        .find(|v| !(v.is_finite() && v.abs() < (1u64 << 53) as f64))
    {
        return Err(ClientsError::InvalidArgument {
            name: what,
            message: format!(
                "holds {v}: a client's vector was not finite, or the sum exceeds 2^53 grid units \
                 (sample fewer clients per round)"
            ),
        });
    }
    Ok(sum.into_iter().map(|v| v as i64).collect())
}

/// How many clients' scores for `candidates` candidates fit into `budget` bytes (at least 1).
fn clients_per_chunk(candidates: usize, budget: usize) -> usize {
    (budget / (candidates.max(1) * BYTES_PER_SCORE)).max(1)
}

/// Errors unless the release grid `grid` is in (0, `upper`] (`upper_name` names the bound).
pub(crate) fn check_grid(grid: f64, upper: f64, upper_name: &str) -> Result<()> {
    if grid.is_finite() && grid > 0.0 && grid <= upper {
        Ok(())
    } else {
        Err(ClientsError::InvalidArgument {
            name: "grid",
            message: format!("is {grid}; it must be in (0, {upper_name}]"),
        })
    }
}

/// `candidates` (`what`, in errors) as unit rows, once they have the clients' embedding width
/// `dim` and `sampled` names distinct clients of `ids`.
pub(crate) fn sampled_unit_candidates(
    candidates: &Tensor,
    what: &'static str,
    dim: usize,
    ids: &[String],
    sampled: &[usize],
) -> Result<Tensor> {
    let candidates = unit_candidates(candidates)?;
    let columns = candidates.size()[1];
    if columns != dim as i64 {
        return Err(ClientsError::InvalidArgument {
            name: what,
            message: format!("have {columns} columns, but the clients' embeddings have {dim}"),
        });
    }
    check_sampled(ids, sampled)?;
    Ok(candidates)
}

/// Errors unless every sampled index names one of the clients `ids` and none repeats (a
/// repeated client would count twice, beyond the sensitivity the noise is calibrated for).
pub(crate) fn check_sampled(ids: &[String], sampled: &[usize]) -> Result<()> {
    let mut seen = vec![false; ids.len()];
    for &index in sampled {
        let Some(slot) = seen.get_mut(index) else {
            return Err(ClientsError::InvalidArgument {
                name: "sampled clients",
                message: format!(
                    "index {index} is out of range: there are {} clients",
                    ids.len()
                ),
            });
        };
        if std::mem::replace(slot, true) {
            return Err(ClientsError::InvalidArgument {
                name: "sampled clients",
                message: format!(
                    "client {index} (`{}`) is listed twice; each client contributes at most \
                     once a round",
                    ids[index]
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::scores::client_score_vector;
    use crate::test_support::{data_with_text_counts, GRID};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Tensor {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        Tensor::from_slice(&values).view([rows as i64, cols as i64])
    }

    #[test]
    fn chunked_sum_equals_the_sum_of_single_client_vectors() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let counts = [1, 3, 2, 5, 1, 4, 2, 2, 3];
        let data = data_with_text_counts(&counts);
        // Rows of arbitrary length: the population normalises them itself.
        let embeddings = random_matrix(&mut rng, data.train_len(), 8);
        let population = SimulatedPopulation::new(&data, &embeddings).unwrap();
        let candidates = random_matrix(&mut rng, 40, 8);
        let sampled = [7, 0, 3, 8, 5, 1, 2];
        let clip = 2.0;

        // Each sampled client's vector on its own, from its own unit embeddings.
        let in_f64 = embeddings.to_kind(Kind::Double);
        let unit = &in_f64 / in_f64.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        let starts: Vec<usize> = counts
            .iter()
            .scan(0, |start, &n| {
                *start += n;
                Some(*start - n)
            })
            .collect();
        let mut expected = vec![0.0f64; 40];
        for &client in &sampled {
            let own = unit.narrow(0, starts[client] as i64, counts[client] as i64);
            let own_sum = own
                .sum_dim_intlist(0, false, Kind::Double)
                .to_kind(Kind::Float);
            let vector = client_score_vector(&candidates, &own_sum, clip).unwrap();
            for (e, v) in expected.iter_mut().zip(&vector.values) {
                *e += f64::from(*v);
            }
        }

        for chunk in [1, 3, 100] {
            let mut reports = Vec::new();
            let total = population
                .score_sum_in_chunks(&candidates, &sampled, clip, GRID, chunk, |done| {
                    reports.push(done)
                })
                .unwrap();
            assert_eq!((total.clients, total.clipped), (7, 7));
            assert!((total.mean_pre_clip_norm - 40f64.sqrt()).abs() < 1e-9);
            // Each of the 7 vectors moved by at most half a grid step per coordinate.
            for (&got, want) in total.units.iter().zip(&expected) {
                let got = got as f64 * GRID;
                assert!((got - want).abs() < 1e-6, "chunk {chunk}: {got} vs {want}");
            }
            assert_eq!(reports.last(), Some(&7));
            assert_eq!(reports.len(), 7usize.div_ceil(chunk));
        }
    }

    #[test]
    fn grid_sums_that_are_not_finite_or_not_exact_are_refused() {
        assert_eq!(grid_units(vec![3.0, -2.0], "sum").unwrap(), vec![3, -2]);
        for bad in [f64::NAN, f64::INFINITY, (1u64 << 53) as f64] {
            assert!(grid_units(vec![1.0, bad], "sum").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_population_keeps_ids_counts_and_order() {
        let data = data_with_text_counts(&[2, 1, 3]);
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let population = SimulatedPopulation::new(&data, &random_matrix(&mut rng, 6, 4)).unwrap();
        assert_eq!((population.len(), population.dim()), (3, 4));
        assert_eq!(population.client_id(2), "client-02");
        assert_eq!(population.text_count(0), 2);
        let err = SimulatedPopulation::new(&data, &random_matrix(&mut rng, 5, 4)).unwrap_err();
        assert!(err.to_string().contains("expected [6, dim]"), "{err}");
    }

    #[test]
    fn sampled_indices_must_be_distinct_clients() {
        let data = data_with_text_counts(&[1, 1, 1]);
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let population = SimulatedPopulation::new(&data, &random_matrix(&mut rng, 3, 4)).unwrap();
        let candidates = random_matrix(&mut rng, 5, 4);
        let err = population
            .score_sum(&candidates, &[0, 3], 1.0, GRID, |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("index 3 is out of range"), "{err}");
        let err = population
            .score_sum(&candidates, &[1, 0, 1], 1.0, GRID, |_| {})
            .unwrap_err();
        assert!(
            err.to_string().contains("`client-01`) is listed twice"),
            "{err}"
        );
        let none = population
            .score_sum(&candidates, &[], 1.0, GRID, |_| {})
            .unwrap();
        assert_eq!((none.units, none.clients), (vec![0; 5], 0));
    }

    #[test]
    fn chunks_fit_the_memory_budget() {
        // 10⁵ clients × 18,000 candidates: a chunk of scores stays within 256 MiB.
        let chunk = clients_per_chunk(18_000, CHUNK_MEMORY_BYTES);
        assert!(chunk >= 100 && chunk * 18_000 * BYTES_PER_SCORE <= CHUNK_MEMORY_BYTES);
        assert_eq!(clients_per_chunk(usize::MAX / 2, CHUNK_MEMORY_BYTES), 1);
    }
}

//! Which clients take part in a round, and how the ledger must account for that choice.
//!
//! The amplification by subsampling that the ledger charges holds only if nobody can tell which
//! rounds held a given client: the cohorts are drawn from the operating system's CSPRNG, never
//! from `run.seed` (which is public: it is in every config and run directory). A round's cohort
//! is drawn once; a resumed run takes the open round's cohort from private state
//! (`RunDir::open_cohort`, the server's SQLite store), it does not draw again. Only a test seed
//! (`privacy.sampling_seed`) makes the cohorts reproducible, and the run then states that it is
//! not differentially private.

use privacy_accounting::Sampling;
use rand::distributions::{Bernoulli, Distribution};
use rand::rngs::OsRng;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DpError, Result};

/// The client-sampling scheme of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ClientSampling {
    /// Every client in every round.
    Full,
    /// Each client independently with probability `q`: the cohort size varies and may be 0.
    Poisson {
        /// Inclusion probability in (0, 1].
        q: f64,
    },
    /// Exactly `m` clients, uniformly without replacement.
    Cohort {
        /// Cohort size (≤ population).
        m: u64,
    },
}

/// Draws each round's cohort: from the OS's CSPRNG, or from a test seed.
#[derive(Debug, Clone)]
pub struct ClientSampler {
    scheme: ClientSampling,
    test_seed: Option<u64>,
}

/// Domain of the client-sampling streams (see [`derived_rng`]).
const SAMPLING_DOMAIN: &str = "fedsyn/server/client-sampling";

impl ClientSampler {
    /// A sampler for `scheme`: secret cohorts from the OS when `test_seed` is `None` (every
    /// real run); reproducible, NOT private cohorts from `privacy.sampling_seed` otherwise.
    pub fn new(scheme: ClientSampling, test_seed: Option<u64>) -> Result<Self> {
        match scheme {
            ClientSampling::Poisson { q } if !(q.is_finite() && q > 0.0 && q <= 1.0) => {
                Err(DpError::argument("q", q, "a sampling rate in (0, 1]"))
            }
            ClientSampling::Cohort { m: 0 } => Err(DpError::argument(
                "cohort",
                0,
                "a cohort of at least 1 client",
            )),
            _ => Ok(Self { scheme, test_seed }),
        }
    }

    /// The scheme.
    pub fn scheme(&self) -> ClientSampling {
        self.scheme
    }

    /// True when the cohorts come from a test seed (and so are not secret).
    pub fn is_test_seeded(&self) -> bool {
        self.test_seed.is_some()
    }

    /// The indices (ascending) of the clients of `round` out of `population` clients. Call it
    /// once per round and persist the result privately: with OS randomness a second call draws
    /// another cohort.
    pub fn sample(&self, round: u64, population: usize) -> Result<Vec<usize>> {
        self.check_population(population)?;
        let mut rng = match self.test_seed {
            Some(seed) => derived_rng(seed, SAMPLING_DOMAIN, round),
            None => ChaCha20Rng::from_rng(OsRng).map_err(|e| DpError::Rng(e.to_string()))?,
        };
        Ok(match self.scheme {
            ClientSampling::Full => (0..population).collect(),
            ClientSampling::Poisson { q } => {
                let coin = Bernoulli::new(q)
                    .map_err(|_| DpError::argument("q", q, "a sampling rate in (0, 1]"))?;
                (0..population).filter(|_| coin.sample(&mut rng)).collect()
            }
            ClientSampling::Cohort { m } => {
                let mut cohort =
                    rand::seq::index::sample(&mut rng, population, m as usize).into_vec();
                cohort.sort_unstable();
                cohort
            }
        })
    }

    /// What the ledger records for one round over `population` clients: exactly the sampling
    /// performed (a fixed cohort is a fixed cohort, never "Poisson").
    pub fn accounting(&self, population: usize) -> Result<Sampling> {
        self.check_population(population)?;
        let sampling = match self.scheme {
            ClientSampling::Full => Sampling::Full,
            ClientSampling::Poisson { q } => Sampling::Poisson { q },
            ClientSampling::Cohort { m } => Sampling::FixedCohort {
                m,
                n: population as u64,
            },
        };
        sampling.validate()?;
        Ok(sampling)
    }

    fn check_population(&self, population: usize) -> Result<()> {
        if population == 0 {
            return Err(DpError::argument(
                "population",
                0,
                "at least one client (check the training data and data.max_clients)",
            ));
        }
        if let ClientSampling::Cohort { m } = self.scheme {
            if m > population as u64 {
                return Err(DpError::argument(
                    "cohort",
                    m,
                    format!(
                        "a cohort of at most the {population} clients there are (lower \
                         privacy.cohort)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A ChaCha20 generator for stream `index` of `domain` under `run_seed`.
///
/// The key is drawn from a generator seeded with `run_seed` on a stream named by `domain`, so
/// different purposes (client sampling, prompts, shuffling) never share random numbers even with
/// the same seed and index; `index` (a round, say) selects ChaCha's 64-bit stream, so streams of
/// different rounds are independent and each can be recreated on its own.
pub fn derived_rng(run_seed: u64, domain: &str, index: u64) -> ChaCha20Rng {
    let mut keyer = ChaCha20Rng::seed_from_u64(run_seed);
    keyer.set_stream(fnv1a(domain.as_bytes()));
    let mut rng = ChaCha20Rng::from_seed(keyer.gen());
    rng.set_stream(index);
    rng
}

/// FNV-1a, 64 bit: a fixed, documented hash (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_takes_everyone() {
        let sampler = ClientSampler::new(ClientSampling::Full, None).unwrap();
        assert_eq!(sampler.sample(3, 4).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(sampler.accounting(4).unwrap(), Sampling::Full);
    }

    #[test]
    fn cohorts_are_secret_without_a_test_seed() {
        // Two samplers configured identically (same run, same config) draw different cohorts:
        // nothing public determines who is in a round.
        let a = ClientSampler::new(ClientSampling::Cohort { m: 10 }, None).unwrap();
        let b = ClientSampler::new(ClientSampling::Cohort { m: 10 }, None).unwrap();
        assert!(!a.is_test_seeded());
        let (x, y) = (a.sample(0, 1000).unwrap(), b.sample(0, 1000).unwrap());
        assert_ne!(x, y);
        // Nor does the same sampler repeat itself for the same round.
        assert_ne!(a.sample(0, 1000).unwrap(), x);
        let poisson = ClientSampler::new(ClientSampling::Poisson { q: 0.5 }, None).unwrap();
        assert_ne!(
            poisson.sample(3, 200).unwrap(),
            poisson.sample(3, 200).unwrap()
        );
    }

    #[test]
    fn test_seeded_rounds_are_reproducible_and_independent() {
        let sampler = ClientSampler::new(ClientSampling::Cohort { m: 10 }, Some(42)).unwrap();
        let again = ClientSampler::new(ClientSampling::Cohort { m: 10 }, Some(42)).unwrap();
        // Round 7 alone (as after a resume) equals round 7 after rounds 0..7.
        let late = again.sample(7, 100).unwrap();
        let rounds: Vec<Vec<usize>> = (0..8).map(|t| sampler.sample(t, 100).unwrap()).collect();
        assert_eq!(rounds[7], late);
        assert_ne!(rounds[0], rounds[1]);
        let other_seed = ClientSampler::new(ClientSampling::Cohort { m: 10 }, Some(43)).unwrap();
        assert_ne!(other_seed.sample(7, 100).unwrap(), late);
    }

    #[test]
    fn cohorts_have_exactly_m_distinct_clients() {
        let sampler = ClientSampler::new(ClientSampling::Cohort { m: 30 }, None).unwrap();
        let mut counts = vec![0u32; 60];
        for round in 0..400 {
            let cohort = sampler.sample(round, 60).unwrap();
            assert_eq!(cohort.len(), 30);
            assert!(
                cohort.windows(2).all(|w| w[0] < w[1]),
                "sorted and distinct"
            );
            for i in cohort {
                counts[i] += 1;
            }
        }
        // Each client joins with probability 1/2: 400 rounds give 200 ± 10 (sd); allow 5 sd.
        assert!(
            counts.iter().all(|&c| (150..=250).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(
            sampler.accounting(60).unwrap(),
            Sampling::FixedCohort { m: 30, n: 60 }
        );
    }

    #[test]
    fn poisson_cohorts_vary_with_mean_qn() {
        let sampler = ClientSampler::new(ClientSampling::Poisson { q: 0.1 }, None).unwrap();
        let sizes: Vec<usize> = (0..500)
            .map(|t| sampler.sample(t, 200).unwrap().len())
            .collect();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        // E = 20, sd of one size ≈ 4.24, of the mean of 500 ≈ 0.19: allow 5 sd.
        assert!((mean - 20.0).abs() < 1.0, "{mean}");
        assert!(sizes.iter().min() < sizes.iter().max(), "sizes vary");
        // A tiny rate gives empty cohorts, which is allowed.
        let rare = ClientSampler::new(ClientSampling::Poisson { q: 1e-6 }, Some(9)).unwrap();
        assert!(rare.sample(0, 10).unwrap().is_empty());
        assert_eq!(
            sampler.accounting(200).unwrap(),
            Sampling::Poisson { q: 0.1 }
        );
    }

    #[test]
    fn impossible_requests_are_errors() {
        assert!(ClientSampler::new(ClientSampling::Poisson { q: 0.0 }, None).is_err());
        assert!(ClientSampler::new(ClientSampling::Cohort { m: 0 }, None).is_err());
        let sampler = ClientSampler::new(ClientSampling::Cohort { m: 5 }, None).unwrap();
        assert!(sampler.sample(0, 4).is_err());
        assert!(sampler.accounting(4).is_err());
        assert!(ClientSampler::new(ClientSampling::Full, None)
            .unwrap()
            .sample(0, 0)
            .is_err());
    }

    #[test]
    fn domains_separate_streams() {
        let a: u64 = derived_rng(1, "a", 0).gen();
        let b: u64 = derived_rng(1, "b", 0).gen();
        let a_again: u64 = derived_rng(1, "a", 0).gen();
        let a_next: u64 = derived_rng(1, "a", 1).gen();
        assert_eq!(a, a_again);
        assert_ne!(a, b);
        assert_ne!(a, a_next);
    }
}

//! How clients are sampled each round, and the Poisson-subsampled Gaussian that bounds it.

use serde::{Deserialize, Serialize};

use crate::error::{check_noise_multiplier, check_sampling_rate, require, Result};

/// The client-sampling scheme of one round. Poisson and fixed-size cohorts are different
/// mechanisms; a fixed cohort is never silently accounted as Poisson.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampling {
    /// Every client is included independently with probability `q` (variable cohort size).
    Poisson {
        /// Inclusion probability in (0, 1].
        q: f64,
    },
    /// A uniformly random cohort of exactly `m` out of the `n` clients, without replacement.
    FixedCohort {
        /// Cohort size.
        m: u64,
        /// Population size.
        n: u64,
    },
    /// Every client takes part in every round (q = 1, no amplification).
    Full,
}

/// A Poisson-subsampled Gaussian sum query: rate `q`, noise multiplier `sigma` (noise standard
/// deviation divided by the L2 sensitivity of one client). Every sampling scheme is accounted
/// through one of these.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoissonGaussian {
    /// Poisson sampling rate in (0, 1].
    pub q: f64,
    /// Noise multiplier σ > 0.
    pub sigma: f64,
}

impl PoissonGaussian {
    /// Validates and builds the mechanism.
    pub fn new(q: f64, sigma: f64) -> Result<Self> {
        let mechanism = Self { q, sigma };
        mechanism.validate()?;
        Ok(mechanism)
    }

    /// Fails unless `q` is a sampling rate in (0, 1] and `sigma` a finite noise multiplier > 0.
    /// The fields are public, so the accountants check every mechanism they are given.
    pub fn validate(&self) -> Result<()> {
        check_sampling_rate(self.q)?;
        check_noise_multiplier(self.sigma)
    }
}

impl Sampling {
    /// Checks the scheme's parameters.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Sampling::Poisson { q } => check_sampling_rate(q),
            Sampling::FixedCohort { m, n } => require(
                m != 0 && n != 0 && m <= n,
                "cohort",
                format_args!("{m} of {n}"),
                "a fixed cohort needs 1 <= m <= n clients",
            ),
            Sampling::Full => Ok(()),
        }
    }

    /// The Poisson-subsampled Gaussian whose privacy curve upper-bounds one round of a
    /// Gaussian sum query with noise multiplier `sigma` under this sampling, for add/remove-one-
    /// client adjacency.
    ///
    /// Fixed cohort of m ≤ n: adding a client x to a population of n' clients changes the
    /// cohort, with probability γ = m/(n'+1) ≤ m/n, by *replacing* one member with x, so the sum
    /// moves by at most 2C (C = clip bound). Conditioning on the cohort and the replaced member
    /// and using the joint convexity of the hockey-stick and exponentiated Rényi divergences
    /// (Balle, Barthe & Gaboardi 2018) bounds the round by a Poisson-subsampled Gaussian with rate
    /// m/n and sensitivity 2C, i.e. noise multiplier σ/2. This is conservative, not tight.
    /// This holds for m = n too: the neighbouring population has n + 1 clients, so the cohort
    /// of n is still drawn from more clients than it holds. Full participation, where every
    /// client of whatever population takes part, is [`Sampling::Full`].
    pub fn bound(&self, sigma: f64) -> Result<PoissonGaussian> {
        self.validate()?;
        check_noise_multiplier(sigma)?;
        Ok(match *self {
            Sampling::Poisson { q } => PoissonGaussian { q, sigma },
            Sampling::FixedCohort { m, n } => PoissonGaussian {
                q: m as f64 / n as f64,
                sigma: sigma / 2.0,
            },
            Sampling::Full => PoissonGaussian { q: 1.0, sigma },
        })
    }

    /// One sentence a privacy statement can carry about this scheme and how it was accounted.
    pub fn describe(&self) -> String {
        match *self {
            Sampling::Poisson { q } => format!(
                "Poisson sampling: each client joins each round independently with probability {q}"
            ),
            Sampling::FixedCohort { m, n } => format!(
                "fixed cohorts of {m} of {n} clients drawn without replacement, accounted \
                 conservatively as Poisson sampling at rate {:.6} with half the noise multiplier \
                 (replace-one sensitivity 2C)",
                m as f64 / n as f64
            ),
            Sampling::Full => "full participation: every client in every round".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_cohort_is_bounded_conservatively() {
        let b = Sampling::FixedCohort { m: 10, n: 1000 }.bound(2.0).unwrap();
        assert_eq!(
            b,
            PoissonGaussian {
                q: 0.01,
                sigma: 1.0
            }
        );
        // A cohort of all n is still a fixed cohort: with one client more, one member can be
        // replaced. Only `Full` (everyone, whatever the population) keeps σ.
        let everyone_of_n = Sampling::FixedCohort { m: 5, n: 5 }.bound(2.0).unwrap();
        assert_eq!(everyone_of_n, PoissonGaussian { q: 1.0, sigma: 1.0 });
        let full = Sampling::Full.bound(2.0).unwrap();
        assert_eq!(full, PoissonGaussian { q: 1.0, sigma: 2.0 });
    }

    #[test]
    fn invalid_schemes_are_refused() {
        assert!(Sampling::FixedCohort { m: 0, n: 5 }.validate().is_err());
        assert!(Sampling::FixedCohort { m: 6, n: 5 }.validate().is_err());
        assert!(Sampling::Poisson { q: 0.0 }.validate().is_err());
        assert!(Sampling::Poisson { q: 1.5 }.validate().is_err());
        assert!(Sampling::Full.bound(0.0).is_err());
    }
}

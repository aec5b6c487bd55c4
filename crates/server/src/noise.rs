//! The Gaussian noise of the DP aggregate, from a cryptographically secure generator.
//!
//! By default the generator is ChaCha20 keyed from the operating system's CSPRNG, and its key
//! never leaves the process: anyone who knew it could regenerate the noise of every released
//! round and subtract it. Such a source therefore has no [`NoiseSource::state`]; a resumed run
//! draws a fresh key from the OS, which is exactly as private. Only a source built from an
//! explicit test seed (`privacy.noise_seed`, for reproducible tests) exposes its state, so that
//! a resumed test run continues the very same stream.

use rand::rngs::OsRng;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};
use crate::sampling::derived_rng;

/// Domain of the test-seeded noise stream (see [`derived_rng`]).
const NOISE_DOMAIN: &str = "fedsyn/server/dp-noise";

/// Where a stream's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The operating system's CSPRNG: secret, never saved.
    Os,
    /// An explicit test seed: reproducible, NOT private.
    TestSeed(u64),
}

/// A source of Gaussian noise on a ChaCha20 stream.
#[derive(Debug, Clone)]
pub struct NoiseSource {
    rng: ChaCha20Rng,
    origin: Origin,
}

/// The resumable state of a test-seeded [`NoiseSource`]: its seed and how far the stream has
/// advanced (in 32-bit words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseState {
    /// The test seed (`privacy.noise_seed`).
    pub test_seed: u64,
    /// ChaCha20 word position of the next draw.
    pub word_pos: u128,
}

impl NoiseSource {
    /// A source keyed from the operating system's CSPRNG (the default for every real run).
    pub fn from_os() -> Result<Self> {
        let rng = ChaCha20Rng::from_rng(OsRng).map_err(|e| {
            ServerError::io(
                "the operating system's random number generator",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(Self {
            rng,
            origin: Origin::Os,
        })
    }

    /// A reproducible source for tests. Its noise is predictable by anyone who knows the seed,
    /// so a run that uses it is not differentially private.
    pub fn from_test_seed(seed: u64) -> Self {
        Self {
            rng: derived_rng(seed, NOISE_DOMAIN, 0),
            origin: Origin::TestSeed(seed),
        }
    }

    /// `privacy.noise_seed`: a test seed when given, otherwise the OS.
    pub fn from_config(noise_seed: Option<u64>) -> Result<Self> {
        match noise_seed {
            Some(seed) => Ok(Self::from_test_seed(seed)),
            None => Self::from_os(),
        }
    }

    /// True when the stream is reproducible from a test seed (and so not private).
    pub fn is_test_seeded(&self) -> bool {
        matches!(self.origin, Origin::TestSeed(_))
    }

    /// Adds independent N(0, std²) noise to every value.
    pub fn add_gaussian(&mut self, values: &mut [f64], std: f64) -> Result<()> {
        if !(std.is_finite() && std > 0.0) {
            return Err(ServerError::argument(
                "noise std",
                std,
                "a finite standard deviation > 0 (sigma * clip)",
            ));
        }
        for value in values {
            let z: f64 = StandardNormal.sample(&mut self.rng);
            *value += std * z;
        }
        Ok(())
    }

    /// The state to save in a checkpoint: `Some` only for a test-seeded source. An OS-keyed
    /// source has no state to save (see the module documentation); resume it with
    /// [`NoiseSource::from_os`].
    pub fn state(&self) -> Option<NoiseState> {
        match self.origin {
            Origin::Os => None,
            Origin::TestSeed(test_seed) => Some(NoiseState {
                test_seed,
                word_pos: self.rng.get_word_pos(),
            }),
        }
    }

    /// The test-seeded source `state` was taken from, at the same position.
    pub fn restore(state: &NoiseState) -> Self {
        let mut source = Self::from_test_seed(state.test_seed);
        source.rng.set_word_pos(state.word_pos);
        source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn noise_has_the_requested_std_and_zero_mean() {
        // 400k draws: the std estimate has relative sd ≈ 0.11 %, the mean sd ≈ 0.16 % of std.
        for (seed, std) in [(1, 1.0), (2, 19.3), (3, 0.05)] {
            let mut source = NoiseSource::from_test_seed(seed);
            let mut values = vec![0.0; 400_000];
            source.add_gaussian(&mut values, std).unwrap();
            let (mean, empirical) = moments(&values);
            assert!((empirical / std - 1.0).abs() < 0.01, "{std}: {empirical}");
            assert!(mean.abs() < 0.01 * std, "{std}: mean {mean}");
        }
    }

    #[test]
    fn noise_is_added_not_assigned() {
        let mut source = NoiseSource::from_test_seed(4);
        let mut values = vec![1e6; 1000];
        source.add_gaussian(&mut values, 1.0).unwrap();
        let (mean, _) = moments(&values);
        assert!((mean - 1e6).abs() < 0.2, "{mean}");
    }

    #[test]
    fn os_sources_differ_and_keep_no_state() {
        let mut a = NoiseSource::from_os().unwrap();
        let mut b = NoiseSource::from_os().unwrap();
        let (mut x, mut y) = (vec![0.0; 8], vec![0.0; 8]);
        a.add_gaussian(&mut x, 1.0).unwrap();
        b.add_gaussian(&mut y, 1.0).unwrap();
        assert_ne!(x, y);
        assert!(a.state().is_none() && !a.is_test_seeded());
    }

    #[test]
    fn restore_continues_the_same_stream() {
        let mut whole = NoiseSource::from_test_seed(7);
        let mut first = vec![0.0; 33];
        whole.add_gaussian(&mut first, 2.0).unwrap();
        let state = whole.state().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let mut resumed = NoiseSource::restore(&serde_json::from_str(&json).unwrap());
        let (mut expected, mut got) = (vec![0.0; 50], vec![0.0; 50]);
        whole.add_gaussian(&mut expected, 2.0).unwrap();
        resumed.add_gaussian(&mut got, 2.0).unwrap();
        assert_eq!(expected, got);
        // The same seed gives the same noise, another seed other noise.
        let (mut again, mut other) = (vec![0.0; 33], vec![0.0; 33]);
        NoiseSource::from_test_seed(7)
            .add_gaussian(&mut again, 2.0)
            .unwrap();
        NoiseSource::from_test_seed(8)
            .add_gaussian(&mut other, 2.0)
            .unwrap();
        assert_eq!(again, first);
        assert_ne!(other, first);
    }

    #[test]
    fn invalid_std_is_refused() {
        let mut source = NoiseSource::from_test_seed(0);
        for std in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(source.add_gaussian(&mut [0.0], std).is_err(), "{std}");
        }
    }
}

//! The DP release of a sum: a Gaussian mechanism whose ledger event and noise come from one
//! value, a charge that must be durable before any noise exists, and noise sampled exactly on a
//! fixed grid from a cryptographically secure generator.
//!
//! **Order, by construction.** A [`PlannedRelease`] yields the ledger event; only
//! [`PlannedRelease::commit`], which runs the caller's durable write of that event first, makes
//! a [`Charge`]; and [`NoiseSource::release`] draws noise only against a charge, once per
//! component. So no noisy value can exist whose cost is not in the ledger, and the noise
//! standard deviation cannot disagree with the event (both come from one
//! [`GaussianMechanism`]).
//!
//! **Exact noise (Mironov 2012).** Adding an f64 Gaussian to an f64 sum can leave the low-order
//! bits of the result a function of the un-noised value. Here every client vector is rounded to
//! the grid γ = 2^⌊log₂ C⌋ · 2^−[`GRID_BITS`] ([`GaussianMechanism::to_grid`]), the sum is an
//! exact integer vector ([`GridSum`]), integer noise is drawn from the discrete Gaussian
//! N_ℤ(0, s²) with s = σ·Δ/γ (Canonne, Kamath & Steinke 2020, the exact sampler of ISRG's `prio`
//! crate), and each released value is (units + noise)·γ: an integer below 2^53 times a power of
//! two, which f64 holds exactly. The released bits are therefore a function of the noisy integer
//! alone.
//!
//! **The grid's effect on sensitivity.** A client vector x with ‖x‖₂ ≤ C, rounded coordinate-wise
//! to the grid, moves each of its d coordinates by at most γ/2, so its rounded norm is at most
//! Δ = C + γ·√d/2 ([`GaussianMechanism::sensitivity`]). The noise is scaled to Δ (s = σ·Δ/γ in
//! grid units), so the ledger's noise multiplier stays σ and its event records Δ as the clip
//! bound. By CKS20 (Thm. 15) the d-dimensional discrete Gaussian with ℓ₂ sensitivity Δ/γ and scale
//! s satisfies ½ε²-concentrated DP with ε² = (Δ/γ)²/s² + τ, τ = 10·Σ_{k<d} e^(−2π²s²·k/(k+1))
//! ≤ 10·d·e^(−π²s²). Here s ≥ σ·2^GRID_BITS ≥ 2^14 (σ ≥ 1/64 is enforced), so τ < 10^(−10⁹),
//! far below f64 resolution, and the release is accounted as the continuous Gaussian of
//! multiplier σ: RDP and PLD, with the subsampling of the run (`docs/privacy.md`).
//!
//! **Keys.** By default the generator is ChaCha20 keyed from the operating system's CSPRNG, and
//! its key never leaves the process: anyone who knew it could regenerate the noise of every
//! released round and subtract it. Such a source has no [`NoiseSource::state`]; a resumed run
//! draws a fresh key from the OS, which is exactly as private. Only a source built from an
//! explicit test seed (`privacy.noise_seed`) exposes its state, so that a resumed test run
//! continues the very same stream — and such a run is not differentially private.

use chacha20::ChaCha20Rng;
use privacy_accounting::{LedgerEvent, Sampling};
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use rand_core_010::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{DpError, Result};
use crate::sampling::derived_rng;

/// Domain of the test-seeded noise stream (see [`derived_rng`]).
const NOISE_DOMAIN: &str = "fedsyn/server/dp-noise";

/// Bits of the grid below the clip bound's leading power of two: C/γ ∈ [2^20, 2^21).
pub const GRID_BITS: i32 = 20;

/// The smallest noise multiplier a release accepts (keeps s ≥ 2^10 grid units, see the module
/// documentation); far below any useful σ.
const MIN_SIGMA: f64 = 1.0 / 64.0;

/// Relative slack on the clip bound of a vector that was clipped or normalised in floating point
/// (its measured norm may exceed C by a few ulps times √d): the sensitivity covers it.
const NORM_SLACK: f64 = 1.0 / (1u64 << 30) as f64;

/// Released integers must stay below 2^53 so that (units + noise)·γ is exact in f64.
const MAX_EXACT: i64 = 1 << 53;

/// One Gaussian mechanism on a sum of per-client vectors of L2 norm ≤ `clip` in `dim`
/// coordinates, with noise multiplier `sigma`: the single source of the ledger event's σ and
/// sensitivity and of the noise standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianMechanism {
    sigma: f64,
    clip: f64,
    dim: usize,
    grid: f64,
}

impl GaussianMechanism {
    /// The mechanism of noise multiplier `sigma` on sums of vectors with ‖x‖₂ ≤ `clip` in `dim`
    /// coordinates.
    pub fn new(sigma: f64, clip: f64, dim: usize) -> Result<Self> {
        if !(sigma.is_finite() && sigma >= MIN_SIGMA) {
            return Err(DpError::argument(
                "noise multiplier",
                sigma,
                format!("a finite noise multiplier >= {MIN_SIGMA}"),
            ));
        }
        if !(clip.is_finite() && clip > 0.0 && clip < 1e12) {
            return Err(DpError::argument(
                "clip",
                clip,
                "a finite clip bound in (0, 1e12)",
            ));
        }
        if dim == 0 {
            return Err(DpError::argument(
                "released dimension",
                0,
                "at least one released coordinate",
            ));
        }
        let grid = grid_for(clip);
        Ok(Self {
            sigma,
            clip,
            dim,
            grid,
        })
    }

    /// σ, the noise multiplier the ledger records.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The clip bound C of one client's vector.
    pub fn clip(&self) -> f64 {
        self.clip
    }

    /// Coordinates per release.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// γ, the grid every client vector is rounded to (a power of two).
    pub fn grid(&self) -> f64 {
        self.grid
    }

    /// Δ = C·(1 + 2^−30) + γ·√d/2: the L2 norm bound of one client's grid-rounded vector (the
    /// first term allows for the floating-point error of a norm measured at C), the
    /// sensitivity the noise is scaled to.
    pub fn sensitivity(&self) -> f64 {
        self.clip * (1.0 + NORM_SLACK) + self.grid * (self.dim as f64).sqrt() / 2.0
    }

    /// σ·Δ, the standard deviation of the noise on each released coordinate.
    pub fn noise_std(&self) -> f64 {
        self.sigma * self.sensitivity()
    }

    /// One client's clipped vector on the grid (round to nearest). Errors on a vector that is
    /// not finite, has the wrong length, or is longer than C (a bug in the clipping: the noise
    /// would not cover it).
    pub fn to_grid(&self, values: &[f64]) -> Result<Vec<i64>> {
        if values.len() != self.dim {
            return Err(DpError::argument(
                "client vector",
                format!("{} values", values.len()),
                format!("{} values, one per released coordinate", self.dim),
            ));
        }
        let norm = l2_norm(values);
        if !(norm.is_finite() && norm <= self.clip * (1.0 + NORM_SLACK)) {
            return Err(DpError::argument(
                "client vector norm",
                norm,
                format!(
                    "a finite L2 norm <= the clip bound {} (clip first)",
                    self.clip
                ),
            ));
        }
        Ok(values
            .iter()
            .map(|v| (v / self.grid).round() as i64)
            .collect())
    }
}

/// γ = 2^⌊log₂ C⌋ · 2^−[`GRID_BITS`]: the grid of every mechanism with clip bound `clip`.
pub fn grid_for(clip: f64) -> f64 {
    2f64.powi(clip.log2().floor() as i32 - GRID_BITS)
}

/// The L2 norm, accumulated in f64.
pub fn l2_norm(values: &[f64]) -> f64 {
    values.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Scales `values` so that their measured L2 norm is at most `clip`: the one clip function of
/// the server side (a remote client's vector is clipped again here). A vector over the bound is
/// aimed at `clip·(1 − 4ε)`; should the rounding of the scaling leave its measured norm above C
/// (long vectors), it is scaled again with a margin twice as wide, until it is not, so no
/// vector the ledger charges as C ever measures more. Non-finite values are refused: a NaN
/// compares false with every bound and would pass unclipped. Returns the norm before clipping.
pub fn clip_in_place(values: &mut [f64], clip: f64) -> Result<f64> {
    if !(clip.is_finite() && clip > 0.0) {
        return Err(DpError::argument("clip", clip, "a finite clip bound > 0"));
    }
    let norm = l2_norm(values);
    if !norm.is_finite() {
        return Err(DpError::argument(
            "vector",
            "(non-finite values)",
            "finite values",
        ));
    }
    let (mut measured, mut margin) = (norm, 4.0 * f64::EPSILON);
    while measured > clip {
        let scale = clip * (1.0 - margin) / measured;
        values.iter_mut().for_each(|v| *v *= scale);
        measured = l2_norm(values);
        margin *= 2.0;
    }
    Ok(norm)
}

/// A sum of per-client vectors, each on the grid of one [`GaussianMechanism`], in grid units:
/// exact integer arithmetic, independent of the order of the clients.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSum {
    grid: f64,
    units: Vec<i64>,
}

impl GridSum {
    /// The empty sum of `mechanism`'s vectors.
    pub fn zeros(mechanism: &GaussianMechanism) -> Self {
        Self {
            grid: mechanism.grid,
            units: vec![0; mechanism.dim],
        }
    }

    /// A sum already computed in `mechanism`'s grid units (e.g. by the clients' code, which
    /// rounds each client's vector to the same grid before adding).
    pub fn from_units(mechanism: &GaussianMechanism, units: Vec<i64>) -> Result<Self> {
        if units.len() != mechanism.dim {
            return Err(DpError::argument(
                "sum",
                format!("{} values", units.len()),
                format!("{} values, one per released coordinate", mechanism.dim),
            ));
        }
        Ok(Self {
            grid: mechanism.grid,
            units,
        })
    }

    /// Adds one client's clipped vector (rounded to the grid).
    pub fn add(&mut self, mechanism: &GaussianMechanism, values: &[f64]) -> Result<()> {
        if mechanism.grid != self.grid {
            return Err(DpError::argument(
                "grid",
                mechanism.grid,
                format!("the grid of the sum, {}", self.grid),
            ));
        }
        let client = mechanism.to_grid(values)?;
        for (total, unit) in self.units.iter_mut().zip(client) {
            *total = total
                .checked_add(unit)
                .ok_or_else(|| DpError::argument("sum", "(overflow)", "fewer clients per round"))?;
        }
        Ok(())
    }

    /// The coordinates.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// True when there are no coordinates.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The un-noised sum in value units. NOT private: only simulations use it, for diagnostics
    /// whose names end in `_nonprivate`.
    pub fn values_nonprivate(&self) -> Vec<f64> {
        self.units.iter().map(|&u| u as f64 * self.grid).collect()
    }
}

/// The releases of one round, planned: their mechanisms and the ledger event that covers them
/// all, derived from the mechanisms so that the two cannot disagree.
#[derive(Debug, Clone)]
pub struct PlannedRelease {
    components: Vec<GaussianMechanism>,
    event: LedgerEvent,
}

impl PlannedRelease {
    /// One noisy sum under `sampling`: the event charges σ with sensitivity Δ.
    pub fn single(
        mechanism: GaussianMechanism,
        sampling: Sampling,
        round: u64,
        label: &str,
    ) -> Self {
        Self::joint(vec![mechanism], sampling, round, label)
    }

    /// Several noisy sums of the same clients released together (DP-FedAvg's update sum and its
    /// clip-count): a Gaussian mechanism on the concatenated vector, whose noise multiplier is
    /// (Σ σᵢ⁻²)^−½ (each component's noise is σᵢ times its own sensitivity).
    pub fn joint(
        components: Vec<GaussianMechanism>,
        sampling: Sampling,
        round: u64,
        label: &str,
    ) -> Self {
        let sigma = components
            .iter()
            .map(|m| m.sigma.powi(-2))
            .sum::<f64>()
            .powf(-0.5);
        // The event's clip bound is the first (main) component's sensitivity: each component's
        // noise is scaled to its own, so the joint multiplier above is all the accounting needs.
        let mut event = LedgerEvent::gaussian(sigma, sampling, 1)
            .with_round(round)
            .with_label(label);
        if let Some(main) = components.first() {
            event = event.with_clip_bound(main.sensitivity());
        }
        Self { components, event }
    }

    /// The ledger event of these releases.
    pub fn event(&self) -> &LedgerEvent {
        &self.event
    }

    /// Component `index`'s mechanism.
    pub fn mechanism(&self, index: usize) -> Option<&GaussianMechanism> {
        self.components.get(index)
    }

    /// Makes the cost durable with `persist` (which must write the event to the ledger on
    /// disk, or confirm that an earlier process already did), and only then returns the charge
    /// that noise can be drawn against.
    pub fn commit<E>(
        self,
        persist: impl FnOnce(&LedgerEvent) -> std::result::Result<(), E>,
    ) -> std::result::Result<Charge, E> {
        persist(&self.event)?;
        Ok(Charge {
            components: self.components.into_iter().map(Some).collect(),
        })
    }
}

/// Proof that a round's cost is in the ledger; each of its components can be released once.
/// Only [`PlannedRelease::commit`] makes one.
#[derive(Debug)]
pub struct Charge {
    components: Vec<Option<GaussianMechanism>>,
}

/// Where a stream's key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The operating system's CSPRNG: secret, never saved.
    Os,
    /// An explicit test seed: reproducible, NOT private.
    TestSeed(u64),
}

/// A source of exact discrete Gaussian noise on a ChaCha20 stream.
#[derive(Debug)]
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
        let mut key = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut key)
            .map_err(|e| DpError::Rng(e.to_string()))?;
        Ok(Self {
            rng: ChaCha20Rng::from_seed(key),
            origin: Origin::Os,
        })
    }

    /// A reproducible source for tests. Its noise is predictable by anyone who knows the seed,
    /// so a run that uses it is not differentially private.
    pub fn from_test_seed(seed: u64) -> Self {
        let key: [u8; 32] = derived_rng(seed, NOISE_DOMAIN, 0).gen();
        Self {
            rng: ChaCha20Rng::from_seed(key),
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

    /// The stream of a resumed run: the saved state of a test-seeded stream, or else a fresh
    /// one (`privacy.noise_seed`'s for a new test run, the OS's otherwise; an OS-keyed stream is
    /// never saved, and a fresh OS key is exactly as private).
    pub fn resume(saved: Option<&NoiseState>, noise_seed: Option<u64>) -> Result<Self> {
        match saved {
            Some(state) => Ok(Self::restore(state)),
            None => Self::from_config(noise_seed),
        }
    }

    /// True when the stream is reproducible from a test seed (and so not private).
    pub fn is_test_seeded(&self) -> bool {
        matches!(self.origin, Origin::TestSeed(_))
    }

    /// Releases component `component` of `charge` on `sum`: each coordinate is
    /// (sum + discrete Gaussian noise of σ·Δ/γ grid units)·γ, exact in f64. A component can be
    /// released once.
    pub fn release(
        &mut self,
        charge: &mut Charge,
        component: usize,
        sum: &GridSum,
    ) -> Result<Vec<f64>> {
        let mechanism = charge
            .components
            .get_mut(component)
            .and_then(Option::take)
            .ok_or_else(|| {
                DpError::internal(format!(
                    "component {component} of a charge released twice, or never planned"
                ))
            })?;
        if sum.grid != mechanism.grid || sum.len() != mechanism.dim {
            return Err(DpError::argument(
                "released sum",
                format!("{} values on grid {}", sum.len(), sum.grid),
                format!(
                    "{} values on the mechanism's grid {}",
                    mechanism.dim, mechanism.grid
                ),
            ));
        }
        let sampler = discrete_gaussian::sampler(mechanism.noise_std() / mechanism.grid)?;
        let mut released = Vec::with_capacity(sum.len());
        for &units in &sum.units {
            let noisy = units
                .checked_add(discrete_gaussian::draw(&sampler, &mut self.rng)?)
                .filter(|v| v.abs() < MAX_EXACT)
                .ok_or_else(|| {
                    DpError::argument("noisy sum", "(beyond 2^53 grid units)", "a smaller sum")
                })?;
            released.push(noisy as f64 * mechanism.grid);
        }
        Ok(released)
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

/// The discrete Gaussian sampler (prio's, after CKS20), behind two functions.
mod discrete_gaussian {
    use prio::dp::distributions::DiscreteGaussian;
    use prio::dp::Rational;
    use rand_010::distr::Distribution;

    use crate::error::{DpError, Result};

    /// Denominator of the rational scale handed to the sampler: the scale is rounded UP to a
    /// multiple of 2^−20, so the noise is never smaller than the accounted σ·Δ.
    const SCALE_DENOMINATOR: u128 = 1 << 20;

    /// The sampler of N_ℤ(0, scale²) (`scale` in grid units, ≥ 1).
    pub fn sampler(scale: f64) -> Result<DiscreteGaussian> {
        let numerator = (scale * SCALE_DENOMINATOR as f64).ceil();
        if !(numerator.is_finite() && numerator >= SCALE_DENOMINATOR as f64 && numerator < 1e30) {
            return Err(DpError::argument(
                "noise scale",
                scale,
                "between 1 and 1e24 grid units",
            ));
        }
        let std = Rational::from_unsigned(numerator as u128, SCALE_DENOMINATOR)
            .map_err(|e| DpError::argument("noise scale", scale, e.to_string()))?;
        DiscreteGaussian::new(std)
            .map_err(|e| DpError::argument("noise scale", scale, e.to_string()))
    }

    /// One draw.
    pub fn draw(sampler: &DiscreteGaussian, rng: &mut chacha20::ChaCha20Rng) -> Result<i64> {
        let value = sampler.sample(rng);
        i64::try_from(&value)
            .map_err(|_| DpError::argument("noise draw", value.to_string(), "a draw within i64"))
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

    /// Commits `plan` to an in-memory ledger and releases its first component.
    fn release_once(source: &mut NoiseSource, plan: PlannedRelease, sum: &GridSum) -> Vec<f64> {
        let mut ledger = Vec::new();
        let mut charge = plan
            .commit(|event| {
                ledger.push(event.clone());
                Ok::<(), DpError>(())
            })
            .unwrap();
        assert_eq!(ledger.len(), 1);
        source.release(&mut charge, 0, sum).unwrap()
    }

    #[test]
    fn the_sampler_follows_the_discrete_gaussian_pmf() {
        // Chi-square goodness of fit of 200k draws at scale 3 against
        // P(x) ∝ exp(−x²/(2·3²)) over the integers, bins |x| ≤ 9 and one tail bin per side.
        let scale = 3.0;
        let sampler = discrete_gaussian::sampler(scale).unwrap();
        let mut rng = NoiseSource::from_test_seed(17).rng;
        let draws = 200_000;
        let mut counts = vec![0u64; 21];
        for _ in 0..draws {
            let x = discrete_gaussian::draw(&sampler, &mut rng).unwrap();
            counts[(x.clamp(-10, 10) + 10) as usize] += 1;
        }
        let weight = |x: i64| (-(x * x) as f64 / (2.0 * scale * scale)).exp();
        let total: f64 = (-200..=200).map(weight).sum();
        let probability = |bin: i64| -> f64 {
            match bin {
                -10 => (-200..=-10).map(weight).sum::<f64>() / total,
                10 => (10..=200).map(weight).sum::<f64>() / total,
                x => weight(x) / total,
            }
        };
        let chi_square: f64 = (-10..=10)
            .map(|bin| {
                let expected = probability(bin) * draws as f64;
                (counts[(bin + 10) as usize] as f64 - expected).powi(2) / expected
            })
            .sum();
        // 20 degrees of freedom: the 99.9th percentile is 45.3.
        assert!(chi_square < 45.3, "chi² = {chi_square}, counts {counts:?}");
    }

    #[test]
    fn released_noise_has_the_mechanism_std_and_zero_mean() {
        // 100k coordinates: the std estimate has relative sd ≈ 0.22 % (1 % is 4.5 sd).
        for (seed, sigma, clip) in [(1, 1.0, 1.0), (2, 19.3, 0.5), (3, 0.05, 3.0)] {
            let mechanism = GaussianMechanism::new(sigma, clip, 100_000).unwrap();
            let plan = PlannedRelease::single(mechanism, Sampling::Full, 0, "test");
            let released = release_once(
                &mut NoiseSource::from_test_seed(seed),
                plan,
                &GridSum::zeros(&mechanism),
            );
            let (mean, std) = moments(&released);
            let want = mechanism.noise_std();
            assert!((std / want - 1.0).abs() < 0.01, "{sigma}: {std} vs {want}");
            assert!(mean.abs() < 0.01 * want, "{sigma}: mean {mean}");
        }
    }

    #[test]
    fn released_values_are_exact_multiples_of_the_grid() {
        // The Mironov attack needs low-order bits that depend on the clean value: every released
        // value must be (integer)·γ exactly, whatever the clean sum was.
        let mechanism = GaussianMechanism::new(1.0, 1.0, 3).unwrap();
        let mut sum = GridSum::zeros(&mechanism);
        sum.add(&mechanism, &[0.1, -0.3, 1.0 / 3.0]).unwrap();
        sum.add(&mechanism, &[0.7, 0.2, -0.1]).unwrap();
        let plan = PlannedRelease::single(mechanism, Sampling::Full, 0, "test");
        for value in release_once(&mut NoiseSource::from_test_seed(5), plan, &sum) {
            let units = value / mechanism.grid();
            assert_eq!(units, units.round(), "{value}");
        }
    }

    #[test]
    fn the_grid_and_the_sensitivity_follow_the_clip() {
        let mechanism = GaussianMechanism::new(2.0, 1.5, 10_000).unwrap();
        assert_eq!(mechanism.grid(), 2f64.powi(-20));
        let delta = 1.5 * (1.0 + NORM_SLACK) + 2f64.powi(-20) * 100.0 / 2.0;
        assert_eq!(mechanism.sensitivity(), delta);
        assert_eq!(mechanism.noise_std(), 2.0 * delta);
        let plan = PlannedRelease::single(mechanism, Sampling::Poisson { q: 0.1 }, 4, "x");
        assert_eq!(plan.event().noise_multiplier, 2.0);
        assert_eq!(plan.event().clip_bound, Some(delta));
        assert_eq!(plan.event().round, Some(4));
        // A rounded client vector stays within Δ.
        let x = vec![1.5 / 100.0; 10_000];
        let units = mechanism.to_grid(&x).unwrap();
        let norm = units
            .iter()
            .map(|&u| (u as f64 * mechanism.grid()).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(norm <= delta, "{norm}");
        // Vectors over C, of the wrong length or non-finite are refused.
        assert!(mechanism.to_grid(&vec![1.0; 10_000]).is_err());
        assert!(mechanism.to_grid(&[0.0]).is_err());
        assert!(GaussianMechanism::new(0.0, 1.0, 1).is_err());
        assert!(GaussianMechanism::new(1.0, f64::NAN, 1).is_err());
    }

    #[test]
    fn the_joint_event_combines_the_components() {
        let update = GaussianMechanism::new(1.0, 1.0, 4).unwrap();
        let count = GaussianMechanism::new(2.0, 0.5, 1).unwrap();
        let plan = PlannedRelease::joint(vec![update, count], Sampling::Full, 0, "x");
        let want = (1.0f64 + 0.25).powf(-0.5);
        assert!((plan.event().noise_multiplier - want).abs() < 1e-15);
    }

    #[test]
    fn no_charge_no_noise_and_one_release_per_component() {
        let mechanism = GaussianMechanism::new(1.0, 1.0, 2).unwrap();
        let plan = PlannedRelease::single(mechanism, Sampling::Full, 0, "test");
        // A failed durable write gives no charge.
        assert!(plan
            .clone()
            .commit(|_| Err(DpError::argument("disk", "full", "space")))
            .is_err());
        let mut charge = plan.commit(|_| Ok::<(), DpError>(())).unwrap();
        let mut source = NoiseSource::from_test_seed(1);
        let sum = GridSum::zeros(&mechanism);
        source.release(&mut charge, 0, &sum).unwrap();
        assert!(source.release(&mut charge, 0, &sum).is_err());
        assert!(source.release(&mut charge, 1, &sum).is_err());
    }

    #[test]
    fn clipping_never_exceeds_the_bound() {
        for clip in [1e-3, 0.3, 1.0, 7.77] {
            let mut v: Vec<f64> = (0..1000).map(|i| (i as f64).sin() * 3.0).collect();
            let before = clip_in_place(&mut v, clip).unwrap();
            assert!(before > clip && l2_norm(&v) <= clip, "{clip}");
            let mut small = vec![clip / 10.0; 4];
            clip_in_place(&mut small, clip).unwrap();
            assert_eq!(small, vec![clip / 10.0; 4]);
        }
        assert!(clip_in_place(&mut [f64::NAN], 1.0).is_err());
    }

    #[test]
    fn os_sources_differ_and_keep_no_state() {
        let mechanism = GaussianMechanism::new(1.0, 1.0, 8).unwrap();
        let sum = GridSum::zeros(&mechanism);
        let plan = PlannedRelease::single(mechanism, Sampling::Full, 0, "test");
        let mut a = NoiseSource::from_os().unwrap();
        let mut b = NoiseSource::from_os().unwrap();
        let x = release_once(&mut a, plan.clone(), &sum);
        let y = release_once(&mut b, plan, &sum);
        assert_ne!(x, y);
        assert!(a.state().is_none() && !a.is_test_seeded());
    }

    #[test]
    fn restore_continues_the_same_stream() {
        let mechanism = GaussianMechanism::new(2.0, 1.0, 40).unwrap();
        let sum = GridSum::zeros(&mechanism);
        let plan = PlannedRelease::single(mechanism, Sampling::Full, 0, "test");
        let mut whole = NoiseSource::from_test_seed(7);
        let first = release_once(&mut whole, plan.clone(), &sum);
        let state = whole.state().unwrap();
        let json = serde_json::to_string(&state).unwrap();
        let mut resumed = NoiseSource::restore(&serde_json::from_str(&json).unwrap());
        let expected = release_once(&mut whole, plan.clone(), &sum);
        let got = release_once(&mut resumed, plan.clone(), &sum);
        assert_eq!(expected, got);
        // The same seed gives the same noise, another seed other noise.
        let again = release_once(&mut NoiseSource::from_test_seed(7), plan.clone(), &sum);
        let other = release_once(&mut NoiseSource::from_test_seed(8), plan, &sum);
        assert_eq!(again, first);
        assert_ne!(other, first);
    }
}

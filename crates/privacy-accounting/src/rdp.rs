//! Rényi differential privacy (RDP) of the Poisson-subsampled Gaussian mechanism, and the RDP
//! accountant.
//!
//! One release samples every client with probability q and adds N(0, σ²) noise to a sum of
//! contributions clipped to norm 1. Its RDP at order α > 1 is ln(A_α)/(α − 1) with
//!
//! ```text
//! A_α = E_{z ~ N(0, σ²)} [ ((1 − q) + q·exp((2z − 1)/(2σ²)))^α ]
//! ```
//!
//! (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
//! Mechanism"). For integer α the binomial theorem turns A_α into a finite sum; for fractional
//! α the paper (Sec. 3.3) splits the integral at z₀ = σ²·ln(1/q − 1) + ½ and expands each half
//! into a convergent binomial series whose terms are Gaussian tail probabilities.
//!
//! Everything is computed in log space, and — unlike a plain transcription — as A_α − 1
//! rather than A_α wherever that matters: with small q or large σ, A_α is 1 + (something far
//! below 1e-16), so ln(A_α) would be all rounding error, while the RDP of a single step still
//! has to be accurate before it is multiplied by up to 10⁸ steps.
//!
//! Many orders are evaluated together ([`rdp_poisson_gaussian_orders`]): the Gaussian factors
//! of the series depend on the term index or on α − i but not on α itself, so each is computed
//! once per mechanism and shared (Opacus's 151 default orders take about 0.09 ms).
//!
//! RDP is converted to (ε, δ) exactly as Opacus's `get_privacy_spent` does (Balle et al. 2020,
//! Theorem 21): ε = min over α of RDP(α) − (ln δ + ln α)/(α − 1) + ln((α − 1)/α).

use std::f64::consts::{LN_2, SQRT_2};

use libm::erfc;

use crate::analytic_gaussian::{log_erfcx, log_expm1};
use crate::error::{check_delta, check_epsilon, require, Result};
use crate::{Accountant, AccountantKind, EpsilonEstimate, PoissonGaussian};

/// ln 3.
const LN_3: f64 = 1.098_612_288_668_109_8;
/// Relative accuracy the fractional-order series is summed to.
const SERIES_TOLERANCE: f64 = 1e-13;
/// Below this fraction of the largest term added so far, a term cannot change an `f64` sum:
/// the series is converged at machine precision even if the sum itself is tiny (cancellation).
const ROUNDING_FLOOR: f64 = 1e-17;
/// ln [`SERIES_TOLERANCE`].
const LN_SERIES_TOLERANCE: f64 = -29.933_606_208_922_594;
/// ln [`ROUNDING_FLOOR`].
const LN_ROUNDING_FLOOR: f64 = -39.143_946_580_898_78;
/// ln 1e-24: addends this much below the largest one are dropped by [`ScaledSum`].
const LN_NEGLIGIBLE_ADDEND: f64 = -55.262_042_231_857_1;
/// Levels of repeated averaging (Euler's transform) applied to the alternating tail of the
/// fractional series. The tail decays only polynomially (like i^−(α+2)) when q is close to ½
/// or σ is large; averaging the last partial sums reaches [`SERIES_TOLERANCE`] within a few
/// tens of terms.
const EULER_LEVELS: usize = 8;
/// Binomial weights C(EULER_LEVELS, m) of the averaged estimate (they sum to 2^EULER_LEVELS).
const EULER_WEIGHTS: [f64; EULER_LEVELS + 1] = [1.0, 8.0, 28.0, 56.0, 70.0, 56.0, 28.0, 8.0, 1.0];
/// Consecutive stable averaged estimates required before the series is declared converged.
const EULER_STABLE_STEPS: usize = 2;
/// Terms of the fractional series allowed beyond ⌊α⌋. A survey over q ∈ [1e-7, 1),
/// σ ∈ [0.3, 1e4] and α ∈ (1, 1e4] needed at most 77 terms past ⌊α⌋; the cap only guards
/// against non-termination, and hitting it yields RDP = +∞ (a conservative answer: that order
/// is then unusable rather than wrong).
const MAX_TERMS_BEYOND_ORDER: usize = 100_000;

/// Opacus's default Rényi orders: 1.1, 1.2, …, 10.9, then 12, 13, …, 63.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((12..64).map(f64::from))
        .collect()
}

/// RDP at `order` α > 1 of ONE release of the Poisson-subsampled Gaussian mechanism with
/// sampling rate `q` and noise multiplier `sigma`.
///
/// q = 1 gives exactly α/(2σ²); q = 0 gives 0. Arguments outside the domain (q ∉ [0, 1],
/// σ ≤ 0, α ≤ 1, NaN) give NaN: [`RdpAccountant`] validates them before calling. Integer
/// orders cost O(α) terms; fractional orders O(α) plus a short tail. For many orders at once,
/// [`rdp_poisson_gaussian_orders`] shares work between them.
pub fn rdp_poisson_gaussian(q: f64, sigma: f64, order: f64) -> f64 {
    rdp_poisson_gaussian_orders(q, sigma, &[order])[0]
}

/// [`rdp_poisson_gaussian`] at each of `orders`, with the same values. The Gaussian tail
/// factors of the series depend only on the term index (lower half) or on α − i (upper half),
/// not on α itself, so they are computed once and shared by all orders: over Opacus's 151
/// default orders this replaces about 4 000 erfc evaluations by a few hundred.
pub fn rdp_poisson_gaussian_orders(q: f64, sigma: f64, orders: &[f64]) -> Vec<f64> {
    let valid_mechanism = (0.0..=1.0).contains(&q) && sigma > 0.0;
    let mut shared = (valid_mechanism && q > 0.0 && q < 1.0 && sigma < f64::INFINITY)
        .then(|| SharedTerms::new(q, sigma));
    orders
        .iter()
        .map(|&order| {
            if !(valid_mechanism && order > 1.0) {
                return f64::NAN;
            }
            if q == 0.0 || sigma == f64::INFINITY {
                return 0.0;
            }
            if q == 1.0 {
                return order / (2.0 * sigma * sigma);
            }
            if order == f64::INFINITY {
                return f64::INFINITY;
            }
            match shared.as_mut() {
                Some(terms) => terms.log_a(order) / (order - 1.0),
                None => f64::NAN,
            }
        })
        .collect()
}

/// Quantities of the RDP series that depend on (q, σ) and a term index but not on the order,
/// computed on first use and shared by every order evaluated for the same mechanism.
struct SharedTerms {
    ln_q: f64,
    ln_1mq: f64,
    inv_two_var: f64,
    sqrt2_sigma: f64,
    /// z₀ = σ²·ln((1−q)/q) + ½, where the two halves of the fractional series meet.
    z0: f64,
    /// ln((1−q)/q)·k − z₀²/(2σ²) − ln 2 is ln of the tail-form constant over a half's weight
    /// (without C(α, i)) for that half's exponent k; this is the k-independent part.
    log_tail_offset: f64,
    /// Which half's binomial weights are subtracted to turn A_α into A_α − 1 (q ≤ ½: lower).
    subtract_lower: bool,
    /// By i: ln(s0ᵢ/wᵢ) of [`FractionalSeries`] (it depends on i only).
    lower: Vec<Option<TiltedMass>>,
    /// By the exact fractional part of α: ln(s1ᵢ/vᵢ), which depends on j = α − i only.
    upper: Vec<UpperHalf>,
    /// By i: ln(e^{(i²−i)/(2σ²)} − 1), the Gaussian factor of the integer-order sum.
    gaussian_excess: Vec<f64>,
    /// By k: ln k!.
    ln_factorial: Vec<f64>,
}

/// ln of a half's tilted Gaussian mass over its binomial weight, and ln|e^that − 1| (the term
/// left after subtracting the weight; NaN for the half whose weights are not subtracted).
#[derive(Debug, Clone, Copy)]
struct TiltedMass {
    log_ratio: f64,
    log_abs_expm1: f64,
}

/// The upper-half factors of the orders sharing one fractional part f (bit for bit): j = α − i
/// = f + m with m = ⌊α⌋ − i, and α − i is computed exactly as f + m would be (one rounding of
/// the same real number), so orders with the same f can share values.
struct UpperHalf {
    fraction_bits: u64,
    fraction: f64,
    /// Entries for m = 0, 1, 2, … (filled in order: every order walks m from ⌊α⌋ down, so it
    /// uses all of them).
    non_negative: Vec<UpperTerm>,
    /// Entries for m = −1, −2, … (filled in order).
    negative: Vec<UpperTerm>,
}

/// What the i-th term of a fractional order needs from j = α − i: the upper half's tilted
/// mass, and Γ(j + 1) (sign and ln of its magnitude) for C(α, i) = Γ(α+1)/(i!·Γ(j+1)).
#[derive(Debug, Clone, Copy)]
struct UpperTerm {
    mass: TiltedMass,
    gamma_sign: f64,
    ln_abs_gamma: f64,
}

impl SharedTerms {
    fn new(q: f64, sigma: f64) -> Self {
        let ln_q = q.ln();
        let ln_1mq = (-q).ln_1p();
        let var = sigma * sigma;
        let inv_two_var = 1.0 / (2.0 * var);
        let z0 = var * (ln_1mq - ln_q) + 0.5;
        Self {
            ln_q,
            ln_1mq,
            inv_two_var,
            sqrt2_sigma: SQRT_2 * sigma,
            z0,
            log_tail_offset: -z0 * z0 * inv_two_var - LN_2,
            subtract_lower: q <= 0.5,
            lower: Vec::with_capacity(TABLE_CAPACITY),
            upper: Vec::with_capacity(TABLE_CAPACITY),
            gaussian_excess: Vec::with_capacity(TABLE_CAPACITY),
            ln_factorial: Vec::with_capacity(TABLE_CAPACITY),
        }
    }

    /// ln A_α for finite α > 1 (0 < q < 1).
    fn log_a(&mut self, order: f64) -> f64 {
        if order.fract() == 0.0 {
            softplus(self.log_a_minus_one_integer(order))
        } else {
            // A series that did not converge leaves this order unusable (RDP = +∞), never wrong.
            self.fractional_sum_counting_terms(order)
                .0
                .unwrap_or(f64::INFINITY)
        }
    }

    /// ln(A_α − 1) for integer α ≥ 2.
    ///
    /// A_α = Σᵢ C(α,i) qⁱ (1−q)^(α−i) e^{(i²−i)/(2σ²)}, and the binomial weights alone sum to 1,
    /// so A_α − 1 = Σ_{i≥2} C(α,i) qⁱ (1−q)^(α−i) (e^{(i²−i)/(2σ²)} − 1): a sum of positive
    /// terms, accurate to a few ulps however close A_α is to 1.
    fn log_a_minus_one_integer(&mut self, order: f64) -> f64 {
        let mut sum = ScaledSum::default();
        let top = order as usize;
        let ln_factorial_order = self.ln_factorial(top);
        // From the top down: the largest terms (largest i, for all but huge σ) come first, so
        // the many negligible ones below them are skipped without an exponential.
        for index in (2..=top).rev() {
            let i = index as f64;
            let log_binomial =
                ln_factorial_order - self.ln_factorial(index) - self.ln_factorial(top - index);
            let log_weight = log_binomial + i * self.ln_q + (order - i) * self.ln_1mq;
            sum.add(1.0, log_weight + self.gaussian_excess(index));
        }
        sum.ln()
    }

    /// ln k! = ln Γ(k + 1), cached by k (each entry straight from ln Γ, so no rounding
    /// accumulates along the table).
    fn ln_factorial(&mut self, k: usize) -> f64 {
        while self.ln_factorial.len() <= k {
            let next = self.ln_factorial.len() as f64;
            self.ln_factorial.push(ln_gamma(next + 1.0));
        }
        self.ln_factorial[k]
    }

    /// ln(e^{(i²−i)/(2σ²)} − 1), cached by i.
    fn gaussian_excess(&mut self, index: usize) -> f64 {
        while self.gaussian_excess.len() <= index {
            let i = self.gaussian_excess.len() as f64;
            self.gaussian_excess
                .push(log_expm1((i * i - i) * self.inv_two_var));
        }
        self.gaussian_excess[index]
    }

    /// ln(e^{(k²−k)/(2σ²)} Φ(t/σ)) over a half's weight: k is the half's exponent and t its
    /// signed distance to z₀. In the Gaussian tail (t < 0) it is formed from the cancelled tail
    /// form, ln((1−q)^α e^{−z₀²/(2σ²)}/2 · erfcx(−t/(σ√2))) − ln(weight), whose α-dependence
    /// cancels against the weight's.
    fn tilted_mass(&self, k: f64, t: f64, subtracted: bool) -> TiltedMass {
        let log_ratio = if t >= 0.0 {
            let upper = -0.5 * erfc(t / self.sqrt2_sigma);
            (k * k - k) * self.inv_two_var + upper.ln_1p()
        } else {
            k * (self.ln_1mq - self.ln_q) + self.log_tail_offset + log_erfcx(-t / self.sqrt2_sigma)
        };
        TiltedMass {
            log_ratio,
            // Only the half whose weights are subtracted uses it.
            log_abs_expm1: if subtracted {
                log_abs_expm1(log_ratio)
            } else {
                f64::NAN
            },
        }
    }

    /// ln(s0ᵢ/wᵢ): exponent i, distance z₀ − i.
    fn lower_mass(&mut self, index: usize) -> TiltedMass {
        if self.lower.len() <= index {
            self.lower.resize(index + 1, None);
        }
        if let Some(mass) = self.lower[index] {
            return mass;
        }
        let i = index as f64;
        let mass = self.tilted_mass(i, self.z0 - i, self.subtract_lower);
        self.lower[index] = Some(mass);
        mass
    }

    /// The group of orders with fractional part `fraction`, created on first use.
    fn upper_group(&mut self, fraction: f64) -> usize {
        let bits = fraction.to_bits();
        match self.upper.iter().position(|g| g.fraction_bits == bits) {
            Some(group) => group,
            None => {
                self.upper.push(UpperHalf {
                    fraction_bits: bits,
                    fraction,
                    non_negative: Vec::with_capacity(TABLE_CAPACITY),
                    negative: Vec::with_capacity(TABLE_CAPACITY),
                });
                self.upper.len() - 1
            }
        }
    }

    /// ln(s1ᵢ/vᵢ) (exponent j, distance j − z₀) and Γ(j + 1) for j = f + m, f being the
    /// fractional part of `group`.
    fn upper_term(&mut self, group: usize, m: i64) -> UpperTerm {
        let (slot, non_negative) = if m >= 0 {
            (m as usize, true)
        } else {
            ((-m - 1) as usize, false)
        };
        loop {
            let half = &self.upper[group];
            let entries = if non_negative {
                &half.non_negative
            } else {
                &half.negative
            };
            if let Some(term) = entries.get(slot) {
                return *term;
            }
            let next = entries.len();
            let term = self.next_upper_term(group, non_negative, next);
            let half = &mut self.upper[group];
            if non_negative {
                half.non_negative.push(term);
            } else {
                half.negative.push(term);
            }
        }
    }

    /// The entry after the last one filled on one side of `group`: slot `slot` stands for
    /// m = slot (non-negative side) or m = −slot − 1. Γ(j + 1) follows from its neighbour by
    /// Γ(x + 1) = x·Γ(x) (one logarithm instead of ln Γ), re-anchored on ln Γ every
    /// [`GAMMA_RESYNC`] entries so rounding cannot accumulate.
    fn next_upper_term(&self, group: usize, non_negative: bool, slot: usize) -> UpperTerm {
        let half = &self.upper[group];
        let m = if non_negative {
            slot as f64
        } else {
            -(slot as f64) - 1.0
        };
        // j = f + m is computed exactly as α − i is (see [`UpperHalf`]).
        let j = half.fraction + m;
        let previous = if non_negative {
            slot.checked_sub(1).map(|s| half.non_negative[s])
        } else if slot == 0 {
            half.non_negative.first().copied()
        } else {
            Some(half.negative[slot - 1])
        };
        let (gamma_sign, ln_abs_gamma) = match previous {
            Some(previous) if !slot.is_multiple_of(GAMMA_RESYNC) => {
                if non_negative {
                    // Γ(j + 1) = j·Γ(j), j > 0.
                    (previous.gamma_sign, previous.ln_abs_gamma + j.ln())
                } else {
                    // Γ(j + 1) = Γ(j + 2)/(j + 1).
                    let x = j + 1.0;
                    (
                        previous.gamma_sign * x.signum(),
                        previous.ln_abs_gamma - x.abs().ln(),
                    )
                }
            }
            _ => {
                let (ln_abs, sign) = libm::lgamma_r(j + 1.0);
                (f64::from(sign), ln_abs)
            }
        };
        UpperTerm {
            mass: self.tilted_mass(j, j - self.z0, !self.subtract_lower),
            gamma_sign,
            ln_abs_gamma,
        }
    }
}

/// Initial capacity of the shared tables: enough for Opacus's default orders (up to 63 plus a
/// tail of a few tens of terms) without reallocating; larger orders grow them as needed.
const TABLE_CAPACITY: usize = 128;

/// How many entries of an [`UpperHalf`] side follow from their neighbour before Γ is recomputed
/// from ln Γ.
const GAMMA_RESYNC: usize = 32;

impl SharedTerms {
    /// The fractional-order series of Mironov, Talwar & Zhang (2019, Sec. 3.3).
    ///
    /// With z₀ = σ²·L + ½, L = ln((1−q)/q), and j = α − i, the i-th terms of the two halves are
    ///
    /// ```text
    /// s0ᵢ = wᵢ · e^{(i²−i)/(2σ²)} Φ((z₀ − i)/σ),   wᵢ = C(α,i) qⁱ (1−q)^j      (z ≤ z₀)
    /// s1ᵢ = vᵢ · e^{(j²−j)/(2σ²)} Φ((j − z₀)/σ),   vᵢ = C(α,i) q^j (1−q)ⁱ      (z > z₀)
    /// ```
    ///
    /// Once the Gaussian factor is in its tail, the exponentials cancel analytically:
    /// s0ᵢ = |C(α,i)| (1−q)^α e^{−z₀²/(2σ²)} · ½·erfcx((i − z₀)/(σ√2)), and likewise for s1ᵢ. That
    /// form shows both |s0ᵢ| and |s1ᵢ| decrease for i > (α−1)/2, and it never forms huge×tiny
    /// products. C(α,i) alternates in sign for i > α, so the tail is alternating and decreasing.
    ///
    /// The weights wᵢ sum to 1 when q ≤ ½ and the vᵢ when q ≥ ½ (binomial series). Subtracting them
    /// term by term sums A_α − 1 rather than A_α, as Σ (s0ᵢ − wᵢ) + Σ s1ᵢ or Σ s0ᵢ + Σ (s1ᵢ − vᵢ),
    /// which keeps the tiny A_α − 1 of small q or large σ accurate.
    ///
    /// Returns ln A_α (`None` if the series did not converge within the term cap) and the number
    /// of terms it took.
    fn fractional_sum_counting_terms(&mut self, order: f64) -> (Option<f64>, usize) {
        let floor_order = order.floor();
        let fraction = order - floor_order;
        let group = self.upper_group(fraction);
        // j = α at i = 0, so Γ(α + 1) is that entry's.
        let ln_gamma_order = self.upper_term(group, floor_order as i64).ln_abs_gamma;
        let mut sum = ScaledSum::default();
        let mut window = EulerWindow::default();
        let max_terms = floor_order as usize + MAX_TERMS_BEYOND_ORDER;
        for index in 0..max_terms {
            let i = index as f64;
            let j = order - i;
            let upper = self.upper_term(group, floor_order as i64 - index as i64);
            // C(α, i) = Γ(α+1)/(i!·Γ(j+1)): positive up to i = ⌊α⌋ + 1, then alternating.
            let sign = upper.gamma_sign;
            let log_binomial = ln_gamma_order - self.ln_factorial(index) - upper.ln_abs_gamma;
            let w = log_binomial + i * self.ln_q + j * self.ln_1mq;
            let v = log_binomial + j * self.ln_q + i * self.ln_1mq;
            let s0 = self.lower_mass(index);
            let s1 = upper.mass;
            let log_s0 = w + s0.log_ratio;
            let log_s1 = v + s1.log_ratio;
            let subtracted = if self.subtract_lower {
                sum.add(sign * s0.log_ratio.signum(), w + s0.log_abs_expm1);
                sum.add(sign, log_s1);
                w
            } else {
                sum.add(sign, log_s0);
                sum.add(sign * s1.log_ratio.signum(), v + s1.log_abs_expm1);
                v
            };
            window.push(sum);

            // Past ⌊α⌋ every later term alternates in sign and shrinks, so the remainder of
            // each of the three component series is below its current term.
            if i < floor_order {
                continue;
            }
            // Three terms are at most three times the largest.
            if sum.negligible(log_s0.max(log_s1).max(subtracted) + LN_3) {
                return (Some(softplus(sum.ln_clamped())), index + 1);
            }
            // Euler's transform needs its whole window inside the alternating tail.
            if i > floor_order + EULER_LEVELS as f64 {
                if let Some(estimate) = window.converged() {
                    return (Some(softplus(estimate.ln_clamped())), index + 1);
                }
            }
        }
        (None, max_terms)
    }
}

/// ln|Γ(x)| (also for negative non-integer x, where Γ alternates in sign).
fn ln_gamma(x: f64) -> f64 {
    libm::lgamma_r(x).0
}

/// ln(1 + eˣ) without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// ln|eˣ − 1| (−∞ at 0).
fn log_abs_expm1(x: f64) -> f64 {
    if x >= 0.0 {
        log_expm1(x)
    } else if x < -1.0 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}

/// A signed sum of terms given by sign and log-magnitude, stored as `value`·e^`log_scale` with
/// `log_scale` the largest log-magnitude added so far (so nothing overflows or underflows
/// before the final logarithm).
#[derive(Debug, Clone, Copy)]
struct ScaledSum {
    log_scale: f64,
    value: f64,
}

impl Default for ScaledSum {
    fn default() -> Self {
        Self {
            log_scale: f64::NEG_INFINITY,
            value: 0.0,
        }
    }
}

impl ScaledSum {
    fn add(&mut self, sign: f64, log_magnitude: f64) {
        // Below 1e-24 of the largest addend a term cannot matter: even 10⁵ of them stay under
        // the rounding error of the largest one. Skipping them saves an exponential.
        if log_magnitude == f64::NEG_INFINITY
            || log_magnitude < self.log_scale + LN_NEGLIGIBLE_ADDEND
            || sign == 0.0
        {
            return;
        }
        if log_magnitude > self.log_scale {
            self.value = self.value * (self.log_scale - log_magnitude).exp() + sign;
            self.log_scale = log_magnitude;
        } else {
            self.value += sign * (log_magnitude - self.log_scale).exp();
        }
    }

    /// The value expressed in units of e^`log_scale`.
    fn in_units_of(&self, log_scale: f64) -> f64 {
        if self.log_scale == log_scale {
            self.value
        } else if self.value == 0.0 {
            0.0
        } else {
            self.value * (self.log_scale - log_scale).exp()
        }
    }

    /// ln of the sum (−∞ when it is zero).
    fn ln(&self) -> f64 {
        if self.value == 0.0 {
            f64::NEG_INFINITY
        } else {
            self.value.ln() + self.log_scale
        }
    }

    /// ln of the sum, with a sum that rounding pushed below zero read as zero (−∞): the
    /// quantities summed here are non-negative.
    fn ln_clamped(&self) -> f64 {
        if self.value <= 0.0 {
            f64::NEG_INFINITY
        } else {
            self.ln()
        }
    }

    /// Whether a remainder of at most e^`log_bound` is below the series tolerance relative to
    /// the sum, or below the rounding floor of the largest term.
    ///
    /// Called once per term of a series tail, so the common verdicts are reached without an
    /// exponential: ln|value| is bracketed by the binary exponent of `value`.
    fn negligible(&self, log_bound: f64) -> bool {
        let log_relative = log_bound - self.log_scale;
        if log_relative < LN_ROUNDING_FLOOR {
            return true;
        }
        let magnitude = self.value.abs();
        if magnitude.is_normal() {
            // 2^e ≤ |value| < 2^(e+1).
            let exponent = ((magnitude.to_bits() >> 52) as i64 - 1023) as f64;
            let log_tolerance = LN_SERIES_TOLERANCE + exponent * LN_2;
            if log_relative >= log_tolerance + LN_2 {
                return false;
            }
            if log_relative < log_tolerance {
                return true;
            }
        }
        let relative = log_relative.exp();
        relative < ROUNDING_FLOOR || relative < SERIES_TOLERANCE * magnitude
    }
}

/// The last partial sums of an alternating series, and Euler's transform of them: averaging
/// consecutive partial sums `EULER_LEVELS` times cancels the oscillation of the tail.
#[derive(Debug)]
struct EulerWindow {
    /// The last `filled` partial sums in a ring whose entries are stored twice (at k and
    /// k + EULER_LEVELS + 1), so the window is always the contiguous slice starting at
    /// `oldest`: no shifting and no index arithmetic per term.
    partial_sums: [ScaledSum; 2 * (EULER_LEVELS + 1)],
    filled: usize,
    oldest: usize,
    previous_estimate: Option<f64>,
    stable_steps: usize,
}

impl Default for EulerWindow {
    fn default() -> Self {
        Self {
            partial_sums: [ScaledSum::default(); 2 * (EULER_LEVELS + 1)],
            filled: 0,
            oldest: 0,
            previous_estimate: None,
            stable_steps: 0,
        }
    }
}

impl EulerWindow {
    fn push(&mut self, partial_sum: ScaledSum) {
        const SIZE: usize = EULER_LEVELS + 1;
        let slot = if self.filled == SIZE {
            let slot = self.oldest;
            self.oldest = if slot + 1 == SIZE { 0 } else { slot + 1 };
            slot
        } else {
            self.filled += 1;
            self.filled - 1
        };
        self.partial_sums[slot] = partial_sum;
        self.partial_sums[slot + SIZE] = partial_sum;
    }

    /// The averaged estimate once it has stopped moving, else `None`. Only meaningful while
    /// every partial sum in the window lies in the alternating tail.
    fn converged(&mut self) -> Option<ScaledSum> {
        if self.filled < EULER_LEVELS + 1 {
            return None;
        }
        let window = &self.partial_sums[self.oldest..self.oldest + EULER_LEVELS + 1];
        let log_scale = window[EULER_LEVELS].log_scale;
        let total: f64 = window
            .iter()
            .zip(EULER_WEIGHTS)
            .map(|(s, w)| w * s.in_units_of(log_scale))
            .sum();
        let estimate = total / f64::from(1u32 << EULER_LEVELS);
        let stable = self.previous_estimate.is_some_and(|previous| {
            (estimate - previous).abs() <= SERIES_TOLERANCE * estimate.abs() + ROUNDING_FLOOR
        });
        self.previous_estimate = Some(estimate);
        self.stable_steps = if stable { self.stable_steps + 1 } else { 0 };
        (self.stable_steps >= EULER_STABLE_STEPS).then_some(ScaledSum {
            log_scale,
            value: estimate,
        })
    }
}

/// The RDP accountant: accumulated RDP at a fixed grid of Rényi orders.
#[derive(Debug, Clone)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl RdpAccountant {
    /// An accountant over `orders` (each finite and > 1), with nothing composed yet.
    pub fn new(orders: Vec<f64>) -> Result<Self> {
        require(
            !orders.is_empty() && orders.iter().all(|a| a.is_finite() && *a > 1.0),
            "orders",
            format_args!("{orders:?}"),
            "a non-empty list of finite Rényi orders > 1, e.g. the default grid",
        )?;
        let rdp = vec![0.0; orders.len()];
        Ok(Self { orders, rdp })
    }

    /// The Rényi orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The accumulated RDP at each order.
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }
}

impl Default for RdpAccountant {
    /// An accountant over [`default_orders`].
    fn default() -> Self {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }
}

impl Accountant for RdpAccountant {
    fn kind(&self) -> AccountantKind {
        AccountantKind::Rdp
    }

    fn compose(&mut self, mechanism: PoissonGaussian, count: u64) -> Result<()> {
        mechanism.validate()?;
        if count == 0 {
            return Ok(());
        }
        let count = count as f64;
        let per_release = rdp_poisson_gaussian_orders(mechanism.q, mechanism.sigma, &self.orders);
        for (total, rdp) in self.rdp.iter_mut().zip(per_release) {
            *total += count * rdp;
        }
        Ok(())
    }

    fn epsilon(&self, delta: f64) -> Result<EpsilonEstimate> {
        check_delta(delta)?;
        Ok(rdp_to_epsilon(&self.orders, &self.rdp, delta))
    }

    fn delta(&self, epsilon: f64) -> Result<f64> {
        check_epsilon(epsilon)?;
        Ok(rdp_to_delta(&self.orders, &self.rdp, epsilon))
    }
}

/// (ε, δ) from RDP values `rdp` at `orders`, as Opacus's `get_privacy_spent`: the minimum over
/// orders of RDP(α) − (ln δ + ln α)/(α − 1) + ln((α − 1)/α). NaN entries are ignored; if all
/// are NaN, ε = +∞. A negative minimum (possible only for δ near 1) is reported as 0.
/// `order_at_grid_edge` is set when the optimum is the smallest or largest order.
pub(crate) fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> EpsilonEstimate {
    let ln_delta = delta.ln();
    let candidates: Vec<f64> = orders
        .iter()
        .zip(rdp)
        .map(|(&order, &rdp)| {
            rdp - (ln_delta + order.ln()) / (order - 1.0) + ((order - 1.0) / order).ln()
        })
        .collect();
    let (epsilon, order) = match nan_argmin(&candidates) {
        Some(index) => (candidates[index].max(0.0), Some(orders[index])),
        None => (f64::INFINITY, None),
    };
    EpsilonEstimate {
        epsilon,
        delta,
        accountant: AccountantKind::Rdp,
        order,
        order_at_grid_edge: order.is_some_and(|a| is_grid_edge(orders, a)),
        discretisation_error: None,
    }
}

/// δ at `epsilon` from RDP values: the inverse of the conversion of [`rdp_to_epsilon`],
/// ln δ = min over α of (α − 1)(RDP(α) − ε + ln(1 − 1/α)) − ln α, capped at 1.
pub(crate) fn rdp_to_delta(orders: &[f64], rdp: &[f64], epsilon: f64) -> f64 {
    let log_deltas = orders.iter().zip(rdp).map(|(&order, &rdp)| {
        (order - 1.0) * (rdp - epsilon + ((order - 1.0) / order).ln()) - order.ln()
    });
    let best = log_deltas
        .filter(|x| !x.is_nan())
        .fold(f64::INFINITY, f64::min);
    best.exp().min(1.0)
}

/// Index of the smallest non-NaN value (the first one on ties), as NumPy's `nanargmin`.
fn nan_argmin(values: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (index, &value) in values.iter().enumerate() {
        if value.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| value < b) {
            best = Some((index, value));
        }
    }
    best.map(|(index, _)| index)
}

fn is_grid_edge(orders: &[f64], order: f64) -> bool {
    let smallest = orders.iter().copied().fold(f64::INFINITY, f64::min);
    let largest = orders.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    order == smallest || order == largest
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;

    use super::*;
    use crate::test_support::assert_relative_error_below;
    use crate::AccountingError;

    /// A − 1 = E_{z~N(0,σ²)}[(1 − q + q·e^{(2z−1)/(2σ²)})^α − 1] by composite Simpson
    /// quadrature over ±14σ around the two modes (0 and α) of the integrand.
    fn a_minus_one_by_quadrature(q: f64, sigma: f64, order: f64) -> f64 {
        let var = sigma * sigma;
        let integrand = |z: f64| {
            let density = (-z * z / (2.0 * var)).exp() / (sigma * (2.0 * PI).sqrt());
            let ratio_minus_one = q * ((2.0 * z - 1.0) / (2.0 * var)).exp_m1();
            density * (order * ratio_minus_one.ln_1p()).exp_m1()
        };
        let (low, high) = (-14.0 * sigma - 1.0, order + 14.0 * sigma + 1.0);
        crate::test_support::simpson(integrand, low, high, 400_000)
    }

    #[test]
    fn default_orders_are_opacus_grid() {
        let orders = default_orders();
        assert_eq!(orders.len(), 99 + 52);
        assert_eq!(orders[0], 1.1);
        assert_eq!(orders[9], 2.0);
        assert_eq!(orders[98], 10.9);
        assert_eq!(orders[99], 12.0);
        assert_eq!(*orders.last().unwrap(), 63.0);
    }

    #[test]
    fn full_participation_is_exactly_alpha_over_two_sigma_squared() {
        for sigma in [0.3, 1.0, 2.31, 11.3, 1e4] {
            for order in [1.1, 2.0, 10.5, 63.0, 1e4] {
                let expected = order / (2.0 * sigma * sigma);
                assert_eq!(rdp_poisson_gaussian(1.0, sigma, order), expected);
            }
        }
    }

    #[test]
    fn order_two_matches_closed_form_even_when_tiny() {
        // A₂ = 1 + q²(e^{1/σ²} − 1) exactly.
        for (q, sigma) in [(0.3f64, 0.5f64), (0.01, 1.0), (1e-4, 100.0), (1e-7, 1e4)] {
            let expected = (q * q * (1.0 / (sigma * sigma)).exp_m1()).ln_1p();
            let rdp = rdp_poisson_gaussian(q, sigma, 2.0);
            assert_relative_error_below(rdp, expected, 1e-13, format_args!("{q} {sigma}"));
        }
    }

    #[test]
    fn matches_numeric_integral() {
        for (q, sigma, order) in [
            (0.01, 1.0, 2.5),
            (0.2, 0.8, 4.3),
            (0.5, 2.0, 1.5),
            (0.7, 1.5, 3.7),
            (1e-3, 5.0, 17.0),
        ] {
            let expected = a_minus_one_by_quadrature(q, sigma, order).ln_1p() / (order - 1.0);
            let rdp = rdp_poisson_gaussian(q, sigma, order);
            assert_relative_error_below(
                rdp,
                expected,
                1e-9,
                format_args!("q={q} σ={sigma} α={order}"),
            );
        }
    }

    #[test]
    fn matches_high_precision_references() {
        // RDP computed with mpmath at 30 digits by adaptive quadrature of E[(p/q)^α] − 1,
        // including corners where Opacus' ln(A) loses digits (A − 1 below 1e-10).
        for (q, sigma, order, expected) in [
            (0.45, 2.0, 1.5, 4.060473636500708e-2),
            (0.5, 100.0, 1.1, 1.375020624750788e-5),
            (0.45, 100.0, 1.1, 1.113769601777863e-5),
            (0.7, 1e4, 1.1, 2.6950000017787e-9),
            (0.99, 0.3, 1.1, 6.041674619664609),
            (0.1, 1e4, 1.1, 5.500000022770001e-11),
            (1e-4, 0.7, 2.5, 8.380122079567517e-8),
            (1e-7, 0.3, 1.1, 2.243828330848807e-10),
            (0.3, 0.3, 10.9, 5.922996933665125e1),
        ] {
            let rdp = rdp_poisson_gaussian(q, sigma, order);
            assert_relative_error_below(
                rdp,
                expected,
                1e-10,
                format_args!("q={q} σ={sigma} α={order}"),
            );
        }
    }

    #[test]
    fn integer_and_fractional_formulas_agree_at_integers() {
        for (q, sigma) in [(0.01, 1.0), (0.3, 0.7), (0.6, 3.0), (1e-5, 50.0)] {
            for k in [2.0, 3.0, 5.0, 10.0, 32.0, 200.0] {
                let exact = rdp_poisson_gaussian(q, sigma, k);
                for order in [k - 1e-9, k + 1e-9] {
                    let series = rdp_poisson_gaussian(q, sigma, order);
                    assert_relative_error_below(
                        series,
                        exact,
                        1e-7,
                        format_args!("q={q} σ={sigma} α={order}"),
                    );
                }
            }
        }
    }

    #[test]
    fn binomial_coefficients_from_shared_tables_match_the_product_formula() {
        // C(α, i) = Π_{k<i} (α − k)/(k + 1), for fractional α (signs alternate past ⌊α⌋ + 1).
        for order in [2.5f64, 10.9, 63.5] {
            let mut shared = SharedTerms::new(0.01, 1.0);
            let floor_order = order.floor();
            let group = shared.upper_group(order - floor_order);
            let ln_gamma_order = ln_gamma(order + 1.0);
            let mut product = 1.0f64;
            for index in 0..150usize {
                let upper = shared.upper_term(group, floor_order as i64 - index as i64);
                let log_abs = ln_gamma_order - shared.ln_factorial(index) - upper.ln_abs_gamma;
                assert_eq!(upper.gamma_sign, product.signum(), "α={order} i={index}");
                let tolerance = 1e-12 * log_abs.abs().max(1.0);
                assert!(
                    (log_abs - product.abs().ln()).abs() < tolerance,
                    "α={order} i={index}: {log_abs} vs {}",
                    product.abs().ln()
                );
                product *= (order - index as f64) / (index as f64 + 1.0);
            }
        }
    }

    #[test]
    fn shared_evaluation_equals_one_order_at_a_time() {
        // Sharing tables between orders must not change a single bit of any order's RDP.
        let mut orders = default_orders();
        orders.extend([1.01, 2.5000001, 100.5, 1e3 + 0.25]);
        for (q, sigma) in [(0.01, 1.0), (0.3, 0.7), (0.7, 3.0), (1e-5, 50.0)] {
            let together = rdp_poisson_gaussian_orders(q, sigma, &orders);
            for (&order, &shared) in orders.iter().zip(&together) {
                let alone = rdp_poisson_gaussian(q, sigma, order);
                assert_eq!(
                    shared.to_bits(),
                    alone.to_bits(),
                    "q={q} σ={sigma} α={order}"
                );
            }
        }
    }

    #[test]
    fn rdp_is_non_decreasing_in_the_order() {
        for (q, sigma) in [(1e-6, 0.5), (0.01, 1.0), (0.3, 0.7), (0.5, 1e3), (0.9, 2.0)] {
            let values: Vec<f64> = default_orders()
                .iter()
                .map(|&a| rdp_poisson_gaussian(q, sigma, a))
                .collect();
            for pair in values.windows(2) {
                assert!(
                    pair[0] <= pair[1] * (1.0 + 1e-10),
                    "q={q} σ={sigma}: {pair:?}"
                );
            }
        }
    }

    #[test]
    fn corner_grid_stays_finite_and_converges_quickly() {
        let steps = 1e8;
        for q in [1e-7, 1e-4, 0.3, 0.5, 0.7, 1.0 - 1e-9, 1.0] {
            for sigma in [0.3, 1.0, 1e4] {
                for order in [1.01, 1.1, 10.5, 100.5, 1e4, 1e4 + 0.5] {
                    let total = steps * rdp_poisson_gaussian(q, sigma, order);
                    assert!(
                        total.is_finite() && total >= 0.0,
                        "q={q} σ={sigma} α={order}"
                    );
                    if q < 1.0 && order.fract() != 0.0 {
                        let mut shared = SharedTerms::new(q, sigma);
                        let (value, terms) = shared.fractional_sum_counting_terms(order);
                        assert!(value.is_some(), "q={q} σ={sigma} α={order} hit the cap");
                        // The cap is 100 000 terms past ⌊α⌋; stay far below it.
                        assert!(terms < order as usize + 1000, "q={q} σ={sigma} α={order}");
                    }
                }
            }
        }
    }

    #[test]
    fn outside_the_domain_is_nan_and_trivial_cases_are_exact() {
        assert!(rdp_poisson_gaussian(1.5, 1.0, 2.0).is_nan());
        assert!(rdp_poisson_gaussian(0.1, 0.0, 2.0).is_nan());
        assert!(rdp_poisson_gaussian(0.1, 1.0, 1.0).is_nan());
        assert!(rdp_poisson_gaussian(f64::NAN, 1.0, 2.0).is_nan());
        assert_eq!(rdp_poisson_gaussian(0.0, 1.0, 2.0), 0.0);
        assert_eq!(rdp_poisson_gaussian(0.1, 1.0, f64::INFINITY), f64::INFINITY);
    }

    fn epsilon_after(q: f64, sigma: f64, steps: u64, delta: f64) -> EpsilonEstimate {
        let mut accountant = RdpAccountant::default();
        accountant
            .compose(PoissonGaussian::new(q, sigma).unwrap(), steps)
            .unwrap();
        accountant.epsilon(delta).unwrap()
    }

    #[test]
    fn published_full_participation_values() {
        for (steps, sigma, expected) in [(11, 11.3, 1.29), (11, 2.31, 7.58), (20, 19.3, 0.997)] {
            let estimate = epsilon_after(1.0, sigma, steps, 3e-6);
            assert!(
                (estimate.epsilon - expected).abs() < 0.01,
                "T={steps} σ={sigma}: {} vs {expected}",
                estimate.epsilon
            );
            assert!(!estimate.order_at_grid_edge);
        }
    }

    #[test]
    fn opacus_unit_test_value() {
        // Opacus' own accountant test: σ = 1.5, q = 0.04, 2250 steps, δ = 1e-5.
        let estimate = epsilon_after(0.04, 1.5, 2250, 1e-5);
        assert!(
            (estimate.epsilon - 7.32911117143).abs() < 1e-7,
            "{estimate:?}"
        );
    }

    #[test]
    fn conversion_ignores_nan_and_reports_grid_edges() {
        let orders = [2.0, 3.0, 4.0];
        let estimate = rdp_to_epsilon(&orders, &[f64::NAN, 0.5, f64::NAN], 1e-5);
        assert_eq!(estimate.order, Some(3.0));
        assert!(!estimate.order_at_grid_edge);
        let all_nan = rdp_to_epsilon(&orders, &[f64::NAN; 3], 1e-5);
        assert_eq!(all_nan.epsilon, f64::INFINITY);
        assert_eq!(all_nan.order, None);
        // Zero RDP: the bound keeps improving with the order, so the largest one wins.
        let edge = rdp_to_epsilon(&orders, &[0.0; 3], 1e-5);
        assert_eq!(edge.order, Some(4.0));
        assert!(edge.order_at_grid_edge);
        assert_eq!(rdp_to_delta(&orders, &[f64::NAN; 3], 1.0), 1.0);
    }

    #[test]
    fn delta_inverts_epsilon() {
        let mut accountant = RdpAccountant::default();
        accountant
            .compose(PoissonGaussian::new(0.01, 1.1).unwrap(), 5000)
            .unwrap();
        for delta in [1e-3, 1e-5, 1e-10] {
            let epsilon = accountant.epsilon(delta).unwrap().epsilon;
            let back = accountant.delta(epsilon).unwrap();
            assert_relative_error_below(back, delta, 1e-9, format_args!("{delta} -> {epsilon}"));
        }
        // δ never exceeds 1, and shrinks as ε grows.
        let at_zero = accountant.delta(0.0).unwrap();
        assert!(at_zero <= 1.0 && accountant.delta(1.0).unwrap() < at_zero);
    }

    #[test]
    fn composition_adds_up() {
        let mechanism = PoissonGaussian::new(0.02, 0.9).unwrap();
        let mut once = RdpAccountant::default();
        once.compose(mechanism, 300).unwrap();
        let mut piecewise = RdpAccountant::default();
        piecewise.compose(mechanism, 100).unwrap();
        piecewise.compose(mechanism, 200).unwrap();
        for (&order, (&at_once, &in_pieces)) in once
            .orders()
            .iter()
            .zip(once.rdp().iter().zip(piecewise.rdp()))
        {
            assert_relative_error_below(in_pieces, at_once, 1e-14, format_args!("α={order}"));
        }
        let mut empty = RdpAccountant::default();
        empty.compose(mechanism, 0).unwrap();
        assert!(empty.rdp().iter().all(|&r| r == 0.0));
        // Nothing composed: ε is the conversion's own floor, small but positive.
        let floor = empty.epsilon(1e-5).unwrap().epsilon;
        assert!(floor > 0.0 && floor < 0.2, "{floor}");
    }

    #[test]
    fn invalid_arguments_name_the_argument() {
        let name_of = |e: AccountingError| match e {
            AccountingError::InvalidArgument { name, .. } => name,
            other => panic!("unexpected {other}"),
        };
        for orders in [vec![], vec![2.0, 1.0], vec![f64::NAN], vec![f64::INFINITY]] {
            assert_eq!(name_of(RdpAccountant::new(orders).unwrap_err()), "orders");
        }
        let mut accountant = RdpAccountant::new(vec![1.5, 2.0]).unwrap();
        assert_eq!(accountant.orders(), &[1.5, 2.0]);
        let bad_q = PoissonGaussian { q: 0.0, sigma: 1.0 };
        assert_eq!(name_of(accountant.compose(bad_q, 1).unwrap_err()), "q");
        let bad_sigma = PoissonGaussian {
            q: 0.5,
            sigma: -1.0,
        };
        assert_eq!(
            name_of(accountant.compose(bad_sigma, 1).unwrap_err()),
            "sigma"
        );
        assert_eq!(name_of(accountant.epsilon(0.0).unwrap_err()), "delta");
        assert_eq!(name_of(accountant.delta(-1.0).unwrap_err()), "epsilon");
        assert_eq!(accountant.kind(), AccountantKind::Rdp);
    }
}

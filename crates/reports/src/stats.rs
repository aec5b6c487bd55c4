//! Confidence intervals for `fedsyn compare`: a method's mean over seeds (Student's t) and the
//! difference of two methods' means (Welch's t, unequal variances), the intervals SciPy gives
//! (`scipy.stats.t.interval`, `ttest_ind(equal_var=False).confidence_interval`; checked against
//! a fixture written by `scripts/reference/confidence.py`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Resamples of the paired bootstrap.
pub const RESAMPLES: usize = 4000;

/// The confidence level of every interval `fedsyn compare` reports.
pub const LEVEL: f64 = 0.95;

/// An estimate with its two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// The mean (or the difference of two means).
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    /// Confidence level of [low, high].
    pub level: f64,
}

impl Interval {
    /// Whether the interval lies entirely on one side of `value`.
    pub fn excludes(&self, value: f64) -> bool {
        self.low > value || self.high < value
    }

    /// `estimate [low, high]` with `digits` decimals, scaled by `scale` (100 for percent).
    pub fn format(&self, scale: f64, digits: usize) -> String {
        format!(
            "{:.digits$} [{:.digits$}, {:.digits$}]",
            self.estimate * scale,
            self.low * scale,
            self.high * scale
        )
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// The unbiased sample variance.
fn variance(values: &[f64]) -> f64 {
    let m = mean(values);
    values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64
}

/// The two-sided t quantile for `level` at `df` degrees of freedom.
fn t_quantile(level: f64, df: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df)
        .expect("positive degrees of freedom")
        .inverse_cdf(0.5 + level / 2.0)
}

/// The mean of `values` with its Student-t interval at `level`; `None` with fewer than two
/// values (one seed has no spread to measure).
pub fn mean_interval(values: &[f64], level: f64) -> Option<Interval> {
    if values.len() < 2 || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let m = mean(values);
    let half = t_quantile(level, (values.len() - 1) as f64)
        * (variance(values) / values.len() as f64).sqrt();
    Some(Interval {
        estimate: m,
        low: m - half,
        high: m + half,
        level,
    })
}

/// mean(`a`) − mean(`b`) with Welch's interval at `level` (Welch–Satterthwaite degrees of
/// freedom); `None` unless both have two or more values. Two samples without any spread give a
/// zero-width interval.
pub fn difference_interval(a: &[f64], b: &[f64], level: f64) -> Option<Interval> {
    if a.len() < 2 || b.len() < 2 || a.iter().chain(b).any(|v| !v.is_finite()) {
        return None;
    }
    let (va, vb) = (variance(a) / a.len() as f64, variance(b) / b.len() as f64);
    let estimate = mean(a) - mean(b);
    let se2 = va + vb;
    if se2 == 0.0 {
        return Some(Interval {
            estimate,
            low: estimate,
            high: estimate,
            level,
        });
    }
    let df = se2.powi(2) / (va.powi(2) / (a.len() - 1) as f64 + vb.powi(2) / (b.len() - 1) as f64);
    let half = t_quantile(level, df) * se2.sqrt();
    Some(Interval {
        estimate,
        low: estimate - half,
        high: estimate + half,
        level,
    })
}

/// accuracy(`a`) − accuracy(`b`) over the same positions, with the percentile interval at
/// `level` of a paired bootstrap (positions resampled with replacement, `resamples` times, from
/// a generator seeded with `seed`; percentiles interpolated linearly, as NumPy's and SciPy's
/// `bootstrap(method="percentile", paired=True)`). `None` unless both have the same,
/// non-zero number of positions.
pub fn paired_bootstrap(
    a: &[bool],
    b: &[bool],
    level: f64,
    resamples: usize,
    seed: u64,
) -> Option<Interval> {
    if a.len() != b.len() || a.is_empty() || resamples < 2 {
        return None;
    }
    let differences: Vec<i32> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) - i32::from(y))
        .collect();
    let n = differences.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: i64 = (0..n)
                .map(|_| i64::from(differences[rng.gen_range(0..n)]))
                .sum();
            sum as f64 / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let percentile = |q: f64| {
        let position = q * (resamples - 1) as f64;
        let (low, frac) = (position.floor() as usize, position.fract());
        let high = (low + 1).min(resamples - 1);
        means[low] + frac * (means[high] - means[low])
    };
    let tail = (1.0 - level) / 2.0;
    Some(Interval {
        estimate: differences.iter().map(|&d| f64::from(d)).sum::<f64>() / n as f64,
        low: percentile(tail),
        high: percentile(1.0 - tail),
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture of `scripts/reference/confidence.py` (SciPy 1.17).
    const REFERENCE: &str = include_str!("../tests/fixtures/confidence_reference.json");

    #[test]
    fn intervals_match_scipy() {
        let reference: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
        let close = |got: f64, want: &serde_json::Value| {
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        };
        let values = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        };
        let means = reference["mean"].as_array().unwrap();
        assert!(means.len() >= 5);
        for case in means {
            let level = case["level"].as_f64().unwrap();
            let interval = mean_interval(&values(&case["values"]), level).unwrap();
            close(interval.estimate, &case["mean"]);
            close(interval.low, &case["low"]);
            close(interval.high, &case["high"]);
        }
        let differences = reference["welch"].as_array().unwrap();
        assert!(differences.len() >= 5);
        for case in differences {
            let level = case["level"].as_f64().unwrap();
            let interval =
                difference_interval(&values(&case["a"]), &values(&case["b"]), level).unwrap();
            close(interval.estimate, &case["difference"]);
            close(interval.low, &case["low"]);
            close(interval.high, &case["high"]);
        }
    }

    #[test]
    fn the_paired_bootstrap_matches_scipys() {
        let reference: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
        let cases = reference["paired_bootstrap"].as_array().unwrap();
        assert!(cases.len() >= 3);
        for case in cases {
            let bits = |v: &serde_json::Value| -> Vec<bool> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64() == Some(1))
                    .collect()
            };
            let (a, b) = (bits(&case["a"]), bits(&case["b"]));
            let level = case["level"].as_f64().unwrap();
            let interval = paired_bootstrap(&a, &b, level, 20_000, 1).unwrap();
            let want = |key: &str| case[key].as_f64().unwrap();
            assert!((interval.estimate - want("difference")).abs() < 1e-12);
            // Both are Monte Carlo estimates of the same percentiles (SciPy with 100,000
            // resamples): they agree to a small fraction of the interval's width.
            let width = want("high") - want("low");
            for (got, key) in [(interval.low, "low"), (interval.high, "high")] {
                assert!(
                    (got - want(key)).abs() < 0.05 * width,
                    "{key}: {got} vs {} (width {width})",
                    want(key)
                );
            }
        }
        // Identical runs differ by exactly 0, with a zero-width interval.
        let same = vec![true, false, true, true];
        let zero = paired_bootstrap(&same, &same, LEVEL, 100, 0).unwrap();
        assert_eq!((zero.estimate, zero.low, zero.high), (0.0, 0.0, 0.0));
        assert!(paired_bootstrap(&same, &same[..3], LEVEL, 100, 0).is_none());
    }

    #[test]
    fn one_seed_has_no_interval_and_the_interval_says_what_it_excludes() {
        assert!(mean_interval(&[0.3], LEVEL).is_none());
        assert!(difference_interval(&[0.3, 0.4], &[0.2], LEVEL).is_none());
        let interval = mean_interval(&[0.30, 0.32, 0.31], LEVEL).unwrap();
        assert!(interval.excludes(0.2) && !interval.excludes(0.31));
        assert_eq!(interval.format(100.0, 1), "31.0 [28.5, 33.5]");
        let flat = difference_interval(&[0.5, 0.5], &[0.4, 0.4], LEVEL).unwrap();
        assert!((flat.low - 0.1).abs() < 1e-12 && (flat.high - 0.1).abs() < 1e-12);
    }
}

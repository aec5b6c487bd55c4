//! `/metrics` in the Prometheus text format, written by hand: aggregates only (enrolments,
//! released rounds, refused requests, ε spent, request latencies), never anything about one
//! client.
//!
//! `/metrics` is public, so it carries no statistic of the un-noised client data: not how many
//! vectors were accepted (per round, the difference of a counter of accepted submissions is
//! the exact number of sampled clients who answered, a count the noise does not cover), not
//! how many had to be re-clipped (a function of the clients' scores), not their norms.

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a submission was refused (a label of `fedsyn_submissions_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Unauthorized,
    NotSampled,
    UnknownRound,
    Conflict,
    Late,
    Invalid,
    TooLarge,
    RateLimited,
}

impl Rejection {
    const ALL: [Rejection; 8] = [
        Rejection::Unauthorized,
        Rejection::NotSampled,
        Rejection::UnknownRound,
        Rejection::Conflict,
        Rejection::Late,
        Rejection::Invalid,
        Rejection::TooLarge,
        Rejection::RateLimited,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejection::Unauthorized => "unauthorized",
            Rejection::NotSampled => "not_sampled",
            Rejection::UnknownRound => "unknown_round",
            Rejection::Conflict => "conflict",
            Rejection::Late => "late",
            Rejection::Invalid => "invalid",
            Rejection::TooLarge => "too_large",
            Rejection::RateLimited => "rate_limited",
        }
    }
}

/// Upper bounds (seconds) of the request latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The server's counters and gauges.
#[derive(Default)]
pub struct Metrics {
    rejected: [AtomicU64; 8],
    pub enrolments: AtomicU64,
    pub rounds_released: AtomicU64,
    pub enrolled_clients: AtomicU64,
    /// The open (or last) round, +1 (0: none yet).
    pub current_round_plus_one: AtomicU64,
    epsilon_bits: [AtomicU64; 2],
    latency: Mutex<Latency>,
}

#[derive(Default)]
struct Latency {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Counts a refused submission.
    pub fn reject(&self, why: Rejection) {
        let index = Rejection::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets ε spent (RDP, PLD).
    pub fn set_epsilon(&self, rdp: f64, pld: f64) {
        self.epsilon_bits[0].store(rdp.to_bits(), Ordering::Relaxed);
        self.epsilon_bits[1].store(pld.to_bits(), Ordering::Relaxed);
    }

    /// Records one request's latency.
    pub fn observe_latency(&self, seconds: f64) {
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for (bucket, bound) in latency.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        latency.count += 1;
        latency.sum += seconds;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        single(
            &mut out,
            "fedsyn_enrolments_total",
            "counter",
            "Clients enrolled.",
            load(&self.enrolments),
        );
        single(
            &mut out,
            "fedsyn_rounds_released_total",
            "counter",
            "Rounds released (noise added, DPO done, checkpoint written).",
            load(&self.rounds_released),
        );
        let name = "fedsyn_submissions_rejected_total";
        family(
            &mut out,
            name,
            "counter",
            "Score submissions refused, by reason.",
        );
        for (why, count) in Rejection::ALL.iter().zip(&self.rejected) {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", why.label(), load(count));
        }
        single(
            &mut out,
            "fedsyn_enrolled_clients",
            "gauge",
            "Clients enrolled.",
            load(&self.enrolled_clients),
        );
        let round = load(&self.current_round_plus_one);
        single(
            &mut out,
            "fedsyn_current_round",
            "gauge",
            "The open or last round (-1 before the first).",
            round as i64 - 1,
        );
        let [rdp, pld] = [0, 1].map(|i| f64::from_bits(load(&self.epsilon_bits[i])));
        let name = "fedsyn_epsilon_spent";
        family(
            &mut out,
            name,
            "gauge",
            "Privacy budget spent, by accountant.",
        );
        let _ = writeln!(
            out,
            "{name}{{accountant=\"rdp\"}} {rdp}\n{name}{{accountant=\"pld\"}} {pld}"
        );
        let latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let name = "fedsyn_request_duration_seconds";
        family(&mut out, name, "histogram", "HTTP request latency.");
        for (bound, count) in LATENCY_BUCKETS.iter().zip(latency.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}",
            count = latency.count,
            sum = latency.sum
        );
        out
    }
}

/// The `# HELP` and `# TYPE` lines of the metric family `name` of type `kind`.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric family of one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_holds_every_series() {
        let metrics = Metrics::default();
        metrics.rounds_released.fetch_add(2, Ordering::Relaxed);
        metrics.reject(Rejection::Late);
        metrics.set_epsilon(0.5, 0.4);
        metrics.observe_latency(0.003);
        let text = metrics.render();
        assert!(text.contains("fedsyn_rounds_released_total 2\n"));
        // Nothing that counts or measures the clients' un-noised vectors.
        for private in ["accepted", "reclipped", "clipped", "norm", "abandoned"] {
            assert!(!text.contains(private), "{private} in\n{text}");
        }
        assert!(text.contains("fedsyn_submissions_rejected_total{reason=\"late\"} 1\n"));
        assert!(text.contains("fedsyn_submissions_rejected_total{reason=\"conflict\"} 0\n"));
        assert!(text.contains("fedsyn_epsilon_spent{accountant=\"rdp\"} 0.5\n"));
        assert!(text.contains("fedsyn_request_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("fedsyn_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("fedsyn_current_round -1\n"));
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

//! Plots of a run's rounds (SVG, with plotters): what a user looks at first after a run.

use std::path::Path;

use plotters::prelude::*;

use runs::run_dir::RoundMetrics;
use runs::{Result, RunError};

/// Points (round, value) of one line.
type Curve = Vec<(f64, f64)>;

/// Width and height of each of the two panels, in pixels.
const PANEL: (u32, u32) = (720, 300);

/// Writes `path`: two panels over the rounds — the FID of each round's candidates to the
/// private eval set (a non-private diagnostic; round 0 is the public model alone), and ε spent
/// under each accountant against the target.
pub fn write_rounds_svg(metrics: &[RoundMetrics], target_epsilon: f64, path: &Path) -> Result<()> {
    let failed = |e: &dyn std::fmt::Display| RunError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let root = SVGBackend::new(path, (PANEL.0, 2 * PANEL.1)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let (upper, lower) = root.split_vertically(PANEL.1);
    let last_round = metrics.last().map_or(1, |m| m.round.max(1)) as f64;

    let fid: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|m| m.fid_nonprivate().map(|f| (m.round as f64, f)))
        .collect();
    if !fid.is_empty() {
        let (low, high) = padded_range(fid.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(&upper)
            .caption(
                "FID to the private eval set per round (non-private diagnostic)",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..last_round, low..high)
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("FID")
            .x_labels(metrics.len().min(12))
            .draw()
            .map_err(|e| failed(&e))?;
        chart
            .draw_series(LineSeries::new(fid.clone(), BLUE.stroke_width(2)).point_size(4))
            .map_err(|e| failed(&e))?;
    }

    let rdp: Vec<(f64, f64)> = metrics
        .iter()
        .map(|m| (m.round as f64, m.epsilon_rdp))
        .collect();
    let pld: Vec<(f64, f64)> = metrics
        .iter()
        .map(|m| (m.round as f64, m.epsilon_pld))
        .collect();
    let top = rdp.iter().map(|p| p.1).fold(target_epsilon, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&lower)
        .caption("ε spent after each round", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..last_round, 0f64..top)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("ε")
        .x_labels(metrics.len().min(12))
        .draw()
        .map_err(|e| failed(&e))?;
    let series: [(&str, Curve, RGBColor); 3] = [
        ("RDP", rdp, RED),
        ("PLD", pld, GREEN),
        (
            "target",
            vec![(0.0, target_epsilon), (last_round, target_epsilon)],
            BLACK,
        ),
    ];
    for (label, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| failed(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

/// The range of `values` with 10 % room on each side (and some room when they are all equal).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let pad = ((high - low) * 0.1).max(high.abs() * 0.01).max(1e-6);
    (low - pad, high + pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runs::run_dir::{NonPrivate, NonPrivateMetrics, PhaseSeconds};

    /// The witness of values a unit test makes up.
    struct MadeUpData;
    impl dp_mechanics::RawClientData for MadeUpData {}

    fn row(round: u64, fid: f64, epsilon: f64) -> RoundMetrics {
        RoundMetrics {
            round,
            wall_seconds: 1.0,
            epsilon_rdp: epsilon,
            epsilon_pld: epsilon * 0.9,
            delta: 1e-5,
            sigma: 5.0,
            q: 1.0,
            clip: 1.0,
            cohort: Some(10),
            noise_std: 5.0,
            train_loss: None,
            reward_accuracy: None,
            reward_margin: None,
            seconds: PhaseSeconds::default(),
            noisy_score_histogram: None,
            nonprivate: Some(NonPrivate::measured(
                &MadeUpData,
                NonPrivateMetrics {
                    fid_nonprivate: Some(fid),
                    ..NonPrivateMetrics::default()
                },
            )),
        }
    }

    #[test]
    fn writes_an_svg_with_both_panels() {
        let path = std::env::temp_dir().join(format!("fedsyn-plot-{}.svg", std::process::id()));
        let rows = [row(0, 0.9, 0.5), row(1, 0.85, 0.8), row(2, 0.84, 1.0)];
        write_rounds_svg(&rows, 1.0, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(svg.contains("FID to the private eval set") && svg.contains("ε spent"));
        assert!(svg.contains("RDP") && svg.contains("PLD") && svg.contains("target"));
        // One round only (nothing to draw a line between) still plots.
        write_rounds_svg(&rows[..1], 1.0, &path).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn padded_range_has_room_even_for_equal_values() {
        let (low, high) = padded_range([2.0, 2.0].into_iter());
        assert!(low < 2.0 && high > 2.0);
    }
}

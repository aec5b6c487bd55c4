//! The SVG charts of the reports, drawn with plotters into strings (inlined into the HTML,
//! written next to the Markdown). Same look as `plot.rs`: white background, 16 px sans-serif
//! captions, 2 px lines with point markers.

use std::path::PathBuf;

use plotters::prelude::*;

use runs::run_dir::Histogram;
use runs::{Result, RunError};

/// Size of a full-width chart, in pixels.
const WIDE: (u32, u32) = (720, 320);
/// Size of one small histogram.
const SMALL: (u32, u32) = (360, 220);

/// One line of a [`LineChart`].
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// Legend text.
    pub label: String,
    /// (x, y) points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// A horizontal reference (target, ε = ∞ …): drawn in grey-black without markers.
    pub reference: bool,
    /// Vertical error bars: (x, low, high).
    pub error_bars: Vec<(f64, f64, f64)>,
}

impl Line {
    /// A data line.
    pub fn data(label: impl Into<String>, points: Vec<(f64, f64)>) -> Line {
        Line {
            label: label.into(),
            points,
            reference: false,
            error_bars: Vec::new(),
        }
    }

    /// The same line with vertical error bars (x, low, high), e.g. 95 % intervals over seeds.
    pub fn with_error_bars(mut self, bars: Vec<(f64, f64, f64)>) -> Line {
        self.error_bars = bars;
        self
    }

    /// A horizontal line at `y` over `[x0, x1]`.
    pub fn horizontal(label: impl Into<String>, y: f64, x0: f64, x1: f64) -> Line {
        Line {
            label: label.into(),
            points: vec![(x0, y), (x1, y)],
            reference: true,
            error_bars: Vec::new(),
        }
    }
}

/// A line chart: the one way the reports draw a series. The legend sits in its own panel on
/// the right, so it never hides data.
#[derive(Debug, Clone)]
pub(crate) struct LineChart {
    /// Caption.
    pub title: String,
    /// Axis descriptions.
    pub x_label: String,
    pub y_label: String,
    /// The lines (empty lines are skipped).
    pub lines: Vec<Line>,
    /// Whether x counts something (rounds, epochs): labels only on whole numbers.
    pub integer_x: bool,
}

impl LineChart {
    pub fn new(title: impl Into<String>, x_label: &str, y_label: &str) -> LineChart {
        LineChart {
            title: title.into(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            lines: Vec::new(),
            integer_x: false,
        }
    }

    /// Labels x on whole numbers only (rounds, epochs).
    pub fn integer_x(mut self) -> LineChart {
        self.integer_x = true;
        self
    }

    /// Adds a line; returns `self` for chaining.
    pub fn line(mut self, line: Line) -> LineChart {
        if !line.points.is_empty() {
            self.lines.push(line);
        }
        self
    }

    /// Whether there is any data line to draw.
    pub fn has_data(&self) -> bool {
        self.lines.iter().any(|line| !line.reference)
    }

    /// The colour of each line: data lines from the palette, references in distinct greys.
    fn colours(&self) -> Vec<RGBColor> {
        const GREYS: [u8; 3] = [40, 120, 180];
        let (mut data, mut references) = (0, 0);
        self.lines
            .iter()
            .map(|line| {
                if line.reference {
                    references += 1;
                    let grey = GREYS[(references - 1) % GREYS.len()];
                    RGBColor(grey, grey, grey)
                } else {
                    data += 1;
                    palette(data - 1)
                }
            })
            .collect()
    }

    /// The chart as an SVG document (`<svg …>…</svg>`).
    pub fn to_svg(&self) -> Result<String> {
        let failed = |e: &dyn std::fmt::Display| plot_error(&self.title, e);
        let points = || self.lines.iter().flat_map(|line| line.points.iter());
        let bar_ends = || {
            self.lines
                .iter()
                .flat_map(|line| line.error_bars.iter().flat_map(|&(_, lo, hi)| [lo, hi]))
        };
        let (x_low, x_high) = padded_range(points().map(|p| p.0), 0.02);
        let (y_low, y_high) = padded_range(points().map(|p| p.1).chain(bar_ends()), 0.1);
        let colours = self.colours();
        let integer_x = self.integer_x;
        let x_format = move |x: &f64| {
            if !integer_x {
                format!("{x}")
            } else if (x - x.round()).abs() < 1e-9 {
                format!("{}", x.round())
            } else {
                String::new()
            }
        };
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, WIDE).into_drawing_area();
            root.fill(&WHITE).map_err(|e| failed(&e))?;
            let (plot_area, legend_area) = root.split_horizontally(WIDE.0 - LEGEND_WIDTH);
            let mut chart = ChartBuilder::on(&plot_area)
                .caption(&self.title, ("sans-serif", 16))
                .margin(12)
                .x_label_area_size(34)
                .y_label_area_size(64)
                .build_cartesian_2d(x_low..x_high, y_low..y_high)
                .map_err(|e| failed(&e))?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .x_labels(10)
                .x_label_formatter(&x_format)
                .light_line_style(RGBColor(238, 238, 238))
                .draw()
                .map_err(|e| failed(&e))?;
            for (line, &colour) in self.lines.iter().zip(&colours) {
                let series = LineSeries::new(line.points.clone(), colour.stroke_width(2));
                let series = if line.reference {
                    series
                } else {
                    series.point_size(3)
                };
                chart.draw_series(series).map_err(|e| failed(&e))?;
                let cap = (x_high - x_low) * 0.006;
                for &(x, low, high) in &line.error_bars {
                    for segment in [
                        vec![(x, low), (x, high)],
                        vec![(x - cap, low), (x + cap, low)],
                        vec![(x - cap, high), (x + cap, high)],
                    ] {
                        chart
                            .draw_series(std::iter::once(PathElement::new(
                                segment,
                                colour.stroke_width(1),
                            )))
                            .map_err(|e| failed(&e))?;
                    }
                }
            }
            draw_legend(&legend_area, &self.lines, &colours).map_err(|e| failed(&e))?;
            root.present().map_err(|e| failed(&e))?;
        }
        Ok(svg)
    }
}

/// Width of the legend panel, in pixels.
const LEGEND_WIDTH: u32 = 210;

/// One entry per line: a short stroke in its colour and its label (cut to fit the panel).
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    lines: &[Line],
    colours: &[RGBColor],
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    const MAX_CHARS: usize = 30;
    for (i, (line, colour)) in lines.iter().zip(colours).enumerate() {
        let y = 44 + 20 * i as i32;
        area.draw(&PathElement::new(
            vec![(4, y), (24, y)],
            colour.stroke_width(2),
        ))?;
        let label: String = if line.label.chars().count() > MAX_CHARS {
            line.label
                .chars()
                .take(MAX_CHARS - 1)
                .chain(['…'])
                .collect()
        } else {
            line.label.clone()
        };
        area.draw(&Text::new(
            label,
            (30, y - 7),
            ("sans-serif", 12).into_font().color(&BLACK),
        ))?;
    }
    Ok(())
}

/// A histogram as bars (e.g. of one round's noisy scores).
pub(crate) fn histogram_svg(title: &str, x_label: &str, histogram: &Histogram) -> Result<String> {
    let failed = |e: &dyn std::fmt::Display| plot_error(title, e);
    let bins = histogram
        .counts
        .len()
        .min(histogram.edges.len().saturating_sub(1));
    if bins == 0 {
        return Err(plot_error(title, &"the histogram has no bins"));
    }
    let edges = &histogram.edges[..=bins];
    let top = histogram.counts[..bins]
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SMALL).into_drawing_area();
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(44)
            .build_cartesian_2d(edges[0]..edges[bins], 0f64..top)
            .map_err(|e| failed(&e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("count")
            .x_labels(5)
            .y_labels(5)
            .draw()
            .map_err(|e| failed(&e))?;
        let fill = palette(0).mix(0.7).filled();
        chart
            .draw_series((0..bins).map(|i| {
                Rectangle::new(
                    [(edges[i], 0.0), (edges[i + 1], histogram.counts[i] as f64)],
                    fill,
                )
            }))
            .map_err(|e| failed(&e))?;
        root.present().map_err(|e| failed(&e))?;
    }
    Ok(svg)
}

fn plot_error(title: &str, e: &dyn std::fmt::Display) -> RunError {
    RunError::Plot {
        path: PathBuf::from(format!("(chart \"{title}\")")),
        message: e.to_string(),
    }
}

/// Distinguishable line colours (plotters' 99-colour palette starts with strong ones).
fn palette(index: usize) -> RGBColor {
    let colour = Palette99::pick(index).to_rgba();
    RGBColor(colour.0, colour.1, colour.2)
}

/// The range of `values` with `share` of room on each side (some room when they are equal,
/// and `0..1` when there are none).
fn padded_range(values: impl Iterator<Item = f64>, share: f64) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if low > high {
        return (0.0, 1.0);
    }
    let pad = ((high - low) * share)
        .max(high.abs() * 0.05)
        .max(0.5 * share);
    (low - pad, high + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_is_one_svg_document_with_its_labels() {
        let svg = LineChart::new("ε per round", "round", "ε")
            .line(Line::data("RDP", vec![(0.0, 0.1), (1.0, 0.5)]))
            .line(Line::horizontal("target <1>", 1.0, 0.0, 1.0))
            .to_svg()
            .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(
            svg.contains("RDP") && svg.contains("target &lt;1&gt;"),
            "{svg}"
        );
    }

    #[test]
    fn a_single_point_and_an_empty_chart_still_draw() {
        let single = LineChart::new("one", "x", "y").line(Line::data("a", vec![(1.0, 2.0)]));
        assert!(single.has_data());
        single.to_svg().unwrap();
        let empty = LineChart::new("none", "x", "y");
        assert!(!empty.has_data());
        empty.to_svg().unwrap();
    }

    #[test]
    fn histograms_draw_one_bar_per_bin() {
        let histogram = Histogram {
            edges: vec![-1.0, 0.0, 1.0, 2.0],
            counts: vec![3, 0, 5],
        };
        let svg = histogram_svg("round 1", "noisy score", &histogram).unwrap();
        assert!(svg.starts_with("<svg"));
        let empty = Histogram {
            edges: vec![0.0],
            counts: vec![],
        };
        assert!(histogram_svg("empty", "x", &empty).is_err());
    }
}

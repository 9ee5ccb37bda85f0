//! Small PNG charts for people: line charts (loss curves, noise sweeps) and 2-D scatter
//! plots (the modality-gap PCA), drawn with plotters' bitmap backend.
//!
//! Text needs a font: DejaVu Sans (or Liberation Sans) is loaded once from the usual system
//! locations, or from `CLOSE_FONT=/path/font.ttf`. Without any font the charts are still
//! drawn, without titles, labels or legends.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::element::ErrorBar;
use plotters::prelude::*;

use crate::{Error, Result};

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Whether a font is available (registered on first call).
pub fn have_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var("CLOSE_FONT").ok();
        let candidates = env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied());
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (install fonts-dejavu-core or set CLOSE_FONT=path.ttf): charts have no text");
        false
    })
}

/// One named series of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Half-heights of vertical error bars, one a point (empty: none).
    pub errors: Vec<f64>,
    /// An RGB colour of its own (None: the next of the palette's).
    pub color: Option<(u8, u8, u8)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            errors: Vec::new(),
            color: None,
        }
    }

    /// The same series drawn in `rgb` (a reference line, say).
    pub fn with_color(mut self, rgb: (u8, u8, u8)) -> Self {
        self.color = Some(rgb);
        self
    }

    /// The same series with a ± `errors[i]` bar at point `i`.
    pub fn with_errors(mut self, errors: Vec<f64>) -> Self {
        self.errors = errors;
        self
    }

    /// The points, with their error bars' ends where there are bars, that are finite.
    fn finite_points(&self) -> Vec<(f64, f64, f64)> {
        self.points
            .iter()
            .enumerate()
            .map(|(i, &(x, y))| (x, y, self.errors.get(i).copied().unwrap_or(0.0)))
            .filter(|(x, y, e)| x.is_finite() && y.is_finite() && e.is_finite())
            .collect()
    }
}

fn palette(i: usize) -> RGBColor {
    // Ten distinct colours (the demo's sweep plot has ten series: five tasks × val/test).
    const C: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("drawing {}: {e}", path.display()))
}

fn bounds(points: impl Iterator<Item = (f64, f64)>) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let pad = |a: f64, b: f64| {
        let d = if (b - a).abs() < 1e-12 {
            1.0
        } else {
            (b - a) * 0.05
        };
        (a - d, b + d)
    };
    (pad(x0, x1), pad(y0, y1))
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type DrawResult = std::result::Result<
    (),
    DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>,
>;

/// One series of a line chart: its error bars, its line (with a legend entry when there is
/// text) and, for up to 40 points, a marker at each point.
fn draw_line(chart: &mut Chart, s: &Series, c: RGBColor, text: bool) -> DrawResult {
    let with_err = s.finite_points();
    let pts: Vec<(f64, f64)> = with_err.iter().map(|&(x, y, _)| (x, y)).collect();
    let bars = with_err.iter().filter(|p| p.2 > 0.0);
    chart.draw_series(
        bars.map(|&(x, y, e)| ErrorBar::new_vertical(x, y - e, y, y + e, c.stroke_width(1), 8)),
    )?;
    let drawn = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
    if text {
        drawn
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    if pts.len() <= 40 {
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    Ok(())
}

/// Draw a line chart (one line with markers per series) to a PNG at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let text = have_font();
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let ends = series
            .iter()
            .flat_map(|s| s.finite_points())
            .flat_map(|(x, y, e)| [(x, y - e), (x, y + e)]);
        let ((x0, x1), (y0, y1)) = bounds(ends);
        let mut b = ChartBuilder::on(&root);
        b.margin(15);
        if text {
            b.caption(title, ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = b
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(path, e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_label).y_desc(y_label);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| plot_err(path, e))?;
        for (i, s) in series.iter().enumerate() {
            let c = s.color.map_or(palette(i), |(r, g, b)| RGBColor(r, g, b));
            draw_line(&mut chart, s, c, text).map_err(|e| plot_err(path, e))?;
        }
        if text && !series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Draw a 2-D scatter plot of several named point sets to a PNG at `path`.
pub fn scatter(path: &Path, title: &str, sets: &[(String, Vec<[f64; 2]>)]) -> Result<()> {
    let text = have_font();
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (700, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
        let ((x0, x1), (y0, y1)) = bounds(
            sets.iter()
                .flat_map(|(_, p)| p.iter().map(|q| (q[0], q[1]))),
        );
        let mut b = ChartBuilder::on(&root);
        b.margin(15);
        if text {
            b.caption(title, ("sans-serif", 22))
                .x_label_area_size(35)
                .y_label_area_size(50);
        }
        let mut chart = b
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| plot_err(path, e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("PC 1").y_desc("PC 2");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| plot_err(path, e))?;
        for (i, (name, pts)) in sets.iter().enumerate() {
            let c = palette(i);
            let drawn = chart
                .draw_series(
                    pts.iter()
                        .map(|p| Circle::new((p[0], p[1]), 3, c.mix(0.6).filled())),
                )
                .map_err(|e| plot_err(path, e))?;
            if text {
                drawn
                    .label(name.clone())
                    .legend(move |(x, y)| Circle::new((x + 6, y), 4, c.filled()));
            }
        }
        if text && !sets.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_err(path, e))?;
        }
        root.present().map_err(|e| plot_err(path, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_line_and_scatter_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let s = vec![Series::new(
            "train",
            (0..20)
                .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                .collect(),
        )];
        line_chart(&p, "loss", "step", "loss", &s).unwrap();
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (800, 500));
        let q = dir.path().join("pca.png");
        scatter(
            &q,
            "gap",
            &[
                ("image".into(), vec![[0.0, 0.0], [1.0, 1.0]]),
                ("text".into(), vec![[2.0, 0.5]]),
            ],
        )
        .unwrap();
        assert!(q.exists());
        // Empty input still gives a valid (blank) chart rather than an error.
        line_chart(&dir.path().join("empty.png"), "e", "x", "y", &[]).unwrap();
    }

    #[test]
    fn error_bars_are_drawn_in_the_series_colour_and_non_finite_points_dropped() {
        let pts = vec![(0.0, 1.0), (1.0, 1.2), (2.0, f64::NAN), (3.0, 0.9)];
        let bare = Series::new("run", pts.clone()).with_color((200, 0, 0));
        let barred = bare.clone().with_errors(vec![0.0, 0.3, 0.1, 0.05]);
        assert_eq!(
            barred.finite_points(),
            [(0.0, 1.0, 0.0), (1.0, 1.2, 0.3), (3.0, 0.9, 0.05)]
        );
        // A reference line fixes the y range, so that only the bars differ between the two.
        let line = Series::new("ref", vec![(0.0, 0.5), (3.0, 1.6)]);
        let dir = tempfile::tempdir().unwrap();
        let red = |s: &Series| {
            let p = dir.path().join(format!("{}.png", s.errors.len()));
            line_chart(&p, "t", "x", "y", &[s.clone(), line.clone()]).unwrap();
            let img = image::open(&p).unwrap().to_rgb8();
            img.pixels().filter(|p| p.0 == [200, 0, 0]).count()
        };
        let (without, with) = (red(&bare), red(&barred));
        assert!(with > without + 50, "{with} vs {without} red pixels");
    }
}

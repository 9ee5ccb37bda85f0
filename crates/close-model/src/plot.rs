//! Line charts as PNG (training-loss curves, noise sweeps) with plotters' bitmap backend.
//!
//! Text needs a TrueType font registered from bytes (plotters' `ab_glyph` feature). No font
//! is bundled: at first use we look for DejaVu Sans (Debian `fonts-dejavu-core`) or another
//! sans font under the usual system paths, or the file named by `CLOSE_PLOT_FONT`. Without a
//! font the chart is drawn with axes, grid and lines but no text, and a warning is logged.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use close_core::{Error, Result};

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Register a sans-serif font once; `true` when text can be drawn.
pub fn font_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let env = std::env::var("CLOSE_PLOT_FONT").ok();
        let candidates = env.iter().map(|s| s.as_str()).chain(FONT_CANDIDATES.iter().copied());
        for p in candidates {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    tracing::debug!("plots use the font {p}");
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (install fonts-dejavu-core or set CLOSE_PLOT_FONT); plots have no text");
        false
    })
}

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draw `series` as lines into a PNG at `path` (`width`×`height` pixels).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    size: (u32, u32),
) -> Result<()> {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return Err(Error::invalid(format!(
            "{}: nothing to plot",
            path.display()
        )));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let text = font_available();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // Draw into memory, then write atomically.
    let (w, h) = size;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let drawn = (|| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut b = ChartBuilder::on(&root);
        b.margin(12);
        if text {
            b.caption(title, ("sans-serif", 20))
                .x_label_area_size(36)
                .y_label_area_size(56);
        } else {
            b.x_label_area_size(8).y_label_area_size(8);
        }
        let mut chart = b.build_cartesian_2d(x0..x1, y0..y1)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_label).y_desc(y_label);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        for (i, s) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let line = chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            if text {
                line.label(s.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            }
            if pts.len() <= 40 {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
            }
        }
        if text && series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| Error::invalid(format!("{}: plotting failed: {e}", path.display())))?;
    let img =
        image::RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::invalid("plot buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    close_core::io::write_atomic(path, &png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_the_curve() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let s = Series {
            name: "train loss".into(),
            points: (0..50)
                .map(|i| (i as f64, 3.0 / (1.0 + i as f64)))
                .collect(),
        };
        line_chart(&p, "loss", "step", "loss", &[s], (480, 320)).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (480, 320));
        // The blue line is drawn somewhere.
        assert!(img.pixels().any(|px| px.0 == [31, 119, 180]));
        assert!(line_chart(&p, "x", "x", "y", &[], (100, 100)).is_err());
    }
}

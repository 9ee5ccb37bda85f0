//! Anti-aliased rendering of a [`Scene`] with tiny-skia: a light, slightly tinted vertical
//! gradient background, the objects, then mild per-pixel noise; encoded as RGB PNG.

use rand::Rng;
use tiny_skia::{FillRule, Paint, PathBuilder, Pixmap, Transform};

use close_core::{Error, Result};

use super::scene::{Object, Scene, Shape};

/// Sample a light background colour.
pub fn sample_background(rng: &mut impl Rng) -> [u8; 3] {
    let base: i32 = rng.random_range(212..=242);
    let mut c = [0u8; 3];
    for ck in c.iter_mut() {
        *ck = (base + rng.random_range(-10..=10)).clamp(0, 255) as u8;
    }
    c
}

fn polygon(points: &[(f32, f32)]) -> Option<tiny_skia::Path> {
    let mut pb = PathBuilder::new();
    let (x0, y0) = points.first()?;
    pb.move_to(*x0, *y0);
    for (x, y) in &points[1..] {
        pb.line_to(*x, *y);
    }
    pb.close();
    pb.finish()
}

/// The outline of an object centred at the origin.
fn shape_path(o: &Object) -> Option<tiny_skia::Path> {
    let r = o.radius;
    let deg = std::f32::consts::PI / 180.0;
    match o.shape {
        Shape::Circle => PathBuilder::from_circle(0.0, 0.0, 0.88 * r),
        Shape::Square => {
            let h = 0.74 * r;
            polygon(&[(-h, -h), (h, -h), (h, h), (-h, h)])
        }
        Shape::Triangle => {
            let pts: Vec<(f32, f32)> = [-90.0f32, 30.0, 150.0]
                .iter()
                .map(|a| (r * (a * deg).cos(), r * (a * deg).sin() + 0.12 * r))
                .collect();
            polygon(&pts)
        }
        Shape::Diamond => polygon(&[(0.0, -r), (0.68 * r, 0.0), (0.0, r), (-0.68 * r, 0.0)]),
        Shape::Star => {
            let pts: Vec<(f32, f32)> = (0..10)
                .map(|i| {
                    let a = (-90.0 + 36.0 * i as f32) * deg;
                    let rr = if i % 2 == 0 { r } else { 0.42 * r };
                    (rr * a.cos(), rr * a.sin() + 0.06 * r)
                })
                .collect();
            polygon(&pts)
        }
        Shape::Cross => {
            let (a, w) = (0.9 * r, 0.3 * r);
            polygon(&[
                (-w, -a),
                (w, -a),
                (w, -w),
                (a, -w),
                (a, w),
                (w, w),
                (w, a),
                (-w, a),
                (-w, w),
                (-a, w),
                (-a, -w),
                (-w, -w),
            ])
        }
    }
}

/// Render a scene to RGB8 pixels (row-major, `width*height*3`). `rng` drives the noise.
pub fn render_rgb(scene: &Scene, rng: &mut impl Rng) -> Result<Vec<u8>> {
    let (w, h) = (scene.width, scene.height);
    let mut pm = Pixmap::new(w, h)
        .ok_or_else(|| Error::config("size", format!("cannot make a {w}x{h} image")))?;
    // vertical gradient of ±6 levels around the background colour
    let g = rng.random_range(-6.0..=6.0f32);
    {
        let bg = scene.background;
        let data = pm.data_mut();
        for y in 0..h {
            let t = (y as f32 / (h.max(2) - 1) as f32) * 2.0 - 1.0;
            let d = (g * t).round() as i32;
            for x in 0..w {
                let i = ((y * w + x) * 4) as usize;
                for k in 0..3 {
                    data[i + k] = (bg[k] as i32 + d).clamp(0, 255) as u8;
                }
                data[i + 3] = 255;
            }
        }
    }
    for o in &scene.objects {
        let Some(path) = shape_path(o) else { continue };
        let mut paint = Paint {
            anti_alias: true,
            ..Paint::default()
        };
        paint.set_color_rgba8(o.rgb[0], o.rgb[1], o.rgb[2], 255);
        let t = Transform::from_rotate(o.angle).post_translate(o.cx, o.cy);
        pm.fill_path(&path, &paint, FillRule::Winding, t, None);
    }
    let data = pm.data();
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for px in data.chunks_exact(4) {
        let n: i32 = rng.random_range(-5..=5);
        for &p in &px[..3] {
            let e: i32 = rng.random_range(-2..=2);
            rgb.push((p as i32 + n + e).clamp(0, 255) as u8);
        }
    }
    Ok(rgb)
}

/// Encode RGB8 pixels as PNG.
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::invalid(format!("png encoding: {e}")))?;
    Ok(buf)
}

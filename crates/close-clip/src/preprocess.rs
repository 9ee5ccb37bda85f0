//! Image preprocessing exactly as HF transformers' `CLIPImageProcessor` (PIL backend):
//! decode → convert to RGB → resize the shortest edge to `size.shortest_edge` with PIL's
//! resampling on 8-bit images (convolution with a support scaled for downsampling,
//! fixed-point coefficients, horizontal pass then vertical, each rounded to u8) → center crop
//! (zero padding when the image is smaller) → rescale by `rescale_factor` → normalise with
//! the config's mean / std. The resampler mirrors Pillow's `Resample.c`, so pixel values
//! agree with HF bit for bit on RGB input.
//!
//! Decoding is guarded: image dimensions and decoder allocations are limited, so a
//! 10000×10000 or malicious file gives an error instead of exhausting memory.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use close_core::{Error, Result};

/// Largest accepted image side (pixels) and decoder allocation (bytes).
pub const MAX_IMAGE_SIDE: u32 = 8192;
pub const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// PIL resampling filters (`resample` in `preprocessor_config.json`: PIL's enum values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum Resample {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl TryFrom<u32> for Resample {
    type Error = String;
    fn try_from(v: u32) -> std::result::Result<Self, String> {
        Ok(match v {
            0 => Resample::Nearest,
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            4 => Resample::Box,
            5 => Resample::Hamming,
            _ => return Err(format!("unknown PIL resample filter {v}")),
        })
    }
}

impl From<Resample> for u32 {
    fn from(r: Resample) -> u32 {
        match r {
            Resample::Nearest => 0,
            Resample::Lanczos => 1,
            Resample::Bilinear => 2,
            Resample::Bicubic => 3,
            Resample::Box => 4,
            Resample::Hamming => 5,
        }
    }
}

/// `size` / `crop_size` as HF writes them: an int, `{"shortest_edge": n}` or
/// `{"height": h, "width": w}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    Int(usize),
    Shortest { shortest_edge: usize },
    HeightWidth { height: usize, width: usize },
}

/// HF `preprocessor_config.json` of a `CLIPImageProcessor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    pub do_resize: bool,
    pub size: SizeSpec,
    pub resample: Resample,
    pub do_center_crop: bool,
    pub crop_size: SizeSpec,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: Vec<f32>,
    pub image_std: Vec<f32>,
    pub do_convert_rgb: bool,
}

/// OpenAI CLIP's normalisation constants.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f32; 3] = [0.26862954, 0.261_302_6, 0.275_777_1];

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self::for_size(224)
    }
}

impl ImageProcessorConfig {
    /// CLIP's processor for square models of side `n`.
    pub fn for_size(n: usize) -> Self {
        Self {
            do_resize: true,
            size: SizeSpec::Shortest { shortest_edge: n },
            resample: Resample::Bicubic,
            do_center_crop: true,
            crop_size: SizeSpec::HeightWidth {
                height: n,
                width: n,
            },
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN.to_vec(),
            image_std: OPENAI_CLIP_STD.to_vec(),
            do_convert_rgb: true,
        }
    }

    /// JSON as HF writes it (`image_processor_type: CLIPImageProcessor`).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("image_processor_type".into(), "CLIPImageProcessor".into());
        }
        v
    }
}

/// `CLIPImageProcessor`.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub cfg: ImageProcessorConfig,
}

impl ImageProcessor {
    pub fn new(cfg: ImageProcessorConfig) -> Result<Self> {
        if cfg.image_mean.len() != 3 || cfg.image_std.len() != 3 {
            return Err(Error::config("image_mean/image_std", "need 3 values (RGB)"));
        }
        if cfg.image_std.contains(&0.0) {
            return Err(Error::config("image_std", "must be non-zero"));
        }
        if let SizeSpec::HeightWidth { height: 0, .. }
        | SizeSpec::HeightWidth { width: 0, .. }
        | SizeSpec::Int(0)
        | SizeSpec::Shortest { shortest_edge: 0 } = cfg.size
        {
            return Err(Error::config("size", "must be > 0"));
        }
        if let SizeSpec::HeightWidth { height: 0, .. }
        | SizeSpec::HeightWidth { width: 0, .. }
        | SizeSpec::Int(0)
        | SizeSpec::Shortest { shortest_edge: 0 } = cfg.crop_size
        {
            return Err(Error::config("crop_size", "must be > 0"));
        }
        Ok(Self { cfg })
    }

    /// Read `preprocessor_config.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let cfg: ImageProcessorConfig = close_core::io::read_json(path)?;
        Self::new(cfg).map_err(|e| Error::format(path, None, e.to_string()))
    }

    /// Output `(height, width)` of [`ImageProcessor::preprocess`].
    pub fn output_size(&self, w: u32, h: u32) -> (usize, usize) {
        let (mut h, mut w) = (h as usize, w as usize);
        if self.cfg.do_resize {
            (h, w) = resize_target(&self.cfg.size, h, w);
        }
        if self.cfg.do_center_crop {
            (h, w) = crop_target(&self.cfg.crop_size);
        }
        (h, w)
    }

    /// Preprocess an RGB image into CHW f32 values (`pixel_values` of one image).
    pub fn preprocess(&self, img: &image::RgbImage) -> Vec<f32> {
        let c = &self.cfg;
        let (w0, h0) = img.dimensions();
        let mut buf = Rgb8 {
            w: w0 as usize,
            h: h0 as usize,
            data: img.as_raw().clone(),
        };
        if c.do_resize {
            let (th, tw) = resize_target(&c.size, buf.h, buf.w);
            buf = resize(&buf, tw, th, c.resample);
        }
        if c.do_center_crop {
            let (ch, cw) = crop_target(&c.crop_size);
            buf = center_crop(&buf, cw, ch);
        }
        let (h, w) = (buf.h, buf.w);
        let mut out = vec![0f32; 3 * h * w];
        for ch in 0..3 {
            for i in 0..h * w {
                let mut v = buf.data[i * 3 + ch] as f32;
                if c.do_rescale {
                    // HF: float64 multiply, then cast to float32.
                    v = (buf.data[i * 3 + ch] as f64 * c.rescale_factor) as f32;
                }
                if c.do_normalize {
                    v = (v - c.image_mean[ch]) / c.image_std[ch];
                }
                out[ch * h * w + i] = v;
            }
        }
        out
    }

    /// Preprocess a batch into `[batch, 3, H, W]` on `device`. All images must produce the
    /// same size (always true with center crop).
    pub fn batch(&self, imgs: &[image::RgbImage], device: &Device) -> Result<Tensor> {
        let mut data = Vec::new();
        let mut hw = None;
        for img in imgs {
            let (w, h) = img.dimensions();
            let s = self.output_size(w, h);
            if *hw.get_or_insert(s) != s {
                return Err(Error::invalid(
                    "images of different output sizes in one batch (enable center crop)",
                ));
            }
            data.extend(self.preprocess(img));
        }
        let (h, w) = hw.unwrap_or((0, 0));
        Ok(Tensor::from_vec(data, (imgs.len(), 3, h, w), device)?)
    }

    /// Load and preprocess one file into `[3, H, W]` values.
    pub fn load_and_preprocess(&self, path: impl AsRef<Path>) -> Result<Vec<f32>> {
        Ok(self.preprocess(&load_image(path)?))
    }
}

fn resize_target(size: &SizeSpec, h: usize, w: usize) -> (usize, usize) {
    match *size {
        SizeSpec::HeightWidth { height, width } => (height, width),
        SizeSpec::Int(n) | SizeSpec::Shortest { shortest_edge: n } => {
            // HF get_resize_output_image_size(default_to_square=False): int() truncation.
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let new_long = ((n as f64) * (long as f64) / (short as f64)) as usize;
            if w <= h {
                (new_long, n)
            } else {
                (n, new_long)
            }
        }
    }
}

fn crop_target(size: &SizeSpec) -> (usize, usize) {
    match *size {
        SizeSpec::HeightWidth { height, width } => (height, width),
        SizeSpec::Int(n) | SizeSpec::Shortest { shortest_edge: n } => (n, n),
    }
}

/// An interleaved RGB u8 buffer.
#[derive(Debug, Clone)]
struct Rgb8 {
    w: usize,
    h: usize,
    data: Vec<u8>,
}

fn center_crop(img: &Rgb8, cw: usize, ch: usize) -> Rgb8 {
    // HF center_crop: top = (H - ch) // 2 (floor division, negative when the image is
    // smaller); a smaller image is zero-padded by ceil((ch - H) / 2) first, which makes the
    // source row of output row y exactly y + top in every case (zero outside the image).
    let (h, w) = (img.h as i64, img.w as i64);
    let top = (h - ch as i64).div_euclid(2);
    let left = (w - cw as i64).div_euclid(2);
    let mut out = vec![0u8; cw * ch * 3];
    for y in 0..ch as i64 {
        let sy = y + top;
        if sy < 0 || sy >= h {
            continue;
        }
        for x in 0..cw as i64 {
            let sx = x + left;
            if sx >= 0 && sx < w {
                let si = ((sy * w + sx) * 3) as usize;
                let di = ((y * cw as i64 + x) * 3) as usize;
                out[di..di + 3].copy_from_slice(&img.data[si..si + 3]);
            }
        }
    }
    Rgb8 {
        w: cw,
        h: ch,
        data: out,
    }
}

// ---- Pillow's resampling (libImaging/Resample.c), 8 bits per channel ----

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn filter_support(f: Resample) -> f64 {
    match f {
        Resample::Nearest | Resample::Box => 0.5,
        Resample::Bilinear => 1.0,
        Resample::Hamming => 1.0,
        Resample::Bicubic => 2.0,
        Resample::Lanczos => 3.0,
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn filter_eval(f: Resample, x: f64) -> f64 {
    match f {
        Resample::Nearest | Resample::Box => {
            if x > -0.5 && x <= 0.5 {
                1.0
            } else {
                0.0
            }
        }
        Resample::Bilinear => {
            let x = x.abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }
        Resample::Hamming => {
            let x = x.abs();
            if x == 0.0 {
                1.0
            } else if x >= 1.0 {
                0.0
            } else {
                let xp = x * std::f64::consts::PI;
                xp.sin() / xp * (0.54 + 0.46 * xp.cos())
            }
        }
        Resample::Bicubic => {
            let a = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }
        Resample::Lanczos => {
            if (-3.0..3.0).contains(&x) {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
    }
}

/// Per output pixel: first input index, count, and fixed-point weights.
// A port of Pillow's C loop, index for index, so that the two can be compared.
#[allow(clippy::needless_range_loop)]
fn precompute_coeffs(
    in_size: usize,
    out_size: usize,
    f: Resample,
) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let (in0, in1) = (0.0f64, in_size as f64);
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter_support(f) * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero.
        let mut xmin = (center - support + 0.5) as i64;
        if xmin < 0 {
            xmin = 0;
        }
        let mut xmax = (center + support + 0.5) as i64;
        if xmax > in_size as i64 {
            xmax = in_size as i64;
        }
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0;
        for x in 0..n {
            let v = filter_eval(f, (x as f64 + xmin as f64 - center + 0.5) * ss);
            w[x] = v;
            ww += v;
        }
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let s = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + s) as i32
            } else {
                (0.5 + s) as i32
            };
        }
        bounds.push((xmin as usize, n));
    }
    (bounds, kk, ksize)
}

#[inline]
fn clip8(v: i32) -> u8 {
    let v = v >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

fn resize(img: &Rgb8, out_w: usize, out_h: usize, f: Resample) -> Rgb8 {
    if img.w == out_w && img.h == out_h {
        return img.clone();
    }
    if f == Resample::Nearest {
        return resize_nearest(img, out_w, out_h);
    }
    let (bh, kh, ksh) = precompute_coeffs(img.w, out_w, f);
    let (bv, kv, ksv) = precompute_coeffs(img.h, out_h, f);
    let need_h = out_w != img.w;
    let need_v = out_h != img.h;
    let half = 1i32 << (PRECISION_BITS - 1);
    // Horizontal pass over the rows the vertical pass will read.
    let (tmp, row_off) = if need_h {
        let y_first = bv.first().map(|b| b.0).unwrap_or(0);
        let y_last = bv.last().map(|b| b.0 + b.1).unwrap_or(img.h);
        let rows = y_last - y_first;
        let mut t = vec![0u8; rows * out_w * 3];
        for y in 0..rows {
            let src = &img.data[(y + y_first) * img.w * 3..(y + y_first + 1) * img.w * 3];
            for xx in 0..out_w {
                let (xmin, n) = bh[xx];
                let k = &kh[xx * ksh..xx * ksh + n];
                let mut s = [half; 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = (xmin + x) * 3;
                    s[0] += src[p] as i32 * kx;
                    s[1] += src[p + 1] as i32 * kx;
                    s[2] += src[p + 2] as i32 * kx;
                }
                let d = (y * out_w + xx) * 3;
                t[d] = clip8(s[0]);
                t[d + 1] = clip8(s[1]);
                t[d + 2] = clip8(s[2]);
            }
        }
        (
            Rgb8 {
                w: out_w,
                h: rows,
                data: t,
            },
            y_first,
        )
    } else {
        (img.clone(), 0)
    };
    if !need_v {
        return tmp;
    }
    let mut out = vec![0u8; out_h * out_w * 3];
    for yy in 0..out_h {
        let (ymin, n) = bv[yy];
        let ymin = ymin - row_off;
        let k = &kv[yy * ksv..yy * ksv + n];
        for xx in 0..out_w {
            let mut s = [half; 3];
            for (y, &ky) in k.iter().enumerate() {
                let p = ((ymin + y) * out_w + xx) * 3;
                s[0] += tmp.data[p] as i32 * ky;
                s[1] += tmp.data[p + 1] as i32 * ky;
                s[2] += tmp.data[p + 2] as i32 * ky;
            }
            let d = (yy * out_w + xx) * 3;
            out[d] = clip8(s[0]);
            out[d + 1] = clip8(s[1]);
            out[d + 2] = clip8(s[2]);
        }
    }
    Rgb8 {
        w: out_w,
        h: out_h,
        data: out,
    }
}

fn resize_nearest(img: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    // Pillow's nearest: source = floor((x + 0.5) * in / out).
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        let sy = (((y as f64 + 0.5) * img.h as f64 / out_h as f64) as usize).min(img.h - 1);
        for x in 0..out_w {
            let sx = (((x as f64 + 0.5) * img.w as f64 / out_w as f64) as usize).min(img.w - 1);
            let s = (sy * img.w + sx) * 3;
            let d = (y * out_w + x) * 3;
            out[d..d + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Rgb8 {
        w: out_w,
        h: out_h,
        data: out,
    }
}

/// Decode an image file (PNG / JPEG / WebP) with size and allocation limits and convert it
/// to 8-bit RGB as PIL's `convert("RGB")` does (gray replicated, alpha dropped, 16-bit
/// scaled down). Errors name the file.
pub fn load_image(path: impl AsRef<Path>) -> Result<image::RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes).map_err(|msg| Error::Image {
        path: path.to_path_buf(),
        msg,
    })
}

/// [`load_image`] on bytes; the error is a message without the path.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<image::RgbImage, String> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    if reader.format().is_none() {
        return Err("not a recognised image format (PNG, JPEG or WebP)".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => {
            format!("too large (limit {MAX_IMAGE_SIDE} px per side): {l}")
        }
        e => format!("cannot decode: {e}"),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err("empty image (0 pixels)".into());
    }
    Ok(to_rgb_like_hf(&img))
}

/// HF `convert_to_rgb`: images with an alpha channel are composited onto opaque white
/// (Pillow's integer `alpha_composite`), others converted directly.
pub fn to_rgb_like_hf(img: &image::DynamicImage) -> image::RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = image::RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        o.0 = composite_on_white(p.0);
    }
    out
}

/// Pillow's `ImagingAlphaComposite` of `src` over an opaque white pixel.
fn composite_on_white([r, g, b, a]: [u8; 4]) -> [u8; 3] {
    if a == 0 {
        return [255, 255, 255];
    }
    const PB: u32 = 7;
    let sa = a as u32;
    let blend = 255 * (255 - sa);
    let outa255 = sa * 255 + blend;
    let coef1 = sa * 255 * 255 * (1 << PB) / outa255;
    let coef2 = 255 * (1 << PB) - coef1;
    let div255 = |v: u32| ((v >> 8) + v) >> 8;
    let ch = |s: u8| -> u8 {
        let t = s as u32 * coef1 + 255 * coef2;
        (div255(t + (0x80 << PB)) >> PB) as u8
    };
    [ch(r), ch(g), ch(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_target_truncates_like_hf() {
        assert_eq!(
            resize_target(&SizeSpec::Shortest { shortest_edge: 224 }, 480, 640),
            (224, 298)
        );
        assert_eq!(
            resize_target(&SizeSpec::Shortest { shortest_edge: 24 }, 37, 23),
            (38, 24)
        );
        assert_eq!(resize_target(&SizeSpec::Int(24), 1, 1), (24, 24));
    }

    #[test]
    fn identity_resize_and_constant_image() {
        let img = Rgb8 {
            w: 5,
            h: 3,
            data: vec![77; 45],
        };
        for f in [Resample::Bicubic, Resample::Bilinear, Resample::Lanczos] {
            let r = resize(&img, 11, 7, f);
            assert!(r.data.iter().all(|&v| v == 77), "{f:?}");
            let r = resize(&img, 2, 2, f);
            assert!(r.data.iter().all(|&v| v == 77), "{f:?}");
        }
    }

    #[test]
    fn center_crop_pads_small_images_like_hf() {
        // 1x1 image cropped to 4x4: HF puts it at ceil(3/2) = 2 offset ... then crops.
        let img = Rgb8 {
            w: 1,
            h: 1,
            data: vec![9, 9, 9],
        };
        let c = center_crop(&img, 4, 4);
        let ones: Vec<usize> = (0..16).filter(|&i| c.data[i * 3] == 9).collect();
        assert_eq!(ones, vec![2 * 4 + 2]);
    }

    #[test]
    fn rejects_garbage_and_truncated() {
        assert!(decode_image(b"definitely not an image")
            .unwrap_err()
            .contains("not a recognised"));
        let mut png = Vec::new();
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode_image(&png).is_ok());
        assert!(decode_image(&png[..png.len() / 2]).is_err());
    }
}

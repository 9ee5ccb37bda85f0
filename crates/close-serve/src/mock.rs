//! [`ColorPredictor`]: a deterministic, model-free [`Predictor`] for testing the server and
//! measuring its overhead. It is not a CLOSE model: it names the palette colour nearest to
//! the image's mean colour, so tests can check that the right image reached the right
//! request (a red upload must come back "red"). An optional simulated cost (sleep per
//! batch and per item) lets the load test exercise queueing and batching.

use std::time::Duration;

use close_core::{Error, Result};

use crate::predictor::{
    Beam, DecodeOptions, ModelInfo, Neighbor, Prediction, Predictor, Query, Task,
};

/// Palette of the predictor: name and RGB.
pub const PALETTE: [(&str, [f32; 3]); 8] = [
    ("red", [220., 40., 40.]),
    ("green", [40., 180., 60.]),
    ("blue", [40., 70., 220.]),
    ("yellow", [235., 220., 50.]),
    ("purple", [140., 60., 180.]),
    ("orange", [240., 140., 30.]),
    ("white", [245., 245., 245.]),
    ("black", [15., 15., 15.]),
];

/// Model-free stand-in for a trained run (see the module docs).
#[derive(Debug, Clone)]
pub struct ColorPredictor {
    name: String,
    task: Task,
    /// Simulated cost of one `predict` call.
    pub per_batch: Duration,
    /// Simulated cost per query.
    pub per_item: Duration,
    /// Sizes of the batches seen so far (for batching tests).
    pub batch_sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
}

impl ColorPredictor {
    pub fn new(name: impl Into<String>, task: Task) -> Self {
        Self {
            name: name.into(),
            task,
            per_batch: Duration::ZERO,
            per_item: Duration::ZERO,
            batch_sizes: Default::default(),
        }
    }

    /// With a simulated cost per batch and per item.
    pub fn with_cost(mut self, per_batch: Duration, per_item: Duration) -> Self {
        self.per_batch = per_batch;
        self.per_item = per_item;
        self
    }

    fn mean_rgb(img: &image::RgbImage) -> [f32; 3] {
        let mut s = [0f64; 3];
        for p in img.pixels() {
            for (sc, &pc) in s.iter_mut().zip(&p.0[..3]) {
                *sc += pc as f64;
            }
        }
        let n = (img.width() as f64 * img.height() as f64).max(1.0);
        [(s[0] / n) as f32, (s[1] / n) as f32, (s[2] / n) as f32]
    }

    /// Palette entries ranked by distance to `rgb`, with log-softmax(−d²/1000) scores.
    fn ranked(rgb: [f32; 3]) -> Vec<(&'static str, f32)> {
        let mut d: Vec<(&str, f32)> = PALETTE
            .iter()
            .map(|(n, c)| {
                (
                    *n,
                    -((0..3).map(|i| (c[i] - rgb[i]).powi(2)).sum::<f32>()) / 1000.0,
                )
            })
            .collect();
        let m = d.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        let lse = m + d.iter().map(|x| (x.1 - m).exp()).sum::<f32>().ln();
        for x in d.iter_mut() {
            x.1 -= lse;
        }
        d.sort_by(|a, b| b.1.total_cmp(&a.1));
        d
    }

    fn one(&self, q: &Query, opts: &DecodeOptions) -> Result<Prediction> {
        let rgb = Self::mean_rgb(&q.image);
        let ranked = Self::ranked(rgb);
        let text = q.text.as_deref().unwrap_or("").to_lowercase();
        let beams: Vec<Beam> = match self.task {
            Task::Caption => ranked
                .iter()
                .map(|(c, lp)| Beam {
                    text: format!("a {c} image"),
                    logprob: *lp,
                })
                .collect(),
            Task::Vqa => {
                if text.trim().is_empty() {
                    return Err(Error::invalid("vqa: empty question"));
                }
                ranked
                    .iter()
                    .map(|(c, lp)| Beam {
                        text: c.to_string(),
                        logprob: *lp,
                    })
                    .collect()
            }
            Task::Entail => {
                if text.trim().is_empty() {
                    return Err(Error::invalid("entail: empty hypothesis"));
                }
                let best = ranked[0].0;
                let mentions =
                    |c: &str| text.split(|ch: char| !ch.is_alphanumeric()).any(|w| w == c);
                let label = if mentions(best) {
                    "entailment"
                } else if PALETTE.iter().any(|(c, _)| mentions(c)) {
                    "contradiction"
                } else {
                    "neutral"
                };
                let mut v = vec![Beam {
                    text: label.into(),
                    logprob: ranked[0].1,
                }];
                for other in ["entailment", "neutral", "contradiction"] {
                    if other != label {
                        v.push(Beam {
                            text: other.into(),
                            logprob: ranked[0].1 - 2.0 - v.len() as f32,
                        });
                    }
                }
                v
            }
        };
        let beams = beams.into_iter().take(opts.beams.max(1)).collect();
        // Nearest "training captions": one per palette colour, cosine of RGB directions.
        let norm = |v: [f32; 3]| {
            let n = (v.iter().map(|x| x * x).sum::<f32>()).sqrt().max(1e-6);
            [v[0] / n, v[1] / n, v[2] / n]
        };
        let u = norm(rgb);
        let mut neighbors: Vec<Neighbor> = PALETTE
            .iter()
            .map(|(n, c)| {
                let w = norm(*c);
                Neighbor {
                    caption: format!("a {n} shape"),
                    cosine: u[0] * w[0] + u[1] * w[1] + u[2] * w[2],
                }
            })
            .collect();
        neighbors.sort_by(|a, b| b.cosine.total_cmp(&a.cosine));
        neighbors.truncate(opts.neighbors);
        Ok(Prediction { beams, neighbors })
    }
}

impl Predictor for ColorPredictor {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            task: self.task,
            description: "colour-naming test predictor (not a CLOSE model)".into(),
            defaults: DecodeOptions {
                beams: 3,
                max_tokens: 8,
                neighbors: 3,
            },
            max_tokens_limit: 64,
            corpus_size: PALETTE.len(),
        }
    }

    fn predict(&mut self, queries: &[Query], opts: &DecodeOptions) -> Result<Vec<Prediction>> {
        if let Ok(mut b) = self.batch_sizes.lock() {
            b.push(queries.len());
        }
        let cost = self.per_batch + self.per_item * queries.len() as u32;
        if !cost.is_zero() {
            std::thread::sleep(cost);
        }
        queries.iter().map(|q| self.one(q, opts)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(rgb: [u8; 3]) -> image::RgbImage {
        image::RgbImage::from_pixel(9, 7, image::Rgb(rgb))
    }

    #[test]
    fn names_the_colour_and_ranks_beams() {
        let mut p = ColorPredictor::new("m", Task::Caption);
        let opts = DecodeOptions {
            beams: 3,
            max_tokens: 8,
            neighbors: 2,
        };
        let out = p
            .predict(
                &[
                    Query {
                        image: img([230, 30, 30]),
                        text: None,
                    },
                    Query {
                        image: img([30, 60, 230]),
                        text: None,
                    },
                ],
                &opts,
            )
            .unwrap();
        assert_eq!(out[0].answer(), "a red image");
        assert_eq!(out[1].answer(), "a blue image");
        assert_eq!(out[0].beams.len(), 3);
        assert!(out[0]
            .beams
            .windows(2)
            .all(|w| w[0].logprob >= w[1].logprob));
        assert!(out[0].logprob() <= 0.0);
        assert_eq!(out[0].neighbors.len(), 2);
        assert_eq!(out[0].neighbors[0].caption, "a red shape");
    }

    #[test]
    fn entailment_follows_the_colour() {
        let mut p = ColorPredictor::new("m", Task::Entail);
        let opts = DecodeOptions {
            beams: 1,
            max_tokens: 8,
            neighbors: 0,
        };
        let q = |t: &str| Query {
            image: img([40, 180, 60]),
            text: Some(t.into()),
        };
        let out = p
            .predict(
                &[q("A green circle."), q("a red circle"), q("a circle")],
                &opts,
            )
            .unwrap();
        let labels: Vec<_> = out.iter().map(|p| p.answer().to_string()).collect();
        assert_eq!(labels, ["entailment", "contradiction", "neutral"]);
        assert!(p.predict(&[q("  ")], &opts).is_err());
    }
}

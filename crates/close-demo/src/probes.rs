//! Zero-shot probes of the demo's CLIP on held-out images ([`close_data::world::probe`]):
//! which facts of a scene the image vector holds in a form that matches the caption vectors.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use close_clip::Clip;
use close_core::simd::dot;
use close_core::Result;
use close_data::world::probe::{probes, Probe, PROBE_KINDS};
use close_data::world::Scene;

/// Accuracy of one probe kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// One of [`PROBE_KINDS`].
    pub kind: String,
    pub images: usize,
    /// Share of images whose true caption is the nearest of the candidates (0–1).
    pub accuracy: f64,
    /// The share a random pick gets.
    pub chance: f64,
}

/// Score probes: an image counts as right when its vector is nearest (largest dot product)
/// to the true candidate's vector. Probes whose image or a candidate has no vector are
/// skipped. Kinds come out in [`PROBE_KINDS`] order; kinds without probes are left out.
pub fn score_probes(
    probes: &[Probe],
    image: &dyn Fn(u64) -> Option<Vec<f32>>,
    text: &HashMap<String, Vec<f32>>,
) -> Vec<ProbeResult> {
    // kind → (right, total, sum of 1/candidates)
    let mut acc: HashMap<&str, (usize, usize, f64)> = HashMap::new();
    for p in probes {
        let Some(v) = image(p.image_id) else { continue };
        let Some(scores) = p
            .candidates
            .iter()
            .map(|c| text.get(c).map(|t| dot(&v, t)))
            .collect::<Option<Vec<f32>>>()
        else {
            continue;
        };
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        let e = acc.entry(p.kind).or_default();
        e.0 += usize::from(best == Some(p.answer));
        e.1 += 1;
        e.2 += 1.0 / p.candidates.len() as f64;
    }
    PROBE_KINDS
        .iter()
        .filter_map(|k| {
            let &(right, n, chance) = acc.get(k)?;
            Some(ProbeResult {
                kind: k.to_string(),
                images: n,
                accuracy: right as f64 / n as f64,
                chance: chance / n as f64,
            })
        })
        .collect()
}

/// Probe `clip` on `scenes` (their image vectors from `image`); the candidate captions are
/// embedded here.
pub fn run_probes(
    clip: &Clip,
    scenes: &[&Scene],
    image: &dyn Fn(u64) -> Option<Vec<f32>>,
) -> Result<Vec<ProbeResult>> {
    let all: Vec<Probe> = scenes.iter().flat_map(|s| probes(s)).collect();
    let mut texts: Vec<&String> = all.iter().flat_map(|p| p.candidates.iter()).collect();
    texts.sort();
    texts.dedup();
    let mut vecs: HashMap<String, Vec<f32>> = HashMap::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        let emb = clip.embed_texts(chunk)?.to_vec2::<f32>()?;
        vecs.extend(chunk.iter().map(|t| t.to_string()).zip(emb));
    }
    Ok(score_probes(&all, image, &vecs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: &'static str, image_id: u64, candidates: &[&str], answer: usize) -> Probe {
        Probe {
            kind,
            image_id,
            candidates: candidates.iter().map(|s| s.to_string()).collect(),
            answer,
        }
    }

    #[test]
    fn nearest_candidate_decides_and_missing_vectors_are_skipped() {
        let text: HashMap<String, Vec<f32>> = [
            ("red", vec![1.0, 0.0]),
            ("blue", vec![0.0, 1.0]),
            ("green", vec![-1.0, 0.0]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let image = |id: u64| match id {
            1 => Some(vec![0.9, 0.1]), // nearest red
            2 => Some(vec![0.2, 0.8]), // nearest blue
            _ => None,
        };
        let probes = [
            p(PROBE_KINDS[0], 1, &["red", "blue", "green"], 0), // right
            p(PROBE_KINDS[0], 2, &["red", "blue", "green"], 0), // wrong
            p(PROBE_KINDS[0], 3, &["red", "blue"], 0),          // no image vector
            p(PROBE_KINDS[4], 1, &["red", "gray"], 0),          // no text vector
            p(PROBE_KINDS[4], 2, &["red", "blue"], 1),          // right
        ];
        let r = score_probes(&probes, &image, &text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].kind, PROBE_KINDS[0]);
        assert_eq!((r[0].images, r[0].accuracy), (2, 0.5));
        assert!((r[0].chance - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(r[1].kind, PROBE_KINDS[4]);
        assert_eq!((r[1].images, r[1].accuracy, r[1].chance), (1, 1.0, 0.5));
    }
}

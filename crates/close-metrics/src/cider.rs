//! CIDEr-D (Vedantam et al. 2015) as pycocoevalcap's `Cider` computes it: TF-IDF vectors of
//! 1..4-grams with document frequencies counted over the references of the evaluated set
//! (an n-gram counts once per image), IDF `log N − log max(1, df)` with N the number of
//! images, per-n cosine similarity with clipping `min(hyp, ref)·ref`, a Gaussian length
//! penalty `e^{−δ²/(2σ²)}` with σ = 6 where δ is the difference of the bigram counts (as
//! the original computes "length"), mean over n, mean over references, × 10.

use rayon::prelude::*;

use crate::ngrams::{count_ngrams, order, FxMap, Interner, Ngram};

/// Per-image CIDEr-D and their mean.
#[derive(Clone, Debug, PartialEq)]
pub struct Cider {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

const SIGMA: f64 = 6.0;

struct Vec4 {
    /// (n-gram, tf-idf weight); order n = `order(ngram)`.
    weights: FxMap<Ngram, f64>,
    norm: [f64; 4],
    /// Number of bigrams (the original's "length").
    length: i64,
}

fn to_vec(counts: &FxMap<Ngram, u32>, df: &FxMap<Ngram, f64>, ref_len: f64) -> Vec4 {
    let mut weights = FxMap::default();
    weights.reserve(counts.len());
    let mut norm = [0.0f64; 4];
    let mut length = 0i64;
    for (g, &tf) in counts {
        let d = df.get(g).copied().unwrap_or(0.0).max(1.0).ln();
        let n = order(g) - 1;
        let w = tf as f64 * (ref_len - d);
        norm[n] += w * w;
        if n == 1 {
            length += tf as i64;
        }
        weights.insert(*g, w);
    }
    for v in norm.iter_mut() {
        *v = v.sqrt();
    }
    Vec4 {
        weights,
        norm,
        length,
    }
}

fn sim(h: &Vec4, r: &Vec4) -> [f64; 4] {
    let delta = (h.length - r.length) as f64;
    let mut val = [0.0f64; 4];
    for (g, &wh) in &h.weights {
        let wr = r.weights.get(g).copied().unwrap_or(0.0);
        val[order(g) - 1] += wh.min(wr) * wr;
    }
    let penalty = std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    for ((v, &hn), &rn) in val.iter_mut().zip(&h.norm).zip(&r.norm) {
        if hn != 0.0 && rn != 0.0 {
            *v /= hn * rn;
        }
        *v *= penalty;
    }
    val
}

/// CIDEr-D of tokenized hypotheses against tokenized references.
pub fn cider_d(refs: &[Vec<String>], hyps: &[String]) -> Cider {
    let mut interner = Interner::default();
    let ref_counts: Vec<Vec<FxMap<Ngram, u32>>> = refs
        .iter()
        .map(|rs| {
            rs.iter()
                .map(|r| count_ngrams(&interner.words(r)))
                .collect()
        })
        .collect();
    let hyp_counts: Vec<FxMap<Ngram, u32>> = hyps
        .iter()
        .map(|h| count_ngrams(&interner.words(h)))
        .collect();
    // Document frequency: once per image whose references contain the n-gram.
    let mut df: FxMap<Ngram, f64> = FxMap::default();
    let mut seen: FxMap<Ngram, usize> = FxMap::default();
    for (i, rs) in ref_counts.iter().enumerate() {
        for c in rs {
            for g in c.keys() {
                let last = seen.entry(*g).or_insert(usize::MAX);
                if *last != i {
                    *last = i;
                    *df.entry(*g).or_insert(0.0) += 1.0;
                }
            }
        }
    }
    let ref_len = (ref_counts.len() as f64).ln();
    let per_image: Vec<f64> = hyp_counts
        .par_iter()
        .zip(ref_counts.par_iter())
        .map(|(hc, rcs)| {
            let hv = to_vec(hc, &df, ref_len);
            let mut score = [0.0f64; 4];
            for rc in rcs {
                let rv = to_vec(rc, &df, ref_len);
                let s = sim(&hv, &rv);
                for n in 0..4 {
                    score[n] += s[n];
                }
            }
            let mut avg = (((score[0] + score[1]) + score[2]) + score[3]) / 4.0;
            avg /= rcs.len() as f64;
            avg * 10.0
        })
        .collect();
    let corpus = if per_image.is_empty() {
        f64::NAN
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    Cider { corpus, per_image }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_captions_score_high_and_unrelated_zero() {
        let refs = vec![
            vec![
                "a dog runs on the grass".to_string(),
                "a dog is running".to_string(),
            ],
            vec![
                "a red car on the street".to_string(),
                "a parked car".to_string(),
            ],
            vec![
                "two cats sleep".to_string(),
                "cats sleeping on a bed".to_string(),
            ],
        ];
        let hyps = vec![
            "a dog runs on the grass".to_string(),
            "zebra giraffe".to_string(),
            "two cats sleep".to_string(),
        ];
        let c = cider_d(&refs, &hyps);
        assert!(c.per_image[0] > 1.0, "{:?}", c.per_image);
        assert_eq!(c.per_image[1], 0.0);
        assert!((c.corpus - c.per_image.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    }

    #[test]
    fn single_image_scores_zero() {
        // N = 1: log N = 0 and every reference n-gram has df = 1, so all weights vanish.
        let c = cider_d(&[vec!["a b".to_string()]], &["a b".to_string()]);
        assert_eq!(c.corpus, 0.0);
    }
}

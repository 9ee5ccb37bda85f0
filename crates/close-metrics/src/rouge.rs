//! ROUGE-L (Lin 2004) as pycocoevalcap's `Rouge` computes it: longest common subsequence of
//! the candidate with each reference, the maximum precision and the maximum recall over the
//! references (taken independently), F-measure with β = 1.2; the corpus score is the mean
//! over images.
//!
//! Tokens are split on single spaces exactly like Python's `s.split(" ")` (so an empty
//! caption is one empty token, as in the original).

/// Per-image ROUGE-L and their mean.
#[derive(Clone, Debug, PartialEq)]
pub struct RougeL {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

fn lcs(a: &[&str], b: &[&str]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut prev = vec![0usize; short.len() + 1];
    let mut cur = vec![0usize; short.len() + 1];
    for x in long {
        for (j, y) in short.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

/// ROUGE-L of one candidate against its references.
pub fn rouge_l_one(candidate: &str, refs: &[String]) -> f64 {
    let beta2 = 1.2f64 * 1.2f64;
    let c: Vec<&str> = candidate.split(' ').collect();
    let mut prec_max = f64::NEG_INFINITY;
    let mut rec_max = f64::NEG_INFINITY;
    for r in refs {
        let rt: Vec<&str> = r.split(' ').collect();
        let l = lcs(&rt, &c) as f64;
        prec_max = prec_max.max(l / c.len() as f64);
        rec_max = rec_max.max(l / rt.len() as f64);
    }
    if !refs.is_empty() && prec_max != 0.0 && rec_max != 0.0 {
        ((1.0 + beta2) * prec_max * rec_max) / (rec_max + beta2 * prec_max)
    } else {
        0.0
    }
}

/// ROUGE-L of tokenized hypotheses against tokenized references.
pub fn rouge_l(refs: &[Vec<String>], hyps: &[String]) -> RougeL {
    use rayon::prelude::*;
    let per_image: Vec<f64> = hyps
        .par_iter()
        .zip(refs.par_iter())
        .map(|(h, r)| rouge_l_one(h, r))
        .collect();
    let corpus = if per_image.is_empty() {
        f64::NAN
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    RougeL { corpus, per_image }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_and_f_measure() {
        assert_eq!(lcs(&["a", "b", "c", "d"], &["a", "c", "d"]), 3);
        // P = 3/3, R = 3/4.
        let s = rouge_l_one("a c d", &["a b c d".into()]);
        let (p, r) = (1.0, 0.75);
        let b2 = 1.44;
        assert!((s - (1.0 + b2) * p * r / (r + b2 * p)).abs() < 1e-12);
        assert_eq!(rouge_l_one("x", &["a b".into()]), 0.0);
    }
}

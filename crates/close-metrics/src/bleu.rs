//! BLEU-1..4 as pycocoevalcap's `Bleu(4)` computes it (Papineni et al. 2002, in the
//! `bleu_scorer.py` variant by D. Chiang / H. Fang / T.-Y. Lin): clipped n-gram counts against
//! the per-n-gram maximum over references, the "closest" reference length (ties → the
//! shorter), the `tiny = 1e-15` / `small = 1e-9` smoothing, a corpus score from summed counts
//! and per-image scores with their own brevity penalty.
//!
//! Input captions are already tokenized (words separated by whitespace, split like Python's
//! `str.split()`).

use crate::ngrams::{count_ngrams, order, Interner};

const TINY: f64 = 1e-15;
const SMALL: f64 = 1e-9;

/// Corpus BLEU-1..4 and the per-image values (same order as the inputs).
#[derive(Clone, Debug, PartialEq)]
pub struct Bleu {
    pub corpus: [f64; 4],
    pub per_image: Vec<[f64; 4]>,
}

struct Cooked {
    testlen: usize,
    reflen: usize,
    guess: [usize; 4],
    correct: [usize; 4],
}

fn cook(interner: &mut Interner, hyp: &str, refs: &[String]) -> Cooked {
    let mut reflens = Vec::with_capacity(refs.len());
    let mut maxcounts = crate::ngrams::FxMap::default();
    for r in refs {
        let w = interner.words(r);
        reflens.push(w.len());
        for (g, c) in count_ngrams(&w) {
            let e = maxcounts.entry(g).or_insert(0u32);
            *e = (*e).max(c);
        }
    }
    let hw = interner.words(hyp);
    let testlen = hw.len();
    // "closest": min over (|l - testlen|, l).
    let reflen = reflens
        .iter()
        .copied()
        .min_by_key(|&l| (l.abs_diff(testlen), l))
        .unwrap_or(0);
    let mut guess = [0usize; 4];
    for (k, g) in guess.iter_mut().enumerate() {
        *g = (testlen + 1).saturating_sub(k + 1);
    }
    let mut correct = [0usize; 4];
    for (g, c) in count_ngrams(&hw) {
        correct[order(&g) - 1] += c.min(maxcounts.get(&g).copied().unwrap_or(0)) as usize;
    }
    Cooked {
        testlen,
        reflen,
        guess,
        correct,
    }
}

fn bleu_from(correct: &[usize; 4], guess: &[usize; 4], testlen: usize, reflen: usize) -> [f64; 4] {
    let mut out = [0.0; 4];
    let mut b = 1.0f64;
    for k in 0..4 {
        b *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        out[k] = b.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
    if ratio < 1.0 {
        let bp = (1.0 - 1.0 / ratio).exp();
        for v in out.iter_mut() {
            *v *= bp;
        }
    }
    out
}

/// BLEU of tokenized hypotheses against tokenized references (`refs[i]` belong to `hyps[i]`).
pub fn bleu(refs: &[Vec<String>], hyps: &[String]) -> Bleu {
    let mut interner = Interner::default();
    let cooked: Vec<Cooked> = hyps
        .iter()
        .zip(refs)
        .map(|(h, r)| cook(&mut interner, h, r))
        .collect();
    let mut tl = 0usize;
    let mut rl = 0usize;
    let mut guess = [0usize; 4];
    let mut correct = [0usize; 4];
    let per_image = cooked
        .iter()
        .map(|c| {
            tl += c.testlen;
            rl += c.reflen;
            for k in 0..4 {
                guess[k] += c.guess[k];
                correct[k] += c.correct[k];
            }
            bleu_from(&c.correct, &c.guess, c.testlen, c.reflen)
        })
        .collect();
    Bleu {
        corpus: bleu_from(&correct, &guess, tl, rl),
        per_image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_match_is_one() {
        let b = bleu(&[vec!["a b c d e".into()]], &["a b c d e".into()]);
        for v in b.corpus {
            assert!((v - 1.0).abs() < 1e-8);
        }
    }

    #[test]
    fn closest_reference_length_and_brevity_penalty() {
        // testlen 2, reflens 1 and 3 are equally close: the shorter (1) is taken, so no
        // brevity penalty; unigram precision 1/2.
        let b = bleu(&[vec!["a".into(), "x y z".into()]], &["a q".into()]);
        assert!((b.corpus[0] - 0.5).abs() < 1e-8, "{:?}", b.corpus);
        // Empty hypothesis: everything 0.
        let b = bleu(&[vec!["a b".into()]], &["".into()]);
        assert!(b.corpus.iter().all(|&v| v.abs() < 1e-12));
    }
}

//! Greedy decoding and beam search with a key/value cache, batched.
//!
//! The beam search follows HF transformers' `_beam_search` (v5) step for step, so that with
//! `num_beams = N`, `length_penalty = 0` (summed log-probability, as CLOSE decodes) and
//! `early_stopping = False` it returns the same beams: per step the top `2N` continuations of
//! all beams; those ending in EOS (or reaching `max_steps`) that rank among the top `N` become
//! finished hypotheses scored `logprob / len^length_penalty`; the best `N` others continue; an
//! item stops once its best running beam cannot beat its worst finished one.

use candle_core::{DType, Tensor, D};
use close_core::{Error, Result};

use crate::model::T5;

/// Decoding settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerateConfig {
    /// Maximum number of generated tokens (EOS included).
    pub max_steps: usize,
    /// 1 = greedy; N > 1 = beam search with N beams.
    pub beams: usize,
    /// Beam score = summed log-prob / length^length_penalty (0 = no length normalization).
    pub length_penalty: f64,
    /// End-of-sequence token; `None` = the model config's `eos_token_id`.
    pub eos_token_id: Option<u32>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_steps: 32,
            beams: 1,
            length_penalty: 0.0,
            eos_token_id: None,
        }
    }
}

impl GenerateConfig {
    /// Greedy decoding of at most `max_steps` tokens.
    pub fn greedy(max_steps: usize) -> Self {
        Self {
            max_steps,
            ..Self::default()
        }
    }

    /// Beam search (summed log-prob) with `beams` beams.
    pub fn beam(beams: usize, max_steps: usize) -> Self {
        Self {
            max_steps,
            beams,
            ..Self::default()
        }
    }
}

/// One decoded sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated tokens, without the decoder start token and without the final EOS.
    pub tokens: Vec<u32>,
    /// Summed log-probability of the generated tokens (EOS included when `finished`).
    pub logprob: f32,
    /// Ranking score: `logprob / len^length_penalty` (equal to `logprob` for penalty 0).
    pub score: f32,
    /// Whether the sequence ended with EOS (otherwise it hit `max_steps`).
    pub finished: bool,
}

const NEG: f32 = -1.0e9;

impl T5 {
    /// Decodes from encoder outputs `enc_out [B, L, D]` with mask `[B, L]`. Returns, per batch
    /// item, the hypotheses best first: one for greedy, `beams` for beam search.
    pub fn generate(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        cfg: &GenerateConfig,
    ) -> Result<Vec<Vec<Hypothesis>>> {
        if cfg.max_steps == 0 {
            return Err(Error::config("max_steps", "must be at least 1"));
        }
        if cfg.max_steps > self.config().n_positions {
            return Err(Error::config(
                "max_steps",
                format!(
                    "{} exceeds the model limit n_positions = {}",
                    cfg.max_steps,
                    self.config().n_positions
                ),
            ));
        }
        if cfg.beams == 0 {
            return Err(Error::config("beams", "must be at least 1"));
        }
        let (_, l, d) = enc_out.dims3()?;
        if d != self.config().d_model {
            return Err(Error::Shape {
                what: "generate: enc_out".into(),
                expected: vec![enc_out.dim(0)?, l, self.config().d_model],
                got: enc_out.dims().to_vec(),
            });
        }
        let eos = cfg.eos_token_id.unwrap_or(self.config().eos_token_id);
        if cfg.beams == 1 {
            self.greedy(enc_out, enc_mask, cfg.max_steps, eos)
        } else {
            self.beam_search(enc_out, enc_mask, cfg, eos)
        }
    }

    fn greedy(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        max_steps: usize,
        eos: u32,
    ) -> Result<Vec<Vec<Hypothesis>>> {
        let b = enc_out.dim(0)?;
        let dev = enc_out.device().clone();
        let mut cache = self.init_cache(enc_out, enc_mask, 1)?;
        let mut hyps = vec![
            Hypothesis {
                tokens: vec![],
                logprob: 0.0,
                score: 0.0,
                finished: false
            };
            b
        ];
        let mut ids = vec![self.config().decoder_start_token_id; b];
        let pad = self.config().pad_token_id;
        for _ in 0..max_steps {
            let lp = self.decode_step(&mut cache, &Tensor::from_vec(ids.clone(), b, &dev)?)?;
            let best = lp.argmax_keepdim(D::Minus1)?;
            let best_lp = lp.gather(&best, D::Minus1)?.squeeze(1)?.to_vec1::<f32>()?;
            let best = best.squeeze(1)?.to_vec1::<u32>()?;
            for i in 0..b {
                if hyps[i].finished {
                    ids[i] = pad;
                    continue;
                }
                hyps[i].logprob += best_lp[i];
                ids[i] = best[i];
                if best[i] == eos {
                    hyps[i].finished = true;
                } else {
                    hyps[i].tokens.push(best[i]);
                }
            }
            if hyps.iter().all(|h| h.finished) {
                break;
            }
        }
        Ok(hyps
            .into_iter()
            .map(|mut h| {
                h.score = h.logprob;
                vec![h]
            })
            .collect())
    }

    fn beam_search(
        &self,
        enc_out: &Tensor,
        enc_mask: &Tensor,
        cfg: &GenerateConfig,
        eos: u32,
    ) -> Result<Vec<Vec<Hypothesis>>> {
        let p = BeamParams {
            nb: cfg.beams,
            vocab: self.config().vocab_size,
            keep: 2 * cfg.beams,
            eos,
            lp_pen: cfg.length_penalty,
        };
        let b = enc_out.dim(0)?;
        let n = b * p.nb;
        let dev = enc_out.device().clone();
        let mut cache = self.init_cache(enc_out, enc_mask, p.nb)?;
        let mut st = BeamState::new(b, p.nb, self.config().decoder_start_token_id);

        for step in 0..cfg.max_steps {
            let last = step + 1 >= cfg.max_steps;
            let lp = self.decode_step(&mut cache, &Tensor::from_vec(st.ids.clone(), n, &dev)?)?;
            let scores = Tensor::from_vec(st.run_scores.clone(), (n, 1), &dev)?;
            let acc = lp
                .broadcast_add(&scores)?
                .to_dtype(DType::F32)?
                .reshape((b, p.nb * p.vocab))?;
            let acc = acc.to_vec2::<f32>()?;
            let gen_len = (step + 1) as f64;
            let mut next = NextBeams::with_capacity(n);
            for (item, row) in acc.iter().enumerate() {
                st.advance_item(&p, item, row, gen_len, last, &mut next);
            }
            st.run_tokens = next.tokens;
            st.run_scores = next.scores;
            st.ids = next.ids;
            if last {
                break;
            }
            self.reorder_cache(&mut cache, next.rows);
            if !st.update_improvable(&p, (step + 1) as f64) {
                break;
            }
        }
        Ok(st.into_hypotheses())
    }
}

/// Settings of one beam search, fixed over its steps.
struct BeamParams {
    /// Beams per item.
    nb: usize,
    vocab: usize,
    /// Continuations considered per item and step (`2 * nb`, as HF).
    keep: usize,
    eos: u32,
    /// Length penalty exponent of finished scores.
    lp_pen: f64,
}

/// A finished hypothesis: (score, logprob, tokens, ended_with_eos); a score of `NEG` marks an
/// empty slot.
type Finished = (f32, f32, Vec<u32>, bool);

/// What a beam search carries from one step to the next.
struct BeamState {
    /// Tokens of the running beams (row = item * nb + beam).
    run_tokens: Vec<Vec<u32>>,
    /// Summed log-probabilities of the running beams.
    run_scores: Vec<f32>,
    /// Last token of each running beam (the next decoder input).
    ids: Vec<u32>,
    /// The best `nb` finished hypotheses per item.
    fin: Vec<Vec<Finished>>,
    /// Per item: whether a running beam can still beat the worst finished one.
    improvable: Vec<bool>,
}

/// The running beams chosen during a step: source row, tokens, score and last token each.
struct NextBeams {
    rows: Vec<u32>,
    tokens: Vec<Vec<u32>>,
    scores: Vec<f32>,
    ids: Vec<u32>,
}

impl NextBeams {
    /// Room for `n` beams.
    fn with_capacity(n: usize) -> Self {
        NextBeams {
            rows: Vec::with_capacity(n),
            tokens: Vec::with_capacity(n),
            scores: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
        }
    }
}

impl BeamState {
    /// `b` items of `nb` beams, each starting from `start`; only the first beam of an item is
    /// live (the others score `NEG`), so the first step does not pick duplicates.
    fn new(b: usize, nb: usize, start: u32) -> Self {
        let n = b * nb;
        BeamState {
            run_tokens: vec![Vec::new(); n],
            run_scores: (0..n)
                .map(|r| if r % nb == 0 { 0.0 } else { NEG })
                .collect(),
            ids: vec![start; n],
            fin: vec![vec![(NEG, NEG, Vec::new(), false); nb]; b],
            improvable: vec![true; b],
        }
    }

    /// One step of one item: of the top `keep` continuations (`row` = accumulated scores
    /// over beams × vocabulary), those ending (EOS or last step) that rank among the top
    /// `nb` become finished hypotheses; the best `nb` by penalised score go to `next`.
    fn advance_item(
        &mut self,
        p: &BeamParams,
        item: usize,
        row: &[f32],
        gen_len: f64,
        last: bool,
        next: &mut NextBeams,
    ) {
        let nb = p.nb;
        let cands = top_k(row, p.keep);
        // (score with hit penalty, beam, token, raw score)
        let mut running: Vec<(f32, usize, u32, f32)> = Vec::with_capacity(p.keep);
        for (rank, &(score, flat)) in cands.iter().enumerate() {
            let (beam, tok) = (flat / p.vocab, (flat % p.vocab) as u32);
            let hit = tok == p.eos || last;
            running.push((if hit { score + NEG } else { score }, beam, tok, score));
            if hit && rank < nb && self.improvable[item] {
                let src = &self.run_tokens[item * nb + beam];
                let mut toks = src.clone();
                if tok != p.eos {
                    toks.push(tok);
                }
                let s = (score as f64 / gen_len.powf(p.lp_pen)) as f32;
                self.fin[item].push((s, score, toks, tok == p.eos));
            }
        }
        keep_best_finished(&mut self.fin[item], nb);
        // Best nb running continuations (stable order by penalised score).
        let mut ord: Vec<usize> = (0..running.len()).collect();
        ord.sort_by(|&a, &c| {
            running[c]
                .0
                .partial_cmp(&running[a].0)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        for &ri in ord.iter().take(nb) {
            let (s, beam, tok, _) = running[ri];
            let src = item * nb + beam;
            next.rows.push(src as u32);
            let mut toks = self.run_tokens[src].clone();
            toks.push(tok);
            next.tokens.push(toks);
            next.scores.push(s);
            next.ids.push(tok);
        }
    }

    /// HF's early-stop heuristic (`early_stopping = False`) after `cur` generated tokens: an
    /// item stays improvable while its finished slots are not full or its best running beam
    /// beats its worst finished one. Returns whether any item is still improvable.
    fn update_improvable(&mut self, p: &BeamParams, cur: f64) -> bool {
        let nb = p.nb;
        for item in 0..self.improvable.len() {
            let best = (self.run_scores[item * nb] as f64 / cur.powf(p.lp_pen)) as f32;
            let f = &self.fin[item];
            let full = f.len() == nb && f.iter().all(|h| h.0 > NEG);
            let worst = f.iter().map(|h| h.0).fold(f32::INFINITY, f32::min);
            self.improvable[item] = self.improvable[item] && (!full || best > worst);
        }
        self.improvable.iter().any(|&x| x)
    }

    /// The finished hypotheses of each item, best first (empty slots dropped).
    fn into_hypotheses(self) -> Vec<Vec<Hypothesis>> {
        self.fin
            .into_iter()
            .map(|f| {
                f.into_iter()
                    .filter(|h| h.0 > NEG)
                    .map(|(score, logprob, tokens, finished)| Hypothesis {
                        tokens,
                        logprob,
                        score,
                        finished,
                    })
                    .collect()
            })
            .collect()
    }
}

/// Keep the best `nb` finished hypotheses, best first (stable: earlier entries win ties, as
/// topk on the concatenation [old, new] does in practice).
fn keep_best_finished(f: &mut Vec<Finished>, nb: usize) {
    let mut order: Vec<usize> = (0..f.len()).collect();
    order.sort_by(|&a, &c| {
        f[c].0
            .partial_cmp(&f[a].0)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let kept: Vec<_> = order.into_iter().take(nb).map(|i| f[i].clone()).collect();
    *f = kept;
}

/// The `k` largest values of `row` with their indices, best first (ties: lower index first).
fn top_k(row: &[f32], k: usize) -> Vec<(f32, usize)> {
    let k = k.min(row.len());
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (i, &x) in row.iter().enumerate() {
        if best.len() == k {
            // Only a value strictly above the k-th best (never NaN) gets in.
            if let Some(&(w, _)) = best.last() {
                if x.partial_cmp(&w) != Some(std::cmp::Ordering::Greater) {
                    continue;
                }
            }
        }
        let pos = best.iter().position(|&(y, _)| x > y).unwrap_or(best.len());
        best.insert(pos, (x, i));
        if best.len() > k {
            best.pop();
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_picks_largest_in_order() {
        let r = [0.1, 3.0, -1.0, 3.0, 2.0, f32::NEG_INFINITY];
        assert_eq!(top_k(&r, 3), vec![(3.0, 1), (3.0, 3), (2.0, 4)]);
        assert_eq!(top_k(&r, 10).len(), 6);
    }
}

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
        let nb = cfg.beams;
        let b = enc_out.dim(0)?;
        let n = b * nb;
        let dev = enc_out.device().clone();
        let vocab = self.config().vocab_size;
        let keep = 2 * nb;
        let lp_pen = cfg.length_penalty;
        let mut cache = self.init_cache(enc_out, enc_mask, nb)?;

        // Running beams (row = item * nb + beam).
        let mut run_tokens: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut run_scores: Vec<f32> = (0..n)
            .map(|r| if r % nb == 0 { 0.0 } else { NEG })
            .collect();
        let mut ids = vec![self.config().decoder_start_token_id; n];
        // Finished hypotheses per item: (score, logprob, tokens, ended_with_eos); NEG = empty slot.
        type Finished = (f32, f32, Vec<u32>, bool);
        let mut fin: Vec<Vec<Finished>> = vec![vec![(NEG, NEG, Vec::new(), false); nb]; b];
        let mut improvable = vec![true; b];

        for step in 0..cfg.max_steps {
            let last = step + 1 >= cfg.max_steps;
            let lp = self.decode_step(&mut cache, &Tensor::from_vec(ids.clone(), n, &dev)?)?;
            let scores = Tensor::from_vec(run_scores.clone(), (n, 1), &dev)?;
            let acc = lp
                .broadcast_add(&scores)?
                .to_dtype(DType::F32)?
                .reshape((b, nb * vocab))?;
            let acc = acc.to_vec2::<f32>()?;
            let gen_len = (step + 1) as f64;
            let mut new_rows = Vec::with_capacity(n);
            let mut new_tokens = Vec::with_capacity(n);
            let mut new_scores = Vec::with_capacity(n);
            let mut new_ids = Vec::with_capacity(n);
            for (item, row) in acc.iter().enumerate() {
                let cands = top_k(row, keep);
                // (score with hit penalty, beam, token, raw score, hit)
                let mut running: Vec<(f32, usize, u32, f32)> = Vec::with_capacity(keep);
                for (rank, &(score, flat)) in cands.iter().enumerate() {
                    let (beam, tok) = (flat / vocab, (flat % vocab) as u32);
                    let hit = tok == eos || last;
                    running.push((if hit { score + NEG } else { score }, beam, tok, score));
                    if hit && rank < nb && improvable[item] {
                        let src = &run_tokens[item * nb + beam];
                        let mut toks = src.clone();
                        if tok != eos {
                            toks.push(tok);
                        }
                        let s = (score as f64 / gen_len.powf(lp_pen)) as f32;
                        fin[item].push((s, score, toks, tok == eos));
                    }
                }
                // Keep the best nb finished (stable: earlier entries win ties, as topk on the
                // concatenation [old, new] does in practice).
                let f = &mut fin[item];
                let mut order: Vec<usize> = (0..f.len()).collect();
                order.sort_by(|&a, &c| {
                    f[c].0
                        .partial_cmp(&f[a].0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                let kept: Vec<_> = order.into_iter().take(nb).map(|i| f[i].clone()).collect();
                *f = kept;
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
                    new_rows.push(src as u32);
                    let mut toks = run_tokens[src].clone();
                    toks.push(tok);
                    new_tokens.push(toks);
                    new_scores.push(s);
                    new_ids.push(tok);
                }
            }
            run_tokens = new_tokens;
            run_scores = new_scores;
            ids = new_ids;
            if last {
                break;
            }
            self.reorder_cache(&mut cache, &Tensor::from_vec(new_rows, n, &dev)?)?;
            // Early-stop heuristic (HF, early_stopping = False).
            let cur = (step + 1) as f64;
            for item in 0..b {
                let best = (run_scores[item * nb] as f64 / cur.powf(lp_pen)) as f32;
                let f = &fin[item];
                let full = f.len() == nb && f.iter().all(|h| h.0 > NEG);
                let worst = f.iter().map(|h| h.0).fold(f32::INFINITY, f32::min);
                improvable[item] = improvable[item] && (!full || best > worst);
            }
            if improvable.iter().all(|&x| !x) {
                break;
            }
        }
        Ok(fin
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
            .collect())
    }
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

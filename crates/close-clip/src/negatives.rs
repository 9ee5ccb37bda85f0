//! Hard negative captions for contrastive training, in the manner of NegCLIP (Yuksekgonul
//! et al., "When and why vision-language models behave like bags-of-words", ICLR 2023).
//!
//! With in-batch negatives alone, a CLIP can tell a caption from the others of a batch by a
//! few easy words (a colour, a count) and never learn which attribute belongs to which
//! object. A hard negative is the image's own caption with one word changed, so that only
//! the changed attribute separates it from the truth.
//!
//! The words that may be exchanged are given as groups of mutually exclusive words (colours,
//! shapes, `left`/`right`, ...; never synonyms). A caption's negative either swaps two
//! different words of one group within it (`a red star above a blue circle` → `a blue star
//! above a red circle`: the binding is wrong, the words are the same) or replaces one word
//! with another word of its group.

use std::collections::HashMap;

use rand::Rng;

use close_core::{Error, Result};

/// Makes hard negatives from captions (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct NegativeMaker {
    /// Lower-case word → the groups it belongs to.
    groups_of: HashMap<String, Vec<usize>>,
    groups: Vec<Vec<String>>,
}

/// Characters kept aside when a word is matched (`circle.` matches `circle`).
fn split_punct(token: &str) -> (&str, &str) {
    let core = token.trim_end_matches(['.', ',', ':', ';', '!', '?']);
    (core, &token[core.len()..])
}

impl NegativeMaker {
    /// `groups`: lists of mutually exclusive single words. Each group needs at least two
    /// distinct words; matching ignores case.
    pub fn new(groups: &[Vec<String>]) -> Result<Self> {
        let mut out = NegativeMaker::default();
        for (g, words) in groups.iter().enumerate() {
            let mut clean: Vec<String> = Vec::with_capacity(words.len());
            for w in words {
                let w = w.trim().to_lowercase();
                if w.is_empty() || w.contains(char::is_whitespace) {
                    return Err(Error::config(
                        "hard_negative_groups",
                        format!("group {g}: `{w}` is not a single word"),
                    ));
                }
                if !clean.contains(&w) {
                    clean.push(w);
                }
            }
            if clean.len() < 2 {
                return Err(Error::config(
                    "hard_negative_groups",
                    format!("group {g} needs at least two distinct words, has {words:?}"),
                ));
            }
            for w in &clean {
                out.groups_of.entry(w.clone()).or_default().push(g);
            }
            out.groups.push(clean);
        }
        Ok(out)
    }

    /// Whether no word can be exchanged (no groups).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// A hard negative of `caption`, or `None` when it has no exchangeable word. Half of the
    /// time (when possible) two different words of one group trade places; otherwise one
    /// word is replaced by another of its group. Punctuation attached to a word is kept.
    pub fn negative(&self, caption: &str, rng: &mut impl Rng) -> Option<String> {
        let mut tokens: Vec<String> = caption.split_whitespace().map(str::to_string).collect();
        // (token index, lower-case core, groups)
        let found: Vec<(usize, String, &Vec<usize>)> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let core = split_punct(t).0.to_lowercase();
                self.groups_of.get(&core).map(|g| (i, core, g))
            })
            .collect();
        if found.is_empty() {
            return None;
        }
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        for (a, (_, wa, ga)) in found.iter().enumerate() {
            for (b, (_, wb, gb)) in found.iter().enumerate().skip(a + 1) {
                if wa != wb && ga.iter().any(|g| gb.contains(g)) {
                    pairs.push((a, b));
                }
            }
        }
        let replace = |tokens: &mut Vec<String>, i: usize, word: &str| {
            let punct = split_punct(&tokens[i]).1.to_string();
            tokens[i] = format!("{word}{punct}");
        };
        if !pairs.is_empty() && rng.random_bool(0.5) {
            let (a, b) = pairs[rng.random_range(0..pairs.len())];
            let (ia, wa, _) = &found[a];
            let (ib, wb, _) = &found[b];
            replace(&mut tokens, *ia, wb);
            replace(&mut tokens, *ib, wa);
        } else {
            let (i, w, gs) = &found[rng.random_range(0..found.len())];
            let alternatives: Vec<&String> = gs
                .iter()
                .flat_map(|&g| self.groups[g].iter())
                .filter(|x| *x != w)
                .collect();
            let pick = alternatives[rng.random_range(0..alternatives.len())].clone();
            replace(&mut tokens, *i, &pick);
        }
        Some(tokens.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn groups() -> Vec<Vec<String>> {
        let g = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        vec![
            g(&["red", "blue", "green"]),
            g(&["circle", "star"]),
            g(&["small", "large"]),
            g(&["small", "big"]),
        ]
    }

    #[test]
    fn negatives_differ_by_one_exchange_of_group_words() -> Result<()> {
        let m = NegativeMaker::new(&groups())?;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let cap = "A red star above a blue circle.";
        let (mut swaps, mut replaces) = (0, 0);
        for _ in 0..200 {
            let neg = m.negative(cap, &mut rng).expect("has group words");
            assert_ne!(neg.to_lowercase(), cap.to_lowercase());
            let a: Vec<&str> = cap.split(' ').collect();
            let b: Vec<&str> = neg.split(' ').collect();
            assert_eq!(a.len(), b.len());
            assert!(neg.ends_with('.'), "{neg}");
            let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            match diff.len() {
                1 => replaces += 1,
                2 => {
                    // a swap: the same words, traded
                    let (i, j) = (diff[0], diff[1]);
                    assert_eq!(split_punct(a[i]).0, split_punct(b[j]).0, "{neg}");
                    assert_eq!(split_punct(a[j]).0, split_punct(b[i]).0, "{neg}");
                    swaps += 1;
                }
                _ => panic!("{neg}"),
            }
        }
        assert!(
            swaps > 50 && replaces > 50,
            "{swaps} swaps, {replaces} replaces"
        );
        Ok(())
    }

    #[test]
    fn a_word_in_two_groups_takes_alternatives_from_both_and_never_a_synonym() -> Result<()> {
        let m = NegativeMaker::new(&groups())?;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.insert(m.negative("one small shape", &mut rng).expect("small"));
            // `large` and `big` are not exchanged for each other
            assert_eq!(
                m.negative("a big shape", &mut rng).as_deref(),
                Some("a small shape")
            );
        }
        let want: std::collections::HashSet<String> = ["one large shape", "one big shape"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(seen, want);
        assert_eq!(
            m.negative("three shapes on a light background", &mut rng),
            None
        );
        Ok(())
    }

    #[test]
    fn bad_groups_are_rejected_with_the_flag_name() {
        let one = vec![vec!["red".to_string(), "Red".to_string()]];
        let e = NegativeMaker::new(&one).unwrap_err().to_string();
        assert!(
            e.contains("hard_negative_groups") && e.contains("two distinct"),
            "{e}"
        );
        let phrase = vec![vec!["to the left".to_string(), "right".to_string()]];
        assert!(NegativeMaker::new(&phrase).is_err());
        assert!(NegativeMaker::new(&[])
            .map(|m| m.is_empty())
            .unwrap_or(false));
    }
}

//! Shortcut baselines that show how much of a task can be solved without the image:
//! a hypothesis-only classifier for visual entailment (multinomial naive Bayes on word
//! unigrams and bigrams, trained on the train split, scored on another split) and a
//! question-only prior for VQA (the most common train answer of the exact question text,
//! else of its question type).

use std::collections::HashMap;

/// Lowercased words, split at white space and `, . : ?`.
fn tokens(s: &str) -> Vec<String> {
    s.split(|c: char| c.is_whitespace() || c == ',' || c == '.' || c == ':' || c == '?')
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .collect()
}

fn features(s: &str) -> Vec<String> {
    let toks = tokens(s);
    let mut f: Vec<String> = toks.clone();
    for w in toks.windows(2) {
        f.push(format!("{} {}", w[0], w[1]));
    }
    f
}

/// Accuracy (0–1) of a naive Bayes classifier trained on `train` `(text, class)` pairs and
/// scored on `test`. Returns `None` when either set is empty.
pub fn naive_bayes_accuracy(train: &[(String, String)], test: &[(String, String)]) -> Option<f64> {
    if train.is_empty() || test.is_empty() {
        return None;
    }
    let mut class_n: HashMap<&str, f64> = HashMap::new();
    let mut counts: HashMap<&str, HashMap<String, f64>> = HashMap::new();
    let mut totals: HashMap<&str, f64> = HashMap::new();
    let mut vocab: std::collections::HashSet<String> = Default::default();
    for (text, c) in train {
        *class_n.entry(c).or_default() += 1.0;
        let m = counts.entry(c).or_default();
        for f in features(text) {
            *m.entry(f.clone()).or_default() += 1.0;
            *totals.entry(c).or_default() += 1.0;
            vocab.insert(f);
        }
    }
    let v = vocab.len() as f64;
    let n = train.len() as f64;
    let mut classes: Vec<&str> = class_n.keys().copied().collect();
    classes.sort();
    let mut correct = 0usize;
    for (text, gold) in test {
        let fs = features(text);
        let mut best: Option<(&str, f64)> = None;
        for &c in &classes {
            let m = &counts[c];
            let t = totals.get(c).copied().unwrap_or(0.0);
            let mut lp = (class_n[c] / n).ln();
            for f in &fs {
                lp += ((m.get(f).copied().unwrap_or(0.0) + 1.0) / (t + v)).ln();
            }
            if best.is_none_or(|(_, b)| lp > b) {
                best = Some((c, lp));
            }
        }
        if best.map(|(c, _)| c) == Some(gold.as_str()) {
            correct += 1;
        }
    }
    Some(correct as f64 / test.len() as f64)
}

/// Accuracy (0–1, exact match) of answering each test question with the most common train
/// answer of the same question text, falling back to the most common answer of its type.
/// Items are `(question, question_type, answer)`.
pub fn question_prior_accuracy(
    train: &[(String, String, String)],
    test: &[(String, String, String)],
) -> Option<f64> {
    if train.is_empty() || test.is_empty() {
        return None;
    }
    fn top(m: &HashMap<String, usize>) -> Option<String> {
        let mut v: Vec<(&String, &usize)> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.first().map(|(a, _)| (*a).clone())
    }
    let mut by_q: HashMap<&str, HashMap<String, usize>> = HashMap::new();
    let mut by_t: HashMap<&str, HashMap<String, usize>> = HashMap::new();
    for (q, t, a) in train {
        *by_q.entry(q).or_default().entry(a.clone()).or_default() += 1;
        *by_t.entry(t).or_default().entry(a.clone()).or_default() += 1;
    }
    let mut correct = 0usize;
    for (q, t, a) in test {
        let guess = by_q
            .get(q.as_str())
            .and_then(top)
            .or_else(|| by_t.get(t.as_str()).and_then(top));
        if guess.as_deref() == Some(a.as_str()) {
            correct += 1;
        }
    }
    Some(correct as f64 / test.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_bayes_learns_a_word_cue_and_not_noise() {
        let mk = |t: &str, c: &str| (t.to_string(), c.to_string());
        let train = vec![
            mk("the cat is wood", "n"),
            mk("a dog is wood", "n"),
            mk("the cat is red", "e"),
            mk("a dog is red", "e"),
        ];
        let test = vec![mk("the bird is wood", "n"), mk("the bird is red", "e")];
        assert_eq!(naive_bayes_accuracy(&train, &test), Some(1.0));
        let test = vec![mk("the bird is blue", "n"), mk("the bird is blue", "e")];
        assert_eq!(naive_bayes_accuracy(&train, &test), Some(0.5));
    }

    #[test]
    fn question_prior_uses_text_then_type() {
        let mk = |q: &str, t: &str, a: &str| (q.to_string(), t.to_string(), a.to_string());
        let train = vec![
            mk("is it?", "yn", "yes"),
            mk("is it?", "yn", "yes"),
            mk("is that?", "yn", "no"),
        ];
        let test = vec![mk("is it?", "yn", "yes"), mk("new?", "yn", "no")];
        // "new?" falls back to the type's top answer: yes (2) > no (1)
        assert_eq!(question_prior_accuracy(&train, &test), Some(0.5));
    }
}

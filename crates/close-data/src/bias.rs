//! Shortcut baselines that show how much of a task can be solved without the image:
//! a hypothesis-only classifier for visual entailment (multinomial naive Bayes on word
//! unigrams and bigrams, trained on the train split, scored on another split) and a
//! question-only prior for VQA (the most common train answer of the exact question text,
//! else of its question type).

use std::collections::{HashMap, HashSet};

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

/// A multinomial naive Bayes classifier on word unigrams and bigrams with add-one
/// smoothing, trained one example at a time.
#[derive(Debug, Default)]
pub struct NaiveBayes {
    class_n: HashMap<String, f64>,
    counts: HashMap<String, HashMap<String, f64>>,
    totals: HashMap<String, f64>,
    vocab: HashSet<String>,
    n: f64,
}

impl NaiveBayes {
    /// Learn from one `(text, class)` example.
    pub fn add(&mut self, text: &str, class: &str) {
        *self.class_n.entry(class.to_string()).or_default() += 1.0;
        self.n += 1.0;
        let m = self.counts.entry(class.to_string()).or_default();
        let total = self.totals.entry(class.to_string()).or_default();
        for f in features(text) {
            *m.entry(f.clone()).or_default() += 1.0;
            *total += 1.0;
            self.vocab.insert(f);
        }
    }

    /// The most likely class of `text` (ties go to the first class in name order); `None`
    /// before any example.
    pub fn predict(&self, text: &str) -> Option<&str> {
        let fs = features(text);
        let v = self.vocab.len() as f64;
        let mut classes: Vec<&str> = self.class_n.keys().map(String::as_str).collect();
        classes.sort();
        let mut best: Option<(&str, f64)> = None;
        for c in classes {
            let m = &self.counts[c];
            let t = self.totals.get(c).copied().unwrap_or(0.0);
            let mut lp = (self.class_n[c] / self.n).ln();
            for f in &fs {
                lp += ((m.get(f).copied().unwrap_or(0.0) + 1.0) / (t + v)).ln();
            }
            if best.is_none_or(|(_, b)| lp > b) {
                best = Some((c, lp));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// The question-only VQA prior: the most common train answer of the exact question text,
/// else of its question type; trained one question at a time.
#[derive(Debug, Default)]
pub struct QuestionPrior {
    by_question: HashMap<String, HashMap<String, usize>>,
    by_type: HashMap<String, HashMap<String, usize>>,
}

impl QuestionPrior {
    /// Learn from one question with its type and answer.
    pub fn add(&mut self, question: &str, question_type: &str, answer: &str) {
        let q = self.by_question.entry(question.to_string()).or_default();
        *q.entry(answer.to_string()).or_default() += 1;
        let t = self.by_type.entry(question_type.to_string()).or_default();
        *t.entry(answer.to_string()).or_default() += 1;
    }

    /// The prior's answer (ties go to the first answer in name order); `None` when neither
    /// the question nor its type was seen.
    pub fn guess(&self, question: &str, question_type: &str) -> Option<&str> {
        fn top(m: &HashMap<String, usize>) -> Option<&str> {
            let best = m.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
            best.map(|(a, _)| a.as_str())
        }
        self.by_question
            .get(question)
            .and_then(top)
            .or_else(|| self.by_type.get(question_type).and_then(top))
    }
}

/// Accuracy (0–1) of a naive Bayes classifier trained on `train` `(text, class)` pairs and
/// scored on `test`. Returns `None` when either set is empty.
pub fn naive_bayes_accuracy(train: &[(String, String)], test: &[(String, String)]) -> Option<f64> {
    if train.is_empty() || test.is_empty() {
        return None;
    }
    let mut nb = NaiveBayes::default();
    for (text, c) in train {
        nb.add(text, c);
    }
    let correct = test
        .iter()
        .filter(|(text, gold)| nb.predict(text) == Some(gold.as_str()))
        .count();
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
    let mut prior = QuestionPrior::default();
    for (q, t, a) in train {
        prior.add(q, t, a);
    }
    let correct = test
        .iter()
        .filter(|(q, t, a)| prior.guess(q, t) == Some(a.as_str()))
        .count();
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

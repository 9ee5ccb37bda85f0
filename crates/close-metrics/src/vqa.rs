//! VQA accuracy exactly as the official evaluator computes it (GT-Vision-Lab/VQA,
//! `PythonEvaluationTools/vqaEvaluation/vqaEval.py` at a013f00, Python 2).
//!
//! Per question:
//! 1. Every ground-truth answer and the predicted answer get `\n`/`\t` → space and `strip()`.
//! 2. **Only if the ground-truth answers are not all identical** (`len(set(gt)) > 1`), all of
//!    them and the prediction are normalised: punctuation, then digits/articles/contractions.
//!    (So with ten identical answers, `"Yes"` does not match `"yes"`.)
//!    * punctuation: for each of ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !``: deleted if
//!      the *original* text has it followed or preceded by a space, or has a digit-comma-digit
//!      anywhere; otherwise replaced by a space. Then periods not followed by an ASCII digit are
//!      deleted — at most 32 of them, because the official code passes `re.UNICODE` (= 32) as
//!      `re.sub`'s `count` argument. (`'`, `:`, `*`, `#`, `$`, `%`, `&` are untouched.)
//!    * lower-case, split on whitespace, number words `none zero one … ten` → digits, drop
//!      `a an the`, then map contraction forms without apostrophe (`dont` → `don't`, …) with the
//!      official table (its oddities included, e.g. `somebody'd` → `somebodyd`).
//! 3. Accuracy = mean over the ten ground-truth answers of `min(1, #other answers equal to the
//!    prediction / 3)`, where "other" excludes every answer record equal to the held-out one
//!    (the official code compares whole answer dicts: answer, confidence, id).
//!
//! Overall, per answer type and per question type: `round(100 · mean, 2)` with Python 2's
//! `round` (exact decimal value, halves away from zero); per question `round(100 · acc, 2)`.
//! Sums run in annotation order as in the official code.
//!
//! # Bad input
//! * The set of result question ids must equal the set of annotation question ids — an
//!   error otherwise, as the official `loadRes` asserts (we name the missing / extra ids).
//! * A question id twice in the results: error (the official code silently keeps the last
//!   one; we refuse, since it hides a bug in the producer). Twice in the annotations: error.
//! * For "Multiple Choice" question files, every answer must be one of the choices (as the
//!   official `loadRes` asserts).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use close_core::{Error, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::ngrams::py_is_space;

/// One ground-truth answer record. Two records are "the same" (for leave-one-out) when the
/// answer text and all other fields (`answer_confidence`, `answer_id`, …) are equal.
#[derive(Clone, Debug, PartialEq)]
pub struct GtAnswer {
    pub answer: String,
    /// All other fields of the record.
    pub rest: BTreeMap<String, Value>,
}

impl GtAnswer {
    /// A record with an `answer_id` (records with distinct ids are always distinct).
    pub fn new(answer: impl Into<String>, answer_id: u64) -> Self {
        let mut rest = BTreeMap::new();
        rest.insert("answer_id".to_string(), Value::from(answer_id));
        GtAnswer {
            answer: answer.into(),
            rest,
        }
    }
}

/// One annotated question.
#[derive(Clone, Debug)]
pub struct VqaQuestion {
    pub question_id: u64,
    pub question_type: String,
    pub answer_type: String,
    pub answers: Vec<GtAnswer>,
}

/// Official-format results (0–100 scale, rounded to 2 decimals like the official code).
#[derive(Clone, Debug, PartialEq)]
pub struct VqaScores {
    pub overall: f64,
    pub per_answer_type: BTreeMap<String, f64>,
    pub per_question_type: BTreeMap<String, f64>,
    /// `evalQA`: per question, 0–100 rounded to 2 decimals.
    pub per_question: BTreeMap<u64, f64>,
}

impl VqaScores {
    /// `{"overall":…,"perAnswerType":{…},"perQuestionType":{…}}` (the official `accuracy`).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "overall": self.overall,
            "perAnswerType": self.per_answer_type,
            "perQuestionType": self.per_question_type,
        })
    }
}

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

const NUMBER_WORDS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// The official contraction table (data, including its upper-case keys that can never
/// match after lower-casing, and its reversed `somebody'd` entry).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// Python 2 `unicode.strip()` after the official `\n`/`\t` replacement.
fn clean(s: &str) -> String {
    s.replace(['\n', '\t'], " ")
        .trim_matches(py_is_space)
        .to_string()
}

/// True if `s` contains ASCII digit, comma, ASCII digit (the official `commaStrip` search).
fn has_digit_comma_digit(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b',' && w[2].is_ascii_digit())
}

/// The official `processPunctuation`.
pub fn process_punctuation(in_text: &str) -> String {
    let comma = has_digit_comma_digit(in_text);
    let mut out = in_text.to_string();
    for p in PUNCT {
        let mut sp = String::with_capacity(2);
        sp.push(p);
        sp.push(' ');
        let mut ps = String::with_capacity(2);
        ps.push(' ');
        ps.push(p);
        if in_text.contains(&sp) || in_text.contains(&ps) || comma {
            out = out.replace(p, "");
        } else {
            out = out.replace(p, " ");
        }
    }
    // `periodStrip.sub("", out, re.UNICODE)`: the third positional argument is `count` = 32.
    let chars: Vec<char> = out.chars().collect();
    let mut res = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_is_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c == '.' && !next_is_digit && removed < 32 {
            removed += 1;
            continue;
        }
        res.push(c);
    }
    res
}

/// Python 2 `unicode.lower()`: simple (one-to-one) case mapping, no final-sigma rule.
fn py2_lower(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\u{130}' {
                'i'
            } else {
                c.to_lowercase().next().unwrap_or(c)
            }
        })
        .collect()
}

/// The official `processDigitArticle`.
pub fn process_digit_article(in_text: &str) -> String {
    let lower = py2_lower(in_text);
    let mut words: Vec<&str> = Vec::new();
    for w in lower.split(py_is_space).filter(|w| !w.is_empty()) {
        let w = NUMBER_WORDS
            .iter()
            .find(|(k, _)| *k == w)
            .map_or(w, |(_, v)| v);
        if !ARTICLES.contains(&w) {
            words.push(w);
        }
    }
    let mapped: Vec<&str> = words
        .into_iter()
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| v)
        })
        .collect();
    mapped.join(" ")
}

/// Both normalisation steps (what the official code applies when the answers differ).
pub fn normalize_answer(s: &str) -> String {
    process_digit_article(&process_punctuation(s))
}

/// Official accuracy (0–1, unrounded) of `predicted` for one question.
pub fn question_accuracy(answers: &[GtAnswer], predicted: &str) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    let mut gts: Vec<GtAnswer> = answers
        .iter()
        .map(|a| GtAnswer {
            answer: clean(&a.answer),
            rest: a.rest.clone(),
        })
        .collect();
    let mut res = clean(predicted);
    let distinct: HashSet<&str> = gts.iter().map(|a| a.answer.as_str()).collect();
    if distinct.len() > 1 {
        for a in gts.iter_mut() {
            a.answer = normalize_answer(&a.answer);
        }
        res = normalize_answer(&res);
    }
    let mut sum = 0.0f64;
    for held in &gts {
        let matches = gts.iter().filter(|o| *o != held && o.answer == res).count();
        sum += (matches as f64 / 3.0).min(1.0);
    }
    sum / gts.len() as f64
}

/// Convenience for answers without records: ten strings, distinct ids 1..=n.
pub fn accuracy(gt_answers: &[String], predicted: &str) -> f64 {
    let recs: Vec<GtAnswer> = gt_answers
        .iter()
        .enumerate()
        .map(|(i, a)| GtAnswer::new(a.clone(), i as u64 + 1))
        .collect();
    question_accuracy(&recs, predicted)
}

/// Python 2.7 `round(x, ndigits)`: the exact binary value rounded to `ndigits` decimals,
/// halves away from zero.
pub fn py2_round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let s = format!("{:.*}", 1100, x.abs());
    let (int_part, frac) = s.split_once('.').unwrap_or((s.as_str(), ""));
    let mut digits: Vec<u8> = int_part.bytes().chain(frac.bytes().take(ndigits)).collect();
    let round_up = frac.as_bytes().get(ndigits).is_some_and(|&d| d >= b'5');
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - ndigits;
    let text = format!(
        "{}.{}",
        std::str::from_utf8(&digits[..split]).unwrap_or("0"),
        std::str::from_utf8(&digits[split..]).unwrap_or("0")
    );
    let v: f64 = text.parse().unwrap_or(f64::NAN);
    if x.is_sign_negative() {
        -v
    } else {
        v
    }
}

fn mean_pct(v: &[f64]) -> f64 {
    let mut s = 0.0f64;
    for x in v {
        s += x;
    }
    py2_round(100.0 * s / v.len() as f64, 2)
}

/// Official evaluation of `predictions` (question id → answer) on `questions` (annotation
/// order). Every annotated question needs a prediction and every prediction a question.
pub fn evaluate(
    questions: &[VqaQuestion],
    predictions: &HashMap<u64, String>,
) -> Result<VqaScores> {
    if questions.is_empty() {
        return Err(Error::invalid("VQA: no annotated questions"));
    }
    let mut seen = HashSet::with_capacity(questions.len());
    for q in questions {
        if !seen.insert(q.question_id) {
            return Err(Error::invalid(format!(
                "VQA: question_id {} is annotated twice",
                q.question_id
            )));
        }
    }
    let missing: Vec<u64> = questions
        .iter()
        .filter(|q| !predictions.contains_key(&q.question_id))
        .map(|q| q.question_id)
        .collect();
    let extra: Vec<u64> = predictions
        .keys()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        return Err(Error::invalid(format!(
            "VQA: results do not correspond to the annotations: {} question(s) without a prediction (e.g. {:?}), {} prediction(s) for unknown questions (e.g. {:?})",
            missing.len(),
            &missing[..missing.len().min(5)],
            extra.len(),
            &extra[..extra.len().min(5)]
        )));
    }
    let mut all = Vec::with_capacity(questions.len());
    let mut by_q: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut by_a: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut per_question = BTreeMap::new();
    for q in questions {
        let acc = question_accuracy(&q.answers, &predictions[&q.question_id]);
        all.push(acc);
        by_q.entry(q.question_type.clone()).or_default().push(acc);
        by_a.entry(q.answer_type.clone()).or_default().push(acc);
        per_question.insert(q.question_id, py2_round(100.0 * acc, 2));
    }
    Ok(VqaScores {
        overall: mean_pct(&all),
        per_answer_type: by_a.into_iter().map(|(k, v)| (k, mean_pct(&v))).collect(),
        per_question_type: by_q.into_iter().map(|(k, v)| (k, mean_pct(&v))).collect(),
        per_question,
    })
}

// ---------------------------------------------------------------------------------------
// Standard files.

#[derive(Deserialize)]
struct AnnFile {
    annotations: Vec<AnnRec>,
}

#[derive(Deserialize)]
struct AnnRec {
    question_id: u64,
    question_type: String,
    answer_type: String,
    answers: Vec<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct QuesFile {
    #[serde(default)]
    task_type: Option<String>,
    questions: Vec<QuesRec>,
}

#[derive(Deserialize)]
struct QuesRec {
    question_id: u64,
    #[serde(default)]
    multiple_choices: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ResRec {
    question_id: u64,
    answer: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, Some(e.line()), e.to_string()))
}

/// Annotations of a VQA (v1/v2) annotation file, in file order.
pub fn load_annotations(path: impl AsRef<Path>) -> Result<Vec<VqaQuestion>> {
    let path = path.as_ref();
    let f: AnnFile = read_json(path)?;
    f.annotations
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let answers = a
                .answers
                .into_iter()
                .map(|mut m| {
                    let ans = match m.remove("answer") {
                        Some(Value::String(s)) => s,
                        _ => {
                            return Err(Error::format(
                                path,
                                None,
                                format!("annotations[{i}] (question_id {}): an answer without a string `answer`", a.question_id),
                            ))
                        }
                    };
                    Ok(GtAnswer { answer: ans, rest: m.into_iter().collect() })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(VqaQuestion { question_id: a.question_id, question_type: a.question_type, answer_type: a.answer_type, answers })
        })
        .collect()
}

/// Predictions of a VQA results file (`[{"question_id":…,"answer":…}]`); a repeated
/// question id is an error.
pub fn load_results(path: impl AsRef<Path>) -> Result<HashMap<u64, String>> {
    let path = path.as_ref();
    let v: Vec<ResRec> = read_json(path)?;
    let mut out = HashMap::with_capacity(v.len());
    for (i, r) in v.into_iter().enumerate() {
        if out.insert(r.question_id, r.answer).is_some() {
            return Err(Error::format(
                path,
                None,
                format!(
                    "entry {i}: question_id {} appears more than once",
                    r.question_id
                ),
            ));
        }
    }
    Ok(out)
}

/// Evaluate standard files: questions (used for the multiple-choice check), annotations,
/// results.
pub fn evaluate_files(questions: &Path, annotations: &Path, results: &Path) -> Result<VqaScores> {
    let q: QuesFile = read_json(questions)?;
    let anns = load_annotations(annotations)?;
    let res = load_results(results)?;
    if q.task_type.as_deref() == Some("Multiple Choice") {
        let choices: HashMap<u64, &Vec<String>> = q
            .questions
            .iter()
            .filter_map(|x| x.multiple_choices.as_ref().map(|c| (x.question_id, c)))
            .collect();
        for (id, ans) in &res {
            if let Some(c) = choices.get(id) {
                if !c.contains(ans) {
                    return Err(Error::format(
                        results,
                        None,
                        format!("question_id {id}: predicted answer {ans:?} is not one of the multiple choices"),
                    ));
                }
            }
        }
    }
    evaluate(&anns, &res).map_err(|e| Error::format(results, None, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_levels() {
        let mk = |k: usize| -> Vec<String> {
            (0..10)
                .map(|i| {
                    if i < k {
                        "yes".to_string()
                    } else {
                        format!("no{i}")
                    }
                })
                .collect()
        };
        let expect = [0.0, 0.3, 0.6, 0.9, 1.0, 1.0];
        for (k, e) in expect.iter().enumerate() {
            assert!((accuracy(&mk(k), "yes") - e).abs() < 1e-12, "k={k}");
        }
    }

    #[test]
    fn normalisation_only_when_answers_differ() {
        let same: Vec<String> = vec!["yes".into(); 10];
        assert_eq!(accuracy(&same, "Yes"), 0.0);
        let mut diff = same.clone();
        diff[9] = "no".into();
        assert_eq!(accuracy(&diff, "Yes"), 1.0);
    }

    #[test]
    fn punctuation_rules() {
        assert_eq!(process_punctuation("a-b"), "a b");
        assert_eq!(process_punctuation("a - b"), "a  b");
        assert_eq!(process_punctuation("1,000-2"), "10002");
        assert_eq!(process_punctuation("3.5 m."), "3.5 m");
        assert_eq!(process_digit_article("The Two dogs dont"), "2 dogs don't");
        let many = ".".repeat(40);
        assert_eq!(process_punctuation(&many), ".".repeat(8));
    }

    #[test]
    fn python2_rounding() {
        assert_eq!(py2_round(0.125, 2), 0.13); // exact half: away from zero
        assert_eq!(py2_round(2.675, 2), 2.67); // binary value is below the half
        assert_eq!(py2_round(99.995, 2), 100.0); // 99.99500000000000454… in binary
        assert_eq!(py2_round(1.005, 2), 1.0); // 1.00499999999999989… in binary
        assert_eq!(py2_round(37.125, 2), 37.13); // exact half (Python 3 would give 37.12)
        assert_eq!(py2_round(99.9951, 2), 100.0);
        assert_eq!(py2_round(53.333333333, 2), 53.33);
    }
}

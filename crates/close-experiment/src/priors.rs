//! Stage: what the task text alone gets right on test, without any image. It is the floor a
//! model must beat to show that it reads the image: a hypothesis-only naive Bayes classifier
//! for VE and a question-only answer prior for VQA and VQA-E (exact match with the majority
//! answer).

use std::collections::BTreeMap;

use close_core::Result;
use close_data::bias::{naive_bayes_accuracy, question_prior_accuracy};
use close_model::task::{DataPaths, Task};

use crate::data::TaskInputs;

/// A question-only answer prior's test accuracy, 0–100.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuestionOnly {
    /// The most common training answer of the question (else of its type).
    pub overall: f64,
    /// Same, per question type.
    pub by_type: BTreeMap<String, f64>,
}

/// The text-only floors, 0–100.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextPriors {
    /// VE: hypothesis-only naive Bayes accuracy.
    pub ve_hypothesis_only: Option<f64>,
    /// VQA and VQA-E: the question-only answer prior.
    pub question_only: BTreeMap<Task, QuestionOnly>,
}

impl TextPriors {
    /// The prior row of `task`'s table: (label, value).
    pub fn row(&self, task: Task) -> Option<(&'static str, f64)> {
        match task {
            Task::Ve => self
                .ve_hypothesis_only
                .map(|v| ("hypothesis only (naive Bayes, no image)", v)),
            _ => self
                .question_only
                .get(&task)
                .map(|q| ("question only (answer prior, no image)", q.overall)),
        }
    }
}

/// (question, question type, majority answer) of a split's questions.
type Questions = Vec<(String, String, String)>;

/// The questions of a VQA split.
fn vqa_items(paths: &DataPaths, split: &str) -> Result<Questions> {
    let q = paths.file("vqa_questions", split);
    let a = paths.file("vqa_annotations", split);
    let (examples, _) = close_data::vqa::load_vqa(&q, Some(&a), &paths.opts())?;
    Ok(examples
        .into_iter()
        .filter_map(|e| {
            let a = e.annotation?;
            Some((
                e.question.question,
                a.question_type,
                a.multiple_choice_answer,
            ))
        })
        .collect())
}

/// The questions of a VQA-E split.
fn vqae_items(paths: &DataPaths, split: &str) -> Result<Questions> {
    let (entries, _) = close_data::vqa::load_vqae(paths.file("vqae", split), &paths.opts())?;
    Ok(entries
        .into_iter()
        .map(|e| (e.question, e.question_type, e.multiple_choice_answer))
        .collect())
}

/// The prior learned on `train`, scored on `test` overall and per question type.
fn question_only(train: &Questions, test: &Questions) -> Option<QuestionOnly> {
    let overall = question_prior_accuracy(train, test)? * 100.0;
    let mut types: Vec<&String> = test.iter().map(|x| &x.1).collect();
    types.sort();
    types.dedup();
    let by_type = types
        .into_iter()
        .filter_map(|t| {
            let of_type: Vec<_> = test.iter().filter(|x| &x.1 == t).cloned().collect();
            Some((t.clone(), question_prior_accuracy(train, &of_type)? * 100.0))
        })
        .collect();
    Some(QuestionOnly { overall, by_type })
}

/// Compute the priors of the tasks in `inputs` that have one.
pub fn text_priors(inputs: &[TaskInputs], paths: &DataPaths) -> Result<TextPriors> {
    let mut p = TextPriors::default();
    let pct = |x: Option<f64>| x.map(|a| a * 100.0);
    for input in inputs {
        match input.task {
            Task::Ve => {
                let train: Vec<(String, String)> = input
                    .text
                    .train
                    .iter()
                    .filter_map(|e| Some((e.input_text.clone()?, e.targets.first()?.clone())))
                    .collect();
                let test: Vec<(String, String)> = input
                    .text
                    .test
                    .iter()
                    .filter_map(|e| Some((e.input_text.clone()?, e.references.first()?.clone())))
                    .collect();
                p.ve_hypothesis_only = pct(naive_bayes_accuracy(&train, &test));
            }
            Task::Vqa | Task::Evqa | Task::EvqaExplain => {
                let items = match input.task {
                    Task::Vqa => vqa_items,
                    _ => vqae_items,
                };
                let (train, test) = (items(paths, "train")?, items(paths, "test")?);
                if let Some(q) = question_only(&train, &test) {
                    p.question_only.insert(input.task, q);
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

//! Stage: what the task text alone gets right on test, without any image. It is the floor a
//! model must beat to show that it reads the image: a hypothesis-only naive Bayes classifier
//! for VE and a question-only answer prior for VQA (exact match with the majority answer).

use std::collections::BTreeMap;

use close_core::Result;
use close_data::bias::{naive_bayes_accuracy, question_prior_accuracy};
use close_model::task::{DataPaths, Task};

use crate::data::TaskInputs;

/// The text-only floors, 0–100.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextPriors {
    /// VE: hypothesis-only naive Bayes accuracy.
    pub ve_hypothesis_only: Option<f64>,
    /// VQA: the most common training answer of the question (else of its type).
    pub vqa_question_only: Option<f64>,
    /// Same, per question type.
    pub vqa_question_only_by_type: BTreeMap<String, f64>,
}

impl TextPriors {
    /// The prior row of `task`'s table: (label, value).
    pub fn row(&self, task: Task) -> Option<(&'static str, f64)> {
        match task {
            Task::Ve => self
                .ve_hypothesis_only
                .map(|v| ("hypothesis only (naive Bayes, no image)", v)),
            Task::Vqa => self
                .vqa_question_only
                .map(|v| ("question only (answer prior, no image)", v)),
            _ => None,
        }
    }
}

/// (question, question type, majority answer) of a VQA split.
fn vqa_items(paths: &DataPaths, split: &str) -> Result<Vec<(String, String, String)>> {
    let q = paths.file("vqa_questions", split);
    let a = paths.file("vqa_annotations", split);
    let opts = close_data::load::LoadOptions {
        skip_bad: paths.skip_bad,
    };
    let (examples, _) = close_data::vqa::load_vqa(&q, Some(&a), &opts)?;
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
            Task::Vqa => {
                let (train, test) = (vqa_items(paths, "train")?, vqa_items(paths, "test")?);
                p.vqa_question_only = pct(question_prior_accuracy(&train, &test));
                let mut types: Vec<&String> = test.iter().map(|x| &x.1).collect();
                types.sort();
                types.dedup();
                for t in types {
                    let of_type: Vec<_> = test.iter().filter(|x| &x.1 == t).cloned().collect();
                    if let Some(a) = question_prior_accuracy(&train, &of_type) {
                        p.vqa_question_only_by_type.insert(t.clone(), a * 100.0);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

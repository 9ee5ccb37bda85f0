//! Stage: find the tasks whose files are in the data dir, load their examples, and (after
//! embedding) drop the items whose vectors are missing, counting every drop.

use std::path::PathBuf;

use serde::Serialize;

use close_core::{Error, Result};
use close_model::embeddings::Embeddings;
use close_model::task::{ClipSource, DataPaths, Task, TaskData, TrainOn};

/// A task left out, and the first of its files that is missing.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub task: Task,
    pub missing: PathBuf,
}

/// The files a task needs: training data, test references and the Karpathy file that
/// locates the images (val files are optional; without them no noise level is tuned).
pub fn required_files(task: Task, paths: &DataPaths) -> Vec<PathBuf> {
    let mut v = vec![paths.file("karpathy", "")];
    let split_files = |kinds: &[&str]| -> Vec<PathBuf> {
        ["train", "test"]
            .iter()
            .flat_map(|s| kinds.iter().map(move |k| paths.file(k, s)))
            .collect()
    };
    match task {
        Task::SCap | Task::MCap => {}
        Task::Vqa => v.extend(split_files(&["vqa_questions", "vqa_annotations"])),
        Task::Evqa | Task::EvqaExplain => v.extend(split_files(&["vqae"])),
        Task::Ve => v.extend(split_files(&["ve"])),
        Task::News => v.extend(split_files(&["news"])),
        Task::Style => {
            v.push(paths.file("style_train", ""));
            v.push(paths.file("style_refs", "test"));
        }
    }
    v
}

/// Split `wanted` into the tasks whose files all exist and the skipped ones. With
/// `explicit` (the user named the tasks), a missing file is an error that names it.
pub fn discover(
    wanted: &[Task],
    paths: &DataPaths,
    explicit: bool,
) -> Result<(Vec<Task>, Vec<Skipped>)> {
    let (mut found, mut skipped) = (Vec::new(), Vec::new());
    for &task in wanted {
        match required_files(task, paths).into_iter().find(|p| !p.exists()) {
            None => found.push(task),
            Some(missing) if explicit => {
                return Err(Error::config(
                    "tasks",
                    format!(
                        "task {task} needs {}, which does not exist (name the file with --file KEY=PATH or leave the task out)",
                        missing.display()
                    ),
                ))
            }
            Some(missing) => skipped.push(Skipped { task, missing }),
        }
    }
    if found.is_empty() {
        return Err(Error::invalid(format!(
            "no task has its files under {} (skipped: {})",
            paths.dir.display(),
            skipped
                .iter()
                .map(|s| format!("{} lacks {}", s.task, s.missing.display()))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok((found, skipped))
}

/// A task's examples: text-only training, and image training for the upper bound.
#[derive(Debug, Clone)]
pub struct TaskInputs {
    pub task: Task,
    pub text: TaskData,
    /// None for style (a text corpus has no images to train on) or when no training image
    /// has a vector.
    pub images: Option<TaskData>,
}

/// Load every task in `tasks`.
pub fn load_tasks(tasks: &[Task], paths: &DataPaths) -> Result<Vec<TaskInputs>> {
    tasks
        .iter()
        .map(|&task| {
            let text = TaskData::load(task, TrainOn::Text, paths)?;
            let images = match task {
                Task::Style => None,
                _ => Some(TaskData::load(task, TrainOn::Images, paths)?),
            };
            Ok(TaskInputs { task, text, images })
        })
        .collect()
}

/// Items dropped from one task's data because a vector was missing (an image that did not
/// decode or is not in the Karpathy file, an empty text).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dropped {
    pub task: Option<Task>,
    pub train_text: usize,
    pub train_images: usize,
    pub val: usize,
    pub test: usize,
}

impl Dropped {
    pub fn any(&self) -> bool {
        self.train_text + self.train_images + self.val + self.test > 0
    }
}

fn has_vectors(clip: &ClipSource, texts: &dyn Embeddings, images: &dyn Embeddings) -> bool {
    match clip {
        ClipSource::Texts(keys) => {
            !keys.is_empty() && keys.iter().all(|k| texts.vector(k).is_some())
        }
        ClipSource::Image(k) => images.vector(k).is_some(),
    }
}

fn retain_train(data: &mut TaskData, texts: &dyn Embeddings, images: &dyn Embeddings) -> usize {
    let before = data.train.len();
    data.train.retain(|e| has_vectors(&e.clip, texts, images));
    before - data.train.len()
}

fn retain_eval(data: &mut TaskData, images: &dyn Embeddings) -> (usize, usize) {
    let (v, t) = (data.val.len(), data.test.len());
    data.val.retain(|e| images.vector(&e.image).is_some());
    data.test.retain(|e| images.vector(&e.image).is_some());
    (v - data.val.len(), t - data.test.len())
}

/// Drop the items without vectors from every task; an upper bound left without training
/// examples is removed. Errors when a task has no training or test item left.
pub fn retain_embedded(
    inputs: &mut [TaskInputs],
    texts: &dyn Embeddings,
    images: &dyn Embeddings,
) -> Result<Vec<Dropped>> {
    let mut out = Vec::new();
    for input in inputs.iter_mut() {
        let mut d = Dropped {
            task: Some(input.task),
            ..Default::default()
        };
        d.train_text = retain_train(&mut input.text, texts, images);
        (d.val, d.test) = retain_eval(&mut input.text, images);
        if let Some(im) = input.images.as_mut() {
            d.train_images = retain_train(im, texts, images);
            retain_eval(im, images);
        }
        if input.images.as_ref().is_some_and(|im| im.train.is_empty()) {
            tracing::warn!(
                "{}: no training image has a vector: no image-trained upper bound",
                input.task
            );
            input.images = None;
        }
        if input.text.train.is_empty() || input.text.test.is_empty() {
            return Err(Error::invalid(format!(
                "task {}: no {} item has a CLIP vector (are its images in the Karpathy file (or its own files, for news) and under --images?)",
                input.task,
                if input.text.train.is_empty() { "training" } else { "test" }
            )));
        }
        if d.any() {
            tracing::warn!("{}: dropped items without vectors: {d:?}", input.task);
        }
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use close_model::embeddings::MemEmbeddings;
    use close_model::task::{EvalExample, TrainExample};

    #[test]
    fn tasks_without_their_files_are_skipped_and_named_or_refused_when_asked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = DataPaths::new(tmp.path());
        std::fs::write(tmp.path().join("dataset_coco.json"), "{}").unwrap();
        let (found, skipped) = discover(&Task::ALL, &paths, false).unwrap();
        assert_eq!(found, vec![Task::SCap, Task::MCap]);
        let vqa = skipped.iter().find(|s| s.task == Task::Vqa).unwrap();
        assert!(
            vqa.missing
                .ends_with("v2_OpenEnded_mscoco_train_questions.json"),
            "{vqa:?}"
        );
        let e = discover(&[Task::SCap, Task::Ve], &paths, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("snli_ve_train.jsonl") && e.contains("--file"),
            "{e}"
        );
        std::fs::remove_file(tmp.path().join("dataset_coco.json")).unwrap();
        let e = discover(&Task::ALL, &paths, false).unwrap_err().to_string();
        assert!(e.contains("dataset_coco.json"), "{e}");
    }

    fn eval(image: &str) -> EvalExample {
        EvalExample {
            id: image.into(),
            image: image.into(),
            input_text: None,
            references: vec!["a cat".into()],
            answer_type: None,
            question_type: None,
            explanations: Vec::new(),
        }
    }

    #[test]
    fn items_without_vectors_are_dropped_and_counted() {
        let (mut texts, mut images) = (MemEmbeddings::new(2), MemEmbeddings::new(2));
        texts.insert("a cat", &[1.0, 0.0]).unwrap();
        images.insert("1", &[0.0, 1.0]).unwrap();
        let train = |clip| TrainExample {
            clip,
            input_text: None,
            targets: vec!["a cat".into()],
        };
        let text = TaskData {
            train: vec![
                train(ClipSource::Texts(vec!["a cat".into()])),
                train(ClipSource::Texts(vec!["a dog".into()])),
            ],
            val: vec![eval("1"), eval("2")],
            test: vec![eval("1")],
            ..Default::default()
        };
        let images_data = TaskData {
            train: vec![train(ClipSource::Image("2".into()))],
            ..text.clone()
        };
        let mut inputs = vec![TaskInputs {
            task: Task::SCap,
            text,
            images: Some(images_data),
        }];
        let d = retain_embedded(&mut inputs, &texts, &images).unwrap();
        assert_eq!(
            (d[0].train_text, d[0].train_images, d[0].val, d[0].test),
            (1, 1, 1, 0)
        );
        assert!(
            inputs[0].images.is_none(),
            "an upper bound without training images is dropped"
        );
        assert_eq!(inputs[0].text.val.len(), 1);
        inputs[0].text.test[0].image = "3".into();
        let e = retain_embedded(&mut inputs, &texts, &images)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no test item"), "{e}");
    }
}

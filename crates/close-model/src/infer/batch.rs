//! Batch inference over image files (`close caption DIR…`, `close predict`): expand
//! folders, decode in batches, skip and report unreadable files, stream one result per
//! image.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use close_core::progress::Progress;
use close_core::{Error, Result};

use super::predictor::{Beam, DecodeOptions, Neighbor, Prediction};
use super::run::RunPredictor;

/// Extensions treated as images when a folder is expanded.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Expand the inputs: files are kept as given (whatever their extension, so that a bad file
/// is reported rather than silently ignored); folders are walked recursively for image
/// files, sorted. A missing input is an error naming it.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_image_name(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    Ok(out)
}

/// One captioned file (a JSON line of `close caption`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionLine {
    pub file: String,
    pub caption: String,
    pub logprob: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub beams: Vec<Beam>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbors: Vec<Neighbor>,
}

impl CaptionLine {
    fn new(file: &Path, p: Prediction, all_beams: bool) -> Self {
        Self {
            file: file.display().to_string(),
            caption: p.answer().to_string(),
            logprob: p.logprob(),
            beams: if all_beams { p.beams } else { Vec::new() },
            neighbors: p.neighbors,
        }
    }
}

/// A file that could not be captioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub file: String,
    pub error: String,
}

/// Outcome of [`predict_files`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// Files predicted for (the name is kept from `close caption`'s JSON report).
    pub captioned: usize,
    pub skipped: Vec<Skipped>,
}

/// Caption `files` with `predictor`, `batch` images at a time, calling `emit` for each
/// result in input order (see [`predict_files`] for what is skipped).
pub fn caption_files(
    predictor: &RunPredictor,
    files: &[PathBuf],
    opts: &DecodeOptions,
    batch: usize,
    all_beams: bool,
    progress: &dyn Progress,
    mut emit: impl FnMut(&CaptionLine) -> Result<()>,
) -> Result<BatchReport> {
    let predict =
        |imgs: &[image::RgbImage], _: Option<&[String]>| predictor.predict_images(imgs, None, opts);
    let files = FileBatch {
        files,
        texts: None,
        batch,
    };
    predict_files(&files, predict, progress, |f, _, p| {
        emit(&CaptionLine::new(f, p, all_beams))
    })
}

/// Image files to predict for, with the text of each where the task needs one.
pub struct FileBatch<'a> {
    pub files: &'a [PathBuf],
    /// One text per file (question, hypothesis, article), or none.
    pub texts: Option<&'a [String]>,
    /// Images decoded and predicted at a time.
    pub batch: usize,
}

/// Predict for every file of `input` with `predict` (images and their texts → one
/// prediction each), calling `emit(file, text, prediction)` in input order. Unreadable
/// images are skipped and listed in the report; when the model fails on a batch, its
/// images are retried one by one and those that fail are skipped.
pub fn predict_files(
    input: &FileBatch,
    predict: impl Fn(&[image::RgbImage], Option<&[String]>) -> Result<Vec<Prediction>>,
    progress: &dyn Progress,
    mut emit: impl FnMut(&Path, Option<&str>, Prediction) -> Result<()>,
) -> Result<BatchReport> {
    if input.batch == 0 {
        return Err(Error::config("batch", "must be at least 1"));
    }
    let mut report = BatchReport::default();
    progress.start("predict", input.files.len() as u64);
    let idx: Vec<usize> = (0..input.files.len()).collect();
    for chunk in idx.chunks(input.batch) {
        let (ok, imgs) = decode(input.files, chunk, &mut report);
        let texts: Option<Vec<String>> = input
            .texts
            .map(|t| ok.iter().map(|&i| t[i].clone()).collect());
        let preds: Vec<Result<Prediction>> = match predict(&imgs, texts.as_deref()) {
            Ok(p) => p.into_iter().map(Ok).collect(),
            Err(_) if imgs.len() > 1 => (0..imgs.len())
                .map(|k| {
                    let t = texts.as_ref().map(|t| std::slice::from_ref(&t[k]));
                    predict(std::slice::from_ref(&imgs[k]), t).map(|mut v| v.remove(0))
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        for ((k, &i), p) in ok.iter().enumerate().zip(preds) {
            let file = &input.files[i];
            match p {
                Ok(p) => {
                    let text = texts.as_ref().map(|t| t[k].as_str());
                    emit(file, text, p)?;
                    report.captioned += 1;
                }
                Err(e) => skip(&mut report, file, &e),
            }
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    Ok(report)
}

/// Decode the files of `chunk`; the unreadable ones are skipped into `report`.
fn decode(
    files: &[PathBuf],
    chunk: &[usize],
    report: &mut BatchReport,
) -> (Vec<usize>, Vec<image::RgbImage>) {
    let (mut ok, mut imgs) = (Vec::new(), Vec::new());
    for &i in chunk {
        match close_clip::load_image(&files[i]) {
            Ok(img) => {
                ok.push(i);
                imgs.push(img);
            }
            Err(e) => skip(report, &files[i], &e),
        }
    }
    (ok, imgs)
}

fn skip(report: &mut BatchReport, file: &Path, e: &Error) {
    tracing::debug!("skipping {}: {e}", file.display());
    report.skipped.push(Skipped {
        file: file.display().to_string(),
        error: e.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_expand_recursively_and_sorted_files_stay() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        for f in ["a/2.png", "a/1.JPG", "a/b/3.webp", "a/notes.txt"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        std::fs::write(d.path().join("single.dat"), b"x").unwrap();
        let got = collect_images(&[d.path().join("a"), d.path().join("single.dat")]).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.strip_prefix(d.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a/1.JPG", "a/2.png", "a/b/3.webp", "single.dat"]);
        let e = collect_images(&[d.path().join("nope")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}

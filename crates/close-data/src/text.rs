//! Plain text corpora: one caption per line (e.g. a style corpus for text-only stylistic
//! captioning). Blank lines are ignored; invalid UTF-8 and control characters are malformed.

use std::io::Write;
use std::path::Path;

use close_core::{io::AtomicFile, Error, Result};

use crate::load::{LoadOptions, LoadReport};

/// Load a one-caption-per-line corpus (lines trimmed, blank lines ignored). A line with
/// invalid UTF-8 or control characters is an error naming file and line, or skipped per
/// `opts`.
pub fn load_text_corpus(
    path: impl AsRef<Path>,
    opts: &LoadOptions,
) -> Result<(Vec<String>, LoadReport)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut report = LoadReport::new(path);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(l) => l.trim(),
            Err(_) => {
                report.bad(opts, Some(n), "invalid UTF-8".into())?;
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            report.bad(
                opts,
                Some(n),
                format!("control character U+{:04X}", c as u32),
            )?;
            continue;
        }
        out.push(line.to_string());
    }
    report.loaded = out.len();
    Ok((out, report))
}

/// Write a corpus atomically, one line per caption. Newlines inside a caption are an error.
pub fn save_text_corpus(path: impl AsRef<Path>, lines: &[String]) -> Result<()> {
    let mut file = TextCorpusFile::create(path)?;
    for l in lines {
        file.push(l)?;
    }
    file.finish()
}

/// A one-caption-per-line corpus written as it is produced, moved in place by
/// [`TextCorpusFile::finish`] (the format of [`save_text_corpus`]).
pub struct TextCorpusFile {
    file: AtomicFile,
    lines: usize,
}

impl TextCorpusFile {
    /// Start writing `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            file: AtomicFile::create(path)?,
            lines: 0,
        })
    }

    /// Append one caption; one with a newline is an error.
    pub fn push(&mut self, line: &str) -> Result<()> {
        let path = self.file.path().to_path_buf();
        if line.contains('\n') || line.contains('\r') {
            return Err(Error::invalid(format!(
                "{}: caption {} contains a newline",
                path.display(),
                self.lines
            )));
        }
        let sep: &[u8] = if self.lines == 0 { b"" } else { b"\n" };
        let w = self.file.writer();
        let result = w.write_all(sep).and_then(|()| w.write_all(line.as_bytes()));
        result.map_err(|e| Error::io(&path, e))?;
        self.lines += 1;
        Ok(())
    }

    /// Captions written so far.
    pub fn len(&self) -> usize {
        self.lines
    }

    /// Whether no caption has been written.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// End the last line and move the file in place.
    pub fn finish(mut self) -> Result<()> {
        let path = self.file.path().to_path_buf();
        self.file
            .writer()
            .write_all(b"\n")
            .map_err(|e| Error::io(&path, e))?;
        self.file.commit()
    }
}

//! Shared machinery of the loaders: [`LoadOptions`] (fail on the first bad record, or skip
//! and count it), [`LoadReport`] (what was skipped, with file and line), and record-level
//! parsing of JSON arrays and JSONL files that keeps the line of every record.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use close_core::{Error, Result};

/// How loaders treat malformed records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// `false` (default): the first malformed record is an error naming file and line.
    /// `true`: malformed records are skipped and listed in the [`LoadReport`].
    pub skip_bad: bool,
}

impl LoadOptions {
    /// Fail on the first malformed record.
    pub fn strict() -> Self {
        Self { skip_bad: false }
    }
    /// Skip malformed records and report them.
    pub fn skip_bad() -> Self {
        Self { skip_bad: true }
    }
}

/// One record a loader did not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// 1-based line where the record starts (or the error was found).
    pub line: Option<usize>,
    /// Why it was skipped.
    pub reason: String,
}

/// What a loader read from one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    pub path: PathBuf,
    /// Records returned.
    pub loaded: usize,
    /// Malformed records skipped (only with [`LoadOptions::skip_bad`]).
    pub skipped: Vec<Skipped>,
    /// Well-formed records left out on purpose (e.g. SNLI pairs without a gold label,
    /// Visual News items whose article file is missing), with the reason.
    pub filtered: Vec<Skipped>,
}

impl LoadReport {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            ..Default::default()
        }
    }

    /// Merge another file's report into this one (counts only make sense per file, so the
    /// path of `self` is kept).
    pub fn merge(&mut self, other: LoadReport) {
        self.loaded += other.loaded;
        self.skipped.extend(other.skipped);
        self.filtered.extend(other.filtered);
    }

    /// A one-line human summary, e.g. `data.jsonl: 120 loaded, 2 skipped, 3 filtered`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} loaded, {} skipped, {} filtered",
            self.path.display(),
            self.loaded,
            self.skipped.len(),
            self.filtered.len()
        )
    }

    /// Record a bad item: an error (strict) or a skip.
    pub(crate) fn bad(
        &mut self,
        opts: &LoadOptions,
        line: Option<usize>,
        reason: String,
    ) -> Result<()> {
        if opts.skip_bad {
            tracing::warn!(
                "{}{}: skipped: {reason}",
                self.path.display(),
                line.map(|l| format!(":{l}")).unwrap_or_default()
            );
            self.skipped.push(Skipped { line, reason });
            Ok(())
        } else {
            Err(Error::format(&self.path, line, reason))
        }
    }

    pub(crate) fn filter(&mut self, line: Option<usize>, reason: String) {
        self.filtered.push(Skipped { line, reason });
    }
}

/// Read a whole file as UTF-8 text, naming the file in errors.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        Error::format(path, Some(line), "invalid UTF-8")
    })
}

/// Parse the whole document with serde, naming file and line on a syntax error.
pub(crate) fn parse_doc<'a, T: Deserialize<'a>>(path: &Path, text: &'a str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::format(path, Some(e.line()), e.to_string()))
}

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Byte offset of a borrowed raw value inside the document it was parsed from.
fn offset_in(text: &str, raw: &RawValue) -> usize {
    let start = text.as_ptr() as usize;
    let p = raw.get().as_ptr() as usize;
    p.saturating_sub(start).min(text.len())
}

/// Deserialize each element of a JSON array individually and run `check` on it; a bad
/// element is an error naming `path:line` and `key[index]`, or is skipped and reported.
/// Records are processed in file order, so the first error is the first bad record.
pub(crate) fn parse_records_with<T: DeserializeOwned>(
    text: &str,
    raws: &[&RawValue],
    key: &str,
    opts: &LoadOptions,
    report: &mut LoadReport,
    mut check: impl FnMut(usize, &T) -> std::result::Result<(), String>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(raws.len());
    // The line is only computed for bad records: counting newlines up to every record
    // would make loading quadratic.
    let line = |raw: &RawValue| line_of(text, offset_in(text, raw));
    for (i, raw) in raws.iter().enumerate() {
        match serde_json::from_str::<T>(raw.get()) {
            Ok(v) => match check(i, &v) {
                Ok(()) => out.push(v),
                Err(msg) => report.bad(opts, Some(line(raw)), format!("{key}[{i}]: {msg}"))?,
            },
            Err(e) => {
                let line = line(raw) + e.line().saturating_sub(1);
                report.bad(opts, Some(line), format!("{key}[{i}]: {e}"))?;
            }
        }
    }
    report.loaded = out.len();
    Ok(out)
}

/// [`parse_records_with`] without extra checks.
pub(crate) fn parse_records<T: DeserializeOwned>(
    text: &str,
    raws: &[&RawValue],
    key: &str,
    opts: &LoadOptions,
    report: &mut LoadReport,
) -> Result<Vec<T>> {
    parse_records_with(text, raws, key, opts, report, |_, _| Ok(()))
}

/// Line of a borrowed raw value (for checks done after deserialization).
pub(crate) fn raw_line(text: &str, raw: &RawValue) -> usize {
    line_of(text, offset_in(text, raw))
}

/// Parse a JSONL file: one JSON value per line, blank lines ignored. Each line is passed to
/// `convert`, whose error message is reported with the line number.
pub(crate) fn parse_jsonl<R: DeserializeOwned, T>(
    path: &Path,
    opts: &LoadOptions,
    mut convert: impl FnMut(R, usize, &mut LoadReport) -> std::result::Result<Option<T>, String>,
) -> Result<(Vec<T>, LoadReport)> {
    let text = read_text(path)?;
    let mut report = LoadReport::new(path);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<R>(line) {
            Ok(r) => match convert(r, n, &mut report) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => {}
                Err(msg) => report.bad(opts, Some(n), msg)?,
            },
            Err(e) => report.bad(opts, Some(n), e.to_string())?,
        }
    }
    report.loaded = out.len();
    Ok((out, report))
}

/// An id that real files store either as a number or as a string (SNLI-VE `Flickr30K_ID`,
/// Visual News `id`). Kept as its decimal/text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FlexId(pub String);

impl<'de> Deserialize<'de> for FlexId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            U(u64),
            I(i64),
            S(String),
        }
        Ok(FlexId(match Raw::deserialize(d)? {
            Raw::U(u) => u.to_string(),
            Raw::I(i) => i.to_string(),
            Raw::S(s) => s,
        }))
    }
}

impl std::fmt::Display for FlexId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Atomically write `value` as compact JSON (the official dataset files are compact).
pub fn write_json_compact<T: Serialize>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    close_core::io::write_atomic_with(path, |w| {
        serde_json::to_writer(w, value).map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_line() {
        let text = "{\"xs\": [\n {\"a\": 1},\n {\"a\": \"no\"},\n {\"a\": 3}\n]}";
        #[derive(Deserialize)]
        struct Doc<'a> {
            #[serde(borrow)]
            xs: Vec<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct A {
            #[allow(dead_code)]
            a: u32,
        }
        let doc: Doc = parse_doc(Path::new("f.json"), text).unwrap();
        let mut rep = LoadReport::new(Path::new("f.json"));
        let e = parse_records::<A>(text, &doc.xs, "xs", &LoadOptions::strict(), &mut rep)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("f.json:3: xs[1]"), "{e}");
        let mut rep = LoadReport::new(Path::new("f.json"));
        let v =
            parse_records::<A>(text, &doc.xs, "xs", &LoadOptions::skip_bad(), &mut rep).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(rep.skipped.len(), 1);
        assert_eq!(rep.skipped[0].line, Some(3));
    }
}

//! Plain text corpora: one caption per line (e.g. a style corpus for text-only stylistic
//! captioning). Blank lines are ignored; invalid UTF-8 and control characters are malformed.

use std::path::Path;

use close_core::{io::write_atomic, Error, Result};

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
    let path = path.as_ref();
    if let Some(i) = lines
        .iter()
        .position(|l| l.contains('\n') || l.contains('\r'))
    {
        return Err(Error::invalid(format!(
            "{}: caption {i} contains a newline",
            path.display()
        )));
    }
    let mut s = lines.join("\n");
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

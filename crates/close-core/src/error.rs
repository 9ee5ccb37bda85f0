//! The single error type of the close-rs library crates.
//!
//! Messages name the offending file, line, key, shape or flag so that a user can fix the
//! input without reading code. The CLI prints them with `{:#}`.

use std::path::PathBuf;

/// Errors of every close-rs library crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed. The OS error is part of the message (and not a
    /// `source`, so that `{:#}` does not print it twice).
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// An output already exists and the operation would replace it.
    #[error("{}: already exists; {hint}", path.display())]
    Exists { path: PathBuf, hint: String },
    /// A file is not in the expected format (JSON, JSONL, text corpus, ...). `line` is
    /// 1-based when known.
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Format {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
    /// An image could not be decoded or is unusable.
    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },
    /// A checkpoint lacks a tensor the model needs.
    #[error("{file}: missing tensor `{key}`")]
    MissingKey { file: String, key: String },
    /// A tensor has the wrong shape (a checkpoint, or an argument at an API boundary).
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// An invalid configuration value or command-line flag.
    #[error("invalid config `{key}`: {msg}")]
    Config { key: String, msg: String },
    /// Input that is well-formed but unusable (empty text, ids not in the annotations, ...).
    #[error("{0}")]
    Invalid(String),
    /// The tokenizers crate failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// JSON (de)serialization failed outside a file context.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The operation was cancelled by the caller (e.g. Ctrl-C).
    #[error("cancelled")]
    Cancelled,
}

/// Result alias used across close-rs.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error tagged with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }

    /// A format error at `path` (and optionally a 1-based `line`).
    pub fn format(path: impl Into<PathBuf>, line: Option<usize>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }

    /// A configuration / flag error.
    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// An invalid-input error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}

impl From<safetensors::SafeTensorError> for Error {
    fn from(e: safetensors::SafeTensorError) -> Self {
        Error::Invalid(format!("safetensors: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_error_names_file_and_line() {
        let e = Error::format("data/x.jsonl", Some(7), "expected `}`");
        assert_eq!(e.to_string(), "data/x.jsonl:7: expected `}`");
        let e = Error::format("data/x.json", None, "not an object");
        assert_eq!(e.to_string(), "data/x.json: not an object");
    }

    #[test]
    fn io_error_names_the_path_and_the_os_error_once() {
        let err = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = Error::io("cache/index.json", err);
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(e.to_string(), "cache/index.json: entity not found");
    }
}

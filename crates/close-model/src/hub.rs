//! Resolving `--clip` / `--t5` arguments: a local Hugging Face model directory, or a hub id
//! (`openai/clip-vit-base-patch32`, `t5-base`) looked up in the local hub cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, layout
//! `models--ORG--NAME/snapshots/<rev>/`, the revision named by `refs/main` first).
//!
//! Nothing is downloaded: this tool has no network client (datasets and weights cannot be
//! fetched in its build environment, and pulling an HTTP stack in for one optional feature
//! is not worth it). A missing model is an error naming the cache path that was searched and
//! how to fill it (`huggingface-cli download ID` on a machine that is online).

use std::path::{Path, PathBuf};

use close_core::{Error, Result};

/// The hub cache directory in effect.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// Resolve a local directory or a hub id to a model directory (see the module docs).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    resolve_in(spec, &hub_cache_dir())
}

/// [`resolve_model`] against an explicit cache directory.
pub fn resolve_in(spec: &str, cache: &Path) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let valid_id = !spec.is_empty()
        && spec.split('/').count() <= 2
        && spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !spec.starts_with('.')
        && !spec.starts_with('/');
    if !valid_id {
        return Err(Error::config(
            "model",
            format!("`{spec}` is neither a directory nor a Hugging Face hub id"),
        ));
    }
    let repo = cache.join(format!("models--{}", spec.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let d = snapshots.join(rev.trim());
        if d.is_dir() {
            return Ok(d);
        }
    }
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| {
                    (
                        e.metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(std::time::UNIX_EPOCH),
                        e.path(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().map(|(_, d)| d).ok_or_else(|| {
        Error::config(
            "model",
            format!(
                "`{spec}` is not a local directory and is not in the Hugging Face cache ({} not found); \
                 this tool does not download: run `huggingface-cli download {spec}` on a machine that is online \
                 (or copy the model dir) and pass the directory",
                snapshots.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dirs_and_cache_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hub");
        let snap = cache.join("models--openai--clip-vit-base-patch32/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        assert_eq!(
            resolve_in("openai/clip-vit-base-patch32", &cache).unwrap(),
            snap
        );
        std::fs::create_dir_all(cache.join("models--openai--clip-vit-base-patch32/refs")).unwrap();
        let snap2 = cache.join("models--openai--clip-vit-base-patch32/snapshots/def456");
        std::fs::create_dir_all(&snap2).unwrap();
        std::fs::write(
            cache.join("models--openai--clip-vit-base-patch32/refs/main"),
            "abc123\n",
        )
        .unwrap();
        assert_eq!(
            resolve_in("openai/clip-vit-base-patch32", &cache).unwrap(),
            snap
        );
        assert_eq!(
            resolve_in(dir.path().to_str().unwrap(), &cache).unwrap(),
            dir.path()
        );
        let e = resolve_in("t5-base", &cache).unwrap_err().to_string();
        assert!(
            e.contains("models--t5-base") && e.contains("does not download"),
            "{e}"
        );
        assert!(resolve_in("../x/y/z", &cache).is_err());
    }
}

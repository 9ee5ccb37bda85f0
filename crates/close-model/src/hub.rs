//! Resolving `--clip` / `--t5` arguments: a local Hugging Face model directory, or a hub id
//! (`openai/clip-vit-base-patch32`, `t5-base`).
//!
//! A hub id is looked up in the local hub cache first (`$HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`; layout `models--ORG--NAME/snapshots/<rev>/`, the revision
//! named by `refs/main` first, else the newest snapshot). When a file the model needs is not
//! there, it is downloaded into that same cache with `hf-hub` (endpoint `$HF_ENDPOINT`, token
//! `$HF_TOKEN` or the cache's `token` file), so `huggingface-cli` and this tool share one
//! cache. With `HF_HUB_OFFLINE=1`, with no network, or in a build without the `download`
//! feature, a missing model is an error that names the cache path searched and how to fill
//! it.

use std::path::{Path, PathBuf};

use close_core::progress::Progress;
use close_core::{Error, Result};

/// What a model directory must hold, by the model it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// An HF `CLIPModel`: config, weights, tokenizer and image preprocessor config.
    Clip,
    /// An HF `T5ForConditionalGeneration`: config and weights; `tokenizer.json` when the
    /// repository has one.
    T5,
}

impl ModelKind {
    /// Files that must be present.
    pub fn required(self) -> &'static [&'static str] {
        match self {
            ModelKind::Clip => &[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "preprocessor_config.json",
            ],
            ModelKind::T5 => &["config.json", "model.safetensors"],
        }
    }

    /// Files fetched when the repository has them (a 404 is not an error).
    pub fn optional(self) -> &'static [&'static str] {
        match self {
            ModelKind::Clip => &[],
            ModelKind::T5 => &["tokenizer.json"],
        }
    }

    fn flag(self) -> &'static str {
        match self {
            ModelKind::Clip => "--clip",
            ModelKind::T5 => "--t5",
        }
    }
}

/// Where hub ids are looked up and fetched from.
#[derive(Debug, Clone)]
pub struct Hub {
    /// The hub cache directory (`…/huggingface/hub`).
    pub cache: PathBuf,
    /// Base URL of the hub (`https://huggingface.co`, or a mirror).
    pub endpoint: String,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Access token for gated or private repositories.
    pub token: Option<String>,
}

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

impl Hub {
    /// Settings from the environment, as `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        let cache = hub_cache_dir();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| {
                let home = std::env::var_os("HF_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| cache.parent().map(Path::to_path_buf).unwrap_or_default());
                std::fs::read_to_string(home.join("token"))
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        Hub {
            cache,
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            offline,
            token,
        }
    }

    /// Resolve a local directory or a hub id to a model directory holding every file `kind`
    /// requires (see the module docs). Downloads report to `progress`, one stage per file.
    pub fn resolve(&self, spec: &str, kind: ModelKind, progress: &dyn Progress) -> Result<PathBuf> {
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
            && !spec.starts_with('/')
            && !spec.contains("..");
        if !valid_id {
            return Err(Error::config(
                kind.flag(),
                format!("`{spec}` is neither a directory nor a Hugging Face hub id"),
            ));
        }
        let snapshots = self
            .cache
            .join(format!("models--{}", spec.replace('/', "--")))
            .join("snapshots");
        if let Some(dir) = cached_snapshot(&self.cache, spec) {
            if kind.required().iter().all(|f| dir.join(f).is_file()) {
                return Ok(dir);
            }
        }
        let missing = |why: String| {
            Error::config(
                kind.flag(),
                format!(
                    "`{spec}` is not a local directory and is not complete in the Hugging Face cache \
                     ({} searched); {why}. Run `huggingface-cli download {spec}` on a machine that is \
                     online (same cache layout), or pass a model directory",
                    snapshots.display()
                ),
            )
        };
        if self.offline {
            return Err(missing(
                "HF_HUB_OFFLINE is set, so nothing is downloaded".into(),
            ));
        }
        download(self, spec, kind, progress).map_err(missing)
    }
}

/// The snapshot dir of `spec` in `cache`: the one `refs/main` names, else the newest.
fn cached_snapshot(cache: &Path, spec: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", spec.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let d = snapshots.join(rev.trim());
        if d.is_dir() {
            return Some(d);
        }
    }
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d)
}

#[cfg(feature = "download")]
fn download(
    hub: &Hub,
    spec: &str,
    kind: ModelKind,
    progress: &dyn Progress,
) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::{ApiBuilder, ApiError};

    struct Bar<'a>(&'a dyn Progress);
    impl hf_hub::api::Progress for Bar<'_> {
        fn init(&mut self, size: usize, filename: &str) {
            self.0.start(&format!("download {filename}"), size as u64);
        }
        fn update(&mut self, size: usize) {
            self.0.inc(size as u64);
        }
        fn finish(&mut self) {
            self.0.finish();
        }
    }

    let api = ApiBuilder::from_cache(hf_hub::Cache::new(hub.cache.clone()))
        .with_endpoint(hub.endpoint.trim_end_matches('/').to_string())
        .with_token(hub.token.clone())
        .with_progress(false)
        .with_retries(2)
        .build()
        .map_err(|e| format!("could not set up the download client: {e}"))?;
    let repo = api.model(spec.to_string());
    let fetch = |file: &str| -> std::result::Result<PathBuf, ApiError> {
        // `Cache` follows `refs/main`; files missing there are fetched at the hub's revision.
        match hf_hub::Cache::new(hub.cache.clone())
            .model(spec.to_string())
            .get(file)
        {
            Some(p) => Ok(p),
            None => repo.download_with_progress(file, Bar(progress)),
        }
    };
    let mut dir: Option<PathBuf> = None;
    for &file in kind.required() {
        let path = fetch(file)
            .map_err(|e| format!("downloading {file} from {} failed: {e}", repo.url(file)))?;
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match &dir {
            None => dir = Some(parent),
            Some(d) if *d == parent => {}
            Some(d) => {
                return Err(format!(
                    "{file} landed in {} but the other files are in {} (the hub revision changed \
                     while downloading; run again)",
                    parent.display(),
                    d.display()
                ))
            }
        }
    }
    let dir = dir.ok_or_else(|| "no files to fetch".to_string())?;
    for &file in kind.optional() {
        if dir.join(file).is_file() {
            continue;
        }
        // Optional: most repositories without the file answer 404, which is fine.
        if let Err(e) = fetch(file) {
            tracing::debug!("{spec}: optional {file} not fetched: {e}");
        }
    }
    tracing::info!("{spec}: model files in {}", dir.display());
    Ok(dir)
}

#[cfg(not(feature = "download"))]
fn download(
    _hub: &Hub,
    _spec: &str,
    _kind: ModelKind,
    _progress: &dyn Progress,
) -> std::result::Result<PathBuf, String> {
    Err("this build has no `download` feature, so nothing is downloaded".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use close_core::progress::NoProgress;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn hub(cache: &Path, endpoint: &str, offline: bool) -> Hub {
        Hub {
            cache: cache.to_path_buf(),
            endpoint: endpoint.into(),
            offline,
            token: None,
        }
    }

    #[test]
    fn resolves_dirs_and_cache_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hub");
        let h = hub(&cache, "http://127.0.0.1:9", true);
        let repo = cache.join("models--openai--clip-vit-base-patch32");
        let fill = |d: &Path| {
            std::fs::create_dir_all(d).unwrap();
            for f in ModelKind::Clip.required() {
                std::fs::write(d.join(f), "x").unwrap();
            }
        };
        let snap = repo.join("snapshots/abc123");
        fill(&snap);
        let id = "openai/clip-vit-base-patch32";
        assert_eq!(h.resolve(id, ModelKind::Clip, &NoProgress).unwrap(), snap);
        // refs/main wins over the newer snapshot.
        let snap2 = repo.join("snapshots/def456");
        fill(&snap2);
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(h.resolve(id, ModelKind::Clip, &NoProgress).unwrap(), snap);
        // A local directory is taken as is.
        let local = dir.path().to_str().unwrap();
        assert_eq!(
            h.resolve(local, ModelKind::T5, &NoProgress).unwrap(),
            dir.path()
        );
        // Offline and missing: the error names the flag, the cache path and the fix.
        let e = h
            .resolve("t5-base", ModelKind::T5, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--t5") && e.contains("models--t5-base") && e.contains("HF_HUB_OFFLINE"),
            "{e}"
        );
        // An incomplete snapshot is not accepted.
        std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
        let e = h
            .resolve(id, ModelKind::Clip, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not complete"), "{e}");
        assert!(h.resolve("../x/y/z", ModelKind::T5, &NoProgress).is_err());
        assert!(h.resolve("a/../b", ModelKind::T5, &NoProgress).is_err());
    }

    /// A minimal stand-in for the hub's `resolve` endpoint: ranged GETs with the headers
    /// `hf-hub` reads (`x-repo-commit`, `etag`, `content-range`), 404 for unknown files.
    fn serve(files: HashMap<String, Vec<u8>>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut range_start = 0usize;
                let mut range_end: Option<usize> = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(r) = lower.strip_prefix("range: bytes=") {
                        let (a, b) = r.trim().split_once('-').unwrap();
                        range_start = a.parse().unwrap();
                        range_end = b.parse().ok();
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let resp = match files.get(&path) {
                    Some(body) => {
                        let end = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
                        let part = &body[range_start..=end];
                        let mut head = format!(
                            "HTTP/1.1 206 Partial Content\r\nx-repo-commit: 0123abcd\r\n\
                             etag: \"etag-{}\"\r\ncontent-range: bytes {range_start}-{end}/{}\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n",
                            path.len() + body.len(),
                            body.len(),
                            part.len()
                        )
                        .into_bytes();
                        head.extend_from_slice(part);
                        head
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&resp);
            }
        });
        (format!("http://{addr}"), hits)
    }

    #[cfg(feature = "download")]
    #[test]
    fn downloads_missing_files_into_the_cache_then_reuses_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hub");
        let mut files = HashMap::new();
        for f in ModelKind::T5.required() {
            files.insert(
                format!("/org/tiny-t5/resolve/main/{f}"),
                format!("{f} bytes").into_bytes(),
            );
        }
        let (endpoint, hits) = serve(files);
        let h = hub(&cache, &endpoint, false);
        let d = h
            .resolve("org/tiny-t5", ModelKind::T5, &NoProgress)
            .unwrap();
        assert_eq!(d, cache.join("models--org--tiny-t5/snapshots/0123abcd"));
        assert_eq!(
            std::fs::read_to_string(d.join("model.safetensors")).unwrap(),
            "model.safetensors bytes"
        );
        assert_eq!(
            std::fs::read_to_string(cache.join("models--org--tiny-t5/refs/main"))
                .unwrap()
                .trim(),
            "0123abcd"
        );
        // tokenizer.json is optional: the 404 did not fail the download.
        assert!(!d.join("tokenizer.json").exists());
        // Second time: everything comes from the cache, even offline.
        let before = hits.load(Ordering::SeqCst);
        let offline = hub(&cache, "http://127.0.0.1:9", true);
        assert_eq!(
            offline
                .resolve("org/tiny-t5", ModelKind::T5, &NoProgress)
                .unwrap(),
            d
        );
        assert_eq!(hits.load(Ordering::SeqCst), before);
        // A repository without a required file: the error names the file, URL and cache.
        let e = h
            .resolve("org/other", ModelKind::T5, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json")
                && e.contains("/org/other/resolve/main/")
                && e.contains("models--org--other"),
            "{e}"
        );
    }

    #[cfg(feature = "download")]
    #[test]
    fn no_network_names_the_cache_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hub");
        // Nothing listens on a port that was just released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let h = hub(&cache, &format!("http://127.0.0.1:{port}"), false);
        let e = h
            .resolve("openai/clip-vit-base-patch32", ModelKind::Clip, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--clip")
                && e.contains("models--openai--clip-vit-base-patch32")
                && e.contains("huggingface-cli download"),
            "{e}"
        );
    }
}

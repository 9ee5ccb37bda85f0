//! Atomic file writes: write to a temporary file in the same directory, fsync, rename.
//! A crash mid-write never leaves a truncated checkpoint, results file or cache shard.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Atomically replace `path` with `bytes` (creating parent directories).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Atomically replace `path` with whatever `fill` writes into the temporary file.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    let path = file.path.clone();
    fill(file.writer()).map_err(|e| Error::io(&path, e))?;
    file.commit()
}

/// A file written into a temporary beside `path` and moved over it by
/// [`AtomicFile::commit`] (after an fsync). Dropped without a commit, it removes the
/// temporary and leaves `path` as it was.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<std::io::BufWriter<std::fs::File>>,
}

impl AtomicFile {
    /// Start writing `path` (creating its parent directories).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = tmp_path(&path);
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            tmp,
            w: Some(std::io::BufWriter::new(file)),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The buffered writer of the temporary file.
    pub fn writer(&mut self) -> &mut std::io::BufWriter<std::fs::File> {
        self.w
            .as_mut()
            .expect("an AtomicFile is only taken by commit")
    }

    /// Flush, fsync and move the temporary over `path`.
    pub fn commit(mut self) -> Result<()> {
        let w = self
            .w
            .take()
            .expect("an AtomicFile is only taken by commit");
        let result = (|| -> std::io::Result<()> {
            let file = w.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::io(&self.path, e)
        })
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A compact JSON document whose one array is written element by element, so that a file
/// of millions of records never sits in memory; written atomically by [`JsonArrayFile::finish`].
///
/// The output is byte-identical to `serde_json::to_writer` of the whole document.
pub struct JsonArrayFile {
    file: AtomicFile,
    tail: String,
    len: usize,
}

impl JsonArrayFile {
    /// Start `path` from `shell`, the document with the streamed array empty. `key` names
    /// that array's field; `None` when the document is the array itself. The field must
    /// occur once in the shell.
    pub fn create<T: serde::Serialize>(
        path: impl AsRef<Path>,
        shell: &T,
        key: Option<&str>,
    ) -> Result<Self> {
        let text = serde_json::to_string(shell)?;
        let marker = match key {
            Some(k) => format!("{}:[]", serde_json::to_string(k)?),
            None => "[]".to_string(),
        };
        let at: Vec<usize> = text.match_indices(&marker).map(|(i, _)| i).collect();
        let split = match (key, at.as_slice()) {
            (None, _) if text == marker => 1,
            (Some(_), [i]) => i + marker.len() - 1,
            _ => {
                return Err(Error::invalid(format!(
                    "{}: the JSON shell has no single empty array {marker}",
                    path.as_ref().display()
                )))
            }
        };
        let mut file = AtomicFile::create(path)?;
        let path = file.path.clone();
        file.writer()
            .write_all(&text.as_bytes()[..split])
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            file,
            tail: text[split..].to_string(),
            len: 0,
        })
    }

    /// Append one element of the array.
    pub fn push<E: serde::Serialize>(&mut self, element: &E) -> Result<()> {
        let first = self.len == 0;
        let w = self.file.writer();
        let result = (|| -> std::io::Result<()> {
            if !first {
                w.write_all(b",")?;
            }
            serde_json::to_writer(&mut *w, element).map_err(std::io::Error::from)
        })();
        result.map_err(|e| Error::io(&self.file.path, e))?;
        self.len += 1;
        Ok(())
    }

    /// Elements written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no element has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Close the array and the document, and move the file in place.
    pub fn finish(mut self) -> Result<()> {
        let path = self.file.path.clone();
        self.file
            .writer()
            .write_all(self.tail.as_bytes())
            .map_err(|e| Error::io(&path, e))?;
        self.file.commit()
    }
}

/// A file of one compact JSON value per line (JSON Lines), written as it is produced and
/// moved in place by [`JsonLinesFile::finish`].
pub struct JsonLinesFile {
    file: AtomicFile,
}

impl JsonLinesFile {
    /// Start writing `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            file: AtomicFile::create(path)?,
        })
    }

    /// Append one line.
    pub fn push<E: serde::Serialize>(&mut self, value: &E) -> Result<()> {
        let w = self.file.writer();
        let result = serde_json::to_writer(&mut *w, value)
            .map_err(std::io::Error::from)
            .and_then(|()| w.write_all(b"\n"));
        result.map_err(|e| Error::io(&self.file.path, e))
    }

    /// Move the file in place.
    pub fn finish(self) -> Result<()> {
        self.file.commit()
    }
}

/// Atomically write `value` as pretty JSON.
pub fn write_json_atomic<T: serde::Serialize>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    // Serialized straight into the file's buffer: a dataset's JSON can be hundreds of MB,
    // which a whole-file buffer would hold (and copy) once more.
    write_atomic_with(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::from)
    })
}

/// Read and parse a JSON file, naming the file (and line) in errors.
pub fn read_json<T: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, Some(e.line()), format!("{e}")))
}

/// Atomically save named tensors as safetensors, with the file mode every other output
/// gets (0666 less the umask: the safetensors crate writes through a private 0600 temp
/// file, which would lock other users of a shared model directory out).
pub fn save_safetensors_atomic(
    path: impl AsRef<Path>,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    let path = path.as_ref();
    let tmp = tmp_path(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let result = candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| Error::invalid(format!("{}: writing safetensors: {e}", path.display())))
        .and_then(|()| finish_file(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Give a finished temporary file the default mode, flush it to disk and move it in place.
fn finish_file(tmp: &Path, path: &Path) -> std::io::Result<()> {
    set_default_mode(tmp)?;
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(unix)]
fn set_default_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = 0o666 & !umask();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_default_mode(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The process umask, read from `/proc/self/status` (changing it to read it would race with
/// other threads creating files); 022 where that is not available.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Refuse to replace an existing output unless `replace` is set: `path` may not exist, or
/// be an empty directory. Called before any work starts, so nothing is computed for an
/// output that cannot be written. `hint` tells the user what to pass instead.
pub fn check_output(path: &Path, replace: bool, hint: &str) -> Result<()> {
    if replace || !is_occupied(path)? {
        return Ok(());
    }
    Err(Error::Exists {
        path: path.to_path_buf(),
        hint: hint.to_string(),
    })
}

/// Whether `path` exists as a file or a non-empty directory.
pub fn is_occupied(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(_) => Ok(path.exists()),
    }
}

/// SHA-256 of a file, hex encoded (used to fingerprint models and inputs).
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    use sha2::Digest;
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

/// The marker written last into a directory being committed by [`replace_dir_atomic`].
const COMPLETE_MARKER: &str = ".complete";

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dir".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Replace the directory `dir` as one unit: `fill` writes the new contents into
/// `DIR.new/`, a marker is written last, then renames swap it in (`DIR` → `DIR.old`,
/// `DIR.new` → `DIR`). A kill at any moment leaves either the old or the new contents,
/// which [`recover_dir`] restores to `dir`. Used for checkpoints whose files must agree.
pub fn replace_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    recover_dir(dir)?;
    let new = sibling(dir, "new");
    let old = sibling(dir, "old");
    remove_dir_if_present(&new)?;
    std::fs::create_dir_all(&new).map_err(|e| Error::io(&new, e))?;
    fill(&new)?;
    write_atomic(new.join(COMPLETE_MARKER), b"")?;
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&new, dir).map_err(|e| Error::io(&new, e))?;
    remove_dir_if_present(&old)
}

/// Finish or undo a [`replace_dir_atomic`] that was interrupted: afterwards `dir` holds the
/// newest complete contents (or does not exist if none was ever completed) and no
/// `DIR.new` / `DIR.old` is left.
pub fn recover_dir(dir: &Path) -> Result<()> {
    let new = sibling(dir, "new");
    let old = sibling(dir, "old");
    if !dir.exists() {
        if new.join(COMPLETE_MARKER).exists() {
            std::fs::rename(&new, dir).map_err(|e| Error::io(&new, e))?;
        } else if old.exists() {
            std::fs::rename(&old, dir).map_err(|e| Error::io(&old, e))?;
        }
    }
    remove_dir_if_present(&new)?;
    remove_dir_if_present(&old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[derive(serde::Serialize)]
    struct Doc {
        info: &'static str,
        #[serde(rename = "items")]
        xs: Vec<(u32, String)>,
        others: Vec<u32>,
    }

    fn streamed(path: &Path, doc: &Doc, key: Option<&str>) -> Vec<u8> {
        let shell = Doc {
            info: doc.info,
            xs: vec![],
            others: doc.others.clone(),
        };
        let mut f = match key {
            Some(k) => JsonArrayFile::create(path, &shell, Some(k)).unwrap(),
            None => JsonArrayFile::create(path, &Vec::<(u32, String)>::new(), None).unwrap(),
        };
        for x in &doc.xs {
            f.push(x).unwrap();
        }
        assert_eq!(f.len(), doc.xs.len());
        f.finish().unwrap();
        std::fs::read(path).unwrap()
    }

    #[test]
    fn a_streamed_json_array_is_byte_identical_to_the_whole_document() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        for n in [0, 1, 3] {
            let doc = Doc {
                info: "say \"items\":[] here",
                xs: (0..n).map(|i| (i, format!("x{i}\n"))).collect(),
                others: vec![],
            };
            let whole = serde_json::to_vec(&doc).unwrap();
            assert_eq!(streamed(&p, &doc, Some("items")), whole, "{n} elements");
            let top = serde_json::to_vec(&doc.xs).unwrap();
            assert_eq!(streamed(&p, &doc, None), top, "{n} elements, top level");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_json_shell_without_one_empty_array_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        let doc = Doc {
            info: "",
            xs: vec![],
            others: vec![],
        };
        let e = JsonArrayFile::create(&p, &doc, Some("missing"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("\"missing\":[]"), "{e}");
        let e = JsonArrayFile::create(&p, &doc, None).err().unwrap();
        assert!(e.to_string().contains("d.json"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_unfinished_stream_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.json");
        write_atomic(&p, b"old").unwrap();
        let mut f = JsonArrayFile::create(&p, &Vec::<u32>::new(), None).unwrap();
        f.push(&1u32).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn safetensors_get_the_default_mode_not_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        let t = candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu);
        let map = [("w".to_string(), t.unwrap())].into_iter().collect();
        save_safetensors_atomic(&p, &map).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask(), "mode {mode:o}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_occupied_output_is_refused_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        check_output(&out, false, "pass --force").unwrap();
        std::fs::create_dir(&out).unwrap();
        check_output(&out, false, "pass --force").unwrap();
        write_atomic(out.join("config.json"), b"{}").unwrap();
        let e = check_output(&out, false, "pass --force")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run: already exists; pass --force"), "{e}");
        check_output(&out, true, "pass --force").unwrap();
        let e = check_output(&out.join("config.json"), false, "x").unwrap_err();
        assert!(matches!(e, Error::Exists { .. }));
    }

    #[test]
    fn read_json_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(&p, "{\n \"a\": 1,\n oops }").unwrap();
        let e = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(e.contains("bad.json:3"), "{e}");
    }

    #[test]
    fn a_directory_is_replaced_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("last");
        let put = |d: &Path, v: &str| write_atomic(d.join("a"), v.as_bytes());
        replace_dir_atomic(&dir, |d| put(d, "1")).unwrap();
        replace_dir_atomic(&dir, |d| put(d, "2")).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"2");
        // Killed while filling DIR.new: the old contents stay.
        std::fs::create_dir_all(sibling(&dir, "new")).unwrap();
        put(&sibling(&dir, "new"), "3").unwrap();
        recover_dir(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"2");
        assert!(!sibling(&dir, "new").exists());
        // Killed between the two renames: the complete new contents win.
        replace_dir_atomic(&dir, |d| put(d, "4")).unwrap();
        std::fs::rename(&dir, sibling(&dir, "old")).unwrap();
        std::fs::create_dir_all(sibling(&dir, "new")).unwrap();
        put(&sibling(&dir, "new"), "5").unwrap();
        write_atomic(sibling(&dir, "new").join(COMPLETE_MARKER), b"").unwrap();
        recover_dir(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"5");
        assert!(!sibling(&dir, "old").exists());
        // A failed fill leaves the previous contents in place.
        let e = replace_dir_atomic(&dir, |_| Err(Error::invalid("disk full")));
        assert!(e.is_err());
        recover_dir(&dir).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"5");
    }
}

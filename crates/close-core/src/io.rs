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
    let path = path.as_ref();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = tmp_path(path);
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
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

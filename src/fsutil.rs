//! File-system helpers shared by ntv's state files (session, traces): atomic replacement.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed step of [`write_atomic`]: what was being done, to which path.
#[derive(Debug)]
pub struct WriteError {
    pub op: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// Replace `path` with `bytes` atomically: a temporary file `.<name>.XXXX.tmp` in the same
/// folder, written and fsynced, then renamed over `path` (and the folder fsynced, best effort).
/// Readers see the old file or the new one, never a half-written one; on failure the temporary
/// file is removed and `path` is untouched. A file being replaced keeps its permissions.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |op: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |error| WriteError { op, path, error }
    };
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(fail("create a temporary file in", dir))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.write_all(bytes).map_err(fail("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(fail("sync", tmp.path()))?;
    // On failure the PersistError drops the temporary file, which deletes it.
    tmp.persist(path)
        .map_err(|e| fail("replace", path)(e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let err = write_atomic(Path::new("/nonexistent/dir/state.json"), b"x").unwrap_err();
        assert_eq!(err.path, Path::new("/nonexistent/dir"));
    }
}

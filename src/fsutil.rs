//! File-system helpers shared by ntv's state files (session, traces): atomic replacement.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed step of [`write_atomic`]: what was being done, to which file (always the file
/// being replaced, never the temporary file beside it: that is ntv's business, not the user's).
#[derive(Debug)]
pub struct WriteError {
    pub op: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// The message of a file that must not be replaced because it is read-only.
const READ_ONLY: &str = "the file is read-only";

/// How to get past an I/O failure on `path` (state files: sessions, traces), by its kind.
pub fn io_hint(error: &std::io::Error, path: &Path) -> Option<String> {
    use std::io::ErrorKind as K;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
        _ => ".".to_string(),
    };
    if error.to_string() == READ_ONLY {
        return Some(format!(
            "make it writable (chmod u+w {}) if ntv may change it, or pass another path",
            path.display()
        ));
    }
    Some(match error.kind() {
        K::StorageFull | K::QuotaExceeded => format!(
            "free some space on the disk holding {dir} (nothing was changed), or pass a path on another disk"
        ),
        K::ReadOnlyFilesystem => {
            format!("{dir} is on a read-only file system: pass a path on a writable one")
        }
        K::PermissionDenied => format!(
            "you may not write in {dir}: pass a path in a folder you can write, or fix its permissions"
        ),
        K::NotFound => format!("the folder {dir} does not exist: create it, or pass another path"),
        _ => return None,
    })
}

/// Replace `path` with `bytes` atomically: a temporary file `.<name>.XXXX.tmp` in the same
/// folder, written and fsynced, then renamed over `path` (and the folder fsynced, best effort).
/// Readers see the old file or the new one, never a half-written one; on failure the temporary
/// file is removed and `path` is untouched. A file being replaced keeps its permissions; a
/// read-only one is not replaced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let fail = |op: &'static str| {
        let path = path.to_path_buf();
        move |error| WriteError { op, path, error }
    };
    let existing = std::fs::metadata(path).ok();
    if existing
        .as_ref()
        .is_some_and(|m| m.permissions().readonly())
    {
        return Err(fail("replace")(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            READ_ONLY,
        )));
    }
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(fail("write"))?;
    if let Some(meta) = existing {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.write_all(bytes).map_err(fail("write"))?;
    tmp.as_file().sync_all().map_err(fail("write"))?;
    // On failure the PersistError drops the temporary file, which deletes it.
    tmp.persist(path).map_err(|e| fail("replace")(e.error))?;
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
    fn a_missing_folder_is_an_error_naming_the_file_with_a_hint() {
        let path = Path::new("/nonexistent/dir/state.json");
        let err = write_atomic(path, b"x").unwrap_err();
        assert_eq!(err.path, path);
        let hint = io_hint(&err.error, &err.path).unwrap();
        assert!(hint.contains("/nonexistent/dir does not exist"), "{hint}");
    }

    #[test]
    fn a_read_only_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"old").unwrap();
        let mut perm = std::fs::metadata(&path).unwrap().permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(&path, perm).unwrap();
        let err = write_atomic(&path, b"new").unwrap_err();
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(err.path, path);
        assert!(io_hint(&err.error, &path).unwrap().contains("chmod u+w"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn hints_by_kind() {
        use std::io::{Error, ErrorKind};
        let p = Path::new("/data/s.json");
        let full = io_hint(&Error::from(ErrorKind::StorageFull), p).unwrap();
        assert!(
            full.contains("free some space on the disk holding /data"),
            "{full}"
        );
        let ro = io_hint(&Error::from(ErrorKind::ReadOnlyFilesystem), p).unwrap();
        assert!(ro.contains("read-only file system"), "{ro}");
        let denied = io_hint(&Error::from(ErrorKind::PermissionDenied), p).unwrap();
        assert!(denied.contains("you may not write in /data"), "{denied}");
        assert!(io_hint(&Error::from(ErrorKind::Interrupted), p).is_none());
    }
}

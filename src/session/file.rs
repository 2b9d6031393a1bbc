//! Reading, writing and locking session files.
//!
//! - [`load`] checks the file step by step (JSON, format, version, migration, fields,
//!   invariants) so every problem gets a precise error naming the file.
//! - [`save`] writes atomically: a temporary file in the same folder, fsync, rename, fsync of the
//!   folder. A failure never leaves a half-written session file.
//! - [`SessionLock`] serialises read-modify-write cycles of concurrent processes. Commands that
//!   only read need no lock: thanks to the atomic rename they always see a whole file.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{FORMAT, Session, SessionError, VERSION};

/// How long [`SessionLock::acquire`] waits for another process.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two lock attempts.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// Reads the session at `path`; `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<Session>, SessionError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(SessionError::Io {
                op: "read",
                path: path.to_path_buf(),
                error,
            });
        }
    };
    parse(path, &bytes).map(Some)
}

/// Parses the bytes of a session file; `path` is only used in errors.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Session, SessionError> {
    let path_buf = || path.to_path_buf();
    let value: Value = serde_json::from_slice(bytes).map_err(|e| SessionError::Corrupt {
        path: path_buf(),
        message: e.to_string(),
        line: e.line(),
        column: e.column(),
        truncated: e.is_eof(),
    })?;
    let Some(object) = value.as_object() else {
        return Err(SessionError::Foreign {
            path: path_buf(),
            found: format!("it holds a JSON {}, not an object", kind_of(&value)),
        });
    };
    match object.get("format") {
        Some(Value::String(format)) if format == FORMAT => {}
        Some(other) => {
            return Err(SessionError::Foreign {
                path: path_buf(),
                found: format!("its \"format\" is {other}, not \"{FORMAT}\""),
            });
        }
        None => {
            return Err(SessionError::Foreign {
                path: path_buf(),
                found: "it has no \"format\" field".to_string(),
            });
        }
    }
    let version = match object.get("version") {
        Some(v) => v.as_u64().ok_or_else(|| SessionError::Invalid {
            path: path_buf(),
            field: "version".to_string(),
            message: format!("expected a non-negative integer, found {v}"),
        })?,
        None => {
            return Err(SessionError::Invalid {
                path: path_buf(),
                field: "version".to_string(),
                message: "missing field `version`".to_string(),
            });
        }
    };
    if version > u64::from(VERSION) {
        return Err(SessionError::NewerVersion {
            path: path_buf(),
            found: version,
            supported: VERSION,
        });
    }
    let value = migrate(path, version, value)?;
    let session: Session =
        serde_path_to_error::deserialize(value).map_err(|e| SessionError::Invalid {
            path: path_buf(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    session
        .check()
        .map_err(|message| SessionError::Inconsistent {
            path: path_buf(),
            message,
        })?;
    Ok(session)
}

/// One migration step: turns a document of version `v` into one of version `v + 1`.
type Migration = fn(Value) -> Result<Value, String>;

/// The migration steps, oldest first: `MIGRATIONS[i]` turns version `OLDEST_VERSION + i` into
/// the next.
const MIGRATIONS: &[Migration] = &[migrate_v1_to_v2];

/// Version 2 (issue 20) added `parse_special`, `messages`, `prompt_text` and the `bytes` of
/// every recorded token. Version 1 tokenised raw prompts with special-token text literal, so
/// a v1 session without a chat template keeps doing that (`parse_special: false`); bytes are
/// the recorded text's (exact unless the text held a replacement character for a partial
/// UTF-8 piece, which v1 could not record).
fn migrate_v1_to_v2(mut value: Value) -> Result<Value, String> {
    let object = value.as_object_mut().ok_or("not an object")?;
    let chat_template = object
        .get("chat_template")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    object
        .entry("parse_special")
        .or_insert(Value::Bool(chat_template));
    if let Some(Value::Array(branches)) = object.get_mut("branches") {
        for branch in branches {
            if let Some(Value::Array(metas)) = branch.get_mut("appended_meta") {
                for meta in metas {
                    add_bytes(meta.get_mut("selected"));
                    if let Some(Value::Array(tokens)) =
                        meta.get_mut("dist").and_then(|d| d.get_mut("tokens"))
                    {
                        for t in tokens {
                            add_bytes(Some(t));
                        }
                    }
                }
            }
        }
    }
    Ok(value)
}

/// Give a recorded token (`{"text": ...}`) the `bytes` of its text.
fn add_bytes(token: Option<&mut Value>) {
    if let Some(Value::Object(t)) = token
        && !t.contains_key("bytes")
    {
        let bytes: Vec<Value> = t
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .bytes()
            .map(Value::from)
            .collect();
        t.insert("bytes".into(), Value::Array(bytes));
    }
}

/// The oldest version [`load`] can read (migrating it to [`VERSION`]).
const OLDEST_VERSION: u32 = VERSION - MIGRATIONS.len() as u32;

/// Brings a session document of version `from` (at most [`VERSION`]) up to [`VERSION`], one
/// version at a time.
fn migrate(path: &Path, from: u64, mut value: Value) -> Result<Value, SessionError> {
    if from < u64::from(OLDEST_VERSION) {
        return Err(SessionError::OlderVersion {
            path: path.to_path_buf(),
            found: from,
            oldest: OLDEST_VERSION,
            supported: VERSION,
        });
    }
    let skip = (from - u64::from(OLDEST_VERSION)) as usize;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(skip) {
        let to = OLDEST_VERSION as usize + i + 1;
        value = step(value).map_err(|message| SessionError::Invalid {
            path: path.to_path_buf(),
            field: ".".to_string(),
            message: format!("cannot migrate it to version {to}: {message}"),
        })?;
        if let Some(object) = value.as_object_mut() {
            object.insert("version".to_string(), Value::from(to));
        }
    }
    Ok(value)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Writes `session` to `path` atomically as pretty JSON with a trailing newline.
///
/// The serialised text is parsed back first, so ntv never writes a file it could not read.
/// An existing file keeps its permissions.
pub fn save(path: &Path, session: &Session) -> Result<(), SessionError> {
    let mut text = serde_json::to_string_pretty(session).map_err(|e| SessionError::Unwritable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.push('\n');
    parse(path, text.as_bytes()).map_err(|e| SessionError::Unwritable {
        path: path.to_path_buf(),
        message: format!("it would not read back: {e}"),
    })?;

    crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|e| SessionError::Io {
        op: e.op,
        path: e.path,
        error: e.error,
    })
}

/// The lock file of a session: `<path>.lock`, next to it.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// An exclusive lock on a session, held for a whole read-modify-write cycle so that two
/// processes never lose a write silently. Released on drop; the lock file stays.
#[derive(Debug)]
pub struct SessionLock {
    file: File,
    path: PathBuf,
}

impl SessionLock {
    /// Locks the session at `path` (through `<path>.lock`), waiting up to about 5 s for another
    /// process to release it.
    pub fn acquire(path: &Path) -> Result<Self, SessionError> {
        Self::acquire_within(path, LOCK_TIMEOUT)
    }

    /// [`SessionLock::acquire`] with a chosen timeout.
    pub(crate) fn acquire_within(path: &Path, timeout: Duration) -> Result<Self, SessionError> {
        let lock = lock_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(|error| SessionError::Io {
                op: "create the lock file",
                path: lock.clone(),
                error,
            })?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { file, path: lock }),
                Err(TryLockError::WouldBlock) => {
                    let waited = start.elapsed();
                    if waited >= timeout {
                        return Err(SessionError::Locked {
                            path: path.to_path_buf(),
                            lock,
                            waited,
                        });
                    }
                    std::thread::sleep(LOCK_RETRY.min(timeout.saturating_sub(waited)));
                }
                Err(TryLockError::Error(error)) => {
                    return Err(SessionError::Io {
                        op: "lock",
                        path: lock,
                        error,
                    });
                }
            }
        }
    }

    /// The lock file.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes it immediate.
        let _ = self.file.unlock();
    }
}

//! Errors of the session file and of branch operations.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong with a session. Messages say what was wrong (and name the
/// file); [`SessionError::hint`] says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading, writing or locking failed at the operating-system level.
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        /// What was being done ("read", "write", "replace", …).
        op: &'static str,
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The file is not valid JSON (or ends early).
    #[error("session file {} is {}: {message}", path.display(), if *truncated { "truncated or empty" } else { "corrupt (not valid JSON)" })]
    Corrupt {
        /// The session file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// The JSON ended early (truncated or empty file).
        truncated: bool,
    },
    /// The file is JSON but not an ntv session.
    #[error("{} is not an ntv session file ({found})", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What was found instead of `"format": "ntv-session"`.
        found: String,
    },
    /// The file was written by a newer ntv.
    #[error(
        "session file {} has version {found}, but this ntv reads versions up to {supported}",
        path.display()
    )]
    NewerVersion {
        /// The session file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
        /// The newest version this ntv reads.
        supported: u32,
    },
    /// The file has a version too old to migrate.
    #[error(
        "session file {} has version {found}, which this ntv cannot read or migrate (supported: {oldest} to {supported})",
        path.display()
    )]
    OlderVersion {
        /// The session file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
        /// The oldest version this ntv migrates.
        oldest: u32,
        /// The newest version this ntv reads.
        supported: u32,
    },
    /// A field has the wrong type or value.
    #[error("session file {} is invalid at `{field}`: {message}", path.display())]
    Invalid {
        /// The session file.
        path: PathBuf,
        /// Path of the offending field (e.g. `branches[0].rng_pos`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The fields are well-typed but do not fit together.
    #[error("session file {} is inconsistent: {message}", path.display())]
    Inconsistent {
        /// The session file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// The session could not be serialised into a file that reads back (a bug in ntv).
    #[error("refusing to write session file {}: {message}", path.display())]
    Unwritable {
        /// The session file.
        path: PathBuf,
        /// Why the serialised session would not read back.
        message: String,
    },
    /// Another process holds the session's lock.
    #[error(
        "another ntv process is using session {} (waited {:.1} s for its lock {})",
        path.display(), waited.as_secs_f64(), lock.display()
    )]
    Locked {
        /// The session file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
    /// No branch has this name.
    #[error("unknown branch '{name}' (branches: {})", existing.join(", "))]
    UnknownBranch {
        /// The name asked for.
        name: String,
        /// The names that exist.
        existing: Vec<String>,
    },
    /// A branch with this name exists already.
    #[error("branch '{name}' already exists")]
    BranchExists {
        /// The name asked for.
        name: String,
    },
    /// A branch name with forbidden characters.
    #[error("invalid branch name {name:?}: {reason}")]
    BadBranchName {
        /// The name asked for.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A completion position past the end of a branch.
    #[error("position {at} is out of range for branch '{branch}' (valid: 0 to {len})")]
    PositionOutOfRange {
        /// The branch.
        branch: String,
        /// The position asked for.
        at: usize,
        /// The branch's length (the largest valid position).
        len: usize,
    },
    /// Undo of more tokens than the branch has.
    #[error("cannot undo {n} tokens: branch '{branch}' has {len} completion tokens")]
    UndoTooMany {
        /// The branch.
        branch: String,
        /// Tokens asked to undo.
        n: usize,
        /// Tokens in the branch.
        len: usize,
    },
    /// Deleting the active branch without force.
    #[error("branch '{name}' is the active branch")]
    DeleteActive {
        /// The branch.
        name: String,
    },
    /// Deleting the only branch.
    #[error("branch '{name}' is the only branch and cannot be deleted")]
    LastBranch {
        /// The branch.
        name: String,
    },
}

impl SessionError {
    /// True for problems with the user's input or file (exit code 2); false for runtime
    /// failures (I/O, lock timeout).
    pub fn is_input(&self) -> bool {
        !matches!(
            self,
            Self::Io { .. } | Self::Locked { .. } | Self::Unwritable { .. }
        )
    }

    /// How to fix the problem, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        const ASIDE: &str = "move it aside or pass --session with another path; \
                             ntv never overwrites a session it cannot read";
        Some(match self {
            Self::Io { op, path, error } => {
                return if *op == "read" {
                    None
                } else {
                    crate::fsutil::io_hint(error, path)
                };
            }
            Self::Corrupt { .. } | Self::Foreign { .. } => ASIDE.to_string(),
            Self::NewerVersion { .. } => {
                "upgrade ntv to read it, or pass --session with another path".to_string()
            }
            Self::OlderVersion { .. } => format!("start a new session; {ASIDE}"),
            Self::Invalid { .. } | Self::Inconsistent { .. } => {
                format!("fix the file by hand, or {ASIDE}")
            }
            Self::Unwritable { .. } => {
                "this is a bug in ntv; the session file was left unchanged".to_string()
            }
            Self::Locked { lock, .. } => format!(
                "wait for the other command to finish and try again (the lock is held on {})",
                lock.display()
            ),
            Self::UnknownBranch { .. } => "`ntv branch list` shows the branches".to_string(),
            Self::BranchExists { .. } => {
                "choose another name, or `ntv branch delete` the old branch".to_string()
            }
            Self::BadBranchName { .. } => "use letters, digits, '.', '_' and '-' only".to_string(),
            Self::PositionOutOfRange { .. } | Self::UndoTooMany { .. } => {
                "`ntv branch show` lists the completion positions".to_string()
            }
            Self::DeleteActive { .. } => {
                "switch to another branch first, or pass --force".to_string()
            }
            Self::LastBranch { .. } => "a session always keeps one branch".to_string(),
        })
    }
}

impl crate::error::Diagnose for SessionError {
    fn is_input(&self) -> bool {
        SessionError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        SessionError::hint(self)
    }
}

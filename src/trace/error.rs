//! Errors of trace files and trace comparisons.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing or comparing traces. Messages name the file
/// and the problem; [`TraceError::hint`] says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The trace file does not exist.
    #[error("trace file {} does not exist", path.display())]
    NotFound {
        /// The file asked for.
        path: PathBuf,
    },
    /// Reading or writing failed at the operating-system level.
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
    #[error("trace file {} is {}: {message}", path.display(), if *truncated { "truncated or empty" } else { "corrupt (not valid JSON)" })]
    Corrupt {
        /// The trace file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
        /// The JSON ended early.
        truncated: bool,
    },
    /// The file is JSON but not an ntv trace.
    #[error("{} is not an ntv trace file ({found})", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What was found instead of `"schema": "ntv.trace/1"`.
        found: String,
    },
    /// The file was written by a newer ntv.
    #[error("trace file {} has schema {found:?}, but this ntv reads {supported:?}", path.display())]
    NewerVersion {
        /// The trace file.
        path: PathBuf,
        /// The schema in the file.
        found: String,
        /// The schema this ntv reads.
        supported: String,
    },
    /// A field is missing or has the wrong type or value.
    #[error("trace file {} is invalid at `{field}`: {message}", path.display())]
    Invalid {
        /// The trace file.
        path: PathBuf,
        /// Path of the offending field (e.g. `cases[0].steps[3].top[1].p_base`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The trace could not be serialised into a file that reads back (a bug in ntv, or a NaN).
    #[error("refusing to write trace file {}: {message}", path.display())]
    Unwritable {
        /// The trace file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Two traces to compare hold different numbers of cases.
    #[error("the traces hold different numbers of cases ({a} and {b})")]
    CaseCount {
        /// Cases of the first trace.
        a: usize,
        /// Cases of the second trace.
        b: usize,
    },
    /// Case `case` of two traces cannot be compared step by step.
    #[error("case {case} cannot be compared: {message}")]
    CaseMismatch {
        /// Index of the case (0-based).
        case: usize,
        /// Why.
        message: String,
    },
}

impl TraceError {
    /// True for problems with the user's files (exit code 2): a missing, corrupt, foreign or
    /// newer trace, or traces that do not fit together. False for I/O failures and bugs.
    pub fn is_input(&self) -> bool {
        !matches!(self, Self::Io { .. } | Self::Unwritable { .. })
    }

    /// How to fix the problem, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NotFound { .. } => {
                "record one first with `ntv generate --record FILE`, or check the path".into()
            }
            Self::Io { op, path, error } => {
                return if *op == "read" {
                    None
                } else {
                    crate::fsutil::io_hint(error, path)
                };
            }
            Self::Corrupt { .. } | Self::Foreign { .. } => {
                "trace files are written by `ntv generate --record`; record the trace again".into()
            }
            Self::NewerVersion { .. } => {
                "upgrade ntv to read it, or record the trace again with this ntv".into()
            }
            Self::Invalid { .. } => "fix the field by hand, or record the trace again".into(),
            Self::Unwritable { .. } => {
                "this is a bug in ntv; nothing was written (an existing file is unchanged)".into()
            }
            Self::CaseCount { .. } | Self::CaseMismatch { .. } => {
                "compare traces recorded from the same batch file (same prompts, same template \
                 flag, models with the same tokenizer), or use `ntv diff --model-a/--model-b`"
                    .into()
            }
        })
    }
}

impl crate::error::Diagnose for TraceError {
    fn is_input(&self) -> bool {
        TraceError::is_input(self)
    }
    fn hint(&self) -> Option<String> {
        TraceError::hint(self)
    }
}

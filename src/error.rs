//! Exit status and hints: the one mechanism every module's error maps into.
//!
//! A leaf module (it imports nothing from the crate). Each module keeps its own `thiserror`
//! enum and implements [`Diagnose`] for it: whether the problem is the user's input (exit 2) or
//! a runtime failure (exit 1), and a hint saying how to fix it. `?` turns any such error into
//! an [`Error`], which remembers both, so nothing downstream has to find out which module an
//! error came from. `app` prints an [`Error`] once, as `error: …` then `hint: …`.

use std::fmt;

/// What every module error tells the front-end.
pub trait Diagnose: std::error::Error + Send + Sync + 'static {
    /// The user's input is at fault (exit status 2); otherwise a runtime failure (1).
    fn is_input(&self) -> bool;
    /// How to fix it, when there is something to say.
    fn hint(&self) -> Option<String>;
}

/// The exit status of a command that ran to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit status 0.
    Success,
    /// The command did its work and found a failure to report (exit status 1), e.g. `ntv
    /// check` finding a regression: not an error of the program, a result.
    Failure {
        /// The `error:` line.
        message: String,
        /// The `hint:` line.
        hint: Option<String>,
    },
    /// Stopped by Ctrl-C or SIGTERM after saving its work (exit status 130); the line for
    /// stderr says what was kept.
    Interrupted(String),
}

/// Exit status 2 for input problems, 1 for runtime failures.
pub const EXIT_INPUT: u8 = 2;
/// Exit status of a runtime failure.
pub const EXIT_RUNTIME: u8 = 1;

/// A problem with the user's input raised by the command layer itself (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnose for InputError {
    fn is_input(&self) -> bool {
        true
    }
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}

/// Operating-system errors are runtime failures; a broken pipe is recognised by [`Error`].
impl Diagnose for std::io::Error {
    fn is_input(&self) -> bool {
        false
    }
    fn hint(&self) -> Option<String> {
        None
    }
}

/// A JSON error raised while writing output is a runtime failure (reading user files is
/// wrapped in the module errors that name the file).
impl Diagnose for serde_json::Error {
    fn is_input(&self) -> bool {
        false
    }
    fn hint(&self) -> Option<String> {
        None
    }
}

/// The error of a command: the message chain, whether the input is at fault, and a hint.
pub struct Error {
    chain: anyhow::Error,
    input: bool,
    hint: Option<String>,
}

/// Result of the command layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl<E: Diagnose> From<E> for Error {
    fn from(e: E) -> Self {
        Self {
            input: e.is_input(),
            hint: e.hint(),
            chain: anyhow::Error::new(e),
        }
    }
}

impl Error {
    /// An input error (exit 2) with a hint.
    pub fn input(message: impl Into<String>, hint: impl Into<String>) -> Self {
        InputError {
            message: message.into(),
            hint: Some(hint.into()),
        }
        .into()
    }

    /// A runtime failure (exit 1) without a typed cause.
    pub fn runtime(message: impl fmt::Display) -> Self {
        Self {
            chain: anyhow::anyhow!("{message}"),
            input: false,
            hint: None,
        }
    }

    /// The same error with `what` said in front (exit status and hint kept).
    pub fn context(self, what: impl fmt::Display + Send + Sync + 'static) -> Self {
        Self {
            chain: self.chain.context(what),
            ..self
        }
    }

    /// Exit status: 2 for the user's input, 1 for a runtime failure.
    pub fn exit_code(&self) -> u8 {
        if self.input { EXIT_INPUT } else { EXIT_RUNTIME }
    }

    /// Whether the user's input is at fault.
    pub fn is_input(&self) -> bool {
        self.input
    }

    /// How to fix it.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The typed cause of kind `E` anywhere in the chain, if there is one.
    pub fn find<E: std::error::Error + Send + Sync + 'static>(&self) -> Option<&E> {
        self.chain.chain().find_map(|c| c.downcast_ref::<E>())
    }

    /// The reader went away (`ntv … | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        self.chain.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        })
    }

    /// The error and its causes on one line (a cause already in the text is not repeated).
    pub fn message(&self) -> String {
        let mut msg = self.chain.to_string();
        for cause in self.chain.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg.push_str(": ");
                msg.push_str(&c);
            }
        }
        msg
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("message", &self.message())
            .field("input", &self.input)
            .field("hint", &self.hint)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// `.context(..)` on any result whose error maps into [`Error`].
pub trait Context<T> {
    /// Say what was being done; exit status and hint are kept.
    fn context(self, what: impl fmt::Display + Send + Sync + 'static) -> Result<T>;
    /// Like [`Context::context`], built only on failure.
    fn with_context<D: fmt::Display + Send + Sync + 'static>(
        self,
        what: impl FnOnce() -> D,
    ) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display + Send + Sync + 'static) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }
    fn with_context<D: fmt::Display + Send + Sync + 'static>(
        self,
        what: impl FnOnce() -> D,
    ) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

/// Shorthand: fail with an input error and a hint.
pub fn input_err(message: impl Into<String>, hint: impl Into<String>) -> Error {
    Error::input(message, hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("bad thing {0}")]
    struct Bad(u8);
    impl Diagnose for Bad {
        fn is_input(&self) -> bool {
            self.0 == 2
        }
        fn hint(&self) -> Option<String> {
            Some(format!("fix {}", self.0))
        }
    }

    fn fails(code: u8) -> Result<()> {
        Err(Bad(code))?
    }

    #[test]
    fn module_errors_keep_their_status_and_hint_through_question_mark_and_context() {
        let e = fails(2).context("reading the file").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.hint(), Some("fix 2"));
        assert_eq!(e.message(), "reading the file: bad thing 2");
        let e = fails(1).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(!e.is_input());
    }

    #[test]
    fn input_and_runtime_shorthands() {
        let e = input_err("no prompt", "pass -p");
        assert_eq!((e.exit_code(), e.hint()), (2, Some("pass -p")));
        let e = Error::runtime("the model returned no logits");
        assert_eq!((e.exit_code(), e.hint()), (1, None));
    }

    #[test]
    fn broken_pipe_is_recognised_under_context() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe");
        let e = Error::from(io).context("writing");
        assert!(e.is_broken_pipe());
        assert!(!Error::runtime("x").is_broken_pipe());
    }
}

//! What can go wrong between a model reference and a verified file in the cache.

use std::path::PathBuf;

/// A hub reference could not become a local file.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{reference:?} is not a model reference: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("repository {repo} not found on {endpoint}{detail}")]
    RepoNotFound {
        repo: String,
        endpoint: String,
        detail: String,
    },
    #[error("revision {revision} of {repo} not found on {endpoint}")]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },
    #[error("{repo} needs an access token ({status} from {endpoint}{detail})")]
    Unauthorized {
        repo: String,
        endpoint: String,
        status: u16,
        detail: String,
        /// Whether a token was sent (and refused).
        had_token: bool,
    },
    #[error("{repo} has no GGUF file{}", list(.files))]
    NoGguf { repo: String, files: Vec<String> },
    #[error("no GGUF file of {repo} matches {wanted}{}", list(.files))]
    NoMatch {
        repo: String,
        wanted: String,
        files: Vec<String>,
    },
    #[error("{wanted} matches several GGUF files of {repo}{}", list(.candidates))]
    Ambiguous {
        repo: String,
        wanted: String,
        candidates: Vec<String>,
    },
    #[error("{file} of split model {repo} is missing part {part} of {count}")]
    MissingPart {
        repo: String,
        file: String,
        part: u32,
        count: u32,
    },
    #[error("{what} is not in the Hugging Face cache ({root}) and ntv is offline")]
    NotCached { what: String, root: PathBuf },
    #[error("cannot reach {endpoint}: {message}")]
    Network { endpoint: String, message: String },
    #[error("{url} answered {status}{detail}")]
    Http {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("the hub's answer for {url} is malformed: {message}")]
    Malformed { url: String, message: String },
    #[error(
        "the download of {file} does not match its sha256 (expected {expected}, got {found}); nothing was kept"
    )]
    HashMismatch {
        file: String,
        expected: String,
        found: String,
    },
    #[error("the download of {file} stopped at {got} of {size} bytes: {message}")]
    Interrupted {
        file: String,
        got: u64,
        size: u64,
        message: String,
    },
    #[error("no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME")]
    NoCacheDir,
    #[error("{reference} is not in the Hugging Face cache ({root})")]
    NothingToRemove { reference: String, root: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn list(files: &[String]) -> String {
    if files.is_empty() {
        String::new()
    } else {
        format!(": {}", files.join(", "))
    }
}

impl HubError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

impl crate::error::Diagnose for HubError {
    fn is_input(&self) -> bool {
        matches!(
            self,
            Self::BadReference { .. }
                | Self::RepoNotFound { .. }
                | Self::RevisionNotFound { .. }
                | Self::Unauthorized { .. }
                | Self::NoGguf { .. }
                | Self::NoMatch { .. }
                | Self::Ambiguous { .. }
                | Self::NotCached { .. }
                | Self::NothingToRemove { .. }
        )
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            Self::BadReference { .. } => {
                "a model is a GGUF path, hf:OWNER/REPO[:QUANT], hf:OWNER/REPO/FILE.gguf, hf.co/OWNER/REPO[:QUANT] or OWNER/REPO:QUANT".into()
            }
            Self::RepoNotFound { .. } => {
                "check the repository's name on the hub; a private repository needs HF_TOKEN".into()
            }
            Self::RevisionNotFound { .. } => "check the branch, tag or commit after @".into(),
            Self::Unauthorized {
                had_token: false, ..
            } => "the repository is gated or private: accept its terms on the hub, then set HF_TOKEN to an access token (or log in with `hf auth login`)".into(),
            Self::Unauthorized { had_token: true, .. } => "the token in HF_TOKEN was refused: check it has read access and that you accepted the repository's terms".into(),
            Self::NoGguf { .. } => {
                "ntv runs GGUF files: pick a repository that has them (often named …-GGUF)".into()
            }
            Self::NoMatch { .. } => {
                "pass one of the quantisations listed (OWNER/REPO:QUANT) or --hf-file FILE".into()
            }
            Self::Ambiguous { .. } => {
                "name the file: hf:OWNER/REPO/FILE.gguf or --hf-file FILE".into()
            }
            Self::MissingPart { .. } => {
                "the repository holds an incomplete split model; name another file".into()
            }
            Self::NotCached { .. } => {
                "run without --offline (and with HF_HUB_OFFLINE unset) to download it, or `ntv model list` to see what is cached".into()
            }
            Self::Network { .. } => {
                "check the network, or HF_ENDPOINT; --offline uses only the cache".into()
            }
            Self::Http { .. } | Self::Malformed { .. } => {
                "try again later; HF_ENDPOINT names the server ntv asks".into()
            }
            Self::HashMismatch { .. } => {
                "run the command again; if it fails again the server serves a damaged file".into()
            }
            Self::Interrupted { .. } => {
                "run the command again: the download resumes where it stopped".into()
            }
            Self::NoCacheDir => "set HF_HUB_CACHE to a folder".into(),
            Self::NothingToRemove { .. } => "`ntv model list` shows what is cached".into(),
            Self::Io { .. } => return None,
        })
    }
}

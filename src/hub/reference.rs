//! Model references as llama.cpp and ollama users type them: `hf:OWNER/REPO[:QUANT]`,
//! `hf:OWNER/REPO/FILE.gguf`, `hf.co/OWNER/REPO[:QUANT]`, `OWNER/REPO:QUANT`, and
//! `-hf OWNER/REPO[:QUANT]` with `--hf-file FILE`. A revision may follow the repository
//! (`hf:OWNER/REPO@REV…`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::HubError;

/// Which file of the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pick {
    /// llama.cpp's default: Q4_K_M, then Q8_0, then the first GGUF.
    Default,
    /// A quantisation tag (`Q4_K_M`), matched case-insensitively in the file names.
    Quant(String),
    /// A file path inside the repository.
    File(String),
}

/// A model on the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubRef {
    /// `OWNER/REPO`.
    pub repo: String,
    pub pick: Pick,
    /// A branch, tag or commit (default `main`).
    pub revision: Option<String>,
}

impl HubRef {
    /// The revision asked for (`main` unless given).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// Parse a model argument: `None` when it is not a hub reference (a path); an error when it
    /// says it is one (`hf:`, `hf.co/`) but is malformed.
    pub fn parse(arg: &str) -> Option<Result<Self, HubError>> {
        const PREFIXES: [&str; 5] = [
            "hf:",
            "hf.co/",
            "huggingface.co/",
            "https://hf.co/",
            "https://huggingface.co/",
        ];
        if let Some(rest) = PREFIXES.iter().find_map(|p| arg.strip_prefix(p)) {
            return Some(Self::parse_body(rest, true).map_err(|reason| bad(arg, reason)));
        }
        // OWNER/REPO:QUANT without a prefix: only with the tag (a bare `a/b` is a path).
        if arg.contains(':') && arg.matches('/').count() == 1 && !arg.ends_with(".gguf") {
            return Self::parse_body(arg, false).ok().map(Ok);
        }
        None
    }

    /// `-hf OWNER/REPO[:QUANT]` with `--hf-file FILE` (llama.cpp's flags).
    pub fn from_flags(repo: &str, file: Option<&str>) -> Result<Self, HubError> {
        let arg = repo.strip_prefix("hf:").unwrap_or(repo);
        let mut r = Self::parse_body(arg, false).map_err(|reason| bad(repo, reason))?;
        if let Some(f) = file {
            if matches!(r.pick, Pick::Quant(_)) {
                return Err(bad(
                    repo,
                    "give a quantisation tag or --hf-file, not both".into(),
                ));
            }
            r.pick = Pick::File(clean_file(f).map_err(|reason| bad(f, reason))?);
        }
        Ok(r)
    }

    /// `OWNER/REPO[@REV][:QUANT | /FILE]`; files only when `files` (the `hf:` forms).
    fn parse_body(body: &str, files: bool) -> Result<Self, String> {
        let (path, tag) = match body.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t)),
            _ => (body, None),
        };
        let mut parts = path.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let name_rev = parts
            .next()
            .ok_or_else(|| "expected OWNER/REPO".to_string())?;
        let file = parts.next();
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (name_rev, None),
        };
        let repo = format!("{owner}/{name}");
        if !valid_repo(&repo) {
            return Err(format!(
                "{repo:?} is not a repository name (OWNER/REPO of letters, digits, _ . -)"
            ));
        }
        if let Some(r) = revision
            && (r.is_empty() || r.contains("..") || r.starts_with('/'))
        {
            return Err(format!("{r:?} is not a revision"));
        }
        let pick = match (file, tag) {
            (Some(_), _) if !files => return Err("a file goes in --hf-file".into()),
            (Some(_), Some(_)) => return Err("give a quantisation tag or a file, not both".into()),
            (Some(f), None) => Pick::File(clean_file(f)?),
            (None, Some(t)) if t.eq_ignore_ascii_case("latest") => Pick::Default,
            (None, Some(t)) => {
                if t.is_empty()
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                {
                    return Err(format!("{t:?} is not a quantisation tag (e.g. Q4_K_M)"));
                }
                Pick::Quant(t.to_string())
            }
            (None, None) => Pick::Default,
        };
        Ok(Self {
            repo,
            pick,
            revision: revision.map(str::to_string),
        })
    }
}

fn bad(reference: &str, reason: String) -> HubError {
    HubError::BadReference {
        reference: reference.to_string(),
        reason,
    }
}

/// A file path inside a repository: relative, no `..`, no empty parts.
fn clean_file(f: &str) -> Result<String, String> {
    let f = f.trim_start_matches("./");
    if f.is_empty()
        || f.starts_with('/')
        || f.contains('\\')
        || f.split('/').any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(format!("{f:?} is not a file of the repository"));
    }
    Ok(f.to_string())
}

/// llama.cpp's rule: letters, digits and `_`; `/ . -` only between them; one `/`.
pub fn valid_repo(repo: &str) -> bool {
    if repo.is_empty() || repo.len() > 256 || repo.matches('/').count() != 1 {
        return false;
    }
    let mut after_special = true;
    for c in repo.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            after_special = false;
        } else if matches!(c, '/' | '.' | '-') {
            if after_special {
                return false;
            }
            after_special = true;
        } else {
            return false;
        }
    }
    !after_special
}

impl fmt::Display for HubRef {
    /// The canonical form: `hf:OWNER/REPO[@REV][:QUANT | /FILE]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf:{}", self.repo)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        match &self.pick {
            Pick::Default => Ok(()),
            Pick::Quant(q) => write!(f, ":{q}"),
            Pick::File(file) => write!(f, "/{file}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(arg: &str) -> HubRef {
        HubRef::parse(arg).expect("a hub reference").expect("valid")
    }

    #[test]
    fn the_forms_llama_cpp_and_ollama_users_type() {
        let r = hub("hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M");
        assert_eq!(r.repo, "bartowski/Qwen2.5-0.5B-Instruct-GGUF");
        assert_eq!(r.pick, Pick::Quant("Q4_K_M".into()));
        assert_eq!(r.revision(), "main");
        assert_eq!(
            hub("hf.co/owner/repo:q8_0").pick,
            Pick::Quant("q8_0".into())
        );
        assert_eq!(hub("hf.co/owner/repo").pick, Pick::Default);
        assert_eq!(hub("hf.co/owner/repo:latest").pick, Pick::Default);
        assert_eq!(hub("owner/repo:Q4_1").pick, Pick::Quant("Q4_1".into()));
        assert_eq!(hub("hf:owner/repo").pick, Pick::Default);
        let r = hub("hf:owner/repo@v1.0/sub/model-Q4_1.gguf");
        assert_eq!(r.pick, Pick::File("sub/model-Q4_1.gguf".into()));
        assert_eq!(r.revision(), "v1.0");
        assert_eq!(r.to_string(), "hf:owner/repo@v1.0/sub/model-Q4_1.gguf");
        assert_eq!(hub("owner/repo:Q4_1").to_string(), "hf:owner/repo:Q4_1");
    }

    #[test]
    fn paths_stay_paths() {
        for p in [
            "model.gguf",
            "models/model.gguf",
            "/abs/x/y.gguf",
            "a/b",
            "./a:b/c.gguf",
            "C:/x.gguf",
        ] {
            assert!(HubRef::parse(p).is_none(), "{p}");
        }
    }

    #[test]
    fn malformed_explicit_references_are_errors() {
        for r in [
            "hf:",
            "hf:owner",
            "hf:own er/repo",
            "hf:owner/-repo",
            "hf:owner/repo:Q4 K",
            "hf:owner/repo/../x.gguf",
            "hf:owner/repo/x.gguf:Q4_0",
        ] {
            assert!(
                matches!(HubRef::parse(r), Some(Err(HubError::BadReference { .. }))),
                "{r}"
            );
        }
    }

    #[test]
    fn llama_cpp_flags() {
        let r = HubRef::from_flags("owner/repo", Some("m-Q8_0.gguf")).unwrap();
        assert_eq!(r.pick, Pick::File("m-Q8_0.gguf".into()));
        let r = HubRef::from_flags("owner/repo:Q8_0", None).unwrap();
        assert_eq!(r.pick, Pick::Quant("Q8_0".into()));
        assert!(HubRef::from_flags("owner/repo:Q8_0", Some("x.gguf")).is_err());
        assert!(HubRef::from_flags("owner", None).is_err());
    }
}

//! The Hugging Face cache layout, shared with huggingface_hub and llama.cpp:
//!
//! ```text
//! ROOT/models--OWNER--REPO/
//!     blobs/ETAG                       the file's bytes (ETAG: its sha256 for LFS files)
//!     blobs/ETAG.incomplete            a download under way (resumed from its length)
//!     snapshots/COMMIT/PATH            a symbolic link to ../../blobs/ETAG
//!     refs/main                        the commit `main` pointed at
//! ROOT/.locks/models--OWNER--REPO/ETAG.lock
//! ```

use std::path::{Path, PathBuf};

use super::HubError;

/// Where the files of `repo` live under `root`.
pub fn repo_dir(root: &Path, repo: &str) -> PathBuf {
    root.join(format!("models--{}", repo.replace('/', "--")))
}

/// `models--OWNER--REPO` → `OWNER/REPO`.
pub fn repo_of_dir(name: &str) -> Option<String> {
    let rest = name.strip_prefix("models--")?;
    let (owner, repo) = rest.split_once("--")?;
    let id = format!("{owner}/{}", repo.replace("--", "/"));
    super::reference::valid_repo(&id).then_some(id)
}

pub fn snapshot_path(root: &Path, repo: &str, commit: &str, file: &str) -> PathBuf {
    repo_dir(root, repo)
        .join("snapshots")
        .join(commit)
        .join(file)
}

pub fn blob_path(root: &Path, repo: &str, etag: &str) -> PathBuf {
    repo_dir(root, repo).join("blobs").join(etag)
}

pub fn lock_path(root: &Path, repo: &str, etag: &str) -> PathBuf {
    root.join(".locks")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join(format!("{etag}.lock"))
}

/// A 40-hex-digit commit id.
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `revision` means in the cache: itself when it is a commit with a snapshot, else
/// what `refs/REVISION` holds.
pub fn cached_commit(root: &Path, repo: &str, revision: &str) -> Option<String> {
    let dir = repo_dir(root, repo);
    if is_commit(revision) {
        return dir
            .join("snapshots")
            .join(revision)
            .is_dir()
            .then(|| revision.to_string());
    }
    if revision.contains("..") {
        return None;
    }
    let commit = std::fs::read_to_string(dir.join("refs").join(revision)).ok()?;
    let commit = commit.trim();
    is_commit(commit).then(|| commit.to_string())
}

/// Record that `revision` (a branch or tag) points at `commit`.
pub fn write_ref(root: &Path, repo: &str, revision: &str, commit: &str) -> Result<(), HubError> {
    if is_commit(revision) || revision.contains("..") {
        return Ok(());
    }
    let path = repo_dir(root, repo).join("refs").join(revision);
    let dir = path.parent().expect("a ref has a folder");
    std::fs::create_dir_all(dir).map_err(HubError::io(format!("create {}", dir.display())))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(HubError::io(format!("write {}", path.display())))?;
    std::io::Write::write_all(&mut tmp, commit.as_bytes())
        .map_err(HubError::io(format!("write {}", path.display())))?;
    tmp.persist(&path).map_err(|e| HubError::Io {
        context: format!("write {}", path.display()),
        source: e.error,
    })?;
    Ok(())
}

/// The files of a snapshot whose content is there (a link to a missing blob does not count),
/// as repository paths with `/`, sorted.
pub fn snapshot_files(root: &Path, repo: &str, commit: &str) -> Vec<String> {
    let base = repo_dir(root, repo).join("snapshots").join(commit);
    let mut out = Vec::new();
    let mut stack = vec![base.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file()
                && let Ok(rel) = p.strip_prefix(&base)
                && let Some(s) = rel.to_str()
            {
                out.push(s.replace(std::path::MAIN_SEPARATOR, "/"));
            }
        }
    }
    out.sort();
    out
}

/// Put the blob `etag` at `snapshots/COMMIT/FILE` (a relative symbolic link, as
/// huggingface_hub makes; a copy where links cannot be made).
pub fn link(
    root: &Path,
    repo: &str,
    commit: &str,
    file: &str,
    etag: &str,
) -> Result<PathBuf, HubError> {
    let snap = snapshot_path(root, repo, commit, file);
    let dir = snap.parent().expect("a snapshot file has a folder");
    std::fs::create_dir_all(dir).map_err(HubError::io(format!("create {}", dir.display())))?;
    let depth = file.matches('/').count() + 2;
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(etag);
    let _ = std::fs::remove_file(&snap);
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&target, &snap);
    #[cfg(not(unix))]
    let made = std::fs::copy(blob_path(root, repo, etag), &snap).map(|_| ());
    made.map_err(HubError::io(format!("link {}", snap.display())))?;
    Ok(snap)
}

/// Where a cached hub file came from, read off its path in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedOrigin {
    pub repo: String,
    pub commit: String,
    pub file: String,
}

/// `…/models--OWNER--REPO/snapshots/COMMIT/FILE` → its repository, commit and file.
pub fn origin_of(path: &Path) -> Option<CachedOrigin> {
    let parts: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    let at = parts.iter().rposition(|p| *p == "snapshots")?;
    let repo = repo_of_dir(parts.get(at.checked_sub(1)?)?)?;
    let commit = parts.get(at + 1)?;
    if !is_commit(commit) || parts.len() < at + 3 {
        return None;
    }
    Some(CachedOrigin {
        repo,
        commit: commit.to_string(),
        file: parts[at + 2..].join("/"),
    })
}

/// One cached snapshot of a repository.
#[derive(Debug, Clone)]
pub struct CachedSnapshot {
    pub repo: String,
    pub commit: String,
    /// The refs (branches, tags) that point at this commit.
    pub refs: Vec<String>,
}

/// Every snapshot under `root`, by repository then commit.
pub fn snapshots(root: &Path) -> Vec<CachedSnapshot> {
    let mut out = Vec::new();
    let Ok(repos) = std::fs::read_dir(root) else {
        return out;
    };
    let mut repos: Vec<_> = repos.flatten().collect();
    repos.sort_by_key(|e| e.file_name());
    for r in repos {
        let Some(repo) = r.file_name().to_str().and_then(repo_of_dir) else {
            continue;
        };
        let refs: Vec<(String, String)> = std::fs::read_dir(r.path().join("refs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let commit = std::fs::read_to_string(e.path()).ok()?;
                Some((name, commit.trim().to_string()))
            })
            .collect();
        let Ok(snaps) = std::fs::read_dir(r.path().join("snapshots")) else {
            continue;
        };
        let mut snaps: Vec<_> = snaps.flatten().collect();
        snaps.sort_by_key(|e| e.file_name());
        for s in snaps {
            let Some(commit) = s
                .file_name()
                .to_str()
                .filter(|c| is_commit(c))
                .map(str::to_string)
            else {
                continue;
            };
            let mut names: Vec<String> = refs
                .iter()
                .filter(|(_, c)| *c == commit)
                .map(|(n, _)| n.clone())
                .collect();
            names.sort();
            out.push(CachedSnapshot {
                repo: repo.clone(),
                commit,
                refs: names,
            });
        }
    }
    out
}

/// Remove `files` from every snapshot of `repo` and their blobs; returns what was removed.
pub fn remove_files(root: &Path, repo: &str, files: &[String]) -> Result<Vec<PathBuf>, HubError> {
    let mut removed = Vec::new();
    let dir = repo_dir(root, repo);
    let Ok(snaps) = std::fs::read_dir(dir.join("snapshots")) else {
        return Ok(removed);
    };
    for s in snaps.flatten() {
        for f in files {
            let p = s.path().join(f);
            if p.symlink_metadata().is_err() {
                continue;
            }
            if let Ok(target) = std::fs::canonicalize(&p)
                && target.starts_with(dir.join("blobs"))
            {
                std::fs::remove_file(&target)
                    .map_err(HubError::io(format!("remove {}", target.display())))?;
                removed.push(target);
            }
            std::fs::remove_file(&p).map_err(HubError::io(format!("remove {}", p.display())))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_huggingface_hub() {
        let root = Path::new("/c");
        assert_eq!(
            snapshot_path(root, "o/r", "abc", "d/f.gguf"),
            Path::new("/c/models--o--r/snapshots/abc/d/f.gguf")
        );
        assert_eq!(repo_of_dir("models--o--r-x").as_deref(), Some("o/r-x"));
        assert_eq!(repo_of_dir("datasets--o--r"), None);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let p = snapshot_path(root, "o/r", commit, "d/f.gguf");
        assert_eq!(
            origin_of(&p),
            Some(CachedOrigin {
                repo: "o/r".into(),
                commit: commit.into(),
                file: "d/f.gguf".into()
            })
        );
        assert_eq!(origin_of(Path::new("/models/f.gguf")), None);
    }

    #[test]
    fn a_linked_snapshot_file_reads_back_and_a_ref_names_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let blobs = repo_dir(root, "o/r").join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("e1"), b"gguf").unwrap();
        let p = link(root, "o/r", commit, "sub/m.gguf", "e1").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"gguf");
        write_ref(root, "o/r", "main", commit).unwrap();
        assert_eq!(cached_commit(root, "o/r", "main").as_deref(), Some(commit));
        assert_eq!(cached_commit(root, "o/r", commit).as_deref(), Some(commit));
        assert_eq!(snapshot_files(root, "o/r", commit), ["sub/m.gguf"]);
        let snaps = snapshots(root);
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].refs, ["main"]);
        let gone = remove_files(root, "o/r", &["sub/m.gguf".into()]).unwrap();
        assert_eq!(gone.len(), 2);
        assert!(snapshot_files(root, "o/r", commit).is_empty());
    }
}

//! Models by name from the Hugging Face hub: references ([`HubRef`]), llama.cpp's file choice
//! ([`choose`]), the cache huggingface_hub and llama.cpp share ([`cache`]) and the download
//! ([`client`]: resumable, sha256-checked against the hub's LFS metadata).
//!
//! The environment is read once, in [`HubConfig::from_env`]: `HF_ENDPOINT` (else llama.cpp's
//! `MODEL_ENDPOINT`, else `https://huggingface.co`), `HF_TOKEN` (else the token file
//! huggingface_hub's login writes), `HF_HUB_OFFLINE`, and the cache root `HF_HUB_CACHE`, else
//! `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`;
//! `LLAMA_CACHE`, when set, is searched too.

pub mod cache;
pub mod choose;
pub mod client;
mod error;
pub mod reference;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use error::HubError;
pub use reference::{HubRef, Pick};

/// Where the hub is, who asks, and where its files are kept.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub's base URL, without a trailing `/`.
    pub endpoint: String,
    pub token: Option<String>,
    /// The cache downloads go to (and the first one searched).
    pub root: PathBuf,
    /// Other caches searched for files already there (`LLAMA_CACHE`).
    pub also: Vec<PathBuf>,
    /// Use only the cache.
    pub offline: bool,
}

/// huggingface_hub's reading of a boolean variable.
fn truthy(v: &OsString) -> bool {
    matches!(
        v.to_string_lossy().trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubConfig {
    /// From the process environment; `offline` is `--offline`.
    pub fn from_env(offline: bool) -> Result<Self, HubError> {
        Self::from_vars(offline, |k| std::env::var_os(k), dirs::home_dir())
    }

    /// From a variable lookup (empty values count as unset) and the home folder.
    pub fn from_vars(
        offline: bool,
        var: impl Fn(&str) -> Option<OsString>,
        home: Option<PathBuf>,
    ) -> Result<Self, HubError> {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let path = |k: &str| var(k).map(PathBuf::from);
        let endpoint = var("HF_ENDPOINT")
            .or_else(|| var("MODEL_ENDPOINT"))
            .map(|e| e.to_string_lossy().trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        let cache_home = path("XDG_CACHE_HOME").or_else(|| home.map(|h| h.join(".cache")));
        let hf_home =
            path("HF_HOME").or_else(|| cache_home.as_ref().map(|c| c.join("huggingface")));
        let root = path("HF_HUB_CACHE")
            .or_else(|| path("HUGGINGFACE_HUB_CACHE"))
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or(HubError::NoCacheDir)?;
        let also = path("LLAMA_CACHE")
            .filter(|l| *l != root)
            .into_iter()
            .collect();
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .map(|t| t.to_string_lossy().into_owned())
            .or_else(|| {
                let file = path("HF_TOKEN_PATH").or_else(|| hf_home.map(|h| h.join("token")))?;
                std::fs::read_to_string(file).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Ok(Self {
            endpoint,
            token,
            root,
            also,
            offline: offline || var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
        })
    }

    /// Every cache searched, the download cache first.
    pub fn roots(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.root).chain(self.also.iter())
    }
}

/// A model fetched (or found) in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The file llama.cpp opens: `ROOT/models--…/snapshots/COMMIT/FILE`.
    pub path: PathBuf,
    pub repo: String,
    pub commit: String,
    /// Every file of the model (the parts of a split model), the first one first.
    pub files: Vec<String>,
}

fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "ntv: {line}");
}

/// The commit and files of a revision, from the hub, or from the cache when offline (or when
/// the hub cannot be reached: said on stderr).
fn listing(r: &HubRef, cfg: &HubConfig) -> Result<(PathBuf, String, Vec<String>, bool), HubError> {
    let from_cache = || {
        cfg.roots().find_map(|root| {
            let commit = cache::cached_commit(root, &r.repo, r.revision())?;
            let files = cache::snapshot_files(root, &r.repo, &commit);
            (!files.is_empty()).then(|| (root.clone(), commit, files, false))
        })
    };
    if cfg.offline {
        return from_cache().ok_or_else(|| HubError::NotCached {
            what: r.to_string(),
            root: cfg.root.clone(),
        });
    }
    match client::Client::new(cfg).repo_info(&r.repo, r.revision()) {
        Ok(info) => Ok((cfg.root.clone(), info.commit, info.files, true)),
        Err(e @ HubError::Network { .. }) => match from_cache() {
            Some(found) => {
                say(format_args!("{e}; using the cached {}", r));
                Ok(found)
            }
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The local file of a reference: found in a cache, or downloaded into it.
pub fn resolve(r: &HubRef, cfg: &HubConfig) -> Result<Resolved, HubError> {
    let (listed_root, commit, files, online) = listing(r, cfg)?;
    let choice = match choose::choose(&r.repo, &files, &r.pick) {
        // The cache lists what it holds, not the repository: what is not there is missing.
        Err(HubError::NoMatch { .. } | HubError::NoGguf { .. } | HubError::MissingPart { .. })
            if !online =>
        {
            return Err(HubError::NotCached {
                what: r.to_string(),
                root: listed_root,
            });
        }
        c => c?,
    };
    // A split model's parts must sit side by side: a cache that holds them all, else the
    // download cache (or, offline, the cache the listing came from).
    let have_all = |root: &PathBuf| {
        choice
            .files
            .iter()
            .all(|f| cache::snapshot_path(root, &r.repo, &commit, f).is_file())
    };
    let root = match cfg.roots().find(|root| have_all(root)) {
        Some(root) => root.clone(),
        None if !online => {
            let missing = choice
                .files
                .iter()
                .find(|f| !cache::snapshot_path(&listed_root, &r.repo, &commit, f).is_file())
                .cloned()
                .unwrap_or_default();
            return Err(HubError::NotCached {
                what: format!("{}/{missing} (of {r})", r.repo),
                root: listed_root,
            });
        }
        None => {
            let client = client::Client::new(cfg);
            for f in &choice.files {
                if !cache::snapshot_path(&cfg.root, &r.repo, &commit, f).is_file() {
                    fetch_file(&client, cfg, &r.repo, &commit, f)?;
                }
            }
            cfg.root.clone()
        }
    };
    if online {
        cache::write_ref(&root, &r.repo, r.revision(), &commit)?;
    }
    Ok(Resolved {
        path: cache::snapshot_path(&root, &r.repo, &commit, choice.primary()),
        repo: r.repo.clone(),
        commit,
        files: choice.files,
    })
}

fn size_text(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Download one file into the download cache (blob, then the snapshot link).
fn fetch_file(
    client: &client::Client<'_>,
    cfg: &HubConfig,
    repo: &str,
    commit: &str,
    file: &str,
) -> Result<(), HubError> {
    let meta = client.file_meta(repo, commit, file)?;
    let root = &cfg.root;
    let blob = cache::blob_path(root, repo, &meta.etag);
    if !blob.is_file() {
        let blobs = blob.parent().expect("a blob has a folder");
        std::fs::create_dir_all(blobs)
            .map_err(HubError::io(format!("create {}", blobs.display())))?;
        let lock_path = cache::lock_path(root, repo, &meta.etag);
        let lock_dir = lock_path.parent().expect("a lock has a folder");
        std::fs::create_dir_all(lock_dir)
            .map_err(HubError::io(format!("create {}", lock_dir.display())))?;
        let lock = std::fs::File::create(&lock_path)
            .map_err(HubError::io(format!("create {}", lock_path.display())))?;
        lock.lock()
            .map_err(HubError::io(format!("lock {}", lock_path.display())))?;
        if !blob.is_file() {
            let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
            let have = partial.metadata().map(|m| m.len()).unwrap_or(0);
            let size = meta
                .size
                .map(size_text)
                .unwrap_or_else(|| "size unknown".into());
            say(format_args!(
                "downloading {repo}/{file} ({size}) from {}{}",
                cfg.endpoint,
                if have > 0 {
                    format!(", resuming at {}", size_text(have))
                } else {
                    String::new()
                }
            ));
            let bar = progress_bar(meta.size, file);
            let started = Instant::now();
            let done = client.download(repo, commit, file, &meta, &partial, &bar);
            bar.finish_and_clear();
            if let Err(e) = done {
                if matches!(e, HubError::HashMismatch { .. }) {
                    // Nothing of the refused file stays: empty folders go too.
                    let _ = std::fs::remove_dir(blobs);
                    let _ = std::fs::remove_dir(cache::repo_dir(root, repo));
                }
                return Err(e);
            }
            std::fs::rename(&partial, &blob)
                .map_err(HubError::io(format!("move {}", blob.display())))?;
            let got = blob.metadata().map(|m| m.len()).unwrap_or(0);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            say(format_args!(
                "downloaded {file}: {} in {secs:.1} s ({}/s){}",
                size_text(got.saturating_sub(have)),
                size_text(((got.saturating_sub(have)) as f64 / secs) as u64),
                if meta.sha256().is_some() {
                    ", sha256 verified"
                } else {
                    ", no sha256 from the hub to check (not an LFS file)"
                }
            ));
        }
    }
    cache::link(root, repo, commit, file, &meta.etag)?;
    Ok(())
}

/// A bar on stderr with size and speed (indicatif draws nothing when stderr is not a terminal).
fn progress_bar(size: Option<u64>, file: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(file.rsplit('/').next().unwrap_or(file).to_string());
    bar
}

/// A cached model GGUF (a split model by its first part).
#[derive(Debug, Clone)]
pub struct CachedModel {
    /// A reference that names this file (`@COMMIT` when no ref points at its snapshot).
    pub reference: String,
    pub repo: String,
    pub quant: Option<String>,
    /// Bytes of every part found.
    pub size: u64,
    pub parts: usize,
    pub path: PathBuf,
    pub commit: String,
    pub refs: Vec<String>,
    pub root: PathBuf,
}

/// Every model GGUF in the caches.
pub fn list(cfg: &HubConfig) -> Vec<CachedModel> {
    let mut out = Vec::new();
    for root in cfg.roots() {
        for snap in cache::snapshots(root) {
            let files = cache::snapshot_files(root, &snap.repo, &snap.commit);
            for f in files.iter().filter(|f| choose::is_model_gguf(f)) {
                let Some((_, 1, _)) = choose::split_info(f) else {
                    continue;
                };
                let quant = choose::quant_of(f);
                let parts = choose::choose(&snap.repo, &files, &Pick::File(f.clone()))
                    .map(|c| c.files)
                    .unwrap_or_else(|_| vec![f.clone()]);
                let size = parts
                    .iter()
                    .filter_map(|p| {
                        cache::snapshot_path(root, &snap.repo, &snap.commit, p)
                            .metadata()
                            .ok()
                    })
                    .map(|m| m.len())
                    .sum();
                let by_quant = quant.as_ref().filter(|q| {
                    choose::choose(&snap.repo, &files, &Pick::Quant((*q).clone()))
                        .is_ok_and(|c| c.primary() == f)
                });
                let pick = match by_quant {
                    Some(q) => Pick::Quant(q.clone()),
                    None => Pick::File(f.clone()),
                };
                let revision = if snap.refs.iter().any(|r| r == "main") {
                    None
                } else {
                    Some(
                        snap.refs
                            .first()
                            .cloned()
                            .unwrap_or_else(|| snap.commit.clone()),
                    )
                };
                let reference = HubRef {
                    repo: snap.repo.clone(),
                    pick,
                    revision,
                };
                out.push(CachedModel {
                    reference: reference.to_string(),
                    repo: snap.repo.clone(),
                    quant,
                    size,
                    parts: parts.len(),
                    path: cache::snapshot_path(root, &snap.repo, &snap.commit, f),
                    commit: snap.commit.clone(),
                    refs: snap.refs.clone(),
                    root: root.clone(),
                });
            }
        }
    }
    out
}

/// Remove a reference's files from the caches (a whole repository for `hf:OWNER/REPO`);
/// returns the paths removed.
pub fn remove(r: &HubRef, cfg: &HubConfig) -> Result<Vec<PathBuf>, HubError> {
    let mut removed = Vec::new();
    for root in cfg.roots() {
        let dir = cache::repo_dir(root, &r.repo);
        if !dir.exists() {
            continue;
        }
        if r.pick == Pick::Default && r.revision.is_none() {
            std::fs::remove_dir_all(&dir)
                .map_err(HubError::io(format!("remove {}", dir.display())))?;
            removed.push(dir);
            continue;
        }
        let Some(commit) = cache::cached_commit(root, &r.repo, r.revision()) else {
            continue;
        };
        let files = cache::snapshot_files(root, &r.repo, &commit);
        let Ok(choice) = choose::choose(&r.repo, &files, &r.pick) else {
            continue;
        };
        removed.extend(cache::remove_files(root, &r.repo, &choice.files)?);
    }
    if removed.is_empty() {
        return Err(HubError::NothingToRemove {
            reference: r.to_string(),
            root: cfg.root.clone(),
        });
    }
    Ok(removed)
}

/// Where a model file in a cache came from, if it lies in one.
pub fn origin_of(path: &Path) -> Option<cache::CachedOrigin> {
    cache::origin_of(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        HubConfig::from_vars(
            false,
            |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            Some("/home/u".into()),
        )
        .unwrap()
    }

    #[test]
    fn the_cache_root_follows_huggingface_hub() {
        assert_eq!(cfg(&[]).root, Path::new("/home/u/.cache/huggingface/hub"));
        assert_eq!(
            cfg(&[("XDG_CACHE_HOME", "/x")]).root,
            Path::new("/x/huggingface/hub")
        );
        assert_eq!(cfg(&[("HF_HOME", "/h")]).root, Path::new("/h/hub"));
        let c = cfg(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("LLAMA_CACHE", "/l"),
        ]);
        assert_eq!(c.root, Path::new("/c"));
        assert_eq!(c.also, [PathBuf::from("/l")]);
    }

    #[test]
    fn endpoint_token_and_offline_from_the_environment() {
        let c = cfg(&[]);
        assert_eq!(c.endpoint, "https://huggingface.co");
        assert!(!c.offline);
        assert_eq!(c.token, None);
        let c = cfg(&[
            ("MODEL_ENDPOINT", "http://m/"),
            ("HF_TOKEN", " hf_x \n"),
            ("HF_HUB_OFFLINE", "1"),
        ]);
        assert_eq!(
            (c.endpoint.as_str(), c.token.as_deref()),
            ("http://m", Some("hf_x"))
        );
        assert!(c.offline);
        assert_eq!(
            cfg(&[("HF_ENDPOINT", "http://h"), ("MODEL_ENDPOINT", "http://m")]).endpoint,
            "http://h"
        );
        assert!(!cfg(&[("HF_HUB_OFFLINE", "0")]).offline);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(cfg(&[("HF_HOME", home)]).token.as_deref(), Some("hf_file"));
    }
}

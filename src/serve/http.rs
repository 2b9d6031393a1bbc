//! The routes: the demo's five JSON endpoints and its page, behind a body limit, an optional
//! Bearer key for `/api`, a panic guard and one log line per request. Handlers parse and check
//! the request, hand model work to the worker and wait for its answer; they never touch the
//! model themselves.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tower_http::catch_panic::CatchPanicLayer;

use super::api::{LoadRequest, LoadResponse, Status};
use super::error::ApiError;
use super::worker::{Envelope, Job, SharedStatus};
use crate::hub::HubRef;
use crate::settings::ModelChoice;

/// What every handler shares.
pub struct AppState {
    pub jobs: mpsc::Sender<Envelope>,
    pub status: SharedStatus,
    pub api_key: Option<String>,
    /// `--static DIR`: `GET /` serves DIR/index.html.
    pub static_dir: Option<PathBuf>,
    /// Folders `POST /api/model/load` may load from.
    pub models_dirs: Vec<PathBuf>,
    /// `--offline`: a hub model `POST /api/model/load` names must be in the cache already.
    pub offline: bool,
}

/// The largest request body (1 MiB: a 4096-token prompt is about 20 kB).
pub const BODY_LIMIT: usize = 1 << 20;
/// A longer body is read on and thrown away up to this size, so that a client still sending
/// it gets the 413 answer rather than a reset connection; past it the connection is dropped.
const DRAIN_LIMIT: usize = 16 << 20;

/// The application: routes and layers.
pub fn router(state: Arc<AppState>, json_logs: bool) -> Router {
    let api = Router::new()
        .route("/api/model/status", get(status))
        .route("/api/model/load", post(load))
        .route("/api/preview", post(preview))
        .route("/api/step", post(step))
        .route("/api/attribution", post(attribution))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    outer(Router::new().route("/", get(index)).merge(api), json_logs).with_state(state)
}

/// What wraps every route: JSON 404/405, the panic guard, the request log.
fn outer<S: Clone + Send + Sync + 'static>(routes: Router<S>, json_logs: bool) -> Router<S> {
    routes
        .fallback(|| async { ApiError::new(404, "Not Found") })
        .method_not_allowed_fallback(|| async { ApiError::new(405, "Method Not Allowed") })
        .layer(CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(json_logs, log))
}

/// A handler that panicked answers 500 (the server goes on).
fn panicked(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = err
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    ApiError::internal(format!("internal error: {what}")).into_response()
}

/// One line per request on stderr: method, path, status, milliseconds.
async fn log(State(json): State<bool>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let t = Instant::now();
    let res = next.run(req).await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let status = res.status().as_u16();
    if json {
        let line = serde_json::json!({
            "method": method.as_str(),
            "path": path,
            "status": status,
            "ms": (ms * 10.0).round() / 10.0,
        });
        eprintln!("{line}");
    } else {
        eprintln!("{method} {path} {status} {ms:.1} ms");
    }
    res
}

/// Equal without an early exit on the first differing byte.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `--api-key`: every `/api` route wants `Authorization: Bearer KEY`.
async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_key(g.trim().as_bytes(), key.as_bytes())) {
            let mut res = ApiError::new(401, "Not authenticated")
                .with_hint("send the server's --api-key as `Authorization: Bearer KEY`")
                .into_response();
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    next.run(req).await
}

/// The request body, at most [`BODY_LIMIT`] bytes (413 beyond).
async fn read_body(mut body: Body) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_long = || {
        ApiError::new(
            413,
            format!("the request body is larger than the limit ({BODY_LIMIT} bytes)"),
        )
    };
    if axum::body::HttpBody::size_hint(&body)
        .upper()
        .is_some_and(|n| n > DRAIN_LIMIT as u64)
    {
        return Err(too_long());
    }
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::new(400, format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= BODY_LIMIT {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > BODY_LIMIT {
        return Err(too_long());
    }
    Ok(buf.into())
}

/// A JSON body: malformed JSON is a 400, a field of the wrong type, a missing or an unknown
/// field a 422 (FastAPI's split); the detail names the field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let status = match inner.classify() {
            serde_json::error::Category::Data => 422,
            _ => 400,
        };
        let detail = if path == "." || path.is_empty() {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body at {path}: {inner}")
        };
        ApiError::new(status, detail)
    })?;
    de.end()
        .map_err(|e| ApiError::new(400, format!("invalid request body: {e}")))?;
    Ok(value)
}

/// Hand a job to the worker and wait for its answer.
async fn ask(s: &AppState, job: Job) -> Result<Json<serde_json::Value>, ApiError> {
    {
        let st = s.status.lock().unwrap_or_else(|p| p.into_inner());
        if !st.ready {
            return Err(match (&st.error, st.loading) {
                (_, true) => ApiError::unavailable("Model is loading. Try again shortly."),
                (Some(e), false) => ApiError::unavailable(e.clone()),
                (None, false) => ApiError::unavailable("Model is not ready."),
            });
        }
    }
    let (tx, rx) = oneshot::channel();
    s.jobs
        .try_send(Envelope {
            job,
            reply: Some(tx),
        })
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::unavailable(
                "the server is busy: too many requests are waiting for the model",
            ),
            mpsc::error::TrySendError::Closed(_) => ApiError::unavailable("the server is stopping"),
        })?;
    let answer = rx
        .await
        .map_err(|_| ApiError::internal("the model worker stopped"))?;
    answer.map(Json)
}

async fn status(State(s): State<Arc<AppState>>) -> Json<Status> {
    Json(s.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

async fn preview(
    State(s): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    ask(&s, Job::Preview(parse(&read_body(body).await?)?)).await
}

async fn step(
    State(s): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    ask(&s, Job::Step(parse(&read_body(body).await?)?)).await
}

async fn attribution(
    State(s): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    ask(&s, Job::Attribution(parse(&read_body(body).await?)?)).await
}

/// The file `model_id` names, if it lies in an allowed folder: a file name or relative path is
/// looked up in each folder in turn, an absolute path must be inside one; `..` is refused.
pub fn allowed_model(model_id: &str, dirs: &[PathBuf]) -> Result<PathBuf, ApiError> {
    let id = Path::new(model_id);
    let hint = "POST /api/model/load loads GGUF files from the server's --models-dir folders (default: the first model's folder and ntv's model cache)";
    if id.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(
            ApiError::new(403, format!("model_id {model_id:?} may not contain ..")).with_hint(hint),
        );
    }
    let inside = |p: &Path| {
        dirs.iter()
            .any(|d| p.starts_with(d) || std::fs::canonicalize(d).is_ok_and(|c| p.starts_with(&c)))
    };
    let found = if id.is_absolute() {
        if !inside(id) {
            return Err(ApiError::new(
                403,
                format!("{model_id} is outside the folders this server loads models from"),
            )
            .with_hint(hint));
        }
        id.is_file().then(|| id.to_path_buf())
    } else {
        dirs.iter().map(|d| d.join(id)).find(|p| p.is_file())
    };
    found.ok_or_else(|| {
        ApiError::new(
            404,
            format!("no model file {model_id:?} in the allowed folders"),
        )
        .with_hint(hint)
    })
}

async fn load(State(s): State<Arc<AppState>>, body: Body) -> Result<Json<LoadResponse>, ApiError> {
    let req: LoadRequest = parse(&read_body(body).await?)?;
    let id = req.model_id.trim();
    if id.is_empty() {
        return Err(ApiError::new(400, "model_id is required"));
    }
    let choice = match allowed_model(id, &s.models_dirs) {
        Ok(path) => ModelChoice::Path(path),
        Err(e) if e.status == 404 => match hub_model(id, s.offline) {
            Some(c) => c.map_err(ApiError::from)?,
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let model_id = match &choice {
        ModelChoice::Path(path) => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| id.to_string()),
        other => other.label().unwrap_or(id).to_string(),
    };
    {
        let mut st = s.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.loading {
            return Err(ApiError::new(409, "A model is already loading."));
        }
        st.loading = true;
        st.ready = false;
        st.error = None;
    }
    s.jobs
        .send(Envelope {
            job: Job::Load(choice),
            reply: None,
        })
        .await
        .map_err(|_| ApiError::unavailable("the server is stopping"))?;
    Ok(Json(LoadResponse { ok: true, model_id }))
}

/// A `model_id` that names a Hugging Face model: the forms `-m` takes, and the demo's bare
/// `OWNER/REPO` (its GGUF chosen as llama.cpp does).
fn hub_model(id: &str, offline: bool) -> Option<crate::error::Result<ModelChoice>> {
    let reference = match HubRef::parse(id) {
        Some(r) => r,
        None if crate::hub::reference::valid_repo(id)
            && !id.to_ascii_lowercase().ends_with(".gguf") =>
        {
            HubRef::from_flags(id, None)
        }
        None => return None,
    };
    Some(
        reference
            .map_err(Into::into)
            .map(|reference| ModelChoice::Hub {
                label: reference.to_string(),
                reference,
                offline,
            }),
    )
}

/// The page shown at `/` without `--static`.
const NO_PAGE: &str = "<!doctype html><meta charset=utf-8><title>ntv serve</title>
<h1>ntv serve</h1>
<p>The API is up: <code>GET /api/model/status</code>, <code>POST /api/preview</code>,
<code>/api/step</code>, <code>/api/attribution</code>, <code>/api/model/load</code>.</p>
<p>To get a page here, start the server with <code>--static DIR</code>, a folder holding the
original demo's <code>index.html</code>: <code>ntv serve --static path/to/demo</code>.</p>
";

async fn index(State(s): State<Arc<AppState>>) -> Response {
    match &s.static_dir {
        None => Html(NO_PAGE).into_response(),
        Some(dir) => match tokio::fs::read(dir.join("index.html")).await {
            Ok(bytes) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                bytes,
            )
                .into_response(),
            Err(e) => ApiError::internal(format!(
                "cannot read {}: {e}",
                dir.join("index.html").display()
            ))
            .into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_like_fastapi() {
        let ok = |s: &str| s.as_bytes().to_vec();
        let r: Result<super::super::api::PreviewRequest, _> = parse(&ok(r#"{"prompt": "Hi"}"#));
        assert_eq!(r.unwrap().prompt, "Hi");
        let status = |s: &str| {
            parse::<super::super::api::PreviewRequest>(&ok(s))
                .unwrap_err()
                .status
        };
        assert_eq!(status(r#"{"prompt": "Hi""#), 400, "malformed");
        assert_eq!(status(""), 400, "empty");
        assert_eq!(status(r#"{"prompt": "Hi"} x"#), 400, "trailing text");
        assert_eq!(status(r#"{"prompt": 5}"#), 422, "wrong type");
        assert_eq!(status(r#"{"promt": "Hi"}"#), 422, "unknown field");
        let e = parse::<super::super::api::PreviewRequest>(&ok(
            r#"{"params": {"temperature": "hot"}}"#,
        ))
        .unwrap_err();
        assert!(
            e.body.detail.contains("params.temperature"),
            "{}",
            e.body.detail
        );
    }

    #[test]
    fn bodies_past_the_limit_are_413_after_reading_them() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = |n: usize| rt.block_on(read_body(Body::from(vec![b' '; n])));
        assert_eq!(read(BODY_LIMIT).unwrap().len(), BODY_LIMIT);
        assert_eq!(read(BODY_LIMIT + 1).unwrap_err().status, 413);
        assert_eq!(read(DRAIN_LIMIT + 1).unwrap_err().status, 413);
    }

    /// A handler that panics answers 500 with a detail; the server answers the next request.
    #[test]
    fn a_panicking_handler_is_one_500() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let routes: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("handler exploded");
                    }
                    "never"
                }),
            )
            .route("/fine", get(|| async { "fine" }));
        let app = outer(routes, false);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut res = agent.get(format!("http://{addr}/boom")).call().unwrap();
        assert_eq!(res.status().as_u16(), 500);
        let body: super::super::api::ErrorBody = res.body_mut().read_json().unwrap();
        assert!(body.detail.contains("handler exploded"), "{}", body.detail);
        let mut res = agent.get(format!("http://{addr}/fine")).call().unwrap();
        assert_eq!(res.body_mut().read_to_string().unwrap(), "fine");
        let res = agent.get(format!("http://{addr}/nope")).call().unwrap();
        assert_eq!(res.status().as_u16(), 404);
    }

    /// Without a ready model, model requests are a 503 saying why (loading, or the load's
    /// error); the status still answers.
    #[test]
    fn model_requests_wait_for_a_ready_model() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (jobs, _rx) = mpsc::channel(1);
        let status = Arc::new(std::sync::Mutex::new(Status {
            loading: true,
            ..Status::default()
        }));
        let state = Arc::new(AppState {
            jobs,
            status: status.clone(),
            api_key: None,
            static_dir: None,
            models_dirs: Vec::new(),
            offline: true,
        });
        let app = router(state, false);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let post = |path: &str| {
            let mut res = agent
                .post(format!("http://{addr}{path}"))
                .send("{}")
                .unwrap();
            let code = res.status().as_u16();
            let body: super::super::api::ErrorBody = res.body_mut().read_json().unwrap();
            (code, body.detail)
        };
        assert_eq!(
            post("/api/step"),
            (503, "Model is loading. Try again shortly.".to_string())
        );
        {
            let mut st = status.lock().unwrap();
            st.loading = false;
            st.error = Some("not a GGUF file".into());
        }
        assert_eq!(post("/api/preview"), (503, "not a GGUF file".to_string()));
        let res = agent
            .get(format!("http://{addr}/api/model/status"))
            .call()
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secret", b"secreT"));
        assert!(!same_key(b"secret", b"secret2"));
    }

    #[test]
    fn models_load_only_from_allowed_folders() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.gguf"), b"x").unwrap();
        std::fs::write(other.path().join("b.gguf"), b"x").unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        assert_eq!(
            allowed_model("a.gguf", &dirs).unwrap(),
            dir.path().join("a.gguf")
        );
        let abs = dir.path().join("a.gguf");
        assert!(allowed_model(abs.to_str().unwrap(), &dirs).is_ok());
        let outside = other.path().join("b.gguf");
        assert_eq!(
            allowed_model(outside.to_str().unwrap(), &dirs)
                .unwrap_err()
                .status,
            403
        );
        let sneaky = format!(
            "../{}/b.gguf",
            other.path().file_name().unwrap().to_str().unwrap()
        );
        assert_eq!(allowed_model(&sneaky, &dirs).unwrap_err().status, 403);
        assert_eq!(
            allowed_model("missing.gguf", &dirs).unwrap_err().status,
            404
        );
    }
}

//! `ntv serve`: the original demo's HTTP API over one loaded GGUF model, so the demo's own page
//! runs unchanged on ntv.
//!
//! Shape: an async front (axum on tokio) parses and checks requests, and one worker thread
//! ([`worker`]) owns the model and answers model requests one at a time through the
//! application core — requests queue, never two run on one llama.cpp context. Each
//! `branch_id` keeps its KV state between requests, so a step that extends the previous
//! context of its branch decodes only the new tokens. Errors are `{"detail": …}` with a 4xx
//! status for the client's input and a 5xx for failures inside ([`error`]); a panic is a 500
//! for its request only. Ctrl-C or SIGTERM stops accepting, finishes the requests in flight
//! and exits.

pub mod api;
pub mod error;
pub mod http;
pub mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result, input_err};

pub use worker::WorkerConfig;

/// Everything `ntv serve` was asked to do, resolved.
pub struct Config {
    pub host: String,
    pub port: u16,
    pub static_dir: Option<PathBuf>,
    pub api_key: Option<String>,
    pub models_dirs: Vec<PathBuf>,
    /// `--offline`: hub models only from the cache.
    pub offline: bool,
    pub json_logs: bool,
    pub worker: WorkerConfig,
}

/// Queue length in front of the model: more waiting requests are refused with a 503.
const QUEUE: usize = 64;

/// Serve until Ctrl-C or SIGTERM.
pub fn run(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| {
            input_err(
                format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port),
                "pick another --port (0 takes a free one) or --host",
            )
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: ntv serve listens on {addr}, reachable from other machines{}",
            if cfg.api_key.is_none() {
                " and open to anyone who can reach it (pass --api-key KEY to require a key)"
            } else {
                ""
            }
        );
    }
    let status = Arc::new(Mutex::new(api::Status {
        loading: true,
        n_ctx: cfg.worker.base.context.n_ctx,
        max_branches: cfg.worker.max_branches,
        ..api::Status::default()
    }));
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let worker_status = status.clone();
    let worker_cfg = cfg.worker;
    let worker = std::thread::Builder::new()
        .name("ntv-model".into())
        .spawn(move || worker::run(rx, worker_status, worker_cfg))?;
    let state = Arc::new(http::AppState {
        jobs: tx,
        status,
        api_key: cfg.api_key,
        static_dir: cfg.static_dir,
        models_dirs: cfg.models_dirs,
        offline: cfg.offline,
    });
    let app = http::router(state, cfg.json_logs);
    eprintln!("ntv serve: listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // The router (and with it the last sender) is gone: the worker ends its loop.
    worker
        .join()
        .map_err(|_| Error::runtime("the model worker panicked"))?;
    eprintln!("ntv serve: stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("ntv serve: shutting down (finishing the requests in flight)");
}

//! `ntv serve`: resolve the flags once, then hand over to the HTTP front-end
//! ([`crate::serve`]).

use std::path::PathBuf;

use crate::cli::{ConstraintArgs, PromptArgs, RuntimeArgs, SamplingArgs, SeedArgs, ServeArgs};
use crate::error::{Exit, Result, input_err};
use crate::serve::{Config, WorkerConfig};
use crate::settings::{self, ModelChoice, RunFlags};

pub fn run(args: ServeArgs) -> Result<Exit> {
    // Every branch starts from these settings; each request brings its own prompt, parameters
    // and constraint. No session file and no prefix cache: the clients hold the state.
    let runtime = RuntimeArgs {
        engine: args.engine.clone(),
        no_cache: true,
        cache_size: 0,
        force: false,
    };
    let base = settings::resolve(
        RunFlags {
            given_prompt: None,
            prompt: &PromptArgs::default(),
            runtime: &runtime,
            sampling: &SamplingArgs::default(),
            constraint: &ConstraintArgs::default(),
            seed: &SeedArgs::default(),
            stops: &[],
            max_tokens: None,
        },
        None,
    )?;
    if args.max_branches == 0 {
        return Err(input_err(
            "--max-branches 0 keeps no branch",
            "pass --max-branches N with N >= 1",
        ));
    }
    if let Some(dir) = &args.static_dir
        && !dir.join("index.html").is_file()
    {
        return Err(input_err(
            format!("--static {}: there is no index.html in it", dir.display()),
            "pass the folder that holds the page's index.html",
        ));
    }
    let models_dirs = if args.models_dirs.is_empty() {
        default_models_dirs(&base.model)
    } else {
        for d in &args.models_dirs {
            if !d.is_dir() {
                return Err(input_err(
                    format!("--models-dir {}: no such folder", d.display()),
                    "pass a folder that holds GGUF files",
                ));
            }
        }
        args.models_dirs.iter().map(|d| absolute(d)).collect()
    };
    crate::serve::run(Config {
        host: args.host,
        port: args.port,
        static_dir: args.static_dir,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        models_dirs,
        offline: args.engine.hub.offline,
        json_logs: args.json_logs,
        worker: WorkerConfig {
            model: base.model.clone(),
            base,
            max_branches: args.max_branches,
        },
    })?;
    Ok(Exit::Success)
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The first model's folder and ntv's model cache.
fn default_models_dirs(model: &ModelChoice) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let ModelChoice::Path(p) = model
        && let Some(parent) = absolute(p).parent()
    {
        dirs.push(parent.to_path_buf());
    }
    if let Ok(cache) = crate::models::cache_dir() {
        dirs.push(cache);
    }
    dirs
}

//! `ntv model fetch|path|list|rm`: the default model's cache and the Hugging Face cache.

use std::io::Write;

use crate::cli::{ModelAction, ModelArgs};
use crate::error::{Exit, Result, input_err};
use crate::hub::{self, HubConfig, HubRef};
use crate::models;
use crate::record::{CachedModelRow, ModelListDoc};

use super::{Ctx, emit};

/// A reference argument of `ntv model` (a path is not one).
fn reference(arg: &str) -> Result<HubRef> {
    match HubRef::parse(arg) {
        Some(r) => Ok(r?),
        None => Err(input_err(
            format!("{arg:?} is not a Hugging Face model reference"),
            "pass hf:OWNER/REPO[:QUANT], hf:OWNER/REPO/FILE.gguf, hf.co/OWNER/REPO[:QUANT] or OWNER/REPO:QUANT",
        )),
    }
}

pub fn run(ctx: &Ctx<'_>, args: ModelArgs) -> Result<Exit> {
    let path = match args.action {
        ModelAction::Fetch { reference: None } => models::ensure_default_model()?,
        ModelAction::Path { reference: None } => models::cached_default_model()?,
        ModelAction::Fetch { reference: Some(r) } => {
            hub::resolve(&reference(&r)?, &HubConfig::from_env(false)?)?.path
        }
        ModelAction::Path { reference: Some(r) } => {
            hub::resolve(&reference(&r)?, &HubConfig::from_env(true)?)?.path
        }
        ModelAction::List => return list(ctx),
        ModelAction::Rm { reference: r } => {
            let removed = hub::remove(&reference(&r)?, &HubConfig::from_env(true)?)?;
            let mut out = std::io::stdout().lock();
            for p in removed {
                writeln!(out, "removed {}", p.display())?;
            }
            return Ok(Exit::Success);
        }
    };
    writeln!(std::io::stdout(), "{}", path.display())?;
    Ok(Exit::Success)
}

fn list(ctx: &Ctx<'_>) -> Result<Exit> {
    let out = ctx.output(None);
    let cfg = HubConfig::from_env(true)?;
    let mut rows: Vec<CachedModelRow> = hub::list(&cfg)
        .into_iter()
        .map(|m| CachedModelRow {
            reference: m.reference,
            quant: m.quant,
            size: m.size,
            parts: m.parts,
            path: m.path.display().to_string(),
            source: if m.root == cfg.root {
                "hub".into()
            } else {
                "llama-cache".into()
            },
            repo: Some(m.repo),
            revision: Some(m.commit),
            refs: m.refs,
        })
        .collect();
    if let Ok(p) = models::cached_default_model() {
        rows.push(CachedModelRow {
            reference: p.display().to_string(),
            quant: hub::choose::quant_of(models::DEFAULT_MODEL.file_name),
            size: p.metadata().map(|m| m.len()).unwrap_or(0),
            parts: 1,
            path: p.display().to_string(),
            source: "default".into(),
            repo: None,
            revision: None,
            refs: Vec::new(),
        });
    }
    emit(
        &out,
        &ModelListDoc {
            schema: "ntv.model.list/1".into(),
            hub_cache: cfg.root.display().to_string(),
            models: rows,
        },
    )?;
    Ok(Exit::Success)
}

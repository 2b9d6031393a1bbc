//! `ntv model fetch|path`: the default model's cache.

use std::io::Write;

use crate::cli::{GlobalArgs, ModelAction, ModelArgs};
use crate::models;

pub fn run(_global: &GlobalArgs, args: ModelArgs) -> anyhow::Result<()> {
    let path = match args.action {
        ModelAction::Fetch => models::ensure_default_model()?,
        ModelAction::Path => models::cached_default_model()?,
    };
    writeln!(std::io::stdout(), "{}", path.display())?;
    Ok(())
}

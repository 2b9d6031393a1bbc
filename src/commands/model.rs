//! `ntv model fetch|path`: the default model's cache.

use std::io::Write;

use crate::cli::{ModelAction, ModelArgs};
use crate::error::{Exit, Result};
use crate::models;

pub fn run(args: ModelArgs) -> Result<Exit> {
    let path = match args.action {
        ModelAction::Fetch => models::ensure_default_model()?,
        ModelAction::Path => models::cached_default_model()?,
    };
    writeln!(std::io::stdout(), "{}", path.display())?;
    Ok(Exit::Success)
}

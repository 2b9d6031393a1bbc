//! `ntv schema`, `ntv completions`, and the hidden `ntv man DIR`.

use std::io::Write;
use std::path::Path;

use crate::docs;
use crate::error::{Exit, Result, input_err};

pub fn schema(name: Option<&str>) -> Result<Exit> {
    let value = match name {
        Some(n) => docs::schema(n).ok_or_else(|| {
            input_err(
                format!("no JSON output is called '{n}'"),
                format!("choose one of: {}", docs::SCHEMA_NAMES.join(", ")),
            )
        })?,
        None => serde_json::Value::Object(
            docs::SCHEMA_NAMES
                .iter()
                .filter_map(|n| docs::schema(n).map(|s| (n.to_string(), s)))
                .collect(),
        ),
    };
    let mut out = std::io::stdout().lock();
    crate::render::json::write(&mut out, &value, true)?;
    out.flush()?;
    Ok(Exit::Success)
}

pub fn completions(shell: clap_complete::Shell) -> Result<Exit> {
    let mut out = std::io::stdout().lock();
    docs::completions(shell, &mut out);
    out.flush()?;
    Ok(Exit::Success)
}

pub fn man(dir: &Path) -> Result<Exit> {
    for name in docs::write_man_pages(dir)? {
        writeln!(std::io::stderr(), "wrote {}", dir.join(name).display())?;
    }
    Ok(Exit::Success)
}

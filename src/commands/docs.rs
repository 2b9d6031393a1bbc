//! `ntv schema`, `ntv completions`, and the hidden `ntv man DIR`.

use std::io::Write;
use std::path::Path;

use crate::app::input_err;
use crate::docs;

pub fn schema(name: Option<&str>) -> anyhow::Result<()> {
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
    Ok(())
}

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    docs::completions(shell, &mut out);
    out.flush()?;
    Ok(())
}

pub fn man(dir: &Path) -> anyhow::Result<()> {
    for name in docs::write_man_pages(dir)? {
        writeln!(std::io::stderr(), "wrote {}", dir.join(name).display())?;
    }
    Ok(())
}

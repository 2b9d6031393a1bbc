//! One emitter for every output document: a [`Document`] knows its table form (and, where it
//! differs from one compact line, its JSONL form, and its HTML page where it has one); [`emit`]
//! picks the form once. A new output type is one `impl Document`, not another `match` on the
//! format.

use std::io::{self, Write};

use serde::Serialize;

use super::{Palette, heatmap, html, json, table};
use crate::cli::OutputFormat;
use crate::record::CheckpointRecord;
use crate::record::{
    AttributeDoc, BranchDiffDoc, BranchListDoc, BranchShowDoc, GenerateBatchLine, GenerateSummary,
    LoadDoc, PreviewDoc, StepDoc, StepRecord,
};

/// What table renderers may adapt to.
#[derive(Debug, Clone, Copy)]
pub struct TableCtx {
    pub palette: Palette,
    /// Terminal width in columns.
    pub width: usize,
}

/// An output document: JSON (its `Serialize` form, pretty), JSONL and a table for people.
pub trait Document: Serialize + Sized {
    /// The table for people.
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()>;
    /// JSONL: by default the document on one line.
    fn jsonl(&self, w: &mut dyn Write) -> io::Result<()> {
        json::write(w, self, false)
    }
    /// One self-contained HTML page. Commands without a page refuse `--format html` before
    /// they start ([`crate::commands::html_page`]); this default is the backstop.
    fn html(&self, _w: &mut dyn Write) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this output has no HTML page",
        ))
    }
}

/// A document whose HTML page needs more than the document holds (the context's token pills,
/// the recorded distributions of the branch): the page is drawn by `html`, only when asked
/// for; every other form is the document's own.
pub struct WithPage<'a, D> {
    pub doc: &'a D,
    pub html: &'a dyn Fn(&mut dyn Write) -> io::Result<()>,
}

impl<D: Serialize> Serialize for WithPage<'_, D> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.doc.serialize(s)
    }
}

impl<D: Document> Document for WithPage<'_, D> {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        self.doc.table(w, ctx)
    }
    fn jsonl(&self, w: &mut dyn Write) -> io::Result<()> {
        self.doc.jsonl(w)
    }
    fn html(&self, w: &mut dyn Write) -> io::Result<()> {
        (self.html)(w)
    }
}

/// Write `doc` in `format`, then flush.
pub fn emit<D: Document>(
    w: &mut dyn Write,
    format: OutputFormat,
    ctx: &TableCtx,
    doc: &D,
) -> io::Result<()> {
    match format {
        OutputFormat::Table => doc.table(w, ctx)?,
        OutputFormat::Json => json::write(w, doc, true)?,
        OutputFormat::Jsonl => doc.jsonl(w)?,
        OutputFormat::Html => doc.html(w)?,
    }
    w.flush()
}

/// A record streamed as it is produced (`generate`): one JSONL line, or a piece of the table.
pub trait StreamItem: Serialize + Sized {
    fn table_item(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()>;
}

/// A stream of records closed by a document. In JSON the records are left to the document
/// (which holds them all).
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub format: OutputFormat,
    pub ctx: TableCtx,
}

impl Stream {
    /// Whether records go out as they come (JSON and HTML keep them for the closing document).
    pub fn streams(&self) -> bool {
        !matches!(self.format, OutputFormat::Json | OutputFormat::Html)
    }

    /// Text before the first record, in tables only.
    pub fn header(
        &self,
        w: &mut dyn Write,
        head: impl FnOnce(&mut dyn Write, &TableCtx) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.format == OutputFormat::Table {
            head(w, &self.ctx)?;
        }
        Ok(())
    }

    /// One record, flushed at once.
    pub fn item<I: StreamItem>(&self, w: &mut dyn Write, item: &I) -> io::Result<()> {
        match self.format {
            OutputFormat::Table => item.table_item(w, &self.ctx)?,
            OutputFormat::Jsonl => json::write(w, item, false)?,
            OutputFormat::Json | OutputFormat::Html => return Ok(()),
        }
        w.flush()
    }

    /// The closing document.
    pub fn finish<D: Document>(&self, w: &mut dyn Write, doc: &D) -> io::Result<()> {
        emit(w, self.format, &self.ctx, doc)
    }
}

impl Document for LoadDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::load(w, self, &ctx.palette)
    }
}

impl Document for PreviewDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::preview(w, self, &ctx.palette)
    }
}

impl Document for StepDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::step(w, self, &ctx.palette)
    }
    /// One line per step record, then the document.
    fn jsonl(&self, w: &mut dyn Write) -> io::Result<()> {
        for s in &self.steps {
            json::write(w, s, false)?;
        }
        json::write(w, self, false)
    }
}

/// Checkpoints are for machines (JSONL); people see the tokens.
impl StreamItem for CheckpointRecord {
    fn table_item(&self, _: &mut dyn Write, _: &TableCtx) -> io::Result<()> {
        Ok(())
    }
}

impl StreamItem for StepRecord {
    fn table_item(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::generate_token(w, self, &ctx.palette)
    }
}

/// `generate --batch`: a case is its completion after its id; errors go to stderr and the
/// summary is for machines only.
impl StreamItem for GenerateBatchLine {
    fn table_item(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        match self {
            GenerateBatchLine::Case(c) => writeln!(
                w,
                "{} {}",
                ctx.palette.heading(&format!(
                    "[{}]",
                    c.id.clone().unwrap_or_else(|| format!("line {}", c.line))
                )),
                c.completion_text
            ),
            GenerateBatchLine::Failed(_) | GenerateBatchLine::Summary(_) => Ok(()),
        }
    }
}

impl Document for GenerateSummary {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::generate_summary(w, self, &ctx.palette)
    }
}

impl Document for crate::record::SweepDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::sweep(w, self, &ctx.palette)
    }
    fn html(&self, w: &mut dyn Write) -> io::Result<()> {
        html::write(w, &html::sweep::page(self))
    }
}

impl Document for BranchListDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::branch_list(w, self, &ctx.palette)
    }
}

impl Document for BranchShowDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::branch_show(w, self, &ctx.palette)
    }
}

impl Document for BranchDiffDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::branch_diff(w, self, &ctx.palette)
    }
}

impl Document for crate::trace::DiffSummary {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::diff(w, self, &ctx.palette)
    }
    fn html(&self, w: &mut dyn Write) -> io::Result<()> {
        html::write(w, &html::compare::diff_page(self))
    }
}

/// `ntv attribute`'s document with how many contributors its table lists.
pub struct Attributed<'a> {
    pub doc: &'a AttributeDoc,
    pub top: usize,
}

impl Serialize for Attributed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.doc.serialize(s)
    }
}

impl Document for Attributed<'_> {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        heatmap::attribute(w, self.doc, self.top, ctx.width, &ctx.palette)
    }
    /// One record per target.
    fn jsonl(&self, w: &mut dyn Write) -> io::Result<()> {
        for r in &self.doc.targets {
            json::write(w, r, false)?;
        }
        Ok(())
    }
    fn html(&self, w: &mut dyn Write) -> io::Result<()> {
        html::write(w, &html::attribute::page(self.doc))
    }
}

/// `ntv check`'s report with what its table needs besides the report.
pub struct Checked<'a> {
    pub report: &'a crate::trace::CheckReport,
    /// Differences between the recording's build and this one.
    pub build_notes: &'a [String],
    /// A token's text for the table, by case index and id.
    pub piece: &'a dyn Fn(usize, Option<i32>) -> String,
    /// The recording, the re-run and token texts, for the HTML page's strips and plots.
    pub traces: Option<html::compare::Traces<'a>>,
}

impl Serialize for Checked<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.report.serialize(s)
    }
}

impl Document for Checked<'_> {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::check(w, self.report, self.build_notes, self.piece, &ctx.palette)
    }
    fn html(&self, w: &mut dyn Write) -> io::Result<()> {
        html::write(w, &html::compare::check_page(self))
    }
}

impl Document for crate::record::ModelListDoc {
    fn table(&self, w: &mut dyn Write, ctx: &TableCtx) -> io::Result<()> {
        table::model_list(w, self, &ctx.palette)
    }
}

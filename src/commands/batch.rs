//! Running a batch file (`generate --batch`, `attribute --batch`): one behaviour for every
//! command. Each line's output goes to stdout in input order; a bad line gets an `error` record
//! in its place and an `error: FILE line N: …` on stderr, and the run goes on (or stops with
//! `--fail-fast`). The exit status comes at the end: 2 when every failure was bad input, 1 when
//! one was a runtime failure.

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::batch::{self, Identified, Line, Shard};
use crate::error::{Error, Exit, Result, input_err};
use crate::record::BatchFailure;
use crate::settings::OutputSettings;

/// A batch file and how to run it.
pub struct Batch<'a> {
    path: &'a Path,
    shard: Option<Shard>,
    fail_fast: bool,
    example: &'a str,
}

/// How a batch went.
#[derive(Debug, Default)]
pub struct Status {
    /// Lines that failed.
    pub failed: Vec<usize>,
    /// Lines run (failed ones included).
    pub total: usize,
    /// Whether every failure was the input's fault.
    pub all_input: bool,
}

impl<'a> Batch<'a> {
    /// `--batch PATH` with `--shard K/N` (or `auto`, `auto/N`: from the scheduler's variables in
    /// the environment, said on stderr) and `--fail-fast`; `example` is a valid line for hints.
    pub fn open(
        path: &'a Path,
        shard: Option<&str>,
        fail_fast: bool,
        example: &'a str,
    ) -> Result<Self> {
        let shard = match shard {
            None => None,
            Some(arg) => {
                // The one place the scheduler's variables are read; the parsing is pure.
                let (shard, from) = Shard::resolve(arg, |name| std::env::var(name).ok())?;
                if let Some(from) = from {
                    let _ = writeln!(
                        std::io::stderr(),
                        "shard {}/{} of {} (--shard {arg}, from the {from})",
                        shard.k,
                        shard.n,
                        path.display()
                    );
                }
                Some(shard)
            }
        };
        Ok(Self {
            path,
            shard,
            fail_fast,
            example,
        })
    }

    /// The lines of this shard (read before the model loads, so a missing file fails fast).
    pub fn read<T: DeserializeOwned>(&self) -> Result<Vec<Line<T>>> {
        batch::read(self.path, self.shard, self.example)
    }

    /// [`Self::read`], and where each line belongs when the batch is sharded (by line number).
    pub fn read_placed<T: DeserializeOwned>(
        &self,
    ) -> Result<(Vec<Line<T>>, Option<batch::Places>)> {
        let sharded = batch::read_sharded::<T>(self.path, self.shard, self.example)?;
        let places = self.shard.map(|s| sharded.places(s));
        Ok((sharded.lines, places))
    }

    /// Run `each` on every good line; report bad and failed lines in place (`failure` writes
    /// the error record in the output's form).
    pub fn run<T: Identified>(
        &self,
        out: &OutputSettings,
        lines: Vec<Line<T>>,
        w: &mut dyn Write,
        each: &mut dyn FnMut(&mut dyn Write, usize, T) -> Result<()>,
        failure: &mut dyn FnMut(&mut dyn Write, BatchFailure) -> Result<()>,
    ) -> Result<Status> {
        use indicatif::{ProgressBar, ProgressDrawTarget};
        let bar = ProgressBar::with_draw_target(
            Some(lines.len() as u64),
            if out.progress_bar() {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        let mut status = Status {
            total: lines.len(),
            all_input: true,
            ..Status::default()
        };
        for (line, parsed) in lines {
            let (err, id) = match parsed {
                Ok(req) => {
                    let id = req.id().cloned();
                    match each(w, line, req) {
                        Ok(()) => {
                            bar.inc(1);
                            continue;
                        }
                        Err(e) => (e, id),
                    }
                }
                Err(bad) => (
                    input_err(
                        format!("not a request: {}", bad.message),
                        "each line is one JSON object (see --help for its fields)",
                    ),
                    bad.id,
                ),
            };
            let msg = err.message();
            status.all_input &= err.is_input();
            failure(
                w,
                BatchFailure {
                    kind: "error".into(),
                    id,
                    line,
                    shard: None,
                    error: msg.clone(),
                },
            )?;
            if self.fail_fast {
                bar.finish_and_clear();
                return Err(err.context(format!(
                    "{} line {line} (stopped: --fail-fast)",
                    self.path.display()
                )));
            }
            bar.suspend(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: {} line {line}: {msg}",
                    self.path.display()
                );
            });
            status.failed.push(line);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(status)
    }
}

/// The exit of a batch run: success, or one error naming the failed lines.
pub fn finish(path: &Path, status: Status) -> Result<Exit> {
    if status.failed.is_empty() {
        return Ok(Exit::Success);
    }
    // The first few by number; all of them are in the output's error records.
    const SHOWN: usize = 10;
    let mut lines = status
        .failed
        .iter()
        .take(SHOWN)
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if status.failed.len() > SHOWN {
        lines.push_str(&format!(", … {} more", status.failed.len() - SHOWN));
    }
    let msg = format!(
        "{} of {} batch requests failed (lines {lines}) in {}",
        status.failed.len(),
        status.total,
        path.display()
    );
    Err(if status.all_input {
        input_err(
            msg,
            "each failed line has an \"error\" record in the output; fix those lines and re-run them",
        )
    } else {
        Error::runtime(msg)
    })
}

//! `ntv check TRACE`: re-run every recorded case and compare with the recording.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use crate::cli::{CheckArgs, GlobalArgs, OutputFormat};
use crate::engine::Model;
use crate::render::table;
use crate::settings;
use crate::trace::{self, CheckOptions, Trace, check_trace};

use super::cases::{CaseInput, run_case};
use super::{load_model, write_json};

/// The re-run moved: exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("regression: {failed} of {total} case(s) of {trace} diverged ({first})")]
pub struct Regression {
    pub failed: usize,
    pub total: usize,
    pub trace: String,
    pub first: String,
}

impl Regression {
    /// What to do about it.
    pub fn hint(&self) -> String {
        "the report above names the first divergence of each case; if the change is intended, record a new trace with `ntv generate --record`".into()
    }
}

pub fn run(global: &GlobalArgs, args: CheckArgs) -> anyhow::Result<()> {
    let out = settings::output(global, None);
    let expected = trace::read(&args.trace)?;
    if let Some(t) = args.threads
        && t < 1
    {
        return Err(crate::app::input_err(
            format!("--threads {t} is not a thread count"),
            "pass -t N with N >= 1",
        ));
    }
    let mut models: HashMap<PathBuf, Model> = HashMap::new();
    let mut actual = Trace::new(expected.build.clone());
    let mut stderr = std::io::stderr();
    for case in &expected.cases {
        let path = args
            .model
            .clone()
            .unwrap_or_else(|| PathBuf::from(&case.model.path));
        if !models.contains_key(&path) {
            let model = load_model(&path, &Default::default())?;
            models.insert(path.clone(), model);
        }
        let model = &models[&path];
        let fp = crate::session::fingerprint(&path)?;
        if args.model.is_none() && fp != case.model.fingerprint {
            writeln!(
                stderr,
                "warning: {} changed since the trace was recorded (fingerprint differs)",
                path.display()
            )?;
        }
        let mut input = CaseInput::from_trace(case);
        if let Some(t) = args.threads {
            input.threads = t;
        }
        actual.build = trace::BuildInfo::current(&model.info().device);
        actual.cases.push(run_case(model, &input)?.case);
    }
    let opts = CheckOptions {
        atol: args.atol,
        exact_tokens: !args.allow_tie_flips,
    };
    let report = check_trace(&expected, &actual, &opts);
    let build_notes = expected.build.differences(&actual.build);
    let mut stdout = std::io::stdout().lock();
    match out.format {
        OutputFormat::Table => {
            let piece = |case: usize, id: Option<i32>| -> String {
                let path = args
                    .model
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(&expected.cases[case].model.path));
                match (id, models.get(&path)) {
                    (Some(id), Some(m)) => {
                        format!("{id} {:?}", m.piece(id))
                    }
                    (Some(id), None) => id.to_string(),
                    (None, _) => "-".into(),
                }
            };
            table::check(&mut stdout, &report, &build_notes, &piece, &out.palette)?
        }
        OutputFormat::Json => write_json(&mut stdout, &report, true)?,
        OutputFormat::Jsonl => write_json(&mut stdout, &report, false)?,
    }
    stdout.flush()?;
    if report.passed {
        return Ok(());
    }
    let failed: Vec<_> = report.cases.iter().filter(|c| !c.passed).collect();
    let first = failed
        .first()
        .and_then(|c| {
            c.first_divergence.as_ref().map(|d| {
                format!(
                    "case {} step {}: {}",
                    c.id.clone().unwrap_or_else(|| c.case_index.to_string()),
                    d.step,
                    d.kind.as_str()
                )
            })
        })
        .unwrap_or_default();
    Err(Regression {
        failed: failed.len(),
        total: report.cases.len(),
        trace: args.trace.display().to_string(),
        first,
    }
    .into())
}

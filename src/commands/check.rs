//! `ntv check TRACE`: re-run every recorded case and compare with the recording. A regression
//! is a result (exit status 1 with the report printed), not an error of the program.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use crate::cli::CheckArgs;
use crate::engine::Model;
use crate::error::{Exit, Result};
use crate::render::document::Checked;
use crate::settings::ModelChoice;
use crate::trace::{self, CheckOptions, Trace, check_trace};
use crate::workbench::cases::{CaseInput, run_case};

use super::{Ctx, emit, load_model};

pub fn run(ctx: &Ctx<'_>, args: CheckArgs) -> Result<Exit> {
    let out = ctx.output(None);
    let expected = trace::read(&args.trace)?;
    let threads = crate::settings::threads(args.threads)?;
    let mut models: HashMap<PathBuf, Model> = HashMap::new();
    let mut actual = Trace::new(expected.build.clone());
    let mut stderr = std::io::stderr();
    let given = args
        .model
        .as_deref()
        .map(|m| ModelChoice::from_arg(m, args.offline)?.path())
        .transpose()?;
    // The file of each case: -m, else the recorded file, fetched from the hub at its recorded
    // commit when it is not on this machine.
    let mut paths: Vec<PathBuf> = Vec::new();
    for case in &expected.cases {
        paths.push(match &given {
            Some(p) => p.clone(),
            None => ModelChoice::recorded(&case.model.path, case.model.hub.as_ref(), args.offline)
                .path()?,
        });
    }
    for (i, case) in expected.cases.iter().enumerate() {
        let path = paths[i].clone();
        if !models.contains_key(&path) {
            models.insert(path.clone(), load_model(&path, None)?);
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
        trace::ids_in_vocab(case, model.n_vocab()).map_err(|(field, message)| {
            trace::TraceError::Invalid {
                path: args.trace.clone(),
                field: format!("cases[{i}].{field}"),
                message,
            }
        })?;
        let mut input = CaseInput::from_trace(case);
        match threads {
            Some(t) => input.threads = t,
            None => {
                let (t, warning) = crate::limits::threads(
                    i64::from(case.threads),
                    &format!("cases[{i}].threads"),
                )?;
                if let Some(w) = warning {
                    writeln!(stderr, "{w}")?;
                }
                input.threads = t;
            }
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
    let piece = |case: usize, id: Option<i32>| -> String {
        match (id, models.get(&paths[case])) {
            (Some(id), Some(m)) => format!("{id} {:?}", m.piece(id)),
            (Some(id), None) => id.to_string(),
            (None, _) => "-".into(),
        }
    };
    let text = |case: usize, id: i32| -> String {
        let path = args
            .model
            .clone()
            .unwrap_or_else(|| PathBuf::from(&expected.cases[case].model.path));
        models.get(&path).map(|m| m.piece(id)).unwrap_or_default()
    };
    emit(
        &out,
        &Checked {
            report: &report,
            build_notes: &build_notes,
            piece: &piece,
            traces: Some(crate::render::html::compare::Traces {
                expected: &expected,
                actual: &actual,
                text: &text,
            }),
        },
    )?;
    if report.passed {
        return Ok(Exit::Success);
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
    Ok(Exit::Failure {
        message: format!(
            "regression: {} of {} case(s) of {} diverged ({first})",
            failed.len(),
            report.cases.len(),
            args.trace.display()
        ),
        hint: Some(
            "the report above names the first divergence of each case; if the change is intended, record a new trace with `ntv generate --record`".into(),
        ),
    })
}

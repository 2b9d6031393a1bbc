//! `ntv attribute`: how much each context token contributed to a target token. Reads the
//! session (prompt, completion, model), never writes it.
//!
//! One target (`--index`, `--token`, `--text`, or by default the last completion token / the
//! most probable next token), every completion token (`--all`), or a JSONL batch of requests
//! (`--batch`, optionally one shard of it) with the model loaded once.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use serde::Deserialize;

use crate::app::{InputError, input_err};
use crate::attribution::attention::AttentionOptions;
use crate::attribution::{
    Agg, AttributionError, Attributor, BaselineChoice, Method, Options, Outcome, Target, TargetFn,
};
use crate::cli::{AttributeArgs, GlobalArgs, OutputFormat};
use crate::driver::pill;
use crate::engine::{ContextOptions, Decoder, Model};
use crate::record::{
    AttentionSelection, AttributeDoc, AttributeTimings, AttributionFailure, AttributionLine,
    AttributionRecord, AttributionTarget, ScoredToken, TokenPill,
};
use crate::render::heatmap;
use crate::settings;

use super::{PromptSpec, facts, load_model, model_ref, ms, prompt_ids, prompt_spec, write_json};

/// Which target(s) to attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSel {
    /// Completion token I (negative: from the end).
    Index(i64),
    /// A candidate next token id.
    Token(i64),
    /// Every completion token.
    All,
    /// The last completion token, or the most probable next token without a completion.
    Default,
}

/// A resolved target: what the runner needs plus how to label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    /// Completion index (completion targets only).
    pub index: Option<usize>,
}

/// Turn a selection into targets over `prompt_len` prompt tokens followed by `completion`.
/// `top_next` gives the most probable next token after the whole context (asked only when the
/// default needs it).
pub fn resolve_targets(
    sel: TargetSel,
    prompt_len: usize,
    completion: &[i32],
    top_next: &mut dyn FnMut() -> anyhow::Result<i32>,
) -> anyhow::Result<Vec<Resolved>> {
    let n = completion.len();
    let at = |i: usize| Resolved {
        target: Target {
            context_len: prompt_len + i,
            id: completion[i],
        },
        index: Some(i),
    };
    let candidate = |id: i32| Resolved {
        target: Target {
            context_len: prompt_len + n,
            id,
        },
        index: None,
    };
    Ok(match sel {
        TargetSel::Index(i) => {
            let j = if i < 0 { n as i64 + i } else { i };
            if j < 0 || j >= n as i64 {
                return Err(input_err(
                    format!(
                        "index {i} is outside the completion ({n} tokens{})",
                        if n > 0 {
                            format!(": 0..{} or -{n}..-1", n - 1)
                        } else {
                            String::new()
                        }
                    ),
                    if n == 0 {
                        "generate a completion first (ntv generate / ntv step), or attribute a candidate with --token ID"
                    } else {
                        "`ntv branch show` lists the completion's tokens"
                    },
                ));
            }
            vec![at(j as usize)]
        }
        TargetSel::Token(id) => {
            let id = i32::try_from(id).map_err(|_| {
                input_err(
                    format!("token {id} is not a token id"),
                    "token ids come from `ntv preview --format json`",
                )
            })?;
            vec![candidate(id)]
        }
        TargetSel::All => {
            if n == 0 {
                return Err(input_err(
                    "--all needs completion tokens, and this context has none",
                    "generate a completion first (ntv generate -n 16), or pick one candidate with --token ID",
                ));
            }
            (0..n).map(at).collect()
        }
        TargetSel::Default if n > 0 => vec![at(n - 1)],
        TargetSel::Default => vec![candidate(top_next()?)],
    })
}

/// Parse `--shard K/N`.
pub fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    let bad = || {
        input_err(
            format!("--shard {s} is not K/N with 0 <= K < N"),
            "e.g. --shard 0/4 … --shard 3/4 split a batch over four processes",
        )
    };
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || k >= n {
        return Err(bad());
    }
    Ok((k, n))
}

/// Options from the command line.
fn options(args: &AttributeArgs) -> anyhow::Result<Options> {
    if args.steps == 0 {
        return Err(input_err(
            "--steps 0: integrated gradients needs at least one node",
            "the default is 50 (as Inseq); more nodes lower the completeness error",
        ));
    }
    Ok(Options {
        method: args.method,
        agg: args.agg,
        target_fn: args.target_fn,
        attention: AttentionOptions {
            layers: args.layers.clone(),
            heads: args.heads.clone(),
            layer_agg: args.layer_agg,
            raw: false,
        },
        steps: args.steps,
        baseline: args.baseline,
    })
}

/// The most probable next token after `context`. `dec` is created on first use and kept, so a
/// batch makes one context for all its default targets and reuses the KV prefix they share.
fn top_next<'m>(
    model: &'m Model,
    ctx: &ContextOptions,
    dec: &mut Option<Decoder<'m>>,
    context: &[i32],
) -> anyhow::Result<i32> {
    let dec = match dec {
        Some(d) => d,
        None => dec.insert(Decoder::new(model, ctx)?),
    };
    let logits = dec.eval(context)?;
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as i32)
        .ok_or_else(|| anyhow::anyhow!("the model returned no logits"))?;
    Ok(best)
}

/// The JSON record of one attributed target; `pills` are the sequence's tokens as shown.
fn to_record(
    model: &Model,
    pills: &[TokenPill],
    prompt_len: usize,
    r: &Resolved,
    o: Outcome,
    opts: &Options,
    elapsed_ms: f64,
) -> AttributionRecord {
    let t = pill(model, r.target.id);
    let n = r.target.context_len;
    let scores = pills[..n]
        .iter()
        .zip(&o.scores)
        .enumerate()
        .map(|(index, (p, &score))| ScoredToken {
            index,
            id: p.id,
            text: p.text.clone(),
            display: p.display.clone(),
            special: p.special,
            completion: index >= prompt_len,
            score,
        })
        .collect();
    let ig = opts.method == Method::IntegratedGradients;
    AttributionRecord {
        kind: "attribution".into(),
        id: None,
        line: None,
        method: opts.method,
        aggregation: opts.agg,
        target_fn: o.target_fn,
        engine: o.engine,
        target: AttributionTarget {
            kind: if r.index.is_some() {
                "completion"
            } else {
                "candidate"
            }
            .into(),
            index: r.index,
            id: t.id,
            text: t.text,
            display: t.display,
            special: t.special,
            prob: o.target_prob,
        },
        context_len: n,
        scores,
        steps: ig.then_some(opts.steps),
        baseline: ig.then_some(opts.baseline),
        completeness_error: o.completeness_error,
        attention: (opts.method == Method::Attention).then(|| AttentionSelection {
            layers: opts.attention.layers.clone(),
            heads: opts.attention.heads.clone(),
            layer_agg: opts.attention.layer_agg.name().into(),
        }),
        elapsed_ms,
    }
}

/// Attribute `targets` and turn the outcomes into records (time split evenly when one engine
/// call served several targets).
fn attribute_all(
    attributor: &mut Attributor<'_>,
    model: &Model,
    tokens: &[i32],
    prompt_len: usize,
    targets: &[Resolved],
    opts: &Options,
) -> Result<Vec<AttributionRecord>, AttributionError> {
    let t = Instant::now();
    let plain: Vec<Target> = targets.iter().map(|r| r.target).collect();
    let outcomes = attributor.run(tokens, &plain, opts)?;
    let each = ms(t) / targets.len().max(1) as f64;
    // Each token's text once, however many targets (--all) show it.
    let longest = targets
        .iter()
        .map(|r| r.target.context_len)
        .max()
        .unwrap_or(0);
    let pills: Vec<TokenPill> = tokens[..longest]
        .iter()
        .map(|&id| pill(model, id))
        .collect();
    Ok(targets
        .iter()
        .zip(outcomes)
        .map(|(r, o)| to_record(model, &pills, prompt_len, r, o, opts, each))
        .collect())
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

fn single_token(model: &Model, text: &str) -> anyhow::Result<i32> {
    let ids = model.tokenize(text, false, false);
    match ids.as_slice() {
        [one] => Ok(*one),
        _ => Err(input_err(
            format!(
                "--text {text:?} is {} tokens ({:?}), not one",
                ids.len(),
                ids
            ),
            "attribute one token: pass one of these ids with --token, or a shorter --text",
        )),
    }
}

pub fn run(global: &GlobalArgs, args: AttributeArgs) -> anyhow::Result<()> {
    let out = settings::output(global, None);
    let sc = super::SessionCtx::open(global, false)?;
    let existing = sc.existing().cloned();
    let opts = options(&args)?;
    let runtime = &args.engine;
    let ctx_opts = settings::context_options(runtime)?;
    let model_path = settings::model_path(
        runtime.model.as_deref(),
        existing
            .as_ref()
            .and_then(|s| s.model.as_ref())
            .map(|m| m.path.as_str()),
    )?;
    if let Some(batch) = &args.batch {
        let shard = args.shard.as_deref().map(parse_shard).transpose()?;
        // The command-line prompt is the default of lines without one.
        let base = settings::cli_prompt(&args.prompt, None)?
            .map(|p| prompt_spec(&args.prompt, Some(&p), None))
            .transpose()?;
        let requests = read_requests(batch, shard)?;
        let model = load_model(&model_path, runtime)?;
        return run_batch(&model, &ctx_opts, &args, &opts, base, &requests, &out);
    }

    let spec = prompt_spec(&args.prompt, None, existing.as_ref())?;
    let t = Instant::now();
    let model = load_model(&model_path, runtime)?;
    let load_ms = ms(t);
    let mref = model_ref(&model)?;
    if let Some(s) = &existing {
        super::warn_if_model_changed(s, &mref, &mut std::io::stderr());
    }
    let (_, prompt) = prompt_ids(&model, &spec)?;
    let completion: Vec<i32> = match &existing {
        Some(s) if super::same_prompt(s, &spec) && super::same_model(s, &mref.path) => {
            s.active().completion_ids.clone()
        }
        _ => Vec::new(),
    };
    let sel = match (&args.index, &args.token, &args.text, args.all) {
        (Some(i), ..) => TargetSel::Index(*i),
        (_, Some(t), ..) => TargetSel::Token(*t),
        (_, _, Some(text), _) => TargetSel::Token(single_token(&model, text)?.into()),
        (.., true) => TargetSel::All,
        _ => TargetSel::Default,
    };
    let tokens: Vec<i32> = prompt.iter().chain(&completion).copied().collect();
    let mut next_dec = None;
    let targets = resolve_targets(sel, prompt.len(), &completion, &mut || {
        top_next(&model, &ctx_opts, &mut next_dec, &tokens)
    })?;

    let t = Instant::now();
    let mut attributor = Attributor::new(&model, ctx_opts.n_threads, ctx_opts.n_ctx as usize);
    let records = attribute_all(
        &mut attributor,
        &model,
        &tokens,
        prompt.len(),
        &targets,
        &opts,
    )?;
    let doc = AttributeDoc {
        schema: "ntv.attribute/1".into(),
        model: facts(&model),
        prompt: spec.prompt.clone(),
        system: spec.system.clone(),
        chat_template: spec.chat_template && model.info().chat_template.is_some(),
        prompt_tokens: prompt.iter().map(|&id| pill(&model, id)).collect(),
        completion_tokens: completion.iter().map(|&id| pill(&model, id)).collect(),
        branch: sc.session.active_branch.clone(),
        targets: records,
        timings: AttributeTimings {
            load_ms,
            attribute_ms: ms(t),
        },
    };
    let mut stdout = std::io::stdout().lock();
    match out.format {
        OutputFormat::Table => {
            heatmap::attribute(&mut stdout, &doc, args.top, terminal_width(), &out.palette)?
        }
        OutputFormat::Json => write_json(&mut stdout, &doc, true)?,
        OutputFormat::Jsonl => {
            for r in &doc.targets {
                write_json(&mut stdout, r, false)?;
            }
        }
    }
    stdout.flush()?;
    Ok(())
}

/// One request of a batch file; missing fields take the command-line values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: Option<serde_json::Value>,
    pub prompt: Option<String>,
    pub system: Option<String>,
    pub chat_template: Option<bool>,
    /// Completion tokens after the prompt (the target is one of them with `index`, or follows
    /// them with `token`).
    pub completion_ids: Option<Vec<i64>>,
    pub index: Option<i64>,
    pub token: Option<i64>,
    pub all: Option<bool>,
    pub method: Option<Method>,
    pub agg: Option<Agg>,
    pub target_fn: Option<TargetFn>,
    pub steps: Option<usize>,
    pub baseline: Option<BaselineChoice>,
}

/// A line that is not a request: why, and its `id` when the line is JSON that has one.
#[derive(Debug, Clone)]
pub struct BadLine {
    pub message: String,
    pub id: Option<serde_json::Value>,
}

/// A batch line: its number and the request, or why it could not be read.
pub type Line = (usize, Result<Request, BadLine>);

fn parse_request(line: &str) -> Result<Request, BadLine> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| BadLine {
        message: e.to_string(),
        id: None,
    })?;
    let id = value.get("id").cloned();
    Request::deserialize(value).map_err(|e| BadLine {
        message: e.to_string(),
        id,
    })
}

/// Read the requests of `path` (blank lines skipped) that fall in `shard` (`K/N`: every N-th
/// request starting at the K-th, counting requests from 0). A line that is not a valid request
/// is kept as an error for its place in the output.
pub fn read_requests(path: &Path, shard: Option<(usize, usize)>) -> anyhow::Result<Vec<Line>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        input_err(
            format!("cannot read batch file {}: {e}", path.display()),
            "pass a JSONL file with one request object per line",
        )
    })?;
    let (k, n) = shard.unwrap_or((0, 1));
    let lines: Vec<Line> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .enumerate()
        .filter(|(ordinal, _)| ordinal % n == k)
        .map(|(_, (i, l))| (i + 1, parse_request(l)))
        .collect();
    if text.lines().all(|l| l.trim().is_empty()) {
        return Err(input_err(
            format!("batch file {} has no requests", path.display()),
            "add one JSON object per line, e.g. {\"prompt\": \"Hello\", \"method\": \"saliency\"}",
        ));
    }
    Ok(lines)
}

/// Attribute one request with the command-line defaults.
#[allow(clippy::too_many_arguments)]
fn run_request<'m>(
    model: &'m Model,
    ctx_opts: &ContextOptions,
    next_dec: &mut Option<Decoder<'m>>,
    attributor: &mut Attributor<'_>,
    args: &AttributeArgs,
    base_opts: &Options,
    base: Option<&PromptSpec>,
    req: &Request,
) -> anyhow::Result<Vec<AttributionRecord>> {
    let prompt = req
        .prompt
        .clone()
        .or_else(|| base.map(|b| b.prompt.clone()))
        .ok_or_else(|| {
            input_err(
                "the line has no \"prompt\" and the command line gives none",
                "add \"prompt\" to the line or pass -p for every line",
            )
        })?;
    let spec = PromptSpec {
        prompt,
        system: req
            .system
            .clone()
            .or_else(|| args.prompt.system.clone())
            .unwrap_or_else(|| crate::chat::DEFAULT_SYSTEM.to_string()),
        chat_template: req
            .chat_template
            .or(settings::cli_chat_template(&args.prompt))
            .unwrap_or(true),
    };
    let (_, prompt_ids) = prompt_ids(model, &spec)?;
    let completion: Vec<i32> = req
        .completion_ids
        .iter()
        .flatten()
        .map(|&id| {
            i32::try_from(id)
                .ok()
                .filter(|&i| model.in_range(i))
                .ok_or_else(|| {
                    input_err(
                        format!(
                            "completion id {id} is outside the vocabulary (0..{})",
                            model.n_vocab()
                        ),
                        "completion_ids are token ids of this model",
                    )
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let sel = match (req.index, req.token, req.all) {
        (Some(_), Some(_), _) | (Some(_), _, Some(true)) | (_, Some(_), Some(true)) => {
            return Err(input_err(
                "give at most one of \"index\", \"token\" and \"all\"",
                "index: a completion token; token: a candidate next token; all: every completion token",
            ));
        }
        (Some(i), ..) => TargetSel::Index(i),
        (_, Some(t), _) => TargetSel::Token(t),
        (.., Some(true)) => TargetSel::All,
        _ => match (args.index, args.token, args.all) {
            (Some(i), ..) => TargetSel::Index(i),
            (_, Some(t), _) => TargetSel::Token(t),
            (.., true) => TargetSel::All,
            _ => TargetSel::Default,
        },
    };
    let mut opts = base_opts.clone();
    if let Some(m) = req.method {
        opts.method = m;
    }
    if let Some(a) = req.agg {
        opts.agg = a;
    }
    if let Some(f) = req.target_fn {
        opts.target_fn = Some(f);
    }
    if let Some(s) = req.steps {
        if s == 0 {
            return Err(input_err(
                "\"steps\": 0 — integrated gradients needs at least one node",
                "use 50 (Inseq's default) or more",
            ));
        }
        opts.steps = s;
    }
    if let Some(b) = req.baseline {
        opts.baseline = b;
    }
    let tokens: Vec<i32> = prompt_ids.iter().chain(&completion).copied().collect();
    let targets = resolve_targets(sel, prompt_ids.len(), &completion, &mut || {
        top_next(model, ctx_opts, next_dec, &tokens)
    })?;
    let mut records = attribute_all(
        attributor,
        model,
        &tokens,
        prompt_ids.len(),
        &targets,
        &opts,
    )?;
    for r in &mut records {
        r.id = req.id.clone();
    }
    Ok(records)
}

fn is_input_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<InputError>().is_some()
            || c.downcast_ref::<AttributionError>()
                .is_some_and(|a| a.is_input())
            || c.downcast_ref::<crate::engine::EngineError>()
                .is_some_and(|a| a.is_input())
    })
}

fn run_batch(
    model: &Model,
    ctx_opts: &ContextOptions,
    args: &AttributeArgs,
    opts: &Options,
    base: Option<PromptSpec>,
    requests: &[Line],
    _out: &settings::OutputSettings,
) -> anyhow::Result<()> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let path = args.batch.as_deref().expect("batch mode");
    let bar = ProgressBar::with_draw_target(
        Some(requests.len() as u64),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix} {wide_bar} {pos}/{len} {elapsed}<{eta}")
            .expect("valid template"),
    );
    bar.set_prefix(format!("attributing ({})", args.method.name()));
    let mut attributor = Attributor::new(model, ctx_opts.n_threads, ctx_opts.n_ctx as usize);
    let mut next_dec = None;
    let mut stdout = std::io::stdout().lock();
    let (mut failed, mut all_input, mut targets) = (Vec::new(), true, 0usize);
    for (line, req) in requests {
        let result = match req {
            Ok(r) => run_request(
                model,
                ctx_opts,
                &mut next_dec,
                &mut attributor,
                args,
                opts,
                base.as_ref(),
                r,
            )
            .map_err(|e| (e, r.id.clone())),
            Err(bad) => Err((
                anyhow::Error::new(InputError::new(
                    format!("not a request: {}", bad.message),
                    Some("each line is one JSON object (see ntv attribute --help)".into()),
                )),
                bad.id.clone(),
            )),
        };
        match result {
            Ok(records) => {
                for mut r in records {
                    r.line = Some(*line);
                    targets += 1;
                    write_json(&mut stdout, &AttributionLine::Ok(Box::new(r)), false)?;
                }
            }
            Err((e, id)) => {
                let msg = crate::app::message(&e);
                all_input &= is_input_error(&e);
                let record = AttributionLine::Failed(AttributionFailure {
                    kind: "error".into(),
                    id,
                    line: *line,
                    error: msg.clone(),
                });
                write_json(&mut stdout, &record, false)?;
                if args.fail_fast {
                    stdout.flush()?;
                    bar.finish_and_clear();
                    return Err(e.context(format!(
                        "{} line {line} (stopped: --fail-fast)",
                        path.display()
                    )));
                }
                bar.suspend(|| {
                    let _ = writeln!(
                        std::io::stderr(),
                        "error: {} line {line}: {msg}",
                        path.display()
                    );
                });
                failed.push(*line);
            }
        }
        stdout.flush()?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = writeln!(
        std::io::stderr(),
        "attributed {} of {} requests ({targets} targets)",
        requests.len() - failed.len(),
        requests.len()
    );
    if failed.is_empty() {
        return Ok(());
    }
    let lines = failed
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let msg = format!(
        "{} of {} batch requests failed (lines {lines})",
        failed.len(),
        requests.len()
    );
    if all_input {
        Err(input_err(
            msg,
            "each failed line has an \"error\" record in the output; fix those lines and re-run them",
        ))
    } else {
        Err(anyhow::anyhow!(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> anyhow::Result<i32> {
        panic!("the default candidate is not needed here")
    }

    #[test]
    fn targets_from_selections() {
        let c = [10, 11, 12];
        let r = resolve_targets(TargetSel::Index(1), 5, &c, &mut never).unwrap();
        assert_eq!(
            r,
            vec![Resolved {
                target: Target {
                    context_len: 6,
                    id: 11
                },
                index: Some(1)
            }]
        );
        let r = resolve_targets(TargetSel::Index(-1), 5, &c, &mut never).unwrap();
        assert_eq!(
            r[0].target,
            Target {
                context_len: 7,
                id: 12
            }
        );
        let r = resolve_targets(TargetSel::Token(99), 5, &c, &mut never).unwrap();
        assert_eq!(
            r[0].target,
            Target {
                context_len: 8,
                id: 99
            }
        );
        assert_eq!(r[0].index, None);
        let r = resolve_targets(TargetSel::All, 5, &c, &mut never).unwrap();
        assert_eq!(
            r.iter().map(|x| x.target.context_len).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        let r = resolve_targets(TargetSel::Default, 5, &c, &mut never).unwrap();
        assert_eq!(r[0].index, Some(2));
        let r = resolve_targets(TargetSel::Default, 5, &[], &mut || Ok(42)).unwrap();
        assert_eq!(
            r[0].target,
            Target {
                context_len: 5,
                id: 42
            }
        );
        for bad in [TargetSel::Index(3), TargetSel::Index(-4)] {
            assert!(resolve_targets(bad, 5, &c, &mut never).is_err());
        }
        assert!(resolve_targets(TargetSel::All, 5, &[], &mut never).is_err());
        assert!(resolve_targets(TargetSel::Index(0), 5, &[], &mut never).is_err());
    }

    #[test]
    fn shards() {
        assert_eq!(parse_shard("0/4").unwrap(), (0, 4));
        assert_eq!(parse_shard("3/4").unwrap(), (3, 4));
        for bad in ["4/4", "1", "a/b", "0/0", "-1/2"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_partition_the_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.jsonl");
        std::fs::write(
            &path,
            "{\"id\": 0}\n\n{\"id\": 1}\nnot json\n{\"id\": 3}\n{\"id\": 4, \"bogus\": 1}\n",
        )
        .unwrap();
        let all = read_requests(&path, None).unwrap();
        assert_eq!(
            all.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
            vec![1, 3, 4, 5, 6]
        );
        assert!(all[2].1.is_err() && all[4].1.is_err());
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|k| read_requests(&path, Some((k, 3))).unwrap())
            .map(|(l, _)| l)
            .collect();
        seen.sort();
        assert_eq!(seen, vec![1, 3, 4, 5, 6]);
        assert_eq!(
            read_requests(&path, Some((1, 3)))
                .unwrap()
                .iter()
                .map(|(l, _)| *l)
                .collect::<Vec<_>>(),
            vec![3, 6]
        );
        std::fs::write(&path, "\n\n").unwrap();
        assert!(read_requests(&path, None).is_err());
    }
}

//! `ntv preview`: the tokens the model sees and the next-token distribution. Changes nothing
//! unless --save.

use std::io::Write;
use std::time::Instant;

use crate::cli::{GlobalArgs, OutputFormat, PreviewArgs};
use crate::driver::{Driver, pill};
use crate::record::{PresetInfo, PreviewDoc, PromptLogprob, Timings};
use crate::render::table;
use crate::sampling::{Preset, logprob_and_rank};
use crate::settings;

use super::{
    SessionCtx, adopt_inputs, facts, load_model, model_ref, ms, prompt_ids, prompt_spec,
    warn_if_model_changed, write_json,
};

/// Every preset with its parameters, for the JSON output.
pub fn presets() -> Vec<PresetInfo> {
    [
        Preset::Greedy,
        Preset::Balanced,
        Preset::Reliable,
        Preset::Creative,
        Preset::Custom,
    ]
    .into_iter()
    .map(|p| PresetInfo {
        name: p,
        description: p.describe().to_string(),
        params: p.params(),
    })
    .collect()
}

pub fn run(global: &GlobalArgs, args: PreviewArgs) -> anyhow::Result<()> {
    let out = settings::output(global, None);
    let mut sc = SessionCtx::open(global, args.save)?;
    let existing = sc.existing().cloned();
    let spec = prompt_spec(
        &args.prompt,
        args.positional_prompt.as_deref(),
        existing.as_ref(),
    )?;
    let (params, preset) = settings::params(
        existing.as_ref().map(|s| &s.params),
        existing.as_ref().and_then(|s| s.preset),
        &args.sampling,
    )?;
    let display_k = settings::display_k(&args.sampling, existing.as_ref().map(|s| s.display_k))?;
    let ctx_opts = settings::context_options(&args.runtime.engine)?;
    let cspec = settings::constraint(
        &args.constraint,
        existing.as_ref().and_then(|s| s.constraint.as_ref()),
    )?;
    let model_path = settings::model_path(
        args.runtime.engine.model.as_deref(),
        existing
            .as_ref()
            .and_then(|s| s.model.as_ref())
            .map(|m| m.path.as_str()),
    )?;

    let t = Instant::now();
    let model = load_model(&model_path, &args.runtime.engine)?;
    let load_ms = ms(t);
    settings::check_display_k(display_k, model.n_vocab())?;
    let mref = model_ref(&model)?;
    if let Some(s) = &existing {
        warn_if_model_changed(s, &mref, &mut std::io::stderr());
    }

    let t = Instant::now();
    let (prompt_text, ids) = prompt_ids(&model, &spec)?;
    let tokenize_ms = ms(t);

    // The session's completion applies only to the prompt and model it was made for.
    let completion: Vec<i32> = match &existing {
        Some(s) if super::same_prompt(s, &spec) && super::same_model(s, &mref.path) => {
            s.active().completion_ids.clone()
        }
        _ => Vec::new(),
    };

    let mut driver = Driver::new(&model, &ctx_opts, &ids)?;
    driver.set_completion(&completion)?;
    driver.set_constraint(super::stepping::build_constraint(&model, cspec.as_ref())?)?;
    let cache = if args.prompt_logprobs {
        None // teacher forcing decodes every position anyway
    } else {
        super::kv_cache(&sc, &args.runtime)
    };
    let fingerprint = super::cache_fingerprint(&mref);
    let t = Instant::now();
    super::restore_prefix(cache.as_ref(), &mut driver, &fingerprint);
    let mut logprobs = None;
    if args.prompt_logprobs {
        let mut rows = Vec::with_capacity(ids.len());
        let mut failure = None;
        driver.decoder().eval_all(&ids, &mut |pos, logits| {
            if pos + 1 < ids.len() {
                let next = ids[pos + 1];
                match logprob_and_rank(logits, next as usize) {
                    Ok((lp, rank)) => rows.push((pos + 1, next, lp, rank)),
                    Err(e) => failure = Some(e),
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        logprobs = Some(
            rows.into_iter()
                .map(|(index, id, logprob, rank)| {
                    let p = pill(&model, id);
                    PromptLogprob {
                        index,
                        id,
                        text: p.text,
                        display: p.display,
                        special: p.special,
                        logprob,
                        rank,
                        surprisal_bits: -logprob / std::f64::consts::LN_2,
                    }
                })
                .collect::<Vec<_>>(),
        );
    }
    let context = driver.context().to_vec();
    driver.decoder().eval(&context)?;
    let prefill_ms = ms(t);
    let t = Instant::now();
    let dist = driver.preview(&params, display_k)?;
    let maths_ms = ms(t);
    super::save_prefix(cache.as_ref(), &mut driver, &fingerprint);

    if args.save {
        adopt_inputs(&mut sc.session, &mref, &spec, args.reset)?;
        sc.session.params = params.clone();
        sc.session.preset = preset;
        sc.session.display_k = display_k;
        sc.session.constraint = cspec.clone();
        sc.save()?;
    }

    let doc = PreviewDoc {
        schema: "ntv.preview/1".into(),
        model: facts(&model),
        prompt: spec.prompt.clone(),
        system: spec.system.clone(),
        chat_template: spec.chat_template && model.info().chat_template.is_some(),
        prompt_text: prompt_text.clone(),
        prompt_tokens: ids.iter().map(|&id| pill(&model, id)).collect(),
        completion_tokens: completion.iter().map(|&id| pill(&model, id)).collect(),
        context_token_count: context.len(),
        branch: sc.session.active_branch.clone(),
        preset,
        params,
        presets: presets(),
        dist,
        constraint: cspec,
        prompt_logprobs: logprobs,
        timings: Timings {
            load_ms,
            tokenize_ms,
            prefill_ms,
            maths_ms,
        },
    };
    let mut stdout = std::io::stdout().lock();
    match out.format {
        OutputFormat::Table => table::preview(&mut stdout, &doc, &out.palette)?,
        OutputFormat::Json => write_json(&mut stdout, &doc, true)?,
        OutputFormat::Jsonl => write_json(&mut stdout, &doc, false)?,
    }
    stdout.flush()?;
    Ok(())
}

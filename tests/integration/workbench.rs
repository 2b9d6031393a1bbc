//! The application core on the real model: one object keeps the KV state across operations,
//! so a knob change recomputes from the logits already decoded and a step decodes one token;
//! branch operations move the context without losing the shared prefix.

use ntv::engine::{ContextOptions, LoadOptions, Model};
use ntv::record::StopReason;
use ntv::sampling::SamplingParams;
use ntv::settings::{CacheSetting, ModelChoice, PromptSpec, RunSettings, SeedChoice};
use ntv::workbench::{Mode, SessionStore, Workbench};

use crate::util::{KNOWN_IDS, PROMPT, model};

fn settings() -> RunSettings {
    RunSettings {
        prompt: Some(PromptSpec::text(PROMPT, ntv::chat::DEFAULT_SYSTEM)),
        params: SamplingParams::default(),
        preset: None,
        greedy: true,
        display_k: 10,
        context: ContextOptions {
            n_ctx: 512,
            n_threads: 1,
            ..ContextOptions::default()
        },
        gpu_layers: None,
        constraint: None,
        model: ModelChoice::Default,
        cache: CacheSetting::Off,
        seed: SeedChoice::default(),
        stops: Vec::new(),
        max_tokens: None,
    }
}

#[test]
fn knob_changes_decode_nothing_and_each_step_decodes_one_token() {
    let m = Model::load(model(), &LoadOptions::default()).expect("model loads");
    let mut wb = Workbench::open(
        &m,
        SessionStore::detached(),
        settings(),
        Mode::Record { reset: false },
    )
    .expect("core opens");
    assert_eq!(
        wb.prompt_ids()
            .iter()
            .map(|&i| i64::from(i))
            .collect::<Vec<_>>(),
        KNOWN_IDS
    );
    let first = wb.preview().unwrap();
    let prefill = wb.cache_use().decoded_tokens;
    assert_eq!(prefill, KNOWN_IDS.len(), "the prompt is decoded once");

    // A knob change: the same logits, other stages.
    let hot = SamplingParams {
        temperature: 1.5,
        top_k: 3,
        ..SamplingParams::default()
    };
    wb.set_params(hot, 5).unwrap();
    let second = wb.preview().unwrap();
    assert_eq!(
        wb.cache_use().decoded_tokens,
        prefill,
        "no decode for a knob"
    );
    assert_eq!(second.tokens.len(), 5);
    assert_eq!(second.tokens[0].p_base, first.tokens[0].p_base);
    assert_ne!(second.tokens[0].p_final, first.tokens[0].p_final);
    assert_eq!(second.kept_token_count, 3);
    assert!(wb.set_params(SamplingParams::default(), 0).is_err());
    assert_eq!(
        wb.settings().display_k,
        5,
        "a refused change leaves the settings"
    );

    // Three greedy steps: each decodes exactly the token before it.
    let plan = wb.choose(Some(3));
    let mut seen = Vec::new();
    let run = wb
        .step(&plan, None, true, &mut |r| {
            seen.push(r.appended_meta.selected_id);
            Ok(())
        })
        .unwrap();
    assert_eq!(run.records.len(), 3);
    assert_eq!(seen, wb.completion());
    assert_eq!(run.outcome.stop_reason, None);
    assert_eq!(wb.cache_use().decoded_tokens, prefill + 2);
    wb.preview().unwrap();
    assert_eq!(wb.cache_use().decoded_tokens, prefill + 3);
    let main = wb.completion().to_vec();

    // Undo keeps the prefix: only the new last token is decoded again.
    assert_eq!(wb.undo(1).unwrap(), vec![main[2]]);
    wb.preview().unwrap();
    assert_eq!(wb.cache_use().decoded_tokens, prefill + 4);

    // Rewind to position 1 on a new branch, force a token there, switch back.
    let alt = wb.rewind(1).unwrap();
    assert_eq!(wb.completion(), &main[..1]);
    let plan = wb.force_token(504).unwrap();
    wb.step(&plan, None, false, &mut |_| Ok(())).unwrap();
    assert_eq!(wb.completion(), &[main[0], 504]);
    assert_eq!(wb.session().active_branch, alt);
    wb.switch_branch("main").unwrap();
    assert_eq!(wb.completion(), &main[..2]);
    assert!(
        wb.delete_branch("main", false).is_err(),
        "the active branch needs force"
    );
    wb.delete_branch(&alt, false).unwrap();
    assert_eq!(wb.session().branches.len(), 1);
    assert!(wb.force_token(1 << 20).unwrap_err().is_input());

    // What was recorded for a token is there without any model work.
    let first = wb.recorded(0).expect("a recorded token").clone();
    assert_eq!(first.selected_id, main[0]);
    assert!(wb.recorded(2).is_none(), "main has two tokens now");

    // A new prompt: the completion for the old one is set aside, the KV cache keeps the
    // template prefix both prompts share.
    let decoded = wb.cache_use().decoded_tokens;
    let other = PromptSpec::text("Name a colour.", ntv::chat::DEFAULT_SYSTEM);
    wb.set_prompt(other).unwrap();
    assert!(wb.completion().is_empty());
    let shared = KNOWN_IDS
        .iter()
        .zip(wb.prompt_ids())
        .take_while(|(a, b)| **a == i64::from(**b))
        .count();
    assert!(
        shared >= 10,
        "the system part of the template is shared ({shared})"
    );
    wb.preview().unwrap();
    assert_eq!(
        wb.cache_use().decoded_tokens - decoded,
        wb.prompt_ids().len() - shared,
        "only what follows the shared prefix is decoded"
    );
    assert_eq!(wb.session().prompt.as_deref(), Some("Name a colour."));

    // Generation runs the same loop: until the budget here.
    let run = wb.generate(false, &mut |_| Ok(())).unwrap();
    assert!(run.records.is_empty(), "streamed records are not kept");
    assert!(matches!(
        run.outcome.stop_reason,
        Some(StopReason::Eog | StopReason::MaxTokens)
    ));
}

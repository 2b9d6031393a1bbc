//! What to attribute, as users ask for it: target selections and batch requests merged over
//! the command-line defaults. Pure (no model): the model-dependent parts (tokenising `--text`,
//! the most probable next token) come in as values or closures.

use serde::Deserialize;

use super::{Agg, BaselineChoice, Method, Options, Target, TargetFn};
use crate::error::{Result, input_err};

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

impl TargetSel {
    /// From the flags (`--index`, `--token`, `--all`; clap keeps them exclusive).
    pub fn from_flags(index: Option<i64>, token: Option<i64>, all: bool) -> Self {
        match (index, token, all) {
            (Some(i), ..) => Self::Index(i),
            (_, Some(t), _) => Self::Token(t),
            (.., true) => Self::All,
            _ => Self::Default,
        }
    }
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
    top_next: &mut dyn FnMut() -> Result<i32>,
) -> Result<Vec<Resolved>> {
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

/// One request of a batch file; missing fields take the command-line values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: Option<serde_json::Value>,
    pub prompt: Option<String>,
    pub system: Option<String>,
    /// A conversation instead of `prompt`/`system` (as `--messages`).
    pub messages: Option<Vec<crate::chat::ChatMessage>>,
    pub chat_template: Option<bool>,
    pub parse_special: Option<bool>,
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
    /// Occlusion: tokens per occluded span (as `--window`).
    pub window: Option<usize>,
}

impl crate::batch::Identified for Request {
    fn id(&self) -> Option<&serde_json::Value> {
        self.id.as_ref()
    }
}

/// The command-line values a request falls back on.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub prompt: Option<String>,
    pub system: Option<String>,
    pub messages: Option<Vec<crate::chat::ChatMessage>>,
    pub chat_template: Option<bool>,
    pub parse_special: Option<bool>,
    pub sel: TargetSel,
    pub options: Options,
}

/// A request with every field decided.
#[derive(Debug, Clone)]
pub struct Merged {
    pub prompt: crate::chat::PromptSpec,
    /// Completion ids (range-checked against the model by the caller).
    pub completion_ids: Vec<i64>,
    pub sel: TargetSel,
    pub options: Options,
}

/// Merge a request over the defaults: a field of the line wins; a line names at most one
/// target kind.
pub fn merge(req: &Request, d: &Defaults) -> Result<Merged> {
    if req.messages.is_some() && (req.prompt.is_some() || req.system.is_some()) {
        return Err(input_err(
            "the line has both \"messages\" and \"prompt\"/\"system\"",
            "give a line either a conversation (\"messages\") or a prompt",
        ));
    }
    if let Some(m) = &req.messages
        && m.is_empty()
    {
        return Err(input_err(
            "the line's \"messages\" is empty",
            "give at least one {\"role\", \"content\"} message",
        ));
    }
    let messages = match (&req.messages, &req.prompt) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(_)) => None,
        (None, None) => d.messages.clone(),
    };
    let prompt = if messages.is_some() {
        String::new()
    } else {
        req.prompt
            .clone()
            .or_else(|| d.prompt.clone())
            .ok_or_else(|| {
                input_err(
                    "the line has no \"prompt\" and the command line gives none",
                    "add \"prompt\" (or \"messages\") to the line or pass -p for every line",
                )
            })?
    };
    let sel = match (req.index, req.token, req.all) {
        (Some(_), Some(_), _) | (Some(_), _, Some(true)) | (_, Some(_), Some(true)) => {
            return Err(input_err(
                "give at most one of \"index\", \"token\" and \"all\"",
                "index: a completion token; token: a candidate next token; all: every completion token",
            ));
        }
        (None, None, None | Some(false)) => d.sel,
        (i, t, a) => TargetSel::from_flags(i, t, a == Some(true)),
    };
    let mut options = d.options.clone();
    if let Some(m) = req.method {
        options.method = m;
    }
    if let Some(a) = req.agg {
        options.agg = a;
    }
    if let Some(f) = req.target_fn {
        options.target_fn = Some(f);
    }
    if let Some(s) = req.steps {
        options.steps = super::runner::check_steps(s, "\"steps\":")?;
    }
    if let Some(b) = req.baseline {
        options.baseline = b;
    }
    if let Some(w) = req.window {
        options.window = Some(super::runner::check_window(w, "\"window\":")?);
    }
    Ok(Merged {
        prompt: crate::chat::PromptSpec {
            system: if messages.is_some() {
                String::new()
            } else {
                req.system
                    .clone()
                    .or_else(|| d.system.clone())
                    .unwrap_or_else(|| crate::chat::DEFAULT_SYSTEM.to_string())
            },
            prompt,
            messages,
            chat_template: req.chat_template.or(d.chat_template).unwrap_or(true),
            parse_special: req.parse_special.or(d.parse_special).unwrap_or(true),
        },
        completion_ids: req.completion_ids.clone().unwrap_or_default(),
        sel,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Result<i32> {
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
            assert!(
                resolve_targets(bad, 5, &c, &mut never)
                    .unwrap_err()
                    .is_input()
            );
        }
        assert!(resolve_targets(TargetSel::All, 5, &[], &mut never).is_err());
        assert!(resolve_targets(TargetSel::Index(0), 5, &[], &mut never).is_err());
        assert!(resolve_targets(TargetSel::Token(1 << 40), 5, &[], &mut never).is_err());
    }

    fn defaults() -> Defaults {
        Defaults {
            prompt: Some("cli prompt".into()),
            system: None,
            messages: None,
            chat_template: Some(false),
            parse_special: None,
            sel: TargetSel::Index(-1),
            options: Options::default(),
        }
    }

    fn req(json: &str) -> Request {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_request_overrides_the_command_line_field_by_field() {
        let m = merge(&req("{}"), &defaults()).unwrap();
        assert_eq!(m.prompt.prompt, "cli prompt");
        assert_eq!(m.prompt.system, crate::chat::DEFAULT_SYSTEM);
        assert!(!m.prompt.chat_template);
        assert_eq!(m.sel, TargetSel::Index(-1));
        assert_eq!(m.options.method, Method::Attention);
        let m = merge(
            &req(
                r#"{"prompt": "line", "system": "", "chat_template": true, "token": 5,
                     "method": "saliency", "agg": "sum", "target_fn": "logit", "steps": 8,
                     "baseline": "zero", "completion_ids": [1, 2], "window": 4}"#,
            ),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            (m.prompt.prompt.as_str(), m.prompt.system.as_str()),
            ("line", "")
        );
        assert!(m.prompt.chat_template);
        assert_eq!(m.sel, TargetSel::Token(5));
        assert_eq!(m.options.method, Method::Saliency);
        assert_eq!(m.options.agg, Agg::Sum);
        assert_eq!(m.options.target_fn, Some(TargetFn::Logit));
        assert_eq!(m.options.steps, 8);
        assert_eq!(m.options.baseline, BaselineChoice::Zero);
        assert_eq!(m.options.window, Some(4));
        assert_eq!(m.completion_ids, vec![1, 2]);
        assert_eq!(
            merge(&req(r#"{"all": true}"#), &defaults()).unwrap().sel,
            TargetSel::All
        );
    }

    #[test]
    fn conflicting_or_missing_fields_are_input_errors() {
        for bad in [
            r#"{"index": 0, "token": 1}"#,
            r#"{"index": 0, "all": true}"#,
            r#"{"token": 0, "all": true}"#,
            r#"{"steps": 0}"#,
            r#"{"window": 0}"#,
        ] {
            assert!(
                merge(&req(bad), &defaults()).unwrap_err().is_input(),
                "{bad}"
            );
        }
        let no_prompt = Defaults {
            prompt: None,
            ..defaults()
        };
        assert!(merge(&req("{}"), &no_prompt).unwrap_err().is_input());
        assert!(serde_json::from_str::<Request>(r#"{"bogus": 1}"#).is_err());
    }
}

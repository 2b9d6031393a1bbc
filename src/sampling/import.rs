//! A real configuration as sampling parameters: the sampling fields of a llama-server
//! `/completion` or `/v1/chat/completions` request body (`--params FILE.json`), by llama-server's
//! field names. Pure: JSON in, parameters and a report out.

use serde_json::Value;

use super::chain::Stage;
use super::params::{Bias, LogitBias};
use super::{SamplerOrder, SamplingParams};

/// What a request body set besides the sampling parameters, and what it held that ntv does not
/// use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// `seed` (absent, or -1 = random, when not set).
    pub seed: Option<u64>,
    /// `n_probs` / `top_logprobs`: how many candidates to show.
    pub n_probs: Option<usize>,
    /// Fields that are not sampling parameters (the prompt, `stream`, `n_predict`, …).
    pub not_sampling: Vec<String>,
    /// Fields llama-server does not have, or ntv does not know.
    pub unknown: Vec<String>,
    /// Fields (or values) ntv cannot take, with the reason.
    pub unsupported: Vec<String>,
    /// Whether any sampling field was set.
    pub touched: bool,
}

/// Request fields that are not about sampling (llama-server's and OpenAI's).
const NOT_SAMPLING: &[&str] = &[
    "prompt",
    "messages",
    "model",
    "stream",
    "stream_options",
    "n_predict",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n_keep",
    "n_indent",
    "n_discard",
    "cache_prompt",
    "id_slot",
    "return_tokens",
    "return_progress",
    "timings_per_token",
    "post_sampling_probs",
    "response_fields",
    "lora",
    "t_max_predict_ms",
    "t_max_prompt_ms",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "chat_template_kwargs",
    "reasoning_format",
    "response_format",
    "grammar",
    "json_schema",
    "grammar_lazy",
    "grammar_triggers",
    "preserved_tokens",
    "ignore_eos",
    "logprobs",
    "n",
    "user",
    "image_data",
    "multimodal_data",
    "add_generation_prompt",
    "continue_final_message",
    "echo",
    "suffix",
    "input_prefix",
    "input_suffix",
    "speculative.n_max",
    "speculative.n_min",
    "speculative.p_min",
];

fn num(v: &Value, field: &str) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("{field} must be a number, not {v}"))
}

fn int(v: &Value, field: &str) -> Result<i64, String> {
    match v.as_i64() {
        Some(n) => Ok(n),
        None => match v.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 9e15 => Ok(x as i64),
            _ => Err(format!("{field} must be a whole number, not {v}")),
        },
    }
}

/// Applies the sampling fields of `body` (a JSON object) to `p`.
pub fn apply(body: &Value, p: &mut SamplingParams) -> Result<Report, String> {
    let obj = body
        .as_object()
        .ok_or("the parameters file must hold a JSON object (a request body)")?;
    let mut r = Report::default();
    for (key, v) in obj {
        let k = key.as_str();
        let mut touched = true;
        match k {
            "temperature" => p.temperature = num(v, k)?.max(0.0),
            "top_k" => p.top_k = int(v, k)?.clamp(0, i64::from(u32::MAX)) as u32,
            "top_p" => p.top_p = num(v, k)?,
            "min_p" => p.min_p = num(v, k)?,
            "typical_p" => p.typical_p = num(v, k)?,
            "repeat_penalty" => p.repetition_penalty = num(v, k)?,
            "repeat_last_n" => p.penalty_last_n = int(v, k)?.clamp(-1, i64::from(i32::MAX)) as i32,
            "presence_penalty" => p.presence_penalty = num(v, k)?,
            "frequency_penalty" => p.frequency_penalty = num(v, k)?,
            "dry_multiplier" => p.dry_multiplier = num(v, k)?,
            "dry_base" => p.dry_base = num(v, k)?,
            "dry_allowed_length" => {
                p.dry_allowed_length = int(v, k)?.clamp(0, i64::from(u32::MAX)) as u32
            }
            "dry_penalty_last_n" => {
                p.dry_penalty_last_n = int(v, k)?.clamp(-1, i64::from(i32::MAX)) as i32
            }
            "dry_sequence_breakers" => {
                let list = v
                    .as_array()
                    .ok_or_else(|| format!("{k} must be a list of strings"))?;
                p.dry_sequence_breakers = list
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("{k} must be a list of strings, not {s}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "xtc_probability" => p.xtc_probability = num(v, k)?,
            "xtc_threshold" => p.xtc_threshold = num(v, k)?,
            "top_n_sigma" => p.top_n_sigma = num(v, k)?,
            "dynatemp_range" => p.dynatemp_range = num(v, k)?,
            "dynatemp_exponent" => p.dynatemp_exponent = num(v, k)?,
            "mirostat" => {
                p.mirostat = match int(v, k)? {
                    m @ 0..=2 => m as u8,
                    m => return Err(format!("mirostat must be 0, 1 or 2, not {m}")),
                }
            }
            "mirostat_tau" => p.mirostat_ent = num(v, k)?,
            "mirostat_eta" => p.mirostat_lr = num(v, k)?,
            "min_keep" => p.min_keep = int(v, k)?.clamp(0, i64::from(u32::MAX)) as u32,
            "logit_bias" => p.logit_bias = logit_bias(v, &mut r.unsupported)?,
            "samplers" => {
                let list = match v {
                    Value::String(s) => Stage::parse_list(s)?,
                    Value::Array(items) => items
                        .iter()
                        .map(|s| {
                            let name = s
                                .as_str()
                                .ok_or_else(|| format!("samplers must be names, not {s}"))?;
                            Stage::parse_list(name).and_then(|l| {
                                if l.len() == 1 {
                                    Ok(l[0])
                                } else {
                                    Err(format!("unknown sampler {name:?}"))
                                }
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err("samplers must be a list of names or a string".into()),
                };
                p.samplers = Some(list);
                p.sampler_order = SamplerOrder::Llama;
            }
            "seed" => {
                touched = false;
                let s = int(v, k)?;
                // -1 (and llama.cpp's LLAMA_DEFAULT_SEED, 0xFFFFFFFF) mean "random".
                r.seed = (s >= 0 && s != 0xFFFF_FFFF).then_some(s as u64);
            }
            "n_probs" | "top_logprobs" => {
                touched = false;
                let n = int(v, k)?;
                r.n_probs = (n > 0).then_some(n as usize);
            }
            _ if NOT_SAMPLING.contains(&k) => {
                touched = false;
                r.not_sampling.push(key.clone());
            }
            _ => {
                touched = false;
                r.unknown.push(key.clone());
            }
        }
        r.touched |= touched;
    }
    r.not_sampling.sort();
    r.unknown.sort();
    // A llama-server configuration runs llama.cpp's chain: its order, unless `samplers` says
    // another.
    if r.touched {
        p.sampler_order = SamplerOrder::Llama;
    }
    Ok(r)
}

/// llama-server's logit bias forms: `[[id, bias], …]` (bias a number or `false` = ban) and
/// OpenAI's `{"id": bias}`. Token texts (which llama-server tokenises) are listed as
/// unsupported.
fn logit_bias(v: &Value, unsupported: &mut Vec<String>) -> Result<Vec<LogitBias>, String> {
    let mut out = Vec::new();
    let mut push = |id: &Value, bias: &Value| -> Result<(), String> {
        let id = match id {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("logit_bias: token id {n} is not a token id"))?,
            Value::String(s) => match s.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    unsupported.push(format!(
                        "logit_bias for the text {s:?} (give token ids: `ntv` shows them)"
                    ));
                    return Ok(());
                }
            },
            other => return Err(format!("logit_bias: {other} is not a token id")),
        };
        let bias = match bias {
            Value::Bool(false) => Bias::from_value(f64::NEG_INFINITY),
            Value::Number(n) => Bias::from_value(
                n.as_f64()
                    .ok_or_else(|| format!("logit_bias: {n} is not a number"))?,
            ),
            other => {
                return Err(format!(
                    "logit_bias: {other} is not a bias (a number or false)"
                ));
            }
        };
        out.push(LogitBias { id, bias });
        Ok(())
    };
    match v {
        Value::Array(pairs) => {
            for pair in pairs {
                match pair.as_array().map(Vec::as_slice) {
                    Some([id, bias]) => push(id, bias)?,
                    _ => return Err(format!("logit_bias: {pair} is not an [id, bias] pair")),
                }
            }
        }
        Value::Object(map) => {
            for (id, bias) in map {
                push(&Value::String(id.clone()), bias)?;
            }
        }
        _ => return Err("logit_bias must be a list of [id, bias] pairs or an object".into()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_llama_server_completion_body() {
        let body = json!({
            "prompt": "Hello",
            "n_predict": 64,
            "temperature": 0.7,
            "top_k": 40,
            "top_p": 0.95,
            "min_p": 0.05,
            "typical_p": 1.0,
            "repeat_penalty": 1.1,
            "repeat_last_n": 64,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "dry_multiplier": 0.8,
            "dry_base": 1.75,
            "dry_allowed_length": 2,
            "dry_penalty_last_n": -1,
            "dry_sequence_breakers": ["\n", ":"],
            "xtc_probability": 0.5,
            "xtc_threshold": 0.1,
            "top_n_sigma": -1,
            "dynatemp_range": 0.0,
            "dynatemp_exponent": 1.0,
            "mirostat": 0,
            "mirostat_tau": 5,
            "mirostat_eta": 0.1,
            "seed": 42,
            "n_probs": 5,
            "logit_bias": [[15043, 1.0], [198, false], ["hello", -2]],
            "samplers": ["penalties", "dry", "top_k", "min_p", "xtc", "temperature"],
            "cache_prompt": true,
            "frobnicate": 1
        });
        let mut p = SamplingParams::default();
        let r = apply(&body, &mut p).unwrap();
        assert_eq!(p.temperature, 0.7);
        assert_eq!(p.top_k, 40);
        assert_eq!(p.min_p, 0.05);
        assert_eq!(p.repetition_penalty, 1.1);
        assert_eq!(p.penalty_last_n, 64);
        assert_eq!(p.dry_multiplier, 0.8);
        assert_eq!(p.dry_sequence_breakers, vec!["\n", ":"]);
        assert_eq!(p.xtc_probability, 0.5);
        assert_eq!(p.sampler_order, SamplerOrder::Llama);
        assert_eq!(
            p.samplers.as_deref(),
            Some(
                &[
                    Stage::Penalties,
                    Stage::Dry,
                    Stage::TopK,
                    Stage::MinP,
                    Stage::Xtc,
                    Stage::Temperature
                ][..]
            )
        );
        assert_eq!(p.logit_bias.len(), 2);
        assert_eq!(p.logit_bias[1].bias.value(), f64::NEG_INFINITY);
        assert_eq!(r.seed, Some(42));
        assert_eq!(r.n_probs, Some(5));
        assert_eq!(r.unknown, vec!["frobnicate"]);
        assert_eq!(r.not_sampling, vec!["cache_prompt", "n_predict", "prompt"]);
        assert_eq!(r.unsupported.len(), 1);
        p.validate().unwrap();
    }

    #[test]
    fn an_openai_chat_body() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 1.2,
            "top_p": 0.9,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.25,
            "logit_bias": {"50256": -100, "11": 3},
            "seed": -1,
            "logprobs": true,
            "top_logprobs": 3,
            "max_tokens": 10
        });
        let mut p = SamplingParams::default();
        let r = apply(&body, &mut p).unwrap();
        assert_eq!(p.temperature, 1.2);
        assert_eq!(p.presence_penalty, 0.5);
        assert_eq!(p.logit_bias.len(), 2);
        assert!(
            p.logit_bias
                .iter()
                .any(|b| b.id == 50256 && b.bias.value() == -100.0)
        );
        assert_eq!(r.seed, None);
        assert_eq!(r.n_probs, Some(3));
        assert!(r.unknown.is_empty(), "{:?}", r.unknown);
        assert_eq!(
            r.not_sampling,
            vec!["logprobs", "max_tokens", "messages", "model"]
        );
    }

    #[test]
    fn bad_values_are_errors() {
        let mut p = SamplingParams::default();
        assert!(apply(&json!([1, 2]), &mut p).is_err());
        assert!(apply(&json!({"temperature": "hot"}), &mut p).is_err());
        assert!(apply(&json!({"mirostat": 3}), &mut p).is_err());
        assert!(apply(&json!({"samplers": ["top_k", "warp"]}), &mut p).is_err());
        assert!(apply(&json!({"logit_bias": [[1]]}), &mut p).is_err());
        assert!(apply(&json!({"dry_sequence_breakers": [1]}), &mut p).is_err());
    }
}

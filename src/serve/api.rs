//! The HTTP API's request and response shapes: the original demo's field names and defaults
//! (its README and page), with ntv's extra fields beside them. Requests are strict: a field of
//! the wrong type or one that no endpoint knows is refused (422), as is malformed JSON (400).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::attribution::Method;
use crate::chat::{DEFAULT_SYSTEM, PromptSpec};
use crate::constraint::{self, ConstraintKind, ConstraintSpec};
use crate::error::{Result, input_err};
use crate::record::{AppendedMeta, AttributionRecord, Candidate, Dist, ModelFacts, TokenPill};
use crate::sampling::SamplingParams;

fn default_branch() -> String {
    "default".into()
}
fn default_system() -> String {
    DEFAULT_SYSTEM.into()
}
fn default_top_k() -> usize {
    10
}
fn default_constraint_type() -> String {
    "multiple_choice".into()
}

/// Decoding parameters (`params`): the demo's, plus ntv's `top_k`, `min_p`, `penalty_last_n`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DecodingParams {
    pub greedy: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub repetition_penalty: f64,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    /// Seed of the branch's random stream; null: the stream the branch already has (or one
    /// drawn from the OS).
    pub seed: Option<u64>,
    pub stop_sequences: Vec<String>,
    /// ntv: keep only the K most probable tokens (0 = off).
    pub top_k: u32,
    /// ntv: keep tokens with p >= min_p × p_max (0 = off).
    pub min_p: f64,
    /// ntv: penalty window in context tokens (-1 = whole context, 0 = none).
    pub penalty_last_n: i32,
}

impl Default for DecodingParams {
    fn default() -> Self {
        let p = SamplingParams::default();
        Self {
            greedy: p.greedy,
            temperature: p.temperature,
            top_p: p.top_p,
            repetition_penalty: p.repetition_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            seed: None,
            stop_sequences: Vec::new(),
            top_k: p.top_k,
            min_p: p.min_p,
            penalty_last_n: p.penalty_last_n,
        }
    }
}

impl DecodingParams {
    /// ntv's sampling parameters (validated).
    pub fn sampling(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            greedy: self.greedy,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.penalty_last_n,
            ..SamplingParams::default()
        };
        p.validate()?;
        Ok(p)
    }
}

/// The output constraint (`constraint`): the demo's types `multiple_choice`, `regex`, `cfg`
/// (Lark), `json_schema`, and ntv's `lark`, `gbnf`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConstraintConfig {
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub schema: String,
}

impl Default for ConstraintConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            kind: default_constraint_type(),
            schema: String::new(),
        }
    }
}

impl ConstraintConfig {
    /// The constraint, compiled once to check it (a malformed one is an input error).
    pub fn spec(&self) -> Result<Option<ConstraintSpec>> {
        if !self.enabled {
            return Ok(None);
        }
        let kind = match self.kind.trim().to_ascii_lowercase().as_str() {
            "multiple_choice" | "choice" => ConstraintKind::Choice,
            "regex" => ConstraintKind::Regex,
            "cfg" | "lark" => ConstraintKind::Lark,
            "json_schema" => ConstraintKind::JsonSchema,
            "gbnf" => ConstraintKind::Gbnf,
            other => {
                return Err(input_err(
                    format!("unsupported constraint type {other:?}"),
                    "constraint.type is one of multiple_choice, regex, cfg, json_schema, lark, gbnf",
                ));
            }
        };
        let source = match kind {
            ConstraintKind::Choice => constraint::choice_source(
                &constraint::choices_from_file_text(&self.schema)
                    .into_iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>(),
            )?,
            _ => self.schema.trim().to_string(),
        };
        constraint::grammar(kind, &source)?;
        Ok(Some(ConstraintSpec { kind, source }))
    }
}

/// `POST /api/preview`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[serde(default = "default_branch")]
    pub branch_id: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default = "default_system")]
    pub system_prompt: String,
    /// null: the model's template when it has one.
    #[serde(default)]
    pub use_chat_template: Option<bool>,
    #[serde(default)]
    pub completion_ids: Vec<i64>,
    /// Candidates shown (ntv's `--display-k`).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub params: DecodingParams,
    #[serde(default)]
    pub constraint: ConstraintConfig,
}

/// `POST /api/step`: a preview request plus what to append.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRequest {
    #[serde(default = "default_branch")]
    pub branch_id: String,
    /// Restart the branch's random stream from its seed.
    #[serde(default)]
    pub reset_rng: bool,
    #[serde(default)]
    pub prompt: String,
    #[serde(default = "default_system")]
    pub system_prompt: String,
    #[serde(default)]
    pub use_chat_template: Option<bool>,
    #[serde(default)]
    pub completion_ids: Vec<i64>,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    #[serde(default)]
    pub params: DecodingParams,
    #[serde(default)]
    pub constraint: ConstraintConfig,
    /// Append this token id instead of choosing one.
    #[serde(default)]
    pub force_token_id: Option<i64>,
    /// Append this text (tokenised without special tokens) instead of choosing.
    #[serde(default)]
    pub force_text: Option<String>,
}

impl StepRequest {
    /// The preview part of the request.
    pub fn context(&self) -> PreviewRequest {
        PreviewRequest {
            branch_id: self.branch_id.clone(),
            prompt: self.prompt.clone(),
            system_prompt: self.system_prompt.clone(),
            use_chat_template: self.use_chat_template,
            completion_ids: self.completion_ids.clone(),
            top_k: self.top_k,
            params: self.params.clone(),
            constraint: self.constraint.clone(),
        }
    }
}

/// `POST /api/attribution`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributionRequest {
    /// Accepted as the demo sends it; attribution needs no branch state.
    #[serde(default = "default_branch")]
    #[allow(dead_code)]
    pub branch_id: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default = "default_system")]
    pub system_prompt: String,
    #[serde(default)]
    pub use_chat_template: Option<bool>,
    #[serde(default)]
    pub completion_ids: Vec<i64>,
    /// The completion position of the target (negative counts as 0, as in the demo).
    #[serde(default)]
    pub target_index: i64,
    /// The target token; null: the completion token at `target_index`. Another id is a
    /// candidate next token after the first `target_index` completion tokens.
    #[serde(default)]
    pub target_token_id: Option<i64>,
    /// attention, saliency, input_x_gradient, integrated_gradients, ntv's occlusion; "off" or
    /// "" attributes nothing.
    #[serde(default = "default_method")]
    pub method: String,
}

fn default_method() -> String {
    "off".into()
}

/// `POST /api/model/load`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// A GGUF file (a path under an allowed folder, or a file name found in one), or a
    /// Hugging Face model (`hf:OWNER/REPO[:QUANT]`, `OWNER/REPO:QUANT`, `OWNER/REPO`).
    pub model_id: String,
}

/// The prompt of a request as ntv resolves it.
pub fn prompt_spec(prompt: &str, system: &str, template: Option<bool>) -> PromptSpec {
    PromptSpec {
        chat_template: template.unwrap_or(true),
        ..PromptSpec::text(prompt, system.trim())
    }
}

/// The attribution method named by a request (`None`: "off").
pub fn method(name: &str) -> Result<Option<Method>> {
    use clap::ValueEnum;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || name == "off" {
        return Ok(None);
    }
    Method::from_str(&name, true).map(Some).map_err(|_| {
        input_err(
            format!("unsupported attribution method {name:?}"),
            "method is one of attention, saliency, input_x_gradient, integrated_gradients, occlusion (or off)",
        )
    })
}

/// The model facts the demo's responses carry (`model`), and ntv's.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ModelPublic {
    /// The model file's name (what `POST /api/model/load` takes back).
    pub model_id: String,
    pub device: String,
    /// GGUF file type, e.g. "Q4_1".
    pub dtype: String,
    pub has_chat_template: bool,
    pub eos_token_id: Option<i32>,
    pub vocab_size: usize,
    /// ntv: the name in the GGUF metadata.
    pub name: String,
    /// ntv: architecture, e.g. "llama".
    pub architecture: String,
}

impl ModelPublic {
    pub fn of(f: &ModelFacts) -> Self {
        Self {
            model_id: std::path::Path::new(&f.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            device: f.device.clone(),
            dtype: f.dtype.clone(),
            has_chat_template: f.has_chat_template,
            eos_token_id: f.eos_token_id,
            vocab_size: f.vocab_size,
            name: f.model_id.clone(),
            architecture: f.architecture.clone(),
        }
    }
}

/// `GET /api/model/status`.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct Status {
    pub model_id: String,
    pub device: String,
    pub dtype: String,
    pub loading: bool,
    pub ready: bool,
    pub error: Option<String>,
    pub has_chat_template: bool,
    pub eos_token_id: Option<i32>,
    pub vocab_size: Option<usize>,
    /// ntv: the context size of each branch.
    pub n_ctx: u32,
    /// ntv: branches whose KV state is kept between requests (at most `max_branches`).
    pub branches: usize,
    pub max_branches: usize,
}

/// `POST /api/preview`: the demo's fields, then ntv's.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PreviewResponse {
    pub model: ModelPublic,
    pub prompt_tokens: Vec<TokenPill>,
    pub completion_tokens: Vec<TokenPill>,
    pub context_token_count: usize,
    pub dist: Dist,
    /// ntv: the branch whose KV state served the request.
    pub branch_id: String,
    /// ntv: tokens this request decoded (what the branch's KV state did not hold already).
    pub decoded_tokens: usize,
    /// ntv: the prompt as the model sees it (template applied).
    pub prompt_text: String,
}

/// `POST /api/step`: the demo's fields, then ntv's.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepResponse {
    pub model: ModelPublic,
    /// The distribution the (first) token was appended from.
    pub dist: Option<Dist>,
    /// The chosen token (null for forced text).
    pub selected: Option<Candidate>,
    pub appended: Vec<TokenPill>,
    pub appended_meta: Vec<AppendedMeta>,
    /// The whole completion after the step (the request's ids plus the appended ones).
    pub new_completion_ids: Vec<i32>,
    pub done: bool,
    /// `eos_token` (end of generation), `stop_sequence`, `context_full`,
    /// `constraint_complete`, or null.
    pub stop_reason: Option<String>,
    /// ntv: the branch whose KV state served the request.
    pub branch_id: String,
    /// ntv: tokens this request decoded.
    pub decoded_tokens: usize,
    /// ntv: the completion's text.
    pub completion_text: String,
    pub context_token_count: usize,
    /// ntv: the seed of the branch's random stream.
    pub seed: Option<u64>,
}

/// `POST /api/attribution`: the demo's fields, then ntv's whole record.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AttributionResponse {
    pub ok: bool,
    /// One score per context token (prompt and completion before the target).
    pub attributions: Vec<f64>,
    pub source_len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// ntv: the record `ntv attribute` prints for this target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Box<AttributionRecord>>,
}

/// `POST /api/model/load`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LoadResponse {
    pub ok: bool,
    pub model_id: String,
}

/// Every error: FastAPI's `{"detail": …}`, with ntv's hint beside it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_defaults() {
        let r: StepRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r.branch_id, "default");
        assert_eq!(r.system_prompt, "You are a helpful assistant.");
        assert_eq!(r.top_k, 10);
        assert!(!r.reset_rng && r.force_token_id.is_none() && r.force_text.is_none());
        let p = &r.params;
        assert_eq!(
            (p.greedy, p.temperature, p.top_p, p.repetition_penalty),
            (false, 0.7, 0.8, 1.05)
        );
        assert_eq!((p.presence_penalty, p.frequency_penalty), (0.0, 0.0));
        assert!(p.seed.is_none() && p.stop_sequences.is_empty());
        assert!(!r.constraint.enabled && r.constraint.kind == "multiple_choice");
        let a: AttributionRequest = serde_json::from_str("{}").unwrap();
        assert_eq!((a.target_index, a.method.as_str()), (0, "off"));
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        assert!(serde_json::from_str::<PreviewRequest>(r#"{"bogus": 1}"#).is_err());
        assert!(serde_json::from_str::<PreviewRequest>(r#"{"params": {"tmp": 1}}"#).is_err());
        assert!(
            serde_json::from_str::<PreviewRequest>(r#"{"constraint": {"kind": "regex"}}"#).is_err()
        );
        assert!(serde_json::from_str::<StepRequest>(r#"{"force_text": " Paris"}"#).is_ok());
    }

    #[test]
    fn constraint_types_of_the_demo_map_to_ntv_kinds() {
        let c = |kind: &str, schema: &str| ConstraintConfig {
            enabled: true,
            kind: kind.into(),
            schema: schema.into(),
        };
        let spec = c("multiple_choice", "Yes\nNo\n\nMaybe")
            .spec()
            .unwrap()
            .unwrap();
        assert_eq!(spec.kind, ConstraintKind::Choice);
        assert_eq!(spec.source, r#"["Yes","No","Maybe"]"#);
        assert_eq!(
            c("cfg", "start: \"a\"").spec().unwrap().unwrap().kind,
            ConstraintKind::Lark
        );
        assert!(c("regex", "(").spec().unwrap_err().is_input());
        assert!(c("xml", "").spec().unwrap_err().is_input());
        let off = ConstraintConfig {
            enabled: false,
            ..c("regex", "(")
        };
        assert!(off.spec().unwrap().is_none());
    }

    #[test]
    fn methods_accept_the_demo_names_and_off() {
        assert_eq!(method("off").unwrap(), None);
        assert_eq!(method("").unwrap(), None);
        assert_eq!(method("Attention").unwrap(), Some(Method::Attention));
        assert_eq!(
            method("input_x_gradient").unwrap(),
            Some(Method::InputXGradient)
        );
        assert_eq!(
            method("integrated_gradients").unwrap(),
            Some(Method::IntegratedGradients)
        );
        assert!(method("lime").unwrap_err().is_input());
    }
}

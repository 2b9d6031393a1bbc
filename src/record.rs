//! Machine-readable records shared by the session file and the JSON output: token pills,
//! candidates, distribution snapshots and step metadata (session.md "Output", sampling.md).
//!
//! These are output types, kept apart from the internal sampling types so internals can change
//! without breaking users. Field names follow the original demo's API.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::sampling::{CutStage, RngState, SamplingParams};

/// A token as shown to people: exact text plus a visible-whitespace rendering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenPill {
    /// Token id in the model's vocabulary.
    pub id: i32,
    /// Exact piece (special tokens rendered, invalid UTF-8 replaced by U+FFFD).
    pub text: String,
    /// The token's raw bytes, as in OpenAI's logprobs: exact also when `text` shows a
    /// replacement character for part of a multi-byte UTF-8 character.
    #[serde(default)]
    pub bytes: Vec<u8>,
    /// The piece with visible whitespace: `␠` leading spaces, `⏎` newline, `⇥` tab, `∅` empty.
    pub display: String,
    /// Control/special token (e.g. `<|im_end|>`).
    pub special: bool,
}

/// One candidate for the next token, with every number of the pipeline (sampling.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Candidate {
    pub id: i32,
    pub text: String,
    /// The token's raw bytes, as in OpenAI's logprobs: exact also when `text` shows a
    /// replacement character for part of a multi-byte UTF-8 character.
    #[serde(default)]
    pub bytes: Vec<u8>,
    pub display: String,
    pub special: bool,
    /// Raw model probability softmax(z).
    pub p_base: f64,
    /// After penalties and temperature, before constraint and truncation.
    pub p_temp: f64,
    /// Final probability (0 when cut or invalid).
    pub p_final: f64,
    /// Natural log of p_base.
    pub logprob_base: f64,
    /// Survived truncation and is valid under the constraint.
    pub kept: bool,
    /// Allowed by the constraint (true when there is none).
    pub valid: bool,
    /// First stage that removed it, or null when kept.
    pub cut_by: Option<CutStage>,
    /// 1-based rank in p_base (ties by lower id).
    pub rank: u32,
    /// How the stages before truncation moved this token's logit (logit bias, penalties,
    /// DRY), each with its amount; absent when nothing did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logit_adjust: Vec<LogitAdjust>,
}

/// One stage's change to a candidate's logit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogitAdjust {
    /// `logit_bias`, `penalties` or `dry`.
    pub stage: AdjustStage,
    /// Added to the logit (negative: pushed down; `-inf` bans are shown through `cut_by`).
    pub amount: f64,
}

/// A stage that reshapes logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustStage {
    LogitBias,
    Penalties,
    Dry,
}

/// What llama.cpp's sampler chain did at one step (present when the chain ran: the llama
/// order, `--samplers`, or any of its own stages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChainInfo {
    /// The stages in the order they ran (llama.cpp's names); empty under Mirostat, which
    /// replaces them with temperature and Mirostat.
    pub stages: Vec<crate::sampling::Stage>,
    /// The temperature applied (the dynamic one when `dynatemp_range > 0`; 1 when greedy).
    pub temperature_used: f64,
    /// XTC's coin and what it removed (absent when XTC did not draw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xtc: Option<crate::sampling::XtcOutcome>,
    /// Mirostat's `mu` at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirostat_mu: Option<f64>,
}

/// The distribution for one next-token position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Dist {
    /// How many candidates are shown (the demo's `top_k`, ntv's `--display-k`).
    pub top_k: usize,
    /// The shown candidates, by p_temp descending (ties by id).
    pub tokens: Vec<Candidate>,
    /// 1 minus the shown p_base mass, clamped at 0.
    pub other_p_base: f64,
    /// 1 minus the shown p_final mass, clamped at 0.
    pub other_p_final: f64,
    /// Tokens with p_final > 0.
    pub kept_token_count: usize,
    /// Tokens the constraint allows (absent when unconstrained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_token_count: Option<usize>,
    pub constraint_active: bool,
    pub constraint_type: Option<crate::constraint::ConstraintKind>,
    /// Entropy of p_base in bits.
    pub entropy_base: f64,
    /// Entropy of p_final in bits.
    pub entropy_final: f64,
    /// The parameters these numbers were computed with.
    pub params: SamplingParams,
    /// What llama.cpp's chain did (absent for the prefix pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainInfo>,
}

/// How a token was forced into the completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForcedBy {
    /// `--token ID`.
    Token,
    /// `--text TEXT` (one record per token of the text).
    Text,
}

/// How the selected token was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SelectedBy {
    Greedy,
    Sampled,
    Forced,
}

/// The snapshot stored with every appended completion token (`appended_meta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AppendedMeta {
    /// The distribution at append time.
    pub dist: Dist,
    pub selected_id: i32,
    /// The selected token with every candidate field (also when it is not among the shown ones).
    pub selected: Candidate,
    pub selected_by: SelectedBy,
    pub forced: bool,
    pub forced_by: Option<ForcedBy>,
    /// The uniform draw used for sampling (absent for greedy and forced steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draw: Option<f64>,
    /// The branch's RNG state right after this step (so a rewind can resume the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng_after: Option<RngState>,
    /// Mirostat's `mu` after this step (the branch's Mirostat state; a rewind resumes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirostat_mu_after: Option<f64>,
}

/// What `ntv load` reports about a model (session.md, `ntv load`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelFacts {
    /// Model name from the GGUF (`general.name`) or the file stem.
    pub model_id: String,
    pub path: String,
    pub architecture: String,
    pub n_params: u64,
    /// GGUF file type, e.g. "Q4_1".
    pub dtype: String,
    pub file_size: u64,
    pub vocab_size: usize,
    /// Tokenizer model from the GGUF (`gpt2` = BPE, `llama` = SPM, ...).
    pub vocab_type: String,
    pub n_ctx_train: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_embd: u32,
    pub has_chat_template: bool,
    pub bos_token_id: Option<i32>,
    pub eos_token_id: Option<i32>,
    /// Every end-of-generation id.
    pub eog_token_ids: Vec<i32>,
    pub add_bos: bool,
    /// Back end / device, e.g. "CPU" or "CUDA0".
    pub device: String,
    pub gpu_layers_offloaded: u32,
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-generation token was selected.
    Eog,
    /// A stop sequence appeared in the completion text.
    StopSequence,
    /// `-n/--max-tokens` reached.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The constraint reached an accepting state with no further valid token.
    ConstraintComplete,
    /// Ctrl-C or SIGTERM: stopped at a token boundary, the completion so far kept.
    Interrupted,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StopReason {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eog => "eog",
            Self::StopSequence => "stop_sequence",
            Self::MaxTokens => "max_tokens",
            Self::ContextFull => "context_full",
            Self::ConstraintComplete => "constraint_complete",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Teacher-forced score of one prompt token given its prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PromptLogprob {
    /// Position in the prompt (>= 1: the first token has no prefix).
    pub index: usize,
    pub id: i32,
    pub text: String,
    /// The token's raw bytes, as in OpenAI's logprobs: exact also when `text` shows a
    /// replacement character for part of a multi-byte UTF-8 character.
    #[serde(default)]
    pub bytes: Vec<u8>,
    pub display: String,
    pub special: bool,
    /// Natural-log probability of this token given the tokens before it.
    pub logprob: f64,
    /// 1-based rank of this token in the model's distribution at that position.
    pub rank: u32,
    /// -log2 p, in bits.
    pub surprisal_bits: f64,
}

/// Wall-clock split of a command, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
pub struct Timings {
    pub load_ms: f64,
    pub tokenize_ms: f64,
    pub prefill_ms: f64,
    pub maths_ms: f64,
}

/// `ntv load` output (`ntv.load/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoadDoc {
    pub schema: String,
    pub model: ModelFacts,
    /// Seconds spent loading.
    pub load_seconds: f64,
    pub fingerprint: String,
    /// The session written, if any.
    pub session: Option<String>,
}

/// `ntv preview` output (`ntv.preview/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreviewDoc {
    pub schema: String,
    pub model: ModelFacts,
    pub prompt: String,
    pub system: String,
    /// The conversation (`--messages`), which replaces `prompt` and `system` (empty then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<crate::chat::ChatMessage>>,
    pub chat_template: bool,
    /// The exact text the model saw (template rendered, special tokens as text).
    pub prompt_text: String,
    pub prompt_tokens: Vec<TokenPill>,
    pub completion_tokens: Vec<TokenPill>,
    pub context_token_count: usize,
    pub branch: String,
    pub preset: Option<crate::sampling::Preset>,
    pub params: SamplingParams,
    /// Every preset and its parameters.
    pub presets: Vec<PresetInfo>,
    pub dist: Dist,
    /// The active constraint (kind and source), when there is one.
    pub constraint: Option<crate::constraint::ConstraintSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<Vec<PromptLogprob>>,
    pub cache: CacheUse,
    pub timings: Timings,
}

/// Every preset with its parameters, for the JSON output.
pub fn presets() -> Vec<PresetInfo> {
    use crate::sampling::Preset;
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

/// What the prefix cache and llama.cpp did for a call: a restored prefix skips decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct CacheUse {
    /// A prefix cache was in use (off with --no-cache or --no-session).
    pub enabled: bool,
    /// Context tokens whose KV state came from the prefix cache.
    pub restored_tokens: usize,
    /// Tokens llama.cpp decoded in this call.
    pub decoded_tokens: usize,
}

/// A named preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresetInfo {
    pub name: crate::sampling::Preset,
    pub description: String,
    pub params: SamplingParams,
}

/// A checkpoint of a long `generate` (`--format jsonl`): the session file now holds the
/// branch's completion up to `tokens` tokens, all of them streamed before this line. After a
/// `kill -9` the session holds at least the last checkpoint's tokens, and never a token that
/// was not streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckpointRecord {
    /// Always "checkpoint".
    #[serde(rename = "type")]
    pub kind: String,
    pub branch: String,
    /// Completion length saved.
    pub tokens: usize,
}

/// One appended token, as `step` prints it and `generate --format jsonl` streams it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepRecord {
    /// Always "step".
    #[serde(rename = "type")]
    pub kind: String,
    pub branch: String,
    /// Completion index of the appended token.
    pub index: usize,
    pub selected: Candidate,
    pub appended_meta: AppendedMeta,
    pub done: bool,
    pub stop_reason: Option<StopReason>,
    /// The active constraint (kind and source), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<crate::constraint::ConstraintSpec>,
}

/// `ntv step` output (`ntv.step/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepDoc {
    pub schema: String,
    pub branch: String,
    /// Set when --at created a new branch.
    pub created_branch: Option<String>,
    /// What the edit did.
    pub action: StepAction,
    pub steps: Vec<StepRecord>,
    pub appended: Vec<TokenPill>,
    pub appended_meta: Vec<AppendedMeta>,
    pub new_completion_ids: Vec<i32>,
    /// Ids removed by --undo.
    pub removed_ids: Vec<i32>,
    pub completion_ids: Vec<i32>,
    pub completion_tokens: Vec<TokenPill>,
    pub completion_text: String,
    pub context_token_count: usize,
    pub done: bool,
    pub stop_reason: Option<StopReason>,
    pub seed: Option<u64>,
    /// The active constraint (kind and source), when there is one.
    pub constraint: Option<crate::constraint::ConstraintSpec>,
    pub cache: CacheUse,
}

/// What `ntv step` did to the branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Tokens appended to the active branch.
    Append,
    /// Tokens dropped (`--undo`).
    Undo,
    /// A new branch from position `--at`, with the forced token appended.
    Rewind,
}

/// The last record of `generate`'s JSONL stream, and `generate --format json`'s document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateSummary {
    /// "summary" in JSONL; absent in JSON documents.
    #[serde(rename = "type")]
    pub kind: String,
    pub schema: String,
    pub branch: String,
    pub completion_ids: Vec<i32>,
    pub completion_text: String,
    pub new_completion_ids: Vec<i32>,
    pub new_text: String,
    pub stop_reason: StopReason,
    /// Which --stop sequence fired.
    pub stop_sequence: Option<String>,
    pub n_tokens: usize,
    pub tokens_per_second: f64,
    pub seconds: f64,
    pub seed: Option<u64>,
    pub params: SamplingParams,
    /// The active constraint (kind and source), when there is one.
    pub constraint: Option<crate::constraint::ConstraintSpec>,
    pub cache: CacheUse,
    /// Present in `--format json` (all steps in one document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepRecord>>,
}

/// One row of `ntv branch list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BranchRow {
    pub name: String,
    pub parent: Option<String>,
    pub fork_position: Option<usize>,
    pub length: usize,
    pub stop_reason: Option<StopReason>,
    pub active: bool,
    pub seed: Option<u64>,
}

/// `ntv branch list` output (`ntv.branch.list/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BranchListDoc {
    pub schema: String,
    pub active: String,
    pub branches: Vec<BranchRow>,
}

/// A completion token with its probability when it was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ShownToken {
    pub index: usize,
    pub id: i32,
    pub text: String,
    /// The token's raw bytes, as in OpenAI's logprobs: exact also when `text` shows a
    /// replacement character for part of a multi-byte UTF-8 character.
    #[serde(default)]
    pub bytes: Vec<u8>,
    pub display: String,
    pub special: bool,
    pub p_final: Option<f64>,
    pub forced: bool,
}

/// `ntv branch show` output (`ntv.branch.show/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BranchShowDoc {
    pub schema: String,
    pub branch: BranchRow,
    pub tokens: Vec<ShownToken>,
    pub completion_text: String,
}

/// One step of a branch comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DiffStep {
    pub index: usize,
    pub a: Option<ShownToken>,
    pub b: Option<ShownToken>,
    /// p_final of a's token under b's distribution at this step (when both have one).
    pub a_token_p_final_under_b: Option<f64>,
    /// p_final of b's token under a's distribution.
    pub b_token_p_final_under_a: Option<f64>,
}

/// `ntv branch diff` output (`ntv.branch.diff/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BranchDiffDoc {
    pub schema: String,
    pub a: String,
    pub b: String,
    pub shared_prefix: usize,
    /// First index where the branches differ (absent when one is a prefix of the other and
    /// they have the same length).
    pub first_divergence: Option<usize>,
    pub steps: Vec<DiffStep>,
}

/// A context token with its attribution score (`ntv attribute`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScoredToken {
    /// Position in the context (0 = first prompt token).
    pub index: usize,
    pub id: i32,
    /// Exact piece.
    pub text: String,
    /// The token's raw bytes, as in OpenAI's logprobs: exact also when `text` shows a
    /// replacement character for part of a multi-byte UTF-8 character.
    #[serde(default)]
    pub bytes: Vec<u8>,
    /// The piece with visible whitespace.
    pub display: String,
    pub special: bool,
    /// Part of the completion (false: part of the prompt).
    pub completion: bool,
    pub score: f64,
}

/// The token an attribution explains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttributionTarget {
    pub kind: TargetKind,
    /// Completion index of the target (completion targets only).
    pub index: Option<usize>,
    pub id: i32,
    pub text: String,
    /// The token's raw bytes, as in OpenAI's logprobs: exact also when `text` shows a
    /// replacement character for part of a multi-byte UTF-8 character.
    #[serde(default)]
    pub bytes: Vec<u8>,
    pub display: String,
    pub special: bool,
    /// p(target | context): the softmax of the raw logits at the predicting position (the
    /// context's last token), with no penalties, temperature or truncation, computed by the
    /// record's `engine`. Every method reports this same quantity: `llama.cpp` (attention,
    /// occlusion) from its ordinary decode of the context, the same forward `ntv preview`
    /// reports as `p_base`; `autograd` (the gradient methods) from its own f32 forward, which
    /// agrees with llama.cpp's within the quantisation floor.
    pub prob: f64,
}

/// What kind of token an attribution explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A token of the completion (`--index`).
    Completion,
    /// A possible next token at the end of the context (`--token`, `--text`).
    Candidate,
}

/// Options of the attention method, as applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttentionSelection {
    /// Layers used (null: all).
    pub layers: Option<Vec<usize>>,
    /// Heads used (null: all).
    pub heads: Option<Vec<usize>>,
    /// How layers combine.
    pub layer_agg: crate::attribution::attention::LayerAgg,
}

/// One target's attribution (`ntv.attribute.record/1`): an element of `ntv attribute`'s
/// `targets`, or one line of its JSONL output (batch included). `target.prob` is the one
/// p(target) definition of every method (raw softmax at the predicting position, under
/// `engine`; see [`AttributionTarget::prob`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttributionRecord {
    /// Always "attribution".
    #[serde(rename = "type")]
    pub kind: String,
    /// The batch line's `id`, echoed (batch only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    /// Line number in the batch file (batch only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Where the record belongs in a sharded batch (`--shard` only), for `--merge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardPlace>,
    pub method: crate::attribution::Method,
    /// inseq (non-negative, sums to 1), sum (raw signed) or l2 (unnormalised magnitudes).
    pub aggregation: crate::attribution::Agg,
    /// prob, logprob or logit; null for attention (it does not look at the target).
    pub target_fn: Option<crate::attribution::TargetFn>,
    /// "llama.cpp" or "autograd" (ntv's f32 forward over the file's weights): the
    /// engine that computed the scores and `target.prob`.
    pub engine: crate::attribution::Engine,
    pub target: AttributionTarget,
    /// Context tokens (prompt plus the completion before the target).
    pub context_len: usize,
    /// One score per context token, in context order.
    pub scores: Vec<ScoredToken>,
    /// Integrated gradients: quadrature nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Integrated gradients: unk (Inseq's) or zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::attribution::BaselineChoice>,
    /// Occlusion: tokens per occluded span (1: exact leave-one-out; N: spans 0..N, N..2N, …,
    /// every token of a span scored with the span's drop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// Integrated gradients: |Σ signed scores − (f(input) − f(baseline))|, in target-function
    /// units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completeness_error: Option<f64>,
    /// Attention: the layers and heads used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionSelection>,
    /// Wall time of this target's attribution (engine start-up excluded).
    pub elapsed_ms: f64,
}

/// A batch line that failed (`generate --batch`, `attribute --batch`), in the JSONL stream
/// at its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchFailure {
    /// Always "error".
    #[serde(rename = "type")]
    pub kind: String,
    /// The line's `id`, when it could be read.
    pub id: Option<serde_json::Value>,
    /// Line number in the batch file (1-based).
    pub line: usize,
    /// Where the record belongs in a sharded batch (`attribute --batch … --shard` only), for
    /// `--merge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardPlace>,
    pub error: String,
}

/// Where a record of a sharded batch run belongs (`--shard K/N` or `--shard auto`): enough for
/// `ntv attribute --merge` to put the parts back in input order and to tell a missing request
/// from a blank line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShardPlace {
    /// The request's index among the batch file's requests (0-based; blank lines not counted).
    pub request: usize,
    /// Requests in the whole batch file (every shard).
    pub requests: usize,
    /// This run's shard (0-based, below `n`).
    pub k: usize,
    /// Shards the batch was split into.
    pub n: usize,
    /// SHA-256 of the batch file (hex): the parts of one batch carry the same.
    pub batch_sha256: String,
}

/// One line of `ntv attribute --batch` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AttributionLine {
    Ok(Box<AttributionRecord>),
    Failed(BatchFailure),
}

/// One case of `ntv generate --batch` (`ntv.generate.batch/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateCase {
    /// Always "case".
    #[serde(rename = "type")]
    pub kind: String,
    /// The line's `id`, as text.
    pub id: Option<String>,
    /// Line number in the batch file (1-based).
    pub line: usize,
    pub completion_text: String,
    pub completion_ids: Vec<i32>,
    pub stop_reason: StopReason,
    pub n_tokens: usize,
    pub tokens_per_second: f64,
    pub seed: u64,
}

/// The last line of `ntv generate --batch` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateBatchSummary {
    /// Always "summary".
    #[serde(rename = "type")]
    pub kind: String,
    /// Always "ntv.generate.batch/1".
    pub schema: String,
    /// Cases run (bad lines included).
    pub cases: usize,
    /// Lines that failed.
    pub failed: usize,
    /// The trace written (--record).
    pub trace: Option<String>,
}

/// One line of `ntv generate --batch` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum GenerateBatchLine {
    Case(GenerateCase),
    Failed(BatchFailure),
    Summary(GenerateBatchSummary),
}

/// Timings of `ntv attribute`, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttributeTimings {
    /// llama.cpp model load.
    pub load_ms: f64,
    /// Attribution of every target (engine start-up included).
    pub attribute_ms: f64,
}

/// `ntv attribute` output (`ntv.attribute/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttributeDoc {
    pub schema: String,
    pub model: ModelFacts,
    pub prompt: String,
    pub system: String,
    /// The conversation (`--messages`), which replaces `prompt` and `system` (empty then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<crate::chat::ChatMessage>>,
    pub chat_template: bool,
    pub prompt_tokens: Vec<TokenPill>,
    pub completion_tokens: Vec<TokenPill>,
    pub branch: String,
    /// One record per target (several with --all).
    pub targets: Vec<AttributionRecord>,
    pub timings: AttributeTimings,
}

/// One swept knob with its values (`ntv sweep`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SweepAxis {
    pub knob: crate::sampling::knob::Knob,
    pub values: Vec<f64>,
}

/// A candidate row of a sweep: a token some value keeps, ordered by `p_base`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SweepCandidate {
    #[serde(flatten)]
    pub token: TokenPill,
    /// Raw model probability (the same under every knob value).
    pub p_base: f64,
    /// 1-based rank in `p_base`.
    pub rank: u32,
}

/// One candidate under one knob value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SweepCell {
    pub id: i32,
    pub p_final: f64,
    pub kept: bool,
    /// The stage that removed it, when cut.
    pub cut_by: Option<CutStage>,
}

/// The distribution under one combination of knob values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SweepPoint {
    /// The value of each axis, in axis order.
    pub values: Vec<f64>,
    /// Tokens with `p_final > 0`.
    pub kept_token_count: usize,
    /// The kept tokens by `p_final` descending (ties by lower id), at most `--max-kept` of them.
    pub kept_ids: Vec<i32>,
    /// Whether `kept_ids` was cut short.
    pub kept_truncated: bool,
    /// Entropy of `p_final` in bits.
    pub entropy_final: f64,
    /// Every candidate row, in row order.
    pub cells: Vec<SweepCell>,
}

/// Where a candidate enters or leaves the kept set along the first axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SweepTransition {
    pub id: i32,
    /// The second axis' value this walk holds fixed (absent with one axis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<f64>,
    /// Kept at the first value of the first axis.
    pub kept_at_start: bool,
    /// The first value at which it becomes kept (after being cut at the value before).
    pub enters_at: Option<f64>,
    /// The first value at which it is cut (after being kept at the value before).
    pub leaves_at: Option<f64>,
}

/// `ntv sweep` output (`ntv.sweep/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SweepDoc {
    pub schema: String,
    pub model: ModelFacts,
    pub prompt: String,
    pub branch: String,
    /// Completion position swept (the next token after `position` completion tokens).
    pub position: usize,
    pub context_token_count: usize,
    /// The parameters every point starts from.
    pub params: SamplingParams,
    /// One or two axes; points run over the first axis fastest.
    pub axes: Vec<SweepAxis>,
    pub candidates: Vec<SweepCandidate>,
    pub points: Vec<SweepPoint>,
    pub transitions: Vec<SweepTransition>,
    pub constraint: Option<crate::constraint::ConstraintSpec>,
    pub cache: CacheUse,
    /// Milliseconds: decoding the context, then the distribution maths of every point.
    pub decode_ms: f64,
    pub maths_ms: f64,
}

/// A token of a lens layer's top list, with its lens probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LensToken {
    #[serde(flatten)]
    pub token: TokenPill,
    /// Probability under this layer's lens (softmax of the model's final norm and head applied
    /// to this layer's residual).
    pub p: f64,
}

/// One layer of the lens at one position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LensLayer {
    /// 0 = the input embedding; `l` = the residual after block `l - 1` (llama.cpp's
    /// `l_out-<l-1>`); the last layer is the model's own output.
    pub layer: usize,
    /// The most probable tokens under this layer's lens, descending (ties by lower id).
    pub top: Vec<LensToken>,
    /// Lens probability of the tracked token.
    pub p: f64,
    /// 1-based rank of the tracked token under this layer's lens (ties by lower id).
    pub rank: u32,
    /// Entropy of this layer's lens distribution, in bits.
    pub entropy_bits: f64,
}

/// Which token a lens position follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LensTracked {
    /// The model's own prediction: the last layer's top-1.
    FinalTop1,
    /// The token given with `--token`.
    Token,
}

/// The lens at one context position (its residual predicts the token after it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LensPosition {
    /// 0-based position in the context (prompt then completion).
    pub position: usize,
    /// The token at this position.
    pub input: TokenPill,
    /// The token that follows in the context (None at the end of the context).
    pub next: Option<TokenPill>,
    /// Index of `next` in the completion, when it is a completion token.
    pub completion_index: Option<usize>,
    /// The token whose probability and rank every layer reports.
    pub tracked: TokenPill,
    pub tracked_is: LensTracked,
    /// The first layer where the tracked token is the top-1 (None: at no layer).
    pub first_top1_layer: Option<usize>,
    /// Layers 0 (embedding) to the last block's output, in order.
    pub layers: Vec<LensLayer>,
}

/// Timings of `ntv lens`, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LensTimings {
    pub load_ms: f64,
    /// The decode that records the residual stream.
    pub capture_ms: f64,
    /// The final norm and head on every (layer, position) and the statistics.
    pub head_ms: f64,
}

/// `ntv lens` output (`ntv.lens/1`): what each layer would predict (the logit lens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LensDoc {
    pub schema: String,
    pub model: ModelFacts,
    /// The exact prompt text the model sees (template rendered).
    pub prompt_text: String,
    pub context_tokens: Vec<TokenPill>,
    /// Layers per position: the embedding plus one per block.
    pub n_layers: usize,
    /// RMSNorm eps of the final norm, from the GGUF.
    pub norm_eps: f64,
    /// Final logit soft-capping applied after the head, if the architecture has it.
    pub softcap: Option<f64>,
    /// One entry per position asked for, ascending.
    pub positions: Vec<LensPosition>,
    pub timings: LensTimings,
}

/// `ntv model list` output (`ntv.model.list/1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelListDoc {
    pub schema: String,
    /// The Hugging Face cache downloads go to.
    pub hub_cache: String,
    pub models: Vec<CachedModelRow>,
}

/// One cached GGUF model (a split model by its first part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CachedModelRow {
    /// A reference that names it (`-m REFERENCE`); the path for ntv's default model.
    pub reference: String,
    /// The quantisation tag of its file name, e.g. `"Q4_K_M"`.
    pub quant: Option<String>,
    /// Bytes (every part of a split model).
    pub size: u64,
    /// Files it is made of (more than one for a split model).
    pub parts: usize,
    /// The file llama.cpp opens.
    pub path: String,
    /// `hub` (the Hugging Face cache), `llama-cache` (LLAMA_CACHE) or `default` (ntv's default
    /// model, from the Python package index).
    pub source: String,
    /// `OWNER/REPO` on the hub.
    pub repo: Option<String>,
    /// The commit of its snapshot.
    pub revision: Option<String>,
    /// The branches and tags pointing at that commit.
    pub refs: Vec<String>,
}

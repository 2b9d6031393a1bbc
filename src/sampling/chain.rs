//! llama.cpp's sampler chain (`logits -> logit-bias -> penalties -> dry -> top-n-sigma -> top-k
//! -> typical -> top-p -> min-p -> xtc -> temp-ext -> dist`), stage by stage, with the stage that
//! removed each candidate recorded.
//!
//! Each stage follows llama.cpp's own sampler (src/llama-sampler.cpp of the llama.cpp that
//! llama-cpp-sys-2 vendors) on an array of `(id, logit, p)` kept in llama.cpp's order, in single
//! precision like llama.cpp, so that the same logits keep the same candidates; the comments name
//! the llama.cpp rule each edge follows. Where llama.cpp leaves an order unspecified (equal
//! logits in its partial sorts), ntv puts the lower id first. The reported probabilities are
//! computed in double precision from the final logits.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CutStage, SamplingError, SamplingParams, Workspace, penalties, vexp};

/// One stage of the chain, by llama.cpp's name (`--samplers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Repetition, presence and frequency penalties.
    Penalties,
    /// DRY: penalises tokens that would extend a repetition.
    Dry,
    /// Top-n-sigma: logits more than n standard deviations below the largest are removed.
    TopNSigma,
    /// The k most probable.
    TopK,
    /// Locally typical sampling.
    #[serde(rename = "typ_p")]
    TypP,
    /// Nucleus.
    TopP,
    /// p >= min_p * p_max.
    MinP,
    /// Exclude top choices.
    Xtc,
    /// Temperature, dynamic when `dynatemp_range > 0`.
    Temperature,
}

impl Stage {
    /// llama.cpp's default order (`common_params_sampling::samplers`).
    pub const LLAMA: [Stage; 9] = [
        Stage::Penalties,
        Stage::Dry,
        Stage::TopNSigma,
        Stage::TopK,
        Stage::TypP,
        Stage::TopP,
        Stage::MinP,
        Stage::Xtc,
        Stage::Temperature,
    ];

    /// The Hugging Face / demo order: the logit adjustments, then temperature, then every
    /// truncation in llama.cpp's relative order.
    pub const HF: [Stage; 9] = [
        Stage::Penalties,
        Stage::Dry,
        Stage::Temperature,
        Stage::TopNSigma,
        Stage::TopK,
        Stage::TypP,
        Stage::TopP,
        Stage::MinP,
        Stage::Xtc,
    ];

    /// llama.cpp's canonical name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Penalties => "penalties",
            Stage::Dry => "dry",
            Stage::TopNSigma => "top_n_sigma",
            Stage::TopK => "top_k",
            Stage::TypP => "typ_p",
            Stage::TopP => "top_p",
            Stage::MinP => "min_p",
            Stage::Xtc => "xtc",
            Stage::Temperature => "temperature",
        }
    }

    /// llama.cpp's one-letter name (`--sampling-seq`).
    pub fn letter(self) -> char {
        match self {
            Stage::Penalties => 'e',
            Stage::Dry => 'd',
            Stage::TopNSigma => 's',
            Stage::TopK => 'k',
            Stage::TypP => 'y',
            Stage::TopP => 'p',
            Stage::MinP => 'm',
            Stage::Xtc => 'x',
            Stage::Temperature => 't',
        }
    }

    const ALL: [Stage; 9] = Stage::LLAMA;

    /// A stage by name: llama.cpp's canonical names, their kebab-case and no-dash forms, and
    /// its aliases (`nucleus`, `temp`, `typ`), case-insensitive; also `typical`.
    pub fn by_name(name: &str) -> Option<Stage> {
        let n = name.trim().to_ascii_lowercase();
        let flat: String = n.chars().filter(|&c| c != '_' && c != '-').collect();
        match n.as_str() {
            "nucleus" => return Some(Stage::TopP),
            "temp" => return Some(Stage::Temperature),
            "typ" | "typical" | "typical_p" | "typical-p" => return Some(Stage::TypP),
            _ => {}
        }
        Stage::ALL.into_iter().find(|s| {
            let canon = s.name();
            n == canon || n == canon.replace('_', "-") || flat == canon.replace('_', "")
        })
    }

    /// Parses a stage list the way llama.cpp's flags take it: names separated by `;`
    /// (`--samplers`), or one letter per stage (`--sampling-seq`, e.g. `edskypmxt`). A single
    /// word is read as a name when it is one, else as letters. Unknown names are refused
    /// (llama.cpp only warns), and so are llama.cpp stages ntv does not implement.
    pub fn parse_list(s: &str) -> Result<Vec<Stage>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the sampler list is empty".into());
        }
        let unsupported = |w: &str| {
            matches!(
                w.to_ascii_lowercase().replace('-', "_").as_str(),
                "infill" | "adaptive_p" | "i" | "a"
            )
        };
        if !s.contains(';') && Stage::by_name(s).is_none() && !unsupported(s) {
            return s
                .chars()
                .map(|c| {
                    Stage::ALL
                        .into_iter()
                        .find(|st| st.letter() == c)
                        .ok_or_else(|| {
                            if c == 'i' || c == 'a' {
                                format!("sampler letter {c:?} (llama.cpp's infill/adaptive_p) is not supported")
                            } else {
                                format!("unknown sampler {s:?} (neither a name nor letters: {c:?} is no sampler letter)")
                            }
                        })
                })
                .collect();
        }
        s.split(';')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| {
                if unsupported(w) {
                    return Err(format!(
                        "sampler {w:?} is llama.cpp's but not supported by ntv"
                    ));
                }
                Stage::by_name(w).ok_or_else(|| format!("unknown sampler {w:?}"))
            })
            .collect()
    }

    /// `penalties;dry;…` (llama.cpp's `--samplers` form).
    pub fn format_list(stages: &[Stage]) -> String {
        stages
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The names `--samplers` accepts, for messages.
pub const STAGE_NAMES: &str =
    "penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature";

/// Per-step inputs of the chain that are not sampling parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainInputs<'a> {
    /// The DRY sequence breakers, processed against the model's vocabulary
    /// ([`DryBreakers::build`]); `None`: no breakers.
    pub dry_breakers: Option<&'a DryBreakers>,
    /// XTC's coin, a uniform draw in [0, 1) from the branch's stream; `None`: not drawn, XTC
    /// does not act.
    pub xtc_coin: Option<f64>,
    /// Mirostat's running `mu` (the branch's state); `None`: `2 * mirostat_ent`, as llama.cpp
    /// starts.
    pub mirostat_mu: Option<f64>,
}

/// DRY's sequence breakers as llama.cpp processes them (`get_overlapping_token_sequences`): for
/// each token whose text contains a breaker, an empty tail; for each token whose text ends with
/// the start of a breaker, the tokens of the rest of the breaker (at most 20).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DryBreakers {
    heads: HashMap<u32, Vec<Vec<u32>>>,
}

/// llama.cpp truncates each breaker to 40 bytes and each tail to 20 tokens.
const DRY_MAX_CHAR_LEN: usize = 40;
const DRY_MAX_SEQ_LEN: usize = 20;

impl DryBreakers {
    /// Processes `breakers` against a vocabulary of `n_vocab` tokens: `piece(id)` is the token's
    /// text (special tokens rendered), `tokenize(bytes)` tokenises without special tokens.
    pub fn build(
        n_vocab: usize,
        mut piece: impl FnMut(u32) -> Vec<u8>,
        mut tokenize: impl FnMut(&[u8]) -> Vec<u32>,
        breakers: &[String],
    ) -> Self {
        let breakers: Vec<&[u8]> = breakers
            .iter()
            .map(|b| &b.as_bytes()[..b.len().min(DRY_MAX_CHAR_LEN)])
            .filter(|b| !b.is_empty())
            .collect();
        let mut heads: HashMap<u32, Vec<Vec<u32>>> = HashMap::new();
        if breakers.is_empty() {
            return Self { heads };
        }
        let words: Vec<Vec<u8>> = (0..n_vocab as u32).map(&mut piece).collect();
        for s in &breakers {
            for (id, word) in words.iter().enumerate() {
                let id = id as u32;
                if contains(word, s) {
                    heads.entry(id).or_default().push(Vec::new());
                    continue;
                }
                // Every position where the word's tail is a prefix of the breaker.
                for pos in 0..word.len() {
                    if word[pos] != s[0] {
                        continue;
                    }
                    let mut i = 1;
                    let mut matched = true;
                    while i < s.len() && i + pos < word.len() {
                        if word[pos + i] != s[i] {
                            matched = false;
                            break;
                        }
                        i += 1;
                    }
                    if !matched {
                        continue;
                    }
                    let mut tail = tokenize(&s[i..]);
                    tail.truncate(DRY_MAX_SEQ_LEN);
                    let entry = heads.entry(id).or_default();
                    if !entry.contains(&tail) {
                        entry.push(tail);
                    }
                }
            }
        }
        Self { heads }
    }

    fn tails(&self, id: u32) -> Option<&[Vec<u32>]> {
        self.heads.get(&id).map(Vec::as_slice)
    }

    fn is_single_token_breaker(&self, id: u32) -> bool {
        self.tails(id).is_some_and(|t| t.iter().any(Vec::is_empty))
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// DRY's penalties for the next token (llama.cpp `llama_sampler_dry_apply`, ported there from
/// Koboldcpp): `(token, penalty)` for every token that would extend a repetition of more than
/// `dry_allowed_length` tokens, `penalty = multiplier * base^(length - allowed_length)`.
pub(crate) fn dry_penalties(
    context: &[i32],
    p: &SamplingParams,
    breakers: Option<&DryBreakers>,
    out: &mut Vec<(u32, f32)>,
    repeat: &mut Vec<i32>,
) {
    out.clear();
    let (mult, base) = (p.dry_multiplier as f32, p.dry_base as f32);
    if !dry_on(p) {
        return;
    }
    let window = penalties::window(context, p.dry_penalty_last_n);
    let n = window.len();
    let allowed = i64::from(p.dry_allowed_length);
    if n as i64 <= allowed {
        return;
    }
    // rat(i): the i-th token from the end.
    let rat = |i: usize| window[n - 1 - i] as u32;
    let empty = DryBreakers::default();
    let br = breakers.unwrap_or(&empty);

    // Step 1: the most recent restart sequence limits the repetition length.
    let mut rep_limit = n as i64;
    for i in 0..n {
        let Some(tails) = br.tails(rat(i)) else {
            continue;
        };
        let mut longest: i64 = -1;
        for tail in tails {
            let len = tail.len() as i64;
            if len > longest
                && len <= i as i64
                && tail
                    .iter()
                    .enumerate()
                    .all(|(off, &t)| t == rat(i - off - 1))
            {
                longest = len;
            }
        }
        if longest >= 0 {
            rep_limit = i as i64 - longest;
            break;
        }
    }
    if rep_limit < allowed {
        return;
    }
    let rep_limit = rep_limit as i32;

    // Step 2: the reverse Z-algorithm: repeat[last - k] = length of the longest suffix that
    // also ends k tokens before the end (capped at rep_limit).
    repeat.clear();
    repeat.resize(n, 0);
    let last = n - 1;
    let (mut lt, mut rt) = (0usize, 0usize);
    for k in 1..n {
        if k > rt {
            let mut m = 0;
            while m + k < n && rat(m) == rat(m + k) {
                m += 1;
            }
            repeat[last - k] = (m as i32).min(rep_limit);
            if m > 0 {
                lt = k;
                rt = k + m - 1;
            }
        } else {
            let pair = k - lt;
            let right_part_len = (rt - k + 1) as i32;
            if repeat[last - pair] < right_part_len {
                repeat[last - k] = repeat[last - pair].min(rep_limit);
            } else {
                let mut i = rt + 1;
                while i < n && rat(i) == rat(i - k) {
                    i += 1;
                }
                repeat[last - k] = ((i - k) as i32).min(rep_limit);
                lt = k;
                rt = i - 1;
            }
        }
    }

    // Step 3: the longest repetition each next token would extend.
    let mut max_repeat: HashMap<u32, i32> = HashMap::new();
    for (i, &len) in repeat.iter().enumerate().take(n - 1) {
        if i64::from(len) >= allowed {
            let token = rat(n - 2 - i);
            let e = max_repeat.entry(token).or_insert(len);
            if *e < len {
                *e = len;
            }
        }
    }

    // Step 4: the penalties; the exponent is clamped so that base^exp stays finite in f32.
    const FLOAT_MAX_LOG: f32 = 88.722_84;
    let max_exponent = if base > 1.000_001 {
        (FLOAT_MAX_LOG / base.ln()) as i32
    } else {
        0
    };
    for (token, len) in max_repeat {
        if br.is_single_token_breaker(token) {
            continue;
        }
        let mut exp = len - p.dry_allowed_length as i32;
        if max_exponent > 0 && exp > max_exponent {
            exp = max_exponent;
        }
        // std::pow(float, int) computes in double.
        let penalty = (f64::from(mult) * f64::from(base).powi(exp)) as f32;
        out.push((token, penalty));
    }
    out.sort_unstable_by_key(|&(t, _)| t);
}

/// Whether DRY acts (llama.cpp: multiplier != 0, base >= 1, window != 0).
pub(crate) fn dry_on(p: &SamplingParams) -> bool {
    p.dry_multiplier != 0.0 && p.dry_base as f32 >= 1.0 && p.dry_penalty_last_n != 0
}

/// Whether XTC can act (llama.cpp: probability > 0 and threshold <= 0.5).
pub(crate) fn xtc_on(p: &SamplingParams) -> bool {
    p.xtc_probability as f32 > 0.0 && p.xtc_threshold as f32 <= 0.5
}

/// The stages `params` runs, in order (mirostat replaces them: see [`Workspace`]).
pub fn stages(params: &SamplingParams) -> Vec<Stage> {
    match &params.samplers {
        Some(list) => list.clone(),
        None => match params.sampler_order {
            super::SamplerOrder::Llama => Stage::LLAMA.to_vec(),
            super::SamplerOrder::Hf => Stage::HF.to_vec(),
        },
    }
}

/// One entry of llama.cpp's candidate array.
#[derive(Debug, Clone, Copy)]
struct Td {
    id: u32,
    logit: f32,
    p: f32,
}

/// What a candidate's logit went through before truncation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Adjust {
    /// Added by the logit bias.
    pub logit_bias: f32,
    /// Change made by the penalties.
    pub penalties: f32,
    /// Subtracted by DRY (as a negative change).
    pub dry: f32,
}

const ALIVE: u8 = 0;

fn fate_code(s: CutStage) -> u8 {
    match s {
        CutStage::Constraint => 1,
        CutStage::LogitBias => 2,
        CutStage::TopNSigma => 3,
        CutStage::TopK => 4,
        CutStage::Typical => 5,
        CutStage::TopP => 6,
        CutStage::MinP => 7,
        CutStage::Xtc => 8,
        CutStage::Mirostat => 9,
        CutStage::Temperature => 10,
    }
}

pub(crate) fn fate_stage(code: u8) -> Option<CutStage> {
    Some(match code {
        1 => CutStage::Constraint,
        2 => CutStage::LogitBias,
        3 => CutStage::TopNSigma,
        4 => CutStage::TopK,
        5 => CutStage::Typical,
        6 => CutStage::TopP,
        7 => CutStage::MinP,
        8 => CutStage::Xtc,
        9 => CutStage::Mirostat,
        10 => CutStage::Temperature,
        _ => return None,
    })
}

/// What XTC did at this step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct XtcOutcome {
    /// The coin (uniform in [0, 1)); XTC acts when it is at most `xtc_probability`.
    pub coin: f64,
    /// Whether XTC removed tokens.
    pub removed: usize,
}

/// The chain's buffers and results (inside [`Workspace`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct ChainWs {
    arr: Vec<Td>,
    sorted: bool,
    /// Per token: 0 = alive, else the code of the stage that removed it.
    pub fate: Vec<u8>,
    /// Per token: p_final of the kept tokens (others stale: read through `fate`).
    pub pfin: Vec<f64>,
    /// The kept tokens in llama.cpp's final array order: (id, logit, f32 probability).
    order: Vec<Td>,
    /// Penalty counts per token (zero between calls).
    counts: Vec<u32>,
    touched: Vec<u32>,
    /// DRY penalty per token (zero between calls) and its list.
    dryv: Vec<f32>,
    dry: Vec<(u32, f32)>,
    repeat: Vec<i32>,
    /// (id, adjustments) of the tokens whose logit was changed, by id.
    pub adjust: Vec<(u32, Adjust)>,
    scratch: Vec<Td>,
    idx: Vec<u32>,
    scores: Vec<f32>,
    /// The temperature the chain applied (1 when none or greedy).
    pub temp_used: f64,
    pub xtc: Option<XtcOutcome>,
    /// Mirostat: the `mu` this step used.
    pub mirostat_mu: Option<f64>,
    pub stages: Vec<Stage>,
}

/// The bits of a (non-NaN) f32 as an unsigned integer in the same order.
fn ordered(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

/// Descending logit, ties by lower id; -inf last.
fn desc(a: &Td, b: &Td) -> std::cmp::Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(std::cmp::Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

impl ChainWs {
    /// llama.cpp's `dist` over the kept tokens in its final array order: weights
    /// `expf(logit - max)` in f32, summed in f64; the first token whose running sum reaches
    /// `u * sum` (`u` in [0, 1)).
    pub(crate) fn draw(&self, u: f64) -> u32 {
        let max = self
            .order
            .iter()
            .map(|t| t.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        let w = |t: &Td| f64::from((t.logit - max).exp());
        let sum: f64 = self.order.iter().map(w).sum();
        let target = sum * u;
        let mut run = 0.0;
        for t in &self.order {
            run += w(t);
            if run >= target {
                return t.id;
            }
        }
        self.order.last().map_or(0, |t| t.id)
    }

    /// Mirostat's next `mu` once `id` is chosen: `mu - eta * (surprise - tau)`, the surprise
    /// `-log2 p` of `id` among the kept tokens (llama.cpp's f32 probability); a token outside
    /// them (forced) counts with `fallback_p`.
    pub(crate) fn mirostat_next(
        &self,
        p: &SamplingParams,
        id: u32,
        fallback_p: f64,
    ) -> Option<f64> {
        let mu = self.mirostat_mu?;
        let prob = match self.order.iter().find(|t| t.id == id) {
            Some(t) => t.p,
            None => fallback_p as f32,
        }
        .max(f32::MIN_POSITIVE);
        // In f32, as llama.cpp: mu = mu - eta * (-log2 p - tau).
        let e = -prob.log2() - p.mirostat_ent as f32;
        Some(f64::from(mu as f32 - p.mirostat_lr as f32 * e))
    }

    /// Sorts the whole array (llama.cpp `llama_token_data_array_partial_sort_inplace` with
    /// `npartial = size`); -inf entries are moved to the end first, so only the finite ones
    /// are compared.
    fn sort_all(&mut self) {
        if self.sorted {
            return;
        }
        // A stable partition: the -inf entries keep their order at the end (their order is
        // llama.cpp's unspecified tie order, and sorting 49,152 of them would cost most of a
        // step), the finite ones are sorted.
        let finite = self
            .arr
            .iter()
            .filter(|t| t.logit != f32::NEG_INFINITY)
            .count();
        if finite < self.arr.len() {
            self.scratch.clear();
            self.scratch
                .extend(self.arr.iter().filter(|t| t.logit != f32::NEG_INFINITY));
            self.scratch
                .extend(self.arr.iter().filter(|t| t.logit == f32::NEG_INFINITY));
            std::mem::swap(&mut self.arr, &mut self.scratch);
        }
        // Descending logit, ties by lower id, as one integer key (the f32 bits made
        // order-preserving): cheaper than comparing floats.
        self.arr[..finite]
            .sort_unstable_by_key(|t| (u64::from(!ordered(t.logit)) << 32) | u64::from(t.id));
        self.sorted = true;
    }

    /// Keeps the `k` largest, sorted (llama.cpp's partial sort).
    fn sort_top(&mut self, k: usize) {
        if self.sorted {
            return;
        }
        let key = |t: &Td| (u64::from(!ordered(t.logit)) << 32) | u64::from(t.id);
        if k < self.arr.len() {
            self.arr.select_nth_unstable_by_key(k - 1, key);
        }
        let k = k.min(self.arr.len());
        self.arr[..k].sort_unstable_by_key(key);
    }

    /// llama.cpp `llama_sampler_softmax_impl`: optionally sort, then p = expf(logit - max) /
    /// sum in single precision, summed in array order.
    fn softmax(&mut self, do_sort: bool) {
        if do_sort {
            self.sort_all();
        }
        let max = if self.sorted {
            self.arr[0].logit
        } else {
            self.arr
                .iter()
                .fold(self.arr[0].logit, |m, t| m.max(t.logit))
        };
        let mut sum = 0.0f32;
        for t in &mut self.arr {
            t.p = (t.logit - max).exp();
            sum += t.p;
        }
        for t in &mut self.arr {
            t.p /= sum;
        }
    }

    /// Marks the entries from `keep` on as removed by `stage` and drops them.
    fn cut_tail(&mut self, keep: usize, stage: CutStage) {
        let code = fate_code(stage);
        for t in &self.arr[keep.min(self.arr.len())..] {
            let f = &mut self.fate[t.id as usize];
            if *f == ALIVE {
                *f = code;
            }
        }
        self.arr.truncate(keep);
    }

    fn top_k(&mut self, k: u32, stage: CutStage) {
        if k == 0 {
            return;
        }
        let k = (k as usize).min(self.arr.len());
        self.sort_top(k);
        self.cut_tail(k, stage);
        self.sorted = true;
    }

    fn top_n_sigma(&mut self, n: f32) {
        if n <= 0.0 || self.arr.len() <= 1 {
            return;
        }
        // llama.cpp: max and mean over the finite logits, in f32 and array order; the squares
        // through double `pow`, accumulated in f32.
        let mut max = self.arr[0].logit;
        let mut sum = 0.0f32;
        let mut count = 0usize;
        for t in &self.arr {
            if t.logit != f32::NEG_INFINITY {
                max = max.max(t.logit);
                sum += t.logit;
                count += 1;
            }
        }
        let mean = if count > 0 { sum / count as f32 } else { 0.0 };
        let mut acc = 0.0f32;
        for t in &self.arr {
            if t.logit != f32::NEG_INFINITY {
                acc = (f64::from(acc) + f64::from(t.logit - mean).powi(2)) as f32;
            }
        }
        let std = if count > 0 {
            (acc / count as f32).sqrt()
        } else {
            0.0
        };
        let floor = max - n * std;
        let code = fate_code(CutStage::TopNSigma);
        for t in &mut self.arr {
            if t.logit < floor {
                if t.logit != f32::NEG_INFINITY && self.fate[t.id as usize] == ALIVE {
                    self.fate[t.id as usize] = code;
                }
                t.logit = f32::NEG_INFINITY;
            }
        }
    }

    fn typical(&mut self, p: f32, min_keep: usize) {
        if p >= 1.0 {
            return;
        }
        self.softmax(true);
        // llama.cpp sums -p * log(p) over every entry, which is NaN once one has p = 0 (e.g.
        // after top-n-sigma); ntv leaves zero-probability entries out of the entropy.
        let mut entropy = 0.0f32;
        for t in &self.arr {
            if t.p > 0.0 {
                entropy += -t.p * t.p.ln();
            }
        }
        // Entries with p = 0 score +inf: they come last, in array order, so only the others
        // are sorted.
        self.scores.clear();
        self.scores.extend(self.arr.iter().map(|t| {
            if t.p > 0.0 {
                (-t.p.ln() - entropy).abs()
            } else {
                f32::INFINITY
            }
        }));
        self.idx.clear();
        self.idx.extend(
            (0..self.arr.len() as u32).filter(|&j| self.scores[j as usize] != f32::INFINITY),
        );
        let scores = &self.scores;
        // llama.cpp's std::sort leaves equal scores in any order; ntv keeps the array order.
        self.idx.sort_unstable_by_key(|&j| {
            (u64::from(ordered(scores[j as usize])) << 32) | u64::from(j)
        });
        let zero = self.arr.len() - self.idx.len();
        if zero > 0 {
            let scores = &self.scores;
            self.idx.extend(
                (0..self.arr.len() as u32).filter(|&j| scores[j as usize] == f32::INFINITY),
            );
        }
        let mut cum = 0.0f32;
        let mut last = self.idx.len();
        for (i, &j) in self.idx.iter().enumerate() {
            cum += self.arr[j as usize].p;
            if cum > p && (min_keep == 0 || i + 1 >= min_keep) {
                last = i + 1;
                break;
            }
        }
        self.scratch.clear();
        self.scratch
            .extend(self.idx.iter().map(|&j| self.arr[j as usize]));
        std::mem::swap(&mut self.arr, &mut self.scratch);
        self.cut_tail(last, CutStage::Typical);
        self.sorted = false;
    }

    fn top_p(&mut self, p: f32, min_keep: usize) {
        if p >= 1.0 {
            return;
        }
        // Probabilities before the sort (llama.cpp sums in array order), then the prefix.
        self.softmax(false);
        let n = self.arr.len();
        let mut sorted_to = if self.sorted { n } else { 0 };
        if sorted_to == 0 {
            let k = if n > 1024 { 256.min(n) } else { n };
            self.sort_top(k);
            sorted_to = k;
        }
        let mut cum = 0.0f32;
        let mut last = n;
        let mut i = 0;
        while i < n {
            if i == sorted_to {
                // llama.cpp widens its partial sort to the whole array.
                self.arr[sorted_to..].sort_unstable_by(desc);
                sorted_to = n;
            }
            cum += self.arr[i].p;
            if cum >= p && i + 1 >= min_keep {
                last = i + 1;
                break;
            }
            i += 1;
        }
        if sorted_to < n && last == n {
            self.arr[sorted_to..].sort_unstable_by(desc);
        }
        self.cut_tail(last, CutStage::TopP);
        self.sorted = true;
    }

    fn min_p(&mut self, p: f32, min_keep: usize) {
        if p <= 0.0 || self.arr.is_empty() {
            return;
        }
        let mut applied = false;
        if !self.sorted {
            let max = self.arr.iter().fold(-f32::MAX, |m, t| m.max(t.logit));
            let floor = max + p.ln();
            let kept = self.arr.iter().filter(|t| t.logit >= floor).count();
            if kept > 0 && kept >= min_keep {
                let code = fate_code(CutStage::MinP);
                let fate = &mut self.fate;
                self.arr.retain(|t| {
                    let keep = t.logit >= floor;
                    if !keep && fate[t.id as usize] == ALIVE {
                        fate[t.id as usize] = code;
                    }
                    keep
                });
                applied = true;
            }
        }
        if !applied {
            self.sort_all();
            let floor = self.arr[0].logit + p.ln();
            let mut i = 1;
            while i < self.arr.len() {
                if self.arr[i].logit < floor && i >= min_keep {
                    break;
                }
                i += 1;
            }
            self.cut_tail(i, CutStage::MinP);
        }
    }

    fn xtc(&mut self, p: &SamplingParams, coin: Option<f64>) {
        let (prob, threshold) = (p.xtc_probability as f32, p.xtc_threshold as f32);
        if prob <= 0.0 || threshold > 0.5 || self.arr.len() < 2 {
            return;
        }
        let Some(coin) = coin else {
            return;
        };
        let mut outcome = XtcOutcome { coin, removed: 0 };
        if coin as f32 <= prob {
            self.softmax(true);
            let mut last = 0;
            for (i, t) in self.arr.iter().enumerate() {
                if t.p >= threshold {
                    last = i;
                } else {
                    break;
                }
            }
            // llama.cpp: the least probable token above the threshold stays, and so do at
            // least min_keep tokens.
            if self.arr.len() - last >= p.min_keep as usize && last > 0 {
                let code = fate_code(CutStage::Xtc);
                for t in &self.arr[..last] {
                    if self.fate[t.id as usize] == ALIVE {
                        self.fate[t.id as usize] = code;
                    }
                }
                self.arr.drain(..last);
                outcome.removed = last;
            }
        }
        self.xtc = Some(outcome);
    }

    /// llama.cpp `llama_sampler_temp_impl`: a temperature <= 0 keeps only the first largest
    /// logit.
    fn temp_impl(&mut self, t: f32) {
        if self.arr.is_empty() {
            return;
        }
        if t <= 0.0 {
            let mut max_i = 0;
            for i in 1..self.arr.len() {
                if self.arr[i].logit > self.arr[max_i].logit {
                    max_i = i;
                }
            }
            let code = fate_code(CutStage::Temperature);
            for (i, x) in self.arr.iter_mut().enumerate() {
                if i != max_i {
                    if x.logit != f32::NEG_INFINITY && self.fate[x.id as usize] == ALIVE {
                        self.fate[x.id as usize] = code;
                    }
                    x.logit = f32::NEG_INFINITY;
                }
            }
            return;
        }
        for x in &mut self.arr {
            x.logit /= t;
        }
        self.temp_used = f64::from(t);
    }

    /// llama.cpp `temp-ext`: a plain or entropy-driven (dynamic) temperature.
    fn temperature(&mut self, p: &SamplingParams) {
        let (temp, delta, exponent) = (
            p.temperature as f32,
            p.dynatemp_range as f32,
            p.dynatemp_exponent as f32,
        );
        if delta > 0.0 {
            let min_temp = (temp - delta).max(0.0);
            let max_temp = temp + delta;
            if self.arr.len() <= 1 {
                return;
            }
            let max_entropy = -(1.0f32 / self.arr.len() as f32).ln();
            self.softmax(true);
            let mut entropy = 0.0f32;
            for t in &self.arr {
                if t.p > 0.0 {
                    entropy -= t.p * t.p.ln();
                }
            }
            let normalized = entropy / max_entropy;
            let dyn_temp = min_temp + (max_temp - min_temp) * normalized.powf(exponent);
            self.temp_impl(dyn_temp);
        } else {
            self.temp_impl(temp);
            // The exact value for the reported numbers (the array divides by its f32).
            if temp > 0.0 {
                self.temp_used = p.temperature;
            }
        }
    }
}

impl Workspace {
    /// The chain path of [`Workspace::compute_with`]: every stage of `stages(params)` (or
    /// mirostat), then p_final over what is left. Steps 1 (p_base) and the constraint mask
    /// (`self.valid`, `self.constrained`) are done by the caller.
    pub(super) fn compute_chain(
        &mut self,
        logits: &[f32],
        context: &[i32],
        params: &SamplingParams,
        inputs: &ChainInputs<'_>,
    ) -> Result<(), SamplingError> {
        let n = logits.len();
        let greedy = params.greedy || params.temperature == 0.0;
        self.greedy = greedy;
        let c = &mut self.chain;
        c.stages = if params.mirostat != 0 {
            Vec::new()
        } else {
            stages(params)
        };
        c.xtc = None;
        c.mirostat_mu = None;
        c.temp_used = 1.0;
        c.fate.clear();
        c.fate.resize(n, ALIVE);
        c.pfin.resize(n, 0.0);

        // The logit bias (llama.cpp adds it before the chain): ids checked, values f32.
        for b in &params.logit_bias {
            if b.id as usize >= n {
                return Err(SamplingError::TokenOutOfRange {
                    id: i64::from(b.id),
                    n_vocab: n,
                });
            }
        }
        // Penalty counts over the window (ids checked), DRY's penalties.
        let window = penalties::window(context, params.penalty_last_n);
        let dry_window = penalties::window(context, params.dry_penalty_last_n);
        for &id in window.iter().chain(dry_window) {
            if !usize::try_from(id).is_ok_and(|i| i < n) {
                return Err(SamplingError::TokenOutOfRange {
                    id: i64::from(id),
                    n_vocab: n,
                });
            }
        }
        let mirostat = params.mirostat != 0;
        let pen_on = !mirostat
            && c.stages.contains(&Stage::Penalties)
            && !(params.penalty_last_n == 0
                || (params.repetition_penalty as f32 == 1.0
                    && params.frequency_penalty as f32 == 0.0
                    && params.presence_penalty as f32 == 0.0));
        c.counts.resize(n, 0);
        c.touched.clear();
        if pen_on {
            for &id in window {
                let i = id as usize;
                if c.counts[i] == 0 {
                    c.touched.push(id as u32);
                }
                c.counts[i] += 1;
            }
        }
        let dry_stage = !mirostat && c.stages.contains(&Stage::Dry);
        if dry_stage {
            dry_penalties(
                context,
                params,
                inputs.dry_breakers,
                &mut c.dry,
                &mut c.repeat,
            );
        } else {
            c.dry.clear();
        }
        c.dryv.resize(n, 0.0);
        for &(id, pen) in &c.dry {
            c.dryv[id as usize] = pen;
        }

        // The array: logits plus bias; the constraint's invalid tokens are -inf entries
        // (llama.cpp's grammar sampler masks them the same way).
        c.arr.clear();
        c.arr
            .extend(logits.iter().enumerate().map(|(id, &logit)| Td {
                id: id as u32,
                logit,
                p: 0.0,
            }));
        c.sorted = false;
        let mut bias_of: Vec<(u32, f32)> = params
            .logit_bias
            .iter()
            .map(|b| (b.id, b.bias.value() as f32))
            .collect();
        bias_of.sort_by_key(|&(id, _)| id);
        for &(id, bias) in &bias_of {
            let t = &mut c.arr[id as usize];
            t.logit += bias;
            if t.logit == f32::NEG_INFINITY && logits[id as usize] != f32::NEG_INFINITY {
                c.fate[id as usize] = fate_code(CutStage::LogitBias);
            }
        }
        if self.constrained {
            let code = fate_code(CutStage::Constraint);
            for (id, ok) in self.valid.iter().enumerate() {
                if !ok {
                    c.fate[id] = code;
                    c.arr[id].logit = f32::NEG_INFINITY;
                }
            }
        }
        if c.arr.iter().all(|t| t.logit == f32::NEG_INFINITY) {
            return Err(if self.constrained {
                SamplingError::MaskZeroMass
            } else {
                SamplingError::AllLogitsImpossible
            });
        }

        // The adjusted logits for p_temp and the display order: bias, then penalties and DRY
        // in chain order, without temperature. Also the per-token adjustments.
        self.zp.clear();
        self.zp.extend(logits.iter().map(|&x| f64::from(x)));
        c.adjust.clear();
        {
            let mut ids: Vec<u32> = bias_of.iter().map(|&(id, _)| id).collect();
            ids.extend(c.touched.iter().copied());
            ids.extend(c.dry.iter().map(|&(id, _)| id));
            ids.sort_unstable();
            ids.dedup();
            let pen_first = c.stages.iter().position(|&s| s == Stage::Penalties)
                < c.stages.iter().position(|&s| s == Stage::Dry);
            for id in ids {
                let i = id as usize;
                let mut z = logits[i];
                let mut a = Adjust::default();
                if let Ok(j) = bias_of.binary_search_by_key(&id, |&(b, _)| b) {
                    // A ban (-inf) is a cut (`cut_by: logit_bias`), not an adjustment: the
                    // token keeps its place among the shown candidates.
                    if bias_of[j].1 != f32::NEG_INFINITY {
                        a.logit_bias = bias_of[j].1;
                        z += a.logit_bias;
                    }
                }
                let pen = |z: f32| penalise(z, c.counts[i], params);
                let dry = c.dryv[i];
                if pen_first || !dry_stage {
                    if pen_on && c.counts[i] > 0 {
                        let after = pen(z);
                        a.penalties = after - z;
                        z = after;
                    }
                    z -= dry;
                } else {
                    z -= dry;
                    if pen_on && c.counts[i] > 0 {
                        let after = pen(z);
                        a.penalties = after - z;
                        z = after;
                    }
                }
                a.dry = -dry;
                if z.is_nan() || z == f32::INFINITY {
                    reset(c);
                    return Err(SamplingError::PenaltyOverflow { id });
                }
                self.zp[i] = f64::from(z);
                if a != Adjust::default() {
                    c.adjust.push((id, a));
                }
            }
        }

        // The stages.
        let min_keep = params.min_keep as usize;
        if mirostat {
            if !greedy {
                c.temp_impl(params.temperature as f32);
                c.temp_used = params.temperature;
            }
            let mu = inputs.mirostat_mu.unwrap_or(2.0 * params.mirostat_ent);
            c.mirostat_mu = Some(mu);
            let mu = mu as f32;
            c.softmax(true);
            if params.mirostat == 1 {
                // llama.cpp `llama_sampler_mirostat_apply`: s_hat from the m = 100 most
                // probable tokens, then k.
                let m = 100usize;
                let (mut sum_ti_bi, mut sum_ti_sq) = (0.0f32, 0.0f32);
                let mut i = 0;
                while i < m - 1 && i + 1 < c.arr.len() {
                    let t_i = ((i + 2) as f32 / (i + 1) as f32).ln();
                    let b_i = (c.arr[i].p / c.arr[i + 1].p).ln();
                    sum_ti_bi += t_i * b_i;
                    sum_ti_sq += t_i * t_i;
                    i += 1;
                }
                let s_hat = sum_ti_bi / sum_ti_sq;
                let eps = s_hat - 1.0;
                let k = ((eps * 2f32.powf(mu)) / (1.0 - (n as f32).powf(-eps))).powf(1.0 / s_hat);
                // C++ `int(k)`: x86 turns NaN and out-of-range values into INT_MIN, which
                // `std::max(…, 1)` makes 1.
                let k = if k.is_finite() && k < i32::MAX as f32 && k > i32::MIN as f32 {
                    (k as i32).max(1)
                } else {
                    1
                };
                c.top_k(k as u32, CutStage::Mirostat);
            } else {
                // llama.cpp `llama_sampler_mirostat_v2_apply`: drop tokens whose surprise
                // exceeds mu (at least one stays).
                let keep = c
                    .arr
                    .iter()
                    .position(|t| -t.p.log2() > mu)
                    .unwrap_or(c.arr.len())
                    .max(1);
                c.cut_tail(keep, CutStage::Mirostat);
            }
            c.softmax(true);
        } else {
            let stages = std::mem::take(&mut c.stages);
            for &stage in &stages {
                match stage {
                    Stage::Penalties => {
                        if pen_on {
                            for t in &mut c.arr {
                                let k = c.counts[t.id as usize];
                                if k > 0 {
                                    t.logit = penalise(t.logit, k, params);
                                }
                            }
                            c.sorted = false;
                        }
                    }
                    Stage::Dry => {
                        if !c.dry.is_empty() {
                            for t in &mut c.arr {
                                t.logit -= c.dryv[t.id as usize];
                            }
                            c.sorted = false;
                        }
                    }
                    Stage::TopNSigma => c.top_n_sigma(params.top_n_sigma as f32),
                    Stage::TopK => c.top_k(params.top_k, CutStage::TopK),
                    Stage::TypP => c.typical(params.typical_p as f32, min_keep),
                    Stage::TopP => c.top_p(params.top_p as f32, min_keep),
                    Stage::MinP => c.min_p(params.min_p as f32, min_keep),
                    Stage::Xtc => c.xtc(params, inputs.xtc_coin),
                    Stage::Temperature => {
                        if !greedy {
                            c.temperature(params);
                        }
                    }
                }
            }
            c.stages = stages;
        }
        reset(c);

        // p_final over what is left, in double precision: from the adjusted logits and the
        // temperature when the temperature comes after every adjustment (then the f32 logits
        // of the array are these numbers rounded), else from the array's logits.
        c.order.clear();
        let fate = &c.fate;
        c.order.extend(
            c.arr
                .iter()
                .filter(|t| fate[t.id as usize] == ALIVE)
                .copied(),
        );
        let pos = |s: Stage| c.stages.iter().position(|&x| x == s);
        let exact = mirostat
            || match pos(Stage::Temperature) {
                None => !pen_on && c.dry.is_empty(),
                Some(t) => {
                    pos(Stage::Penalties).is_none_or(|p| p < t)
                        && pos(Stage::Dry).is_none_or(|d| d < t)
                }
            };
        let t_used = c.temp_used;
        let zp = &self.zp;
        let final_logit = |t: &Td| {
            if t.logit == f32::NEG_INFINITY {
                f64::NEG_INFINITY
            } else if exact {
                zp[t.id as usize] / t_used
            } else {
                f64::from(t.logit)
            }
        };
        let max = c
            .order
            .iter()
            .map(final_logit)
            .fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            return Err(if self.constrained {
                SamplingError::MaskZeroMass
            } else {
                SamplingError::AllLogitsImpossible
            });
        }
        let sum: f64 = c.order.iter().map(|t| (final_logit(t) - max).exp()).sum();
        self.kept.clear();
        let mut entropy = 0.0;
        for t in &c.order {
            let p = (final_logit(t) - max).exp() / sum;
            c.pfin[t.id as usize] = p;
            self.kept.push((t.id, p));
            if p > 0.0 {
                entropy -= p * p.ln();
            }
        }
        self.kept.sort_unstable_by(|a, b| {
            b.1.partial_cmp(&a.1)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
        self.entropy_final_bits = (entropy / std::f64::consts::LN_2).max(0.0);
        self.final_sum = sum;
        self.final_max = max;

        // p_temp: the adjusted logits at the temperature the chain used.
        let t = c.temp_used;
        let zp = &self.zp;
        let temp_max = zp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        self.w.resize(n, 0.0);
        let s = vexp::scaled_exp(zp, temp_max, t, &mut self.w);
        self.temp_t = t;
        self.temp_max = temp_max;
        self.temp_log_sum = s.ln();
        Ok(())
    }
}

/// llama.cpp's penalties on one logit, in f32: repetition (multiply when <= 0, else divide),
/// then frequency per occurrence and presence once.
fn penalise(z: f32, count: u32, p: &SamplingParams) -> f32 {
    let r = p.repetition_penalty as f32;
    let mut v = if z <= 0.0 { z * r } else { z / r };
    v -= count as f32 * p.frequency_penalty as f32 + p.presence_penalty as f32;
    v
}

/// Leaves the per-token scratch buffers zero.
fn reset(c: &mut ChainWs) {
    for &id in &c.touched {
        c.counts[id as usize] = 0;
    }
    c.touched.clear();
    for &(id, _) in &c.dry {
        c.dryv[id as usize] = 0.0;
    }
}

//! Sampling parameters: the user-facing knobs of one step, their defaults, presets and validation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SamplingError;

/// Order in which the sampling stages run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum SamplerOrder {
    /// Hugging Face / the original demo: penalties, temperature, constraint, top-k, top-p, min-p.
    #[default]
    Hf,
    /// llama.cpp's default chain: penalties, constraint, top-k, top-p, min-p on T = 1
    /// probabilities, temperature last (applied to the kept set only).
    Llama,
}

/// The resolved parameters of one step (sampling.md, "Inputs of one step").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SamplingParams {
    /// Greedy selection (argmax of p_final); the numbers are computed with T = 1.
    pub greedy: bool,
    /// Temperature; 0 means greedy (numbers computed with T = 1).
    pub temperature: f64,
    /// Nucleus threshold in (0, 1]; 1 keeps everything.
    pub top_p: f64,
    /// Keep only the k most probable tokens; 0 = off.
    pub top_k: u32,
    /// Keep tokens with p >= min_p * p_max; 0 = off.
    pub min_p: f64,
    /// Repetition penalty r > 0 (1 = off).
    pub repetition_penalty: f64,
    /// Presence penalty (0 = off).
    pub presence_penalty: f64,
    /// Frequency penalty (0 = off).
    pub frequency_penalty: f64,
    /// Penalty window: last N context ids; -1 = whole context, 0 = none.
    pub penalty_last_n: i32,
    /// Stage order.
    pub sampler_order: SamplerOrder,
    /// llama.cpp's logit bias: added to a token's logit before every other stage; a bias of
    /// `-inf` bans the token (`cut_by: logit_bias`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logit_bias: Vec<LogitBias>,
    /// DRY ("don't repeat yourself") multiplier (0 = off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dry_multiplier: f64,
    /// DRY base: the penalty is `multiplier * base^(length - allowed_length)`.
    #[serde(default = "dry_base", skip_serializing_if = "is_dry_base")]
    pub dry_base: f64,
    /// DRY: repetitions up to this length are not penalised.
    #[serde(
        default = "dry_allowed_length",
        skip_serializing_if = "is_dry_allowed_length"
    )]
    pub dry_allowed_length: u32,
    /// DRY window: last N context tokens (-1 = whole context, 0 = off).
    #[serde(
        default = "dry_penalty_last_n",
        skip_serializing_if = "is_dry_penalty_last_n"
    )]
    pub dry_penalty_last_n: i32,
    /// DRY sequence breakers: a repetition never extends across one of these strings.
    #[serde(
        default = "dry_sequence_breakers",
        skip_serializing_if = "is_dry_sequence_breakers"
    )]
    pub dry_sequence_breakers: Vec<String>,
    /// Top-n-sigma: keep logits within n standard deviations of the largest (<= 0 = off).
    #[serde(default = "minus_one", skip_serializing_if = "is_minus_one")]
    pub top_n_sigma: f64,
    /// Locally typical sampling threshold (1 = off).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub typical_p: f64,
    /// XTC ("exclude top choices"): chance per step that XTC acts (0 = off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub xtc_probability: f64,
    /// XTC: tokens at or above this probability are removed, except the least probable of
    /// them (> 0.5 = off).
    #[serde(default = "xtc_threshold", skip_serializing_if = "is_xtc_threshold")]
    pub xtc_threshold: f64,
    /// Dynamic temperature: the temperature moves within `temperature ± range` with the
    /// normalised entropy (0 = off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dynatemp_range: f64,
    /// Dynamic temperature exponent.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub dynatemp_exponent: f64,
    /// Mirostat: 0 = off, 1 = Mirostat, 2 = Mirostat 2.0 (replaces the truncation stages,
    /// as in llama.cpp).
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub mirostat: u8,
    /// Mirostat learning rate (eta).
    #[serde(default = "mirostat_lr", skip_serializing_if = "is_mirostat_lr")]
    pub mirostat_lr: f64,
    /// Mirostat target entropy (tau).
    #[serde(default = "mirostat_ent", skip_serializing_if = "is_mirostat_ent")]
    pub mirostat_ent: f64,
    /// Stages keep at least this many tokens (llama.cpp's `min_keep`; 0 = no minimum).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub min_keep: u32,
    /// An explicit stage order (llama.cpp's `--samplers`); absent = the order `sampler_order`
    /// names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samplers: Option<Vec<super::chain::Stage>>,
}

/// One logit bias: `bias` is added to token `id`'s logit; `"-inf"` bans it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogitBias {
    /// Token id.
    pub id: u32,
    /// The bias.
    pub bias: Bias,
}

/// A logit bias value: a finite number, or the string `"-inf"` (the token is banned).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Bias {
    /// Added to the logit.
    Add(f64),
    /// `"-inf"`: the token is banned.
    Ban(Ban),
}

/// The `"-inf"` of a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Ban {
    #[serde(rename = "-inf")]
    NegInf,
}

impl Bias {
    /// The value added to the logit (`-inf` for a ban).
    pub fn value(self) -> f64 {
        match self {
            Bias::Add(x) => x,
            Bias::Ban(_) => f64::NEG_INFINITY,
        }
    }

    /// A bias from a number (`-inf` becomes a ban).
    pub fn from_value(x: f64) -> Self {
        if x == f64::NEG_INFINITY {
            Bias::Ban(Ban::NegInf)
        } else {
            Bias::Add(x)
        }
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
fn is_zero_u8(x: &u8) -> bool {
    *x == 0
}
fn is_zero_u32(x: &u32) -> bool {
    *x == 0
}
fn one() -> f64 {
    1.0
}
fn is_one(x: &f64) -> bool {
    *x == 1.0
}
fn minus_one() -> f64 {
    -1.0
}
fn is_minus_one(x: &f64) -> bool {
    *x == -1.0
}
fn dry_base() -> f64 {
    1.75
}
fn is_dry_base(x: &f64) -> bool {
    *x == 1.75
}
fn dry_allowed_length() -> u32 {
    2
}
fn is_dry_allowed_length(x: &u32) -> bool {
    *x == 2
}
fn dry_penalty_last_n() -> i32 {
    -1
}
fn is_dry_penalty_last_n(x: &i32) -> bool {
    *x == -1
}
/// llama.cpp's default DRY sequence breakers.
pub fn dry_sequence_breakers() -> Vec<String> {
    ["\n", ":", "\"", "*"].map(String::from).to_vec()
}
fn is_dry_sequence_breakers(x: &[String]) -> bool {
    x == dry_sequence_breakers().as_slice()
}
fn xtc_threshold() -> f64 {
    0.1
}
fn is_xtc_threshold(x: &f64) -> bool {
    *x == 0.1
}
fn mirostat_lr() -> f64 {
    0.1
}
fn is_mirostat_lr(x: &f64) -> bool {
    *x == 0.1
}
fn mirostat_ent() -> f64 {
    5.0
}
fn is_mirostat_ent(x: &f64) -> bool {
    *x == 5.0
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            greedy: false,
            temperature: 0.7,
            top_p: 0.8,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.05,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: -1,
            sampler_order: SamplerOrder::Hf,
            logit_bias: Vec::new(),
            dry_multiplier: 0.0,
            dry_base: dry_base(),
            dry_allowed_length: dry_allowed_length(),
            dry_penalty_last_n: dry_penalty_last_n(),
            dry_sequence_breakers: dry_sequence_breakers(),
            top_n_sigma: -1.0,
            typical_p: 1.0,
            xtc_probability: 0.0,
            xtc_threshold: xtc_threshold(),
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            mirostat: 0,
            mirostat_lr: mirostat_lr(),
            mirostat_ent: mirostat_ent(),
            min_keep: 0,
            samplers: None,
        }
    }
}

impl SamplingParams {
    /// Checks every parameter against its allowed range: `temperature` finite and >= 0,
    /// `top_p` in (0, 1], `min_p` in [0, 1], `repetition_penalty` finite and > 0,
    /// `presence_penalty` and `frequency_penalty` finite, `penalty_last_n` >= -1.
    pub fn validate(&self) -> Result<(), SamplingError> {
        fn bad(name: &'static str, value: impl ToString, allowed: &'static str) -> SamplingError {
            SamplingError::InvalidParameter {
                name,
                value: value.to_string(),
                allowed,
            }
        }
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(bad("temperature", t, "a finite number >= 0 (0 = greedy)"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("top_p", self.top_p, "in (0, 1] (1 = off)"));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(bad("min_p", self.min_p, "in [0, 1] (0 = off)"));
        }
        let r = self.repetition_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(bad(
                "repetition_penalty",
                r,
                "a finite number > 0 (1 = off)",
            ));
        }
        if !self.presence_penalty.is_finite() {
            return Err(bad(
                "presence_penalty",
                self.presence_penalty,
                "a finite number (0 = off)",
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(bad(
                "frequency_penalty",
                self.frequency_penalty,
                "a finite number (0 = off)",
            ));
        }
        if self.penalty_last_n < -1 {
            return Err(bad(
                "penalty_last_n",
                self.penalty_last_n,
                "-1 (whole context), 0 (off) or a positive window length",
            ));
        }
        for b in &self.logit_bias {
            let v = b.bias.value();
            if !(v.is_finite() || v == f64::NEG_INFINITY) {
                return Err(bad(
                    "logit_bias",
                    v,
                    "a finite number, or -inf to ban the token",
                ));
            }
        }
        if self.logit_bias.len() > crate::limits::MAX_LOGIT_BIASES {
            return Err(bad(
                "logit_bias",
                format!("{} entries", self.logit_bias.len()),
                "at most 100000 entries",
            ));
        }
        let finite_ge0 = |name: &'static str, v: f64, allowed: &'static str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(bad(name, v, allowed))
            }
        };
        finite_ge0(
            "dry_multiplier",
            self.dry_multiplier,
            "a finite number >= 0 (0 = off)",
        )?;
        finite_ge0(
            "dry_base",
            self.dry_base,
            "a finite number >= 0 (below 1 = off)",
        )?;
        if self.dry_allowed_length > 1_000_000 {
            return Err(bad(
                "dry_allowed_length",
                self.dry_allowed_length,
                "at most 1000000",
            ));
        }
        if self.dry_penalty_last_n < -1 {
            return Err(bad(
                "dry_penalty_last_n",
                self.dry_penalty_last_n,
                "-1 (whole context), 0 (off) or a positive window length",
            ));
        }
        if self.dry_sequence_breakers.len() > 1000
            || self.dry_sequence_breakers.iter().any(|b| b.contains('\0'))
        {
            return Err(bad(
                "dry_sequence_breakers",
                format!("{} strings", self.dry_sequence_breakers.len()),
                "at most 1000 strings without NUL characters",
            ));
        }
        if !self.top_n_sigma.is_finite() {
            return Err(bad(
                "top_n_sigma",
                self.top_n_sigma,
                "a finite number (<= 0 = off)",
            ));
        }
        if !(self.typical_p >= 0.0 && self.typical_p <= 1.0) {
            return Err(bad("typical_p", self.typical_p, "in [0, 1] (1 = off)"));
        }
        if !(self.xtc_probability >= 0.0 && self.xtc_probability <= 1.0) {
            return Err(bad(
                "xtc_probability",
                self.xtc_probability,
                "in [0, 1] (0 = off)",
            ));
        }
        if !(self.xtc_threshold >= 0.0 && self.xtc_threshold <= 1.0) {
            return Err(bad(
                "xtc_threshold",
                self.xtc_threshold,
                "in [0, 1] (above 0.5 = off)",
            ));
        }
        finite_ge0(
            "dynatemp_range",
            self.dynatemp_range,
            "a finite number >= 0 (0 = off)",
        )?;
        if !self.dynatemp_exponent.is_finite() {
            return Err(bad(
                "dynatemp_exponent",
                self.dynatemp_exponent,
                "a finite number",
            ));
        }
        if self.mirostat > 2 {
            return Err(bad("mirostat", self.mirostat, "0 (off), 1 or 2"));
        }
        finite_ge0("mirostat_lr", self.mirostat_lr, "a finite number >= 0")?;
        finite_ge0("mirostat_ent", self.mirostat_ent, "a finite number >= 0")?;
        if let Some(list) = &self.samplers
            && list.len() > 64
        {
            return Err(bad(
                "samplers",
                format!("{} stages", list.len()),
                "at most 64 stages",
            ));
        }
        Ok(())
    }

    /// Whether these parameters run llama.cpp's sampler chain (`sampling::chain`): the llama
    /// order, an explicit `samplers` list, or any stage the prefix pipeline does not have.
    pub fn chained(&self) -> bool {
        self.sampler_order == SamplerOrder::Llama
            || self.samplers.is_some()
            || !self.logit_bias.is_empty()
            || super::chain::dry_on(self)
            || self.top_n_sigma > 0.0
            || self.typical_p < 1.0
            || super::chain::xtc_on(self)
            || self.dynatemp_range > 0.0
            || self.mirostat != 0
            || self.min_keep > 0
    }

    /// Whether a step with these parameters draws XTC's coin from the branch's stream.
    pub fn draws_xtc_coin(&self) -> bool {
        self.mirostat == 0
            && super::chain::xtc_on(self)
            && super::chain::stages(self).contains(&super::chain::Stage::Xtc)
    }
}

/// Named parameter sets (the demo's presets). Each preset only fills the sampling
/// parameters below; everything else keeps its default.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The defaults with `greedy = true` and no repetition penalty: always the model's most
    /// probable token, as llama.cpp's and Hugging Face's greedy decoding (numbers shown with
    /// T = 1).
    Greedy,
    /// The defaults: T 0.7, top_p 0.8, top_k off, min_p off, repetition 1.05, presence 0,
    /// frequency 0, penalty window = whole context, HF order.
    Balanced,
    /// Focused and repeatable: T 0.3, top_p 0.6, top_k off, min_p off, repetition 1.05, other
    /// penalties 0, whole-context window, HF order.
    Reliable,
    /// Varied: T 1.0, top_p 0.95, top_k off, min_p off, repetition 1.0 (off), other penalties 0,
    /// whole-context window, HF order.
    Creative,
    /// The defaults (as `balanced`), meant to be overridden by individual options.
    Custom,
}

impl Preset {
    /// The resolved parameters of this preset (see each variant for the exact values).
    pub fn params(self) -> SamplingParams {
        let defaults = SamplingParams::default();
        match self {
            Preset::Greedy => SamplingParams {
                greedy: true,
                repetition_penalty: 1.0,
                ..defaults
            },
            Preset::Balanced | Preset::Custom => defaults,
            Preset::Reliable => SamplingParams {
                temperature: 0.3,
                top_p: 0.6,
                ..defaults
            },
            Preset::Creative => SamplingParams {
                temperature: 1.0,
                top_p: 0.95,
                repetition_penalty: 1.0,
                ..defaults
            },
        }
    }

    /// One line describing the preset, with its values.
    pub fn describe(self) -> &'static str {
        match self {
            Preset::Greedy => {
                "always the most probable token of the model (greedy, no repetition penalty; numbers shown with T = 1)"
            }
            Preset::Balanced => "the defaults: T 0.7, top_p 0.8, repetition penalty 1.05",
            Preset::Reliable => "focused: T 0.3, top_p 0.6, repetition penalty 1.05",
            Preset::Creative => "varied: T 1.0, top_p 0.95, no repetition penalty",
            Preset::Custom => {
                "the defaults (T 0.7, top_p 0.8, repetition penalty 1.05), to override"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_presets_are_valid() {
        SamplingParams::default().validate().unwrap();
        for p in [
            Preset::Greedy,
            Preset::Balanced,
            Preset::Reliable,
            Preset::Creative,
            Preset::Custom,
        ] {
            p.params().validate().unwrap();
            assert!(!p.describe().is_empty());
        }
        assert!(Preset::Greedy.params().greedy);
        assert_eq!(Preset::Balanced.params(), SamplingParams::default());
        assert_eq!(Preset::Reliable.params().temperature, 0.3);
        assert_eq!(Preset::Creative.params().top_p, 0.95);
        assert_eq!(
            serde_json::to_string(&Preset::Creative).unwrap(),
            "\"creative\""
        );
    }

    fn invalid(p: SamplingParams, name: &str) {
        match p.validate() {
            Err(e @ SamplingError::InvalidParameter { name: n, .. }) => {
                assert_eq!(n, name);
                assert!(e.is_input());
                assert!(e.hint().is_some());
                assert!(e.to_string().contains(name), "{e}");
            }
            other => panic!("expected invalid {name}, got {other:?}"),
        }
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let d = SamplingParams::default;
        invalid(
            SamplingParams {
                temperature: -0.1,
                ..d()
            },
            "temperature",
        );
        invalid(
            SamplingParams {
                temperature: f64::NAN,
                ..d()
            },
            "temperature",
        );
        invalid(
            SamplingParams {
                temperature: f64::INFINITY,
                ..d()
            },
            "temperature",
        );
        invalid(SamplingParams { top_p: 0.0, ..d() }, "top_p");
        invalid(SamplingParams { top_p: 1.5, ..d() }, "top_p");
        invalid(
            SamplingParams {
                top_p: f64::NAN,
                ..d()
            },
            "top_p",
        );
        invalid(SamplingParams { min_p: -0.1, ..d() }, "min_p");
        invalid(SamplingParams { min_p: 1.1, ..d() }, "min_p");
        invalid(
            SamplingParams {
                repetition_penalty: 0.0,
                ..d()
            },
            "repetition_penalty",
        );
        invalid(
            SamplingParams {
                repetition_penalty: -1.0,
                ..d()
            },
            "repetition_penalty",
        );
        invalid(
            SamplingParams {
                presence_penalty: f64::NAN,
                ..d()
            },
            "presence_penalty",
        );
        invalid(
            SamplingParams {
                frequency_penalty: f64::INFINITY,
                ..d()
            },
            "frequency_penalty",
        );
        invalid(
            SamplingParams {
                penalty_last_n: -2,
                ..d()
            },
            "penalty_last_n",
        );
        // Edges that are allowed.
        for p in [
            SamplingParams {
                temperature: 0.0,
                ..d()
            },
            SamplingParams { top_p: 1.0, ..d() },
            SamplingParams { min_p: 1.0, ..d() },
            SamplingParams { min_p: 0.0, ..d() },
            SamplingParams {
                presence_penalty: -2.0,
                ..d()
            },
            SamplingParams {
                penalty_last_n: 0,
                ..d()
            },
        ] {
            p.validate().unwrap();
        }
    }
}

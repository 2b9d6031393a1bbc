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
        Ok(())
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

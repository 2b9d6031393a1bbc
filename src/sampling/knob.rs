//! Sampling knobs by name, and the value lists `ntv sweep` walks: `KNOB=FROM:TO:STEP` or
//! `KNOB=a,b,c`. Pure: parsing and applying a value to [`SamplingParams`].

use std::fmt;

use super::{SamplingError, SamplingParams};

/// A sampling parameter that can be swept.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    Temperature,
    TopP,
    TopK,
    MinP,
    RepetitionPenalty,
    PresencePenalty,
    FrequencyPenalty,
    PenaltyLastN,
}

impl Knob {
    /// Every knob, in the order of the sampling pipeline's flags.
    pub const ALL: [Knob; 8] = [
        Knob::Temperature,
        Knob::TopP,
        Knob::TopK,
        Knob::MinP,
        Knob::RepetitionPenalty,
        Knob::PresencePenalty,
        Knob::FrequencyPenalty,
        Knob::PenaltyLastN,
    ];

    /// The flag name (`temp`, `top-p`, …).
    pub fn flag(self) -> &'static str {
        match self {
            Knob::Temperature => "temp",
            Knob::TopP => "top-p",
            Knob::TopK => "top-k",
            Knob::MinP => "min-p",
            Knob::RepetitionPenalty => "repeat-penalty",
            Knob::PresencePenalty => "presence-penalty",
            Knob::FrequencyPenalty => "frequency-penalty",
            Knob::PenaltyLastN => "penalty-last-n",
        }
    }

    /// A knob by its flag name, its JSON name or a common alias.
    pub fn parse(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        Some(match n.as_str() {
            "temp" | "temperature" | "t" => Knob::Temperature,
            "top-p" => Knob::TopP,
            "top-k" => Knob::TopK,
            "min-p" => Knob::MinP,
            "repeat-penalty" | "repetition-penalty" => Knob::RepetitionPenalty,
            "presence-penalty" => Knob::PresencePenalty,
            "frequency-penalty" => Knob::FrequencyPenalty,
            "penalty-last-n" => Knob::PenaltyLastN,
            _ => return None,
        })
    }

    /// Whether the knob takes whole numbers.
    pub fn integral(self) -> bool {
        matches!(self, Knob::TopK | Knob::PenaltyLastN)
    }

    /// `params` with this knob set to `v` (validated).
    pub fn apply(self, params: &SamplingParams, v: f64) -> Result<SamplingParams, SamplingError> {
        let mut p = params.clone();
        match self {
            Knob::Temperature => p.temperature = v,
            Knob::TopP => p.top_p = v,
            Knob::TopK => p.top_k = v as u32,
            Knob::MinP => p.min_p = v,
            Knob::RepetitionPenalty => p.repetition_penalty = v,
            Knob::PresencePenalty => p.presence_penalty = v,
            Knob::FrequencyPenalty => p.frequency_penalty = v,
            Knob::PenaltyLastN => p.penalty_last_n = v as i32,
        }
        p.validate()?;
        Ok(p)
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

/// The most values one sweep axis may have.
pub const MAX_VALUES: usize = 10_000;

/// One swept knob and its values, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub knob: Knob,
    pub values: Vec<f64>,
}

/// Why a sweep spec was refused (the caller turns it into an input error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl Axis {
    /// Parse `KNOB=FROM:TO:STEP` (both ends included, within rounding) or `KNOB=a,b,c`.
    /// Every value is checked against the knob's range on `base`.
    pub fn parse(spec: &str, base: &SamplingParams) -> Result<Self, SpecError> {
        let err = |m: String| SpecError(m);
        let (name, values) = spec
            .split_once('=')
            .ok_or_else(|| err(format!("{spec:?} is not KNOB=FROM:TO:STEP or KNOB=a,b,c")))?;
        let knob = Knob::parse(name).ok_or_else(|| {
            err(format!(
                "unknown knob {name:?}; knobs: {}",
                Knob::ALL.map(Knob::flag).join(", ")
            ))
        })?;
        let num = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| err(format!("{:?} in {spec:?} is not a number", s.trim())))
        };
        let values: Vec<f64> = if values.contains(':') {
            let parts: Vec<&str> = values.split(':').collect();
            let [from, to, step] = parts[..] else {
                return Err(err(format!("{spec:?}: a range is FROM:TO:STEP")));
            };
            let (from, to, step) = (num(from)?, num(to)?, num(step)?);
            if step <= 0.0 || to < from {
                return Err(err(format!(
                    "{spec:?}: a range needs FROM <= TO and a positive STEP"
                )));
            }
            let n = ((to - from) / step + 1e-9).floor() as usize + 1;
            if n > MAX_VALUES {
                return Err(err(format!(
                    "{spec:?} has {n} values; at most {MAX_VALUES}"
                )));
            }
            // Each value from its index (no accumulated rounding), then trimmed of float noise.
            (0..n)
                .map(|i| ((from + step * i as f64) * 1e9).round() / 1e9)
                .collect()
        } else {
            values.split(',').map(num).collect::<Result<_, _>>()?
        };
        if values.is_empty() {
            return Err(err(format!("{spec:?} has no values")));
        }
        for &v in &values {
            if knob.integral() && v.fract() != 0.0 {
                return Err(err(format!("{knob} takes whole numbers, not {v}")));
            }
            if knob.integral() && v < 0.0 && knob == Knob::TopK {
                return Err(err(format!("{knob} cannot be negative ({v})")));
            }
            knob.apply(base, v)
                .map_err(|e| err(format!("{knob}={v}: {e}")))?;
        }
        Ok(Self { knob, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SamplingParams {
        SamplingParams::default()
    }

    #[test]
    fn ranges_include_both_ends_without_accumulated_rounding() {
        let a = Axis::parse("temp=0.1:1.0:0.1", &base()).unwrap();
        assert_eq!(a.knob, Knob::Temperature);
        assert_eq!(a.values.len(), 10);
        assert_eq!(a.values[2], 0.3);
        assert_eq!(*a.values.last().unwrap(), 1.0);
        let a = Axis::parse("top_k=1:5:2", &base()).unwrap();
        assert_eq!((a.knob, a.values), (Knob::TopK, vec![1.0, 3.0, 5.0]));
    }

    #[test]
    fn lists_and_every_knob_name() {
        let a = Axis::parse("top-p=0.5, 0.9,1", &base()).unwrap();
        assert_eq!(a.values, vec![0.5, 0.9, 1.0]);
        for k in Knob::ALL {
            assert_eq!(Knob::parse(k.flag()), Some(k));
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(Knob::parse(json.as_str().unwrap()), Some(k));
        }
        assert_eq!(Knob::parse("temperature"), Some(Knob::Temperature));
    }

    #[test]
    fn applying_a_value_sets_only_that_knob() {
        let p = Knob::MinP.apply(&base(), 0.25).unwrap();
        assert_eq!(p.min_p, 0.25);
        assert_eq!(
            SamplingParams {
                min_p: base().min_p,
                ..p
            },
            base()
        );
        assert_eq!(
            Knob::PenaltyLastN
                .apply(&base(), -1.0)
                .unwrap()
                .penalty_last_n,
            -1
        );
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        for bad in [
            "temp",
            "warmth=1",
            "temp=a,b",
            "temp=1:0:0.1",
            "temp=0:1:0",
            "temp=0:1",
            "top-p=0.5:1.5:0.5",
            "top-k=1.5",
            "temp=0:1000000:0.001",
            "temp=",
        ] {
            assert!(Axis::parse(bad, &base()).is_err(), "{bad}");
        }
    }
}

//! `attention` attribution through llama.cpp: the attention probabilities from the position
//! predicting the target to every context position ([`crate::engine::AttentionCapture`]),
//! aggregated as Inseq 0.7 does by default: per layer the mean over heads, L1-normalised over
//! the context; then the mean over layers, L1-normalised again. One score per context token,
//! non-negative, summing to 1.
//!
//! Options (plain parameters here; `--layers`, `--heads`, `--layer-agg` on the command line): a
//! subset of layers and of heads, and how layers combine (`mean`, the default; `max`, the
//! element-wise maximum over layers; `last`, the last selected layer alone).

use std::str::FromStr;

use crate::engine::{AttentionCapture, AttentionRows, Decoder};

use super::error::AttributionError;

/// How the per-layer scores combine.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LayerAgg {
    /// Mean over layers (Inseq's default).
    #[default]
    Mean,
    /// Element-wise maximum over layers.
    Max,
    /// The last selected layer only.
    Last,
}

impl LayerAgg {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Max => "max",
            Self::Last => "last",
        }
    }
}

impl FromStr for LayerAgg {
    type Err = AttributionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mean" => Ok(Self::Mean),
            "max" => Ok(Self::Max),
            "last" => Ok(Self::Last),
            other => Err(AttributionError::BadInput(format!(
                "unknown layer aggregation `{other}` (use mean, max or last)"
            ))),
        }
    }
}

/// Which layers and heads enter the aggregation, and how layers combine.
#[derive(Debug, Clone, Default)]
pub struct AttentionOptions {
    /// Layers to use (0-based); `None` = every layer with attention.
    pub layers: Option<Vec<usize>>,
    /// Heads to use (0-based, the same in every layer); `None` = all heads.
    pub heads: Option<Vec<usize>>,
    pub layer_agg: LayerAgg,
    /// Skip the L1 renormalisations (`--agg sum|l2`): the plain mean (or max) over the selected
    /// heads and layers of the attention probabilities.
    pub raw: bool,
}

/// Attention attribution of one target.
#[derive(Debug, Clone)]
pub struct AttentionAttribution {
    /// One score per context token (non-negative, sums to 1).
    pub scores: Vec<f64>,
    /// p(target) under llama.cpp (quantised weights) at the predicting position.
    pub target_prob: f64,
    /// The captured rows, `[layer][head][position]`, before aggregation.
    pub rows: AttentionRows,
}

/// Divide by the sum of absolute values (left as is when that sum is 0).
pub fn l1_normalise(v: &mut [f64]) {
    let s: f64 = v.iter().map(|x| x.abs()).sum();
    if s > 0.0 && s.is_finite() {
        v.iter_mut().for_each(|x| *x /= s);
    }
}

/// Softmax probability of `target` under `logits` (f64 arithmetic).
pub fn softmax_prob(logits: &[f32], target: i32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    (logits[target as usize] as f64 - max).exp() / z
}

/// Aggregate captured rows into one score per context position (see the module doc).
pub fn aggregate(
    rows: &AttentionRows,
    opts: &AttentionOptions,
) -> Result<Vec<f64>, AttributionError> {
    let layers: Vec<usize> = match &opts.layers {
        None => rows.layers.clone(),
        Some(ls) => {
            if let Some(&bad) = ls.iter().find(|l| !rows.layers.contains(l)) {
                return Err(AttributionError::BadInput(format!(
                    "layer {bad} has no attention to read (layers with attention: 0..{})",
                    rows.n_layer
                )));
            }
            ls.clone()
        }
    };
    let heads: Vec<usize> = match &opts.heads {
        None => (0..rows.n_head).collect(),
        Some(hs) => {
            if let Some(&bad) = hs.iter().find(|&&h| h >= rows.n_head) {
                return Err(AttributionError::BadInput(format!(
                    "head {bad} does not exist (the model has heads 0..{})",
                    rows.n_head
                )));
            }
            hs.clone()
        }
    };
    if layers.is_empty() || heads.is_empty() {
        return Err(AttributionError::BadInput(
            "select at least one layer and one head".into(),
        ));
    }
    let n = rows.n_pos;
    let mut per_layer = layers.iter().map(|&l| {
        let mut v = vec![0f64; n];
        for &h in &heads {
            for (acc, &x) in v.iter_mut().zip(rows.row(l, h)) {
                *acc += x as f64;
            }
        }
        v.iter_mut().for_each(|x| *x /= heads.len() as f64);
        if !opts.raw {
            l1_normalise(&mut v);
        }
        v
    });
    let mut out = match opts.layer_agg {
        LayerAgg::Mean => {
            let mut acc = vec![0f64; n];
            for v in per_layer {
                acc.iter_mut().zip(&v).for_each(|(a, x)| *a += x);
            }
            acc.iter_mut().for_each(|a| *a /= layers.len() as f64);
            acc
        }
        LayerAgg::Max => per_layer
            .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| x.max(*y)).collect())
            .unwrap_or_default(),
        LayerAgg::Last => per_layer.next_back().unwrap_or_default(),
    };
    if !opts.raw {
        l1_normalise(&mut out);
    }
    Ok(out)
}

/// Attention attribution of `target` (any token id: a completion token or a candidate) after
/// `context`: one decode with capture, then [`aggregate`]; p(target) from the ordinary
/// decoder `logits` (see [`AttentionCapture::capture`]).
pub fn attribute(
    capture: &mut AttentionCapture<'_>,
    logits: &mut Decoder<'_>,
    context: &[i32],
    target: i32,
    opts: &AttentionOptions,
) -> Result<AttentionAttribution, AttributionError> {
    let last = context.len().saturating_sub(1);
    Ok(attribute_many(capture, logits, context, &[(last, target)], opts)?.remove(0))
}

/// Several targets from one decode of `tokens`: `(p, target)` attributes `target` predicted at
/// position `p` (its context is `tokens[..=p]`; the causal mask makes the row the same as a
/// decode of that prefix alone). Used for every completion token of a sequence at once.
pub fn attribute_many(
    capture: &mut AttentionCapture<'_>,
    logits: &mut Decoder<'_>,
    tokens: &[i32],
    targets: &[(usize, i32)],
    opts: &AttentionOptions,
) -> Result<Vec<AttentionAttribution>, AttributionError> {
    let positions: Vec<usize> = targets.iter().map(|&(p, _)| p).collect();
    let all = capture.capture(tokens, &positions, logits)?;
    all.into_iter()
        .zip(targets)
        .map(|(rows, &(_, target))| {
            if target < 0 || target as usize >= rows.logits.len() {
                return Err(AttributionError::BadInput(format!(
                    "target token id {target} is outside the vocabulary (0..{})",
                    rows.logits.len()
                )));
            }
            let scores = aggregate(&rows, opts)?;
            Ok(AttentionAttribution {
                scores,
                target_prob: softmax_prob(&rows.logits, target),
                rows,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> AttentionRows {
        // 2 layers, 2 heads, 3 positions.
        let data = vec![
            0.5, 0.5, 0.0, // l0 h0
            0.0, 0.5, 0.5, // l0 h1
            1.0, 0.0, 0.0, // l1 h0
            1.0, 0.0, 0.0, // l1 h1
        ];
        AttentionRows {
            n_layer: 2,
            n_head: 2,
            n_pos: 3,
            layers: vec![0, 1],
            data,
            masked_max: 0.0,
            logits: vec![0.0; 4],
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn inseq_mean_over_heads_then_layers() {
        let s = aggregate(&rows(), &AttentionOptions::default()).unwrap();
        // l0 = [.25, .5, .25], l1 = [1, 0, 0] → mean [.625, .25, .125].
        assert!(close(&s, &[0.625, 0.25, 0.125]), "{s:?}");
    }

    #[test]
    fn subsets_and_layer_aggregations() {
        let o = AttentionOptions {
            layers: Some(vec![0]),
            heads: Some(vec![1]),
            layer_agg: LayerAgg::Mean,
            raw: false,
        };
        assert!(close(&aggregate(&rows(), &o).unwrap(), &[0.0, 0.5, 0.5]));
        let o = AttentionOptions {
            layer_agg: LayerAgg::Max,
            ..Default::default()
        };
        // max([.25,.5,.25],[1,0,0]) = [1,.5,.25] → /1.75.
        assert!(close(
            &aggregate(&rows(), &o).unwrap(),
            &[1.0 / 1.75, 0.5 / 1.75, 0.25 / 1.75]
        ));
        let o = AttentionOptions {
            layer_agg: LayerAgg::Last,
            ..Default::default()
        };
        assert!(close(&aggregate(&rows(), &o).unwrap(), &[1.0, 0.0, 0.0]));
        let bad = AttentionOptions {
            heads: Some(vec![2]),
            ..Default::default()
        };
        assert!(aggregate(&rows(), &bad).is_err());
        assert_eq!("last".parse::<LayerAgg>().unwrap(), LayerAgg::Last);
        assert!("median".parse::<LayerAgg>().is_err());
    }

    #[test]
    fn raw_skips_the_renormalisations() {
        let o = AttentionOptions {
            layers: Some(vec![0]),
            heads: Some(vec![0]),
            raw: true,
            ..Default::default()
        };
        let mut r = rows();
        r.data[0] = 0.25; // l0 h0 = [.25, .5, 0]: sums to .75
        assert!(close(&aggregate(&r, &o).unwrap(), &[0.25, 0.5, 0.0]));
    }

    #[test]
    fn softmax_probability() {
        let p = softmax_prob(&[0.0, 0.0, (2f32).ln(), 0.0], 2);
        assert!((p - 0.4).abs() < 1e-6);
    }
}

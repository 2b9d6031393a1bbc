//! `occlusion` attribution through llama.cpp: leave-one-out. For each context token j,
//! `score_j = log p(target | context) − log p(target | context without token j)` (the tokens
//! after j move down one position; with `--target-fn prob` the drop in p instead of log p).
//! Positive: the token helped the target; negative: it hurt.
//!
//! With a window `w > 1` (`--window`), spans of `w` consecutive tokens are removed instead
//! (`[0, w), [w, 2w), …`: Inseq's and Captum's sliding windows with the stride equal to the
//! window) and each span's drop is every one of its tokens' score.
//!
//! Cost: the full context is decoded once; each variant reuses the KV cells of the prefix before
//! the span (sequence copies) and decodes only the tokens after it, many variants per
//! `llama_decode` ([`crate::engine::Occluder`]): `n + n(n − 1)/2` tokens for leave-one-out,
//! about `n + n²/2w` with a window ([`crate::engine::occlusion_cost`]).
//!
//! p(target) is the softmax of the full context's raw logits at the predicting position, from
//! the same decode (llama.cpp's ordinary path).
//!
//! Aggregation. Inseq has no occlusion method, so there is no reference to match; ntv's choices:
//! - `raw` (`--agg sum`): the signed Δ log p above;
//! - `abs` (`--agg l2`, the L2 norm of a scalar): |Δ log p|, unnormalised;
//! - `inseq` (the default, comparable with the other methods' Inseq-style scores): negatives
//!   clamped to 0 (a token whose removal makes the target more likely did not contribute to
//!   it), then L1-normalised to sum to 1 (all zeros when no token helped).

use crate::engine::Occluder;

use super::{AttributionError, TargetFn, Watch};

/// How occlusion's Δ log p become scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OcclusionAgg {
    /// Negatives clamped to 0, then L1-normalised (sums to 1, or all 0).
    #[default]
    Inseq,
    /// Signed Δ log p.
    Raw,
    /// |Δ log p|.
    Abs,
}

/// Occlusion attribution of one target.
#[derive(Debug, Clone)]
pub struct OcclusionAttribution {
    /// One score per context token, aggregated as asked.
    pub scores: Vec<f64>,
    /// Signed drop of the target function (log p or p) per context token, whatever the
    /// aggregation.
    pub delta: Vec<f64>,
    /// log p(target | full context) under llama.cpp.
    pub full_logprob: f64,
    /// Tokens per occluded span (1: leave-one-out).
    pub window: usize,
    /// Tokens decoded for this target (full context once plus the suffixes).
    pub decoded_tokens: usize,
    /// `llama_decode` calls for this target.
    pub decode_calls: usize,
}

impl OcclusionAttribution {
    /// p(target | full context).
    pub fn target_prob(&self) -> f64 {
        self.full_logprob.exp()
    }
}

/// Turn signed Δ log p into scores.
pub fn aggregate(delta: &[f64], agg: OcclusionAgg) -> Vec<f64> {
    match agg {
        OcclusionAgg::Raw => delta.to_vec(),
        OcclusionAgg::Abs => delta.iter().map(|d| d.abs()).collect(),
        OcclusionAgg::Inseq => {
            let mut v: Vec<f64> = delta.iter().map(|d| d.max(0.0)).collect();
            super::attention::l1_normalise(&mut v);
            v
        }
    }
}

/// Occlusion attribution of `target` (any token id: a completion token or a candidate) after
/// `context`. `target_fn` is `Logprob` (Δ log p) or `Prob` (Δ p); `Logit` is refused (the
/// leave-one-out decode scores probabilities).
pub fn attribute(
    occluder: &mut Occluder<'_>,
    context: &[i32],
    target: i32,
    target_fn: TargetFn,
    agg: OcclusionAgg,
) -> Result<OcclusionAttribution, AttributionError> {
    attribute_windowed(
        occluder,
        context,
        target,
        target_fn,
        agg,
        1,
        &Watch::default(),
    )
}

/// [`attribute`] removing spans of `window` tokens, counting decoded tokens on `watch` (its
/// total is the caller's to set, [`crate::engine::occlusion_cost`]) and stopping between
/// decodes once it is cancelled.
pub fn attribute_windowed(
    occluder: &mut Occluder<'_>,
    context: &[i32],
    target: i32,
    target_fn: TargetFn,
    agg: OcclusionAgg,
    window: usize,
    watch: &Watch,
) -> Result<OcclusionAttribution, AttributionError> {
    if window == 0 || window > context.len().max(1) {
        return Err(AttributionError::BadInput(format!(
            "occlusion window {window} does not fit a {}-token context (1 to {})",
            context.len(),
            context.len().max(1)
        )));
    }
    let value: fn(f64) -> f64 = match target_fn {
        TargetFn::Logprob => |lp| lp,
        TargetFn::Prob => f64::exp,
        TargetFn::Logit => {
            return Err(AttributionError::BadInput(
                "occlusion measures the drop in log p or p: use --target-fn logprob (its default) or prob".into(),
            ));
        }
    };
    watch.check()?;
    let loo = occluder
        .leave_spans_out(context, &[target], window, &mut |decoded| {
            watch.advance(decoded as u64);
            !watch.is_cancelled()
        })?
        .ok_or(AttributionError::Cancelled)?;
    let full = loo.full[0];
    let mut delta = vec![0.0; context.len()];
    for (span, w) in loo.spans.iter().zip(&loo.without) {
        let d = value(full) - value(w[0]);
        delta[span.clone()].iter_mut().for_each(|x| *x = d);
    }
    Ok(OcclusionAttribution {
        scores: aggregate(&delta, agg),
        delta,
        full_logprob: full,
        window,
        decoded_tokens: loo.decoded_tokens,
        decode_calls: loo.decode_calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregations() {
        let d = [0.5, -0.25, 1.5, 0.0];
        assert_eq!(aggregate(&d, OcclusionAgg::Raw), d.to_vec());
        assert_eq!(aggregate(&d, OcclusionAgg::Abs), vec![0.5, 0.25, 1.5, 0.0]);
        assert_eq!(
            aggregate(&d, OcclusionAgg::Inseq),
            vec![0.25, 0.0, 0.75, 0.0]
        );
        assert_eq!(
            aggregate(&[-1.0, -2.0], OcclusionAgg::Inseq),
            vec![0.0, 0.0]
        );
    }
}

//! The logit lens (`ntv lens`): the model's own final norm and output head applied to the
//! residual stream after every layer, at the positions asked for. The engine captures the
//! residuals and evaluates the head ([`crate::engine::LensHead`]); this module picks the
//! positions, runs the head over (layer, position) rows in parallel chunks and reduces each
//! row's logits to its top tokens, the tracked token's probability and rank, and the entropy.

use std::time::Instant;

use rayon::prelude::*;

use crate::driver::pill;
use crate::engine::{LensHead, Model, ResidualCapture};
use crate::error::{Result, input_err};
use crate::record::{LensDoc, LensLayer, LensPosition, LensTimings, LensToken, LensTracked};
use crate::sampling::{entropy_bits, logprob_and_rank};

/// Rows of the head evaluated together by one worker: each tile of the vocabulary matrix is
/// read once per chunk, and the chunk's logits (`CHUNK × n_vocab` f32s) stay small.
const CHUNK: usize = 16;

/// Which positions the lens reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LensSel {
    /// The last context position (it predicts the next token).
    Next,
    /// The position predicting completion token `I` (negative counts from the end).
    Index(i64),
    /// Every context position.
    All,
}

/// What `ntv lens` asks for.
#[derive(Debug, Clone)]
pub struct LensRequest {
    pub sel: LensSel,
    /// Tokens listed per layer.
    pub top: usize,
    /// Follow this token instead of each position's final top-1.
    pub token: Option<i32>,
}

/// Reduced statistics of one (layer, position) row.
#[derive(Debug, Clone, PartialEq)]
struct RowStats {
    /// `(id, p)`, descending, ties by lower id.
    top: Vec<(u32, f64)>,
    p: f64,
    rank: u32,
    entropy_bits: f64,
}

/// The `k` largest logits, descending, ties by lower id.
fn top_k(z: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in z.iter().enumerate() {
        if best.len() == k && best.last().is_none_or(|&(_, w)| v <= w) {
            continue;
        }
        // Insert after every entry >= v (earlier ids win ties: they came first).
        let at = best.partition_point(|&(_, w)| w >= v);
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// The statistics of one row of lens logits, following `tracked` (None: the row's own top-1).
fn row_stats(z: &[f32], top: usize, tracked: Option<u32>) -> Result<RowStats> {
    let best = top_k(z, top.max(1));
    let tracked = tracked.unwrap_or(best[0].0);
    let (logprob, rank) = logprob_and_rank(z, tracked as usize)?;
    // log Z from the tracked token's own log-probability: no second normalisation pass.
    let log_z = f64::from(z[tracked as usize]) - logprob;
    Ok(RowStats {
        top: best
            .into_iter()
            .map(|(id, v)| (id, (f64::from(v) - log_z).exp()))
            .collect(),
        p: logprob.exp(),
        rank,
        entropy_bits: entropy_bits(z)?,
    })
}

/// The head over `rows` (indices into the prepared input), in parallel chunks; `tracked(r)` is
/// the token followed in row `r`.
fn head_rows(
    head: &LensHead,
    input: &crate::engine::HeadInput,
    rows: std::ops::Range<usize>,
    top: usize,
    tracked: &(dyn Fn(usize) -> Option<u32> + Sync),
) -> Result<Vec<RowStats>> {
    let nv = head.n_vocab();
    let starts: Vec<usize> = rows.clone().step_by(CHUNK).collect();
    let chunks: Vec<Result<Vec<RowStats>>> = starts
        .into_par_iter()
        .map(|s| {
            let r = s..(s + CHUNK).min(rows.end);
            let mut z = vec![0f32; r.len() * nv];
            head.logits(input, r.clone(), &mut z);
            r.clone()
                .zip(z.chunks_exact(nv))
                .map(|(row, zr)| row_stats(zr, top, tracked(row)))
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for c in chunks {
        out.extend(c?);
    }
    Ok(out)
}

/// Positions (and completion indices of the token each predicts) for a selection.
fn positions(sel: LensSel, n_prompt: usize, n_completion: usize) -> Result<Vec<usize>> {
    let n = n_prompt + n_completion;
    Ok(match sel {
        LensSel::Next => vec![n - 1],
        LensSel::All => (0..n).collect(),
        LensSel::Index(i) => {
            let idx = if i < 0 { n_completion as i64 + i } else { i };
            if n_completion == 0 || idx < 0 || idx >= n_completion as i64 {
                return Err(input_err(
                    format!("--index {i} is outside the completion ({n_completion} tokens)"),
                    "--index counts completion tokens of the active branch (negative from the end); without a completion use no --index (the next token) or --all",
                ));
            }
            // Completion token I is predicted by the position before it.
            vec![n_prompt + idx as usize - 1]
        }
    })
}

/// The lens document over a context (`prompt` + `completion`).
pub fn lens(
    model: &Model,
    prompt_text: &str,
    prompt: &[i32],
    completion: &[i32],
    req: &LensRequest,
    threads: i32,
) -> Result<LensDoc> {
    let context: Vec<i32> = prompt.iter().chain(completion).copied().collect();
    if context.is_empty() {
        return Err(crate::engine::EngineError::EmptyContext.into());
    }
    let wanted = positions(req.sel, prompt.len(), completion.len())?;
    let head = LensHead::open(&model.info().path)?;
    let nv = head.n_vocab();
    if let Some(t) = req.token
        && !(0..nv as i64).contains(&i64::from(t))
    {
        return Err(crate::engine::EngineError::TokenOutOfRange {
            id: t.into(),
            n_vocab: nv,
        }
        .into());
    }
    let t = Instant::now();
    let mut cap = ResidualCapture::new(model, &head, context.len(), threads)?;
    let res = cap.capture(&context, &wanted)?;
    drop(cap);
    let capture_ms = super::ms(t);

    let t = Instant::now();
    let n_pos = res.positions.len();
    let n_layers = res.n_block + 1;
    let input = head.prepare(&res.data);
    // `-t` bounds the head's workers too (rayon's global pool has one per core).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = (threads >= 1 && (threads as usize) < cores)
        .then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads as usize)
                .thread_name(|i| format!("ntv-lens-{i}"))
                .build()
                .ok()
        })
        .flatten();
    let evaluate = || -> Result<(Vec<RowStats>, Vec<u32>)> {
        // The last layer first: its top-1 is what each position follows by default.
        let last = (n_layers - 1) * n_pos;
        let final_rows = head_rows(&head, &input, last..last + n_pos, req.top, &|_| {
            req.token.map(|t| t as u32)
        })?;
        let tracked: Vec<u32> = match req.token {
            Some(t) => vec![t as u32; n_pos],
            None => final_rows.iter().map(|s| s.top[0].0).collect(),
        };
        let mut rows = head_rows(&head, &input, 0..last, req.top, &|r| {
            Some(tracked[r % n_pos])
        })?;
        rows.extend(final_rows);
        Ok((rows, tracked))
    };
    let (rows, tracked) = match &pool {
        Some(p) => p.install(evaluate)?,
        None => evaluate()?,
    };
    let head_ms = super::ms(t);

    let out = res
        .positions
        .iter()
        .enumerate()
        .map(|(k, &pos)| {
            let layers: Vec<LensLayer> = (0..n_layers)
                .map(|l| {
                    let s = &rows[l * n_pos + k];
                    LensLayer {
                        layer: l,
                        top: s
                            .top
                            .iter()
                            .take(req.top)
                            .map(|&(id, p)| LensToken {
                                token: pill(model, id as i32),
                                p,
                            })
                            .collect(),
                        p: s.p,
                        rank: s.rank,
                        entropy_bits: s.entropy_bits,
                    }
                })
                .collect();
            let first_top1_layer = (0..n_layers).find(|&l| rows[l * n_pos + k].rank == 1);
            LensPosition {
                position: pos,
                input: pill(model, context[pos]),
                next: context.get(pos + 1).map(|&id| pill(model, id)),
                completion_index: (pos + 1 >= prompt.len() && pos + 1 < context.len())
                    .then(|| pos + 1 - prompt.len()),
                tracked: pill(model, tracked[k] as i32),
                tracked_is: if req.token.is_some() {
                    LensTracked::Token
                } else {
                    LensTracked::FinalTop1
                },
                first_top1_layer,
                layers,
            }
        })
        .collect();
    Ok(LensDoc {
        schema: "ntv.lens/1".into(),
        model: super::facts(model),
        prompt_text: prompt_text.to_string(),
        context_tokens: context.iter().map(|&id| pill(model, id)).collect(),
        n_layers,
        norm_eps: f64::from(head.eps()),
        softcap: head.softcap().map(f64::from),
        positions: out,
        timings: LensTimings {
            load_ms: 0.0,
            capture_ms,
            head_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_descending_with_ties_by_lower_id() {
        let z = [1.0, 3.0, 2.0, 3.0, -1.0, 2.0];
        assert_eq!(top_k(&z, 3), vec![(1, 3.0), (3, 3.0), (2, 2.0)]);
        assert_eq!(top_k(&z, 1), vec![(1, 3.0)]);
        assert_eq!(top_k(&z, 10).len(), 6);
    }

    #[test]
    fn row_stats_are_the_softmax_of_the_row() {
        let z = [0.0f32, (2f32).ln(), 0.0, (4f32).ln()];
        // softmax = [1, 2, 1, 4] / 8
        let s = row_stats(&z, 2, Some(1)).unwrap();
        assert!((s.p - 0.25).abs() < 1e-9, "{s:?}");
        assert_eq!(s.rank, 2);
        assert_eq!(s.top[0].0, 3);
        assert!((s.top[0].1 - 0.5).abs() < 1e-9);
        assert!((s.top[1].1 - 0.25).abs() < 1e-9);
        let h = -(2.0 * 0.125 * 0.125f64.log2() + 0.25 * 0.25f64.log2() + 0.5 * 0.5f64.log2());
        assert!(
            (s.entropy_bits - h).abs() < 1e-6,
            "{} vs {h}",
            s.entropy_bits
        );
        let own = row_stats(&z, 2, None).unwrap();
        assert_eq!(own.rank, 1);
        assert!((own.p - own.top[0].1).abs() < 1e-12 && (own.p - 0.5).abs() < 1e-9);
    }

    #[test]
    fn positions_follow_the_selection() {
        assert_eq!(positions(LensSel::Next, 3, 2).unwrap(), vec![4]);
        assert_eq!(positions(LensSel::All, 2, 1).unwrap(), vec![0, 1, 2]);
        // Completion token 0 is predicted by the last prompt position.
        assert_eq!(positions(LensSel::Index(0), 3, 2).unwrap(), vec![2]);
        assert_eq!(positions(LensSel::Index(-1), 3, 2).unwrap(), vec![3]);
        assert!(positions(LensSel::Index(2), 3, 2).is_err());
        assert!(positions(LensSel::Index(0), 3, 0).is_err());
    }
}

//! `sweep`: the demo's question — what happens to the next-token probabilities when one knob
//! changes? The context is decoded once; every knob value is only the distribution maths again
//! on the logits already in the KV state.

use std::collections::HashMap;
use std::time::Instant;

use crate::driver::{Driver, pill};
use crate::error::{Result, input_err};
use crate::record::{SweepAxis, SweepCandidate, SweepCell, SweepDoc, SweepPoint, SweepTransition};
use crate::sampling::knob::Axis;
use crate::sampling::{CutStage, SamplingParams};

use super::{Workbench, facts, ms};

/// How a sweep is asked for.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    /// One or two axes; the first varies fastest.
    pub axes: Vec<Axis>,
    /// Sweep the distribution before completion token `at` (default: after the completion).
    pub at: Option<usize>,
    /// Kept ids listed per point, at most.
    pub max_kept: usize,
}

/// The most points (product of the axes' lengths) one sweep computes.
pub const MAX_POINTS: usize = 100_000;

/// What one point leaves behind for the rows chosen at the end: every kept id with its
/// `p_final`, its entropy, and the stage that cut each token of the pool.
struct Raw {
    kept_count: usize,
    kept_ids: Vec<i32>,
    /// The kept tokens that may still become rows (`p_base` not below the rows' floor then).
    kept: Vec<(u32, f64)>,
    entropy: f64,
    pool_cut: Vec<Option<CutStage>>,
}

impl<'m> Workbench<'m> {
    /// Sweep the knobs of `req` over the active branch's context (the session is not changed).
    pub fn sweep(&mut self, req: &SweepRequest) -> Result<SweepDoc> {
        if req.axes.is_empty() || req.axes.len() > 2 {
            return Err(input_err(
                "a sweep takes one or two knobs",
                "e.g. ntv sweep temp=0.1:2:0.1, or ntv sweep temp=0.5,1 top-p=0.8,0.95",
            ));
        }
        if req.axes.len() == 2 && req.axes[0].knob == req.axes[1].knob {
            return Err(input_err(
                format!("{} is swept twice", req.axes[0].knob),
                "sweep two different knobs",
            ));
        }
        let n_points: usize = req.axes.iter().map(|a| a.values.len()).product();
        if n_points > MAX_POINTS {
            return Err(input_err(
                format!("the sweep has {n_points} points; at most {MAX_POINTS}"),
                "use fewer values or a coarser step",
            ));
        }
        let completion = self.completion().to_vec();
        let position = req.at.unwrap_or(completion.len());
        if position > completion.len() {
            return Err(input_err(
                format!(
                    "--at {position} is past the completion ({} tokens)",
                    completion.len()
                ),
                "pass --at I with 0 <= I <= the completion length",
            ));
        }
        let base = self.settings.params.clone();
        let grid = points(&req.axes, &base)?;
        let t = Instant::now();
        self.primed()?;
        let driver = self.driver.as_mut().expect("primed");
        driver.set_completion(&completion[..position])?;
        let context = driver.context().to_vec();
        driver.decoder().eval(&context)?;
        let decode_ms = ms(t);
        let t = Instant::now();
        let result = compute(driver, &grid, self.settings.display_k, req.max_kept);
        driver.set_completion(&completion)?;
        let (candidates, points) = result?;
        let maths_ms = ms(t);
        let candidates: Vec<SweepCandidate> = candidates
            .into_iter()
            .map(|(id, p_base, rank)| SweepCandidate {
                token: pill(self.model, id as i32),
                p_base,
                rank,
            })
            .collect();
        let transitions = transitions(&req.axes, &candidates, &points);
        Ok(SweepDoc {
            schema: "ntv.sweep/1".into(),
            model: facts(self.model),
            prompt: self.prompt.prompt.clone(),
            branch: self.store.session.active_branch.clone(),
            position,
            context_token_count: context.len(),
            params: base,
            axes: req
                .axes
                .iter()
                .map(|a| SweepAxis {
                    knob: a.knob,
                    values: a.values.clone(),
                })
                .collect(),
            candidates,
            points,
            transitions,
            constraint: self.settings.constraint.clone(),
            cache: self.cache_use(),
            decode_ms,
            maths_ms,
        })
    }
}

/// Every combination of values (first axis fastest) with its parameters.
fn points(axes: &[Axis], base: &SamplingParams) -> Result<Vec<(Vec<f64>, SamplingParams)>> {
    let outer: &[f64] = axes.get(1).map_or(&[f64::NAN], |a| &a.values);
    let mut grid = Vec::new();
    for &o in outer {
        let p = match axes.get(1) {
            Some(a) => a.knob.apply(base, o)?,
            None => base.clone(),
        };
        for &v in &axes[0].values {
            let params = axes[0].knob.apply(&p, v).map_err(|e| {
                input_err(
                    format!("{}={v}: {e}", axes[0].knob),
                    "every combination of the knobs' values must be valid",
                )
            })?;
            let mut values = vec![v];
            if axes.len() == 2 {
                values.push(o);
            }
            grid.push((values, params));
        }
    }
    Ok(grid)
}

/// Candidate rows `(id, p_base, rank)` and one point per grid entry. The rows are the tokens
/// some value keeps, by `p_base` descending, at most `rows`.
///
/// Each point's maths runs once: it records the kept list and, for a pool of the most probable
/// tokens at the first point, the stage that cut them. Only a row outside that pool (possible
/// under a constraint) sends the points that cut it through the maths again.
#[allow(clippy::type_complexity)]
fn compute(
    driver: &mut Driver<'_>,
    grid: &[(Vec<f64>, SamplingParams)],
    rows: usize,
    max_kept: usize,
) -> Result<(Vec<(u32, f64, u32)>, Vec<SweepPoint>)> {
    let mut raws: Vec<Raw> = Vec::with_capacity(grid.len());
    // Kept somewhere, with p_base (the same under every knob).
    let mut union: HashMap<u32, f64> = HashMap::new();
    let mut pool: Vec<u32> = Vec::new();
    // The `rows` best p_base values of the union so far, descending: the union only grows, so
    // a kept token below the last of them can never become a row and need not be stored.
    let mut best: Vec<f64> = Vec::with_capacity(rows + 1);
    for (_, params) in grid {
        let raw = driver.inspect(params, |d| {
            if pool.is_empty() {
                pool = d.top_by_p_temp((4 * rows).max(64));
            }
            for &(id, _) in d.kept_tokens() {
                if let std::collections::hash_map::Entry::Vacant(e) = union.entry(id) {
                    let pb = d.p_base(id as usize);
                    e.insert(pb);
                    if best.len() < rows || best.last().is_some_and(|&l| pb > l) {
                        let at = best.partition_point(|&b| b >= pb);
                        best.insert(at, pb);
                        best.truncate(rows);
                    }
                }
            }
            let floor = if best.len() == rows {
                best[rows - 1]
            } else {
                0.0
            };
            Raw {
                kept_count: d.kept_count(),
                kept_ids: d
                    .kept_tokens()
                    .iter()
                    .take(max_kept)
                    .map(|&(id, _)| id as i32)
                    .collect(),
                kept: d
                    .kept_tokens()
                    .iter()
                    .filter(|&&(id, _)| union[&id] >= floor)
                    .copied()
                    .collect(),
                entropy: d.entropy_final_bits(),
                pool_cut: pool.iter().map(|&id| d.cut_by(id as usize)).collect(),
            }
        })?;
        raws.push(raw);
    }
    let mut order: Vec<(u32, f64)> = union.into_iter().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(rows);
    let ids: Vec<u32> = order.iter().map(|&(id, _)| id).collect();
    let in_pool: Vec<Option<usize>> = ids
        .iter()
        .map(|id| pool.iter().position(|p| p == id))
        .collect();
    let mut points = Vec::with_capacity(grid.len());
    for ((values, params), raw) in grid.iter().zip(&raws) {
        let mut cells: Vec<SweepCell> = ids
            .iter()
            .zip(&in_pool)
            .map(|(&id, pooled)| {
                let p = raw.kept.iter().find(|(k, _)| *k == id).map(|&(_, p)| p);
                SweepCell {
                    id: id as i32,
                    p_final: p.unwrap_or(0.0),
                    kept: p.is_some(),
                    cut_by: match (p, pooled) {
                        (Some(_), _) => None,
                        (None, Some(i)) => raw.pool_cut[*i],
                        (None, None) => Some(CutStage::Constraint), // settled below
                    },
                }
            })
            .collect();
        if cells
            .iter()
            .zip(&in_pool)
            .any(|(c, pooled)| !c.kept && pooled.is_none())
        {
            driver.inspect(params, |d| {
                for (c, _) in cells
                    .iter_mut()
                    .zip(&in_pool)
                    .filter(|(c, pooled)| !c.kept && pooled.is_none())
                {
                    c.cut_by = d.cut_by(c.id as usize);
                }
            })?;
        }
        points.push(SweepPoint {
            values: values.clone(),
            kept_token_count: raw.kept_count,
            kept_truncated: raw.kept_count > max_kept,
            kept_ids: raw.kept_ids.clone(),
            entropy_final: if raw.entropy.is_finite() {
                raw.entropy
            } else {
                0.0
            },
            cells,
        });
    }
    let ranks = match grid.first() {
        Some((_, params)) => driver.inspect(params, |d| d.base_ranks(&ids))?,
        None => Vec::new(),
    };
    Ok((
        order
            .iter()
            .zip(ranks)
            .map(|(&(id, p), r)| (id, p, r))
            .collect(),
        points,
    ))
}

/// Where each row enters or leaves the kept set along the first axis (per value of the
/// second axis).
fn transitions(
    axes: &[Axis],
    candidates: &[SweepCandidate],
    points: &[SweepPoint],
) -> Vec<SweepTransition> {
    let n = axes[0].values.len();
    let mut out = Vec::new();
    for slice in points.chunks(n) {
        let at = (axes.len() == 2).then(|| slice[0].values[1]);
        for (row, c) in candidates.iter().enumerate() {
            let kept: Vec<bool> = slice.iter().map(|p| p.cells[row].kept).collect();
            let change = |from: bool| {
                (1..kept.len())
                    .find(|&i| kept[i - 1] == from && kept[i] != from)
                    .map(|i| slice[i].values[0])
            };
            out.push(SweepTransition {
                id: c.token.id,
                at,
                kept_at_start: kept[0],
                enters_at: change(false),
                leaves_at: change(true),
            });
        }
    }
    out
}

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

/// What one point leaves behind for the rows chosen at the end.
struct Raw {
    kept_count: usize,
    kept_ids: Vec<i32>,
    /// The `rows` kept tokens of highest `p_base`, as (id, p_final, p_base): a row that this
    /// point keeps is always among them (the tokens kept here above it by `p_base` are rows'
    /// rivals everywhere, and fewer than `rows` of them precede a row).
    top: Vec<(u32, f64, f64)>,
    entropy: f64,
    /// The stage that cut each token of the pool (the most probable tokens at the first
    /// point), so cut rows rarely need the maths again.
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
/// The points' maths run once each, side by side ([`Driver::inspect_all`]); only a row that is
/// cut at a point and lies outside the pool (possible under a constraint) sends that point
/// through the maths again.
#[allow(clippy::type_complexity)]
fn compute(
    driver: &mut Driver<'_>,
    grid: &[(Vec<f64>, SamplingParams)],
    rows: usize,
    max_kept: usize,
) -> Result<(Vec<(u32, f64, u32)>, Vec<SweepPoint>)> {
    let params: Vec<SamplingParams> = grid.iter().map(|(_, p)| p.clone()).collect();
    let Some(first) = params.first() else {
        return Ok((Vec::new(), Vec::new()));
    };
    let pool = driver.inspect(first, |d| d.top_by_p_temp((4 * rows).max(64)))?;
    let raws = driver.inspect_all(&params, |d| {
        let mut top: Vec<(u32, f64, f64)> = d
            .kept_tokens()
            .iter()
            .map(|&(id, p)| (id, p, d.p_base(id as usize)))
            .collect();
        let by_base =
            |a: &(u32, f64, f64), b: &(u32, f64, f64)| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0));
        if top.len() > rows {
            top.select_nth_unstable_by(rows, by_base);
            top.truncate(rows);
        }
        Raw {
            kept_count: d.kept_count(),
            kept_ids: d
                .kept_tokens()
                .iter()
                .take(max_kept)
                .map(|&(id, _)| id as i32)
                .collect(),
            top,
            entropy: d.entropy_final_bits(),
            pool_cut: pool.iter().map(|&id| d.cut_by(id as usize)).collect(),
        }
    })?;
    // Rows: the union of every point's top, by p_base (the same under every knob).
    let mut union: HashMap<u32, f64> = HashMap::new();
    for r in &raws {
        for &(id, _, pb) in &r.top {
            union.insert(id, pb);
        }
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
    for ((values, params), raw) in grid.iter().zip(raws) {
        let mut cells: Vec<SweepCell> = ids
            .iter()
            .zip(&in_pool)
            .map(|(&id, pooled)| {
                let p = raw.top.iter().find(|t| t.0 == id).map(|t| t.1);
                SweepCell {
                    id: id as i32,
                    p_final: p.unwrap_or(0.0),
                    kept: p.is_some(),
                    cut_by: match (p, pooled) {
                        (Some(_), _) => None,
                        (None, Some(i)) => raw.pool_cut[*i],
                        (None, None) => None, // settled below
                    },
                }
            })
            .collect();
        let unpooled_cut = |c: &SweepCell, pooled: &Option<usize>| !c.kept && pooled.is_none();
        if cells.iter().zip(&in_pool).any(|(c, p)| unpooled_cut(c, p)) {
            driver.inspect(params, |d| {
                for (c, p) in cells.iter_mut().zip(&in_pool) {
                    if unpooled_cut(c, p) {
                        c.cut_by = d.cut_by(c.id as usize);
                    }
                }
            })?;
        }
        points.push(SweepPoint {
            values: values.clone(),
            kept_token_count: raw.kept_count,
            kept_truncated: raw.kept_count > max_kept,
            kept_ids: raw.kept_ids,
            entropy_final: if raw.entropy.is_finite() {
                raw.entropy
            } else {
                0.0
            },
            cells,
        });
    }
    let ranks = driver.inspect(first, |d| d.base_ranks(&ids))?;
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

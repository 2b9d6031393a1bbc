//! Truncation stages (sampling.md, step 5) by partial selection: top-k, top-p (nucleus), min-p.
//!
//! Every stage is monotone in the penalised logit, so the kept set is always a prefix of the
//! valid tokens in key order (penalised logit descending, ties by lower id) and each stage's cut
//! is stored as the last id it kept.

use std::cmp::Ordering;

/// First prefix length tried by the nucleus search; it then grows fourfold.
const FIRST_PREFIX: usize = 64;

/// Key order: `z` descending, ties by lower id (a total order, since `z` holds no NaN).
pub(crate) fn key_cmp(z: &[f64], a: u32, b: u32) -> Ordering {
    let (za, zb) = (z[a as usize], z[b as usize]);
    zb.partial_cmp(&za)
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// Whether `id` comes strictly after `boundary` in key order.
pub(crate) fn is_after(z: &[f64], id: u32, boundary: u32) -> bool {
    key_cmp(z, id, boundary) == Ordering::Greater
}

/// The last id kept by each stage that removed something (`None`: the stage cut nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cuts {
    /// Last id kept by top-k.
    pub top_k: Option<u32>,
    /// Last id kept by top-p.
    pub top_p: Option<u32>,
    /// Last id kept by min-p.
    pub min_p: Option<u32>,
}

/// Sorts `cand[from..to]` into key order, given that `cand[..from]` already holds the first
/// `from` keys sorted: afterwards `cand[..to]` holds the first `to` keys sorted.
fn sort_prefix(cand: &mut [u32], z: &[f64], from: usize, to: usize) {
    let cmp = |a: &u32, b: &u32| key_cmp(z, *a, *b);
    if to < cand.len() {
        cand[from..].select_nth_unstable_by(to - from - 1, cmp);
    }
    cand[from..to].sort_unstable_by(cmp);
}

/// Runs top-k, top-p and min-p on the non-empty candidate set `cand` (the valid ids).
///
/// `z` gives the order; `w[id]` is the stage's unnormalised probability of `id` (exp of the
/// scaled logit minus the largest one among the candidates, so the top candidate has weight 1).
/// Afterwards `cand` holds exactly the kept ids, sorted in key order.
/// `all = Some(n)`: `cand` is empty and stands for every id in `0..n` (no constraint), so the
/// vocabulary is never materialised as an id list when a stage truncates.
pub(crate) fn truncate(
    cand: &mut Vec<u32>,
    all: Option<usize>,
    z: &[f64],
    w: &[f64],
    top_k: u32,
    top_p: f64,
    min_p: f64,
) -> Cuts {
    debug_assert!(!cand.is_empty() || all.is_some_and(|n| n > 0));
    let mut cuts = Cuts::default();
    let weight = |id: u32| w[id as usize];
    debug_assert!(all.is_none() || cand.is_empty());
    let n_all = all.unwrap_or(cand.len());
    let k = usize::try_from(top_k).unwrap_or(usize::MAX);
    let k_active = k > 0 && k < n_all;

    // Every stage keeps a prefix in key order, so only the tokens above some weight can
    // survive. One linear pass finds such a set (a few hundred tokens, not the vocabulary);
    // the sorting below then works on it alone. `total_all` is the nucleus normaliser when
    // top-k does not cut first.
    let mut total_all = 0.0;
    if k_active || top_p < 1.0 || min_p > 0.0 {
        let (mut w_max, mut total) = (0.0f64, 0.0f64);
        let mut scan = |x: f64| {
            w_max = w_max.max(x);
            total += x;
        };
        match all {
            Some(n) => w[..n].iter().copied().for_each(&mut scan),
            None => cand.iter().for_each(|&id| scan(weight(id))),
        }
        total_all = total;
        let mut floor = w_max * 1e-3;
        if !k_active && top_p >= 1.0 {
            floor = min_p * w_max;
        }
        loop {
            let (mut count, mut mass) = (0usize, 0.0f64);
            let mut tally = |x: f64| {
                if x >= floor {
                    count += 1;
                    mass += x;
                }
            };
            match all {
                Some(n) => w[..n].iter().copied().for_each(&mut tally),
                None => cand.iter().for_each(|&id| tally(weight(id))),
            }
            let enough = if k_active {
                count >= k
            } else if top_p < 1.0 {
                mass >= top_p * total
            } else {
                true
            };
            if enough || floor <= 0.0 || count == n_all {
                match all {
                    Some(n) => cand.extend((0..n as u32).filter(|&id| weight(id) >= floor)),
                    None if count < n_all => cand.retain(|&id| weight(id) >= floor),
                    None => {}
                }
                break;
            }
            floor = if floor < 1e-300 { 0.0 } else { floor * 1e-4 };
        }
    } else if let Some(n) = all {
        cand.extend(0..n as u32);
    }

    // top-k
    if k_active {
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| key_cmp(z, *a, *b));
            cand.truncate(k);
        }
        let last = cand
            .iter()
            .copied()
            .max_by(|a, b| key_cmp(z, *a, *b))
            .expect("k >= 1");
        cuts.top_k = Some(last);
    }

    // top-p: the smallest prefix whose cumulative probability reaches top_p.
    let mut sorted = 0; // cand[..sorted] is sorted in key order and holds the first keys.
    if top_p < 1.0 {
        let n = cand.len();
        let total: f64 = if k_active {
            cand.iter().map(|&id| weight(id)).sum()
        } else {
            total_all
        };
        let threshold = top_p * total;
        let mut cumulative = 0.0;
        let mut keep = None;
        let mut len = n.min(FIRST_PREFIX);
        loop {
            sort_prefix(cand, z, sorted, len);
            let from = sorted;
            sorted = len;
            if let Some(i) = cand[from..len].iter().position(|&id| {
                cumulative += weight(id);
                cumulative >= threshold
            }) {
                keep = Some(from + i + 1);
                break;
            }
            if len == n {
                break;
            }
            len = len.saturating_mul(4).min(n);
        }
        // Not reached only through rounding (top_p just below 1): keep every token with a
        // non-zero probability.
        let keep = keep.unwrap_or_else(|| {
            cand.iter()
                .rposition(|&id| weight(id) > 0.0)
                .map_or(1, |i| i + 1)
        });
        if keep < n || (!k_active && keep < n_all) {
            cuts.top_p = Some(cand[keep - 1]);
            cand.truncate(keep);
            sorted = keep;
        }
    }

    // min-p: keep p >= min_p * p_max (ratios are unchanged by renormalisation).
    if min_p > 0.0 {
        let n = cand.len();
        if sorted == n {
            let threshold = min_p * weight(cand[0]);
            let keep = cand
                .iter()
                .position(|&id| weight(id) < threshold)
                .unwrap_or(n)
                .max(1);
            if keep < n || (keep == n && n < n_all && cuts.top_k.is_none() && cuts.top_p.is_none())
            {
                cuts.min_p = Some(cand[keep - 1]);
                cand.truncate(keep);
            }
        } else {
            let w_max = cand.iter().map(|&id| weight(id)).fold(0.0, f64::max);
            let threshold = min_p * w_max;
            cand.retain(|&id| weight(id) >= threshold);
            if cand.len() < n || (n < n_all && cuts.top_k.is_none() && cuts.top_p.is_none()) {
                cand.sort_unstable_by(|a, b| key_cmp(z, *a, *b));
                sorted = cand.len();
                cuts.min_p = cand.last().copied();
            }
        }
    }

    if sorted < cand.len() {
        cand.sort_unstable_by(|a, b| key_cmp(z, *a, *b));
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights relative to the max, like the caller computes them.
    fn weights(z: &[f64]) -> Vec<f64> {
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        z.iter().map(|&x| (x - m).exp()).collect()
    }

    fn run(z: &[f64], top_k: u32, top_p: f64, min_p: f64) -> (Vec<u32>, Cuts) {
        let w = weights(z);
        let mut cand: Vec<u32> = (0..z.len() as u32).collect();
        let cuts = truncate(&mut cand, None, z, &w, top_k, top_p, min_p);
        (cand, cuts)
    }

    #[test]
    fn no_truncation_sorts_everything() {
        let z = [0.0, 3.0, 1.0, 3.0, -1.0];
        let (kept, cuts) = run(&z, 0, 1.0, 0.0);
        assert_eq!(kept, vec![1, 3, 2, 0, 4]);
        assert_eq!(cuts, Cuts::default());
    }

    #[test]
    fn top_k_ties_by_lower_id() {
        let z = [1.0, 2.0, 2.0, 2.0, 0.0];
        let (kept, cuts) = run(&z, 2, 1.0, 0.0);
        assert_eq!(kept, vec![1, 2]);
        assert_eq!(cuts.top_k, Some(2));
        assert!(is_after(&z, 3, 2));
        assert!(!is_after(&z, 1, 2));
    }

    #[test]
    fn top_p_grows_past_first_prefix() {
        // 1000 equal tokens: top_p 0.5 needs exactly 500 of them, the lowest ids.
        let z = vec![0.0; 1000];
        let (kept, cuts) = run(&z, 0, 0.5, 0.0);
        assert_eq!(kept, (0..500).collect::<Vec<u32>>());
        assert_eq!(cuts.top_p, Some(499));
    }

    #[test]
    fn min_p_on_unsorted_and_sorted_sets() {
        let z = [0.0, (0.5f64).ln(), (0.25f64).ln(), (0.5f64).ln() - 1e-9];
        let (kept, cuts) = run(&z, 0, 1.0, 0.4);
        assert_eq!(kept, vec![0, 1, 3]);
        assert_eq!(cuts.min_p, Some(3));
        let (kept, cuts) = run(&z, 0, 0.999, 0.4);
        assert_eq!(kept, vec![0, 1, 3]);
        assert_eq!(cuts.min_p, Some(3));
        assert_eq!(cuts.top_p, None);
    }
}

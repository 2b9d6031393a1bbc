//! Repetition, presence and frequency penalties over the penalty window (sampling.md, step 2).

use super::SamplingError;
use super::params::SamplingParams;

/// The ids of `context` the penalties look at: the last `last_n` (-1 = all, 0 = none).
pub(crate) fn window(context: &[i32], last_n: i32) -> &[i32] {
    match usize::try_from(last_n) {
        Err(_) => context,
        Ok(n) => &context[context.len().saturating_sub(n)..],
    }
}

/// Applies the penalties to the logits `z` in place (f64 copies of the model's logits).
///
/// `counts` must be all zero with length `z.len()` and is left all zero; `touched` is scratch.
pub(crate) fn apply(
    z: &mut [f64],
    context: &[i32],
    params: &SamplingParams,
    counts: &mut [u32],
    touched: &mut Vec<u32>,
) -> Result<(), SamplingError> {
    let ids = window(context, params.penalty_last_n);
    let n_vocab = z.len();
    if let Some(&bad) = ids
        .iter()
        .find(|&&id| !usize::try_from(id).is_ok_and(|i| i < n_vocab))
    {
        return Err(SamplingError::TokenOutOfRange {
            id: i64::from(bad),
            n_vocab,
        });
    }
    let r = params.repetition_penalty;
    let presence = params.presence_penalty;
    let frequency = params.frequency_penalty;
    if r == 1.0 && presence == 0.0 && frequency == 0.0 {
        return Ok(());
    }
    touched.clear();
    for &id in ids {
        // In range: checked above.
        let i = id as usize;
        if counts[i] == 0 {
            touched.push(id as u32);
        }
        counts[i] += 1;
    }
    for &id in touched.iter() {
        let i = id as usize;
        let count = counts[i];
        counts[i] = 0;
        let mut v = z[i];
        if r != 1.0 {
            v = if v < 0.0 { v * r } else { v / r };
        }
        v -= presence + frequency * f64::from(count);
        // Checked where the number is made: a penalty so large that the logit leaves the
        // finite range would turn every probability into NaN.
        if v.is_nan() || v == f64::INFINITY {
            touched.clear();
            counts.iter_mut().for_each(|c| *c = 0);
            return Err(SamplingError::PenaltyOverflow { id });
        }
        z[i] = v;
    }
    touched.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_penalty_that_overflows_the_logit_is_refused_and_leaves_the_counts_clean() {
        use super::super::SamplingError;
        let mut z = vec![1.0, 2.0, 3.0];
        let mut counts = vec![0; 3];
        let mut touched = Vec::new();
        let p = SamplingParams {
            frequency_penalty: -1e308,
            ..SamplingParams::default()
        };
        let err = apply(&mut z, &[2, 2, 0], &p, &mut counts, &mut touched).unwrap_err();
        assert!(
            matches!(err, SamplingError::PenaltyOverflow { id: 2 }),
            "{err:?}"
        );
        assert!(err.is_input());
        assert!(counts.iter().all(|&c| c == 0) && touched.is_empty());
    }

    use super::*;

    fn params(r: f64, presence: f64, frequency: f64, last_n: i32) -> SamplingParams {
        SamplingParams {
            repetition_penalty: r,
            presence_penalty: presence,
            frequency_penalty: frequency,
            penalty_last_n: last_n,
            ..SamplingParams::default()
        }
    }

    fn run(z: &[f64], context: &[i32], p: &SamplingParams) -> Vec<f64> {
        let mut z = z.to_vec();
        let mut counts = vec![0; z.len()];
        let mut touched = Vec::new();
        apply(&mut z, context, p, &mut counts, &mut touched).unwrap();
        assert!(counts.iter().all(|&c| c == 0));
        z
    }

    #[test]
    fn window_lengths() {
        let c = [1, 2, 3, 4];
        assert_eq!(window(&c, -1), &c[..]);
        assert_eq!(window(&c, 0), &[] as &[i32]);
        assert_eq!(window(&c, 2), &[3, 4]);
        assert_eq!(window(&c, 10), &c[..]);
    }

    #[test]
    fn repetition_divides_positive_multiplies_negative_once_per_id() {
        let z = [2.0, -2.0, 1.0, 0.0];
        let out = run(&z, &[0, 0, 0, 1, 1, 3], &params(2.0, 0.0, 0.0, -1));
        assert_eq!(out, vec![1.0, -4.0, 1.0, 0.0]);
    }

    #[test]
    fn presence_and_frequency_use_counts() {
        let z = [2.0, -2.0, 1.0, 0.0];
        let out = run(&z, &[0, 0, 0, 1], &params(1.0, 0.5, 0.25, -1));
        // id 0: 2 - 0.5 - 3 * 0.25; id 1: -2 - 0.5 - 0.25.
        assert_eq!(out, vec![0.75, -2.75, 1.0, 0.0]);
        // Repetition first, then presence/frequency on the penalised value.
        let out = run(&z, &[0, 0, 1], &params(2.0, 1.0, 1.0, -1));
        assert_eq!(out, vec![1.0 - 1.0 - 2.0, -4.0 - 1.0 - 1.0, 1.0, 0.0]);
    }

    #[test]
    fn window_limits_what_counts() {
        let z = [2.0, 2.0, 2.0];
        let ctx = [0, 1, 2, 2];
        assert_eq!(
            run(&z, &ctx, &params(2.0, 0.0, 0.0, 2)),
            vec![2.0, 2.0, 1.0]
        );
        assert_eq!(
            run(&z, &ctx, &params(2.0, 0.0, 0.0, 3)),
            vec![2.0, 1.0, 1.0]
        );
        assert_eq!(
            run(&z, &ctx, &params(2.0, 0.0, 0.0, 0)),
            vec![2.0, 2.0, 2.0]
        );
        assert_eq!(
            run(&z, &ctx, &params(2.0, 0.0, 0.0, -1)),
            vec![1.0, 1.0, 1.0]
        );
        // Frequency counts only inside the window too.
        assert_eq!(
            run(&z, &ctx, &params(1.0, 0.0, 1.0, 1)),
            vec![2.0, 2.0, 1.0]
        );
    }

    #[test]
    fn out_of_range_ids_are_rejected() {
        let mut z = vec![0.0; 3];
        let mut counts = vec![0; 3];
        let mut touched = Vec::new();
        let p = params(1.1, 0.0, 0.0, -1);
        let err = apply(&mut z, &[0, 3], &p, &mut counts, &mut touched).unwrap_err();
        assert!(matches!(
            err,
            SamplingError::TokenOutOfRange { id: 3, n_vocab: 3 }
        ));
        let err = apply(&mut z, &[-1], &p, &mut counts, &mut touched).unwrap_err();
        assert!(matches!(err, SamplingError::TokenOutOfRange { id: -1, .. }));
        // Outside the window: not looked at.
        let p = params(1.1, 0.0, 0.0, 1);
        apply(&mut z, &[7, 0], &p, &mut counts, &mut touched).unwrap();
    }
}

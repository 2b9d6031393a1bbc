//! The two full-vocabulary exponential passes of a step, eight lanes at a time (`wide`'s
//! `f32x8::exp`, AVX2 on x86-64-v3). They dominate the per-step maths. The exponentials are
//! single precision, like the logits themselves; every sum is accumulated in f64 blocks.

use wide::f32x8;

/// Below this, `exp` is 0 in f32; clamping keeps `-inf` logits from turning `0 · -inf` into
/// NaN in the entropy term.
const FLOOR: f32 = -200.0;
/// Lanes are flushed into f64 sums every this many elements.
const BLOCK: usize = 512;

/// For `d_i = x_i - max`: returns `(Σ exp(d_i), Σ exp(d_i)·d_i)` (softmax normaliser and the
/// term that gives the entropy).
pub(crate) fn base_sums(logits: &[f32], max: f64) -> (f64, f64) {
    let maxv = f32x8::splat(max as f32);
    let floor = f32x8::splat(FLOOR);
    let (mut s, mut w) = (0.0f64, 0.0f64);
    for block in logits.chunks(BLOCK) {
        let mut sum = f32x8::ZERO;
        let mut weighted = f32x8::ZERO;
        let chunks = block.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            let x = f32x8::from(<[f32; 8]>::try_from(c).expect("8 lanes"));
            let d = (x - maxv).fast_max(floor);
            let e = d.exp();
            sum += e;
            weighted += e * d;
        }
        s += sum.as_array().iter().map(|&v| f64::from(v)).sum::<f64>();
        w += weighted
            .as_array()
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>();
        for &x in rest {
            let d = (x - max as f32).max(FLOOR);
            let e = d.exp();
            s += f64::from(e);
            w += f64::from(e * d);
        }
    }
    (s, w)
}

/// `w_i = exp((z_i - max) / t)`, returning `Σ w_i`.
pub(crate) fn scaled_exp(z: &[f64], max: f64, t: f64, w: &mut [f64]) -> f64 {
    debug_assert_eq!(z.len(), w.len());
    let inv = 1.0 / t;
    let mut total = 0.0f64;
    for (zb, wb) in z.chunks(BLOCK).zip(w.chunks_mut(BLOCK)) {
        let mut sum = f32x8::ZERO;
        let zc = zb.chunks_exact(8);
        let zr = zc.remainder();
        let mut wc = wb.chunks_exact_mut(8);
        for (zs, ws) in zc.zip(&mut wc) {
            let mut d = [0f32; 8];
            for (di, zi) in d.iter_mut().zip(zs) {
                *di = (((zi - max) * inv) as f32).max(FLOOR);
            }
            let e = f32x8::from(d).exp();
            for (wi, ei) in ws.iter_mut().zip(e.as_array()) {
                *wi = f64::from(*ei);
            }
            sum += e;
        }
        total += sum.as_array().iter().map(|&v| f64::from(v)).sum::<f64>();
        for (zi, wi) in zr.iter().zip(wc.into_remainder()) {
            *wi = f64::from((((zi - max) * inv) as f32).max(FLOOR).exp());
            total += *wi;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scalar_exp() {
        let logits: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let max = logits.iter().copied().fold(f32::MIN, f32::max) as f64;
        let (s, w) = base_sums(&logits, max);
        let (mut s0, mut w0) = (0.0, 0.0);
        for &x in &logits {
            let d = x as f64 - max;
            s0 += d.exp();
            w0 += d.exp() * d;
        }
        assert!((s - s0).abs() / s0 < 1e-6, "{s} vs {s0}");
        assert!((w - w0).abs() / w0.abs() < 1e-6, "{w} vs {w0}");

        let z: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        let mut out = vec![0.0; z.len()];
        let sum = scaled_exp(&z, max, 0.7, &mut out);
        let mut sum0 = 0.0;
        for (zi, wi) in z.iter().zip(&out) {
            let e = ((zi - max) / 0.7).exp();
            assert!((wi - e).abs() <= e * 1e-5);
            sum0 += e;
        }
        assert!((sum - sum0).abs() / sum0 < 1e-6);
    }

    #[test]
    fn negative_infinity_is_zero_not_nan() {
        let logits = [0.0f32, f32::NEG_INFINITY, -1.0, f32::NEG_INFINITY, 2.0];
        let (s, w) = base_sums(&logits, 2.0);
        assert!(s.is_finite() && w.is_finite());
        let z = [0.0, f64::NEG_INFINITY, -1.0, f64::NEG_INFINITY, 2.0];
        let mut out = [9.0; 5];
        let sum = scaled_exp(&z, 2.0, 1.0, &mut out);
        assert!(sum.is_finite());
        assert_eq!(out[1], 0.0);
        assert_eq!(out[3], 0.0);
    }
}

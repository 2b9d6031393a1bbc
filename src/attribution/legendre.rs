//! Gauss–Legendre quadrature nodes and weights (Newton's method on the Legendre polynomial).

/// Nodes and weights of the `n`-point Gauss–Legendre rule on [-1, 1], nodes ascending.
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    let m = n.div_ceil(2);
    for i in 0..m {
        // Initial guess (Tricomi), then Newton on P_n.
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (p, d) = legendre_and_derivative(n, x);
            dp = d;
            let dx = p / d;
            x -= dx;
            if dx.abs() < 1e-15 {
                break;
            }
        }
        let (_, d) = legendre_and_derivative(n, x);
        if d.is_finite() {
            dp = d;
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        // x is the i-th largest root; mirror it.
        nodes[n - 1 - i] = x;
        nodes[i] = -x;
        weights[n - 1 - i] = w;
        weights[i] = w;
    }
    (nodes, weights)
}

/// Nodes and weights on [0, 1] (weights sum to 1), as Captum's `gausslegendre` method.
pub fn gauss_legendre_unit(n: usize) -> (Vec<f64>, Vec<f64>) {
    let (x, w) = gauss_legendre(n);
    (
        x.iter().map(|x| 0.5 * (x + 1.0)).collect(),
        w.iter().map(|w| 0.5 * w).collect(),
    )
}

/// P_n(x) and P_n'(x) by the three-term recurrence.
fn legendre_and_derivative(n: usize, x: f64) -> (f64, f64) {
    let mut p0 = 1.0;
    let mut p1 = x;
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let k = k as f64;
        let p2 = ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k;
        p0 = p1;
        p1 = p2;
    }
    let d = n as f64 * (x * p1 - p0) / (x * x - 1.0);
    (p1, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrates_polynomials_exactly() {
        for n in [1, 2, 3, 8, 50, 64] {
            let (x, w) = gauss_legendre_unit(n);
            assert_eq!(x.len(), n);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "n={n}");
            assert!(x.windows(2).all(|p| p[0] < p[1]));
            // ∫_0^1 t^k dt = 1/(k+1), exact for k ≤ 2n-1.
            for k in 0..(2 * n).min(30) {
                let s: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(k as i32)).sum();
                assert!(
                    (s - 1.0 / (k as f64 + 1.0)).abs() < 1e-12,
                    "n={n} k={k} s={s}"
                );
            }
        }
    }

    #[test]
    fn known_three_point_rule() {
        let (x, w) = gauss_legendre(3);
        let r = (0.6f64).sqrt();
        assert!((x[0] + r).abs() < 1e-14 && x[1].abs() < 1e-14 && (x[2] - r).abs() < 1e-14);
        assert!((w[0] - 5.0 / 9.0).abs() < 1e-14 && (w[1] - 8.0 / 9.0).abs() < 1e-14);
    }
}

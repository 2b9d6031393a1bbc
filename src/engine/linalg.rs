//! Dense f32 products on strided views of plain slices, through the `gemm` crate (the
//! kernels candle's matmul calls): the autograd engine's attention products, whose operands
//! are one head's columns of a row-major activation matrix. Bounds are checked here, so the
//! callers stay safe code.

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Rows of `rs` values, read from `data` (contiguous columns).
    pub fn rows(data: &'a [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }

    /// The transposed view.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "{what}: a {rows} × {cols} view (strides {}, {}) needs {} values, the slice has {}",
                self.rs,
                self.cs,
                last + 1,
                self.data.len()
            );
        }
    }
}

/// `dst = scale · lhs · rhs` (or `dst += …` when `accumulate`): `lhs` is `m × k`, `rhs` is
/// `k × n`, `dst` is `m × n` with row stride `dst_rs` (≥ n) and contiguous columns. Runs on
/// the calling thread.
///
/// # Panics
/// When a view does not fit its slice or `dst_rs < n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        m == 1 || dst_rs >= n,
        "dst rows overlap: stride {dst_rs} < {n}"
    );
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "dst: {m} × {n} does not fit"
    );
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    // SAFETY: every element gemm reads lies inside `lhs.data` / `rhs.data` and every element
    // it writes inside `dst` (all three checked just above: the largest index of each view is
    // in bounds); `dst` is borrowed mutably, so it aliases neither operand, and its rows do
    // not overlap (dst_rs ≥ n). Parallelism::None: gemm runs on this thread only and returns
    // before the borrows end.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: View<'_>, b: View<'_>) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|t| a.data[i * a.rs + t * a.cs] * b.data[t * b.rs + j * b.cs])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_products_match_the_definition() {
        let a: Vec<f32> = (0..60).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..60).map(|i| (i as f32 * 0.91).cos()).collect();
        // lhs: 4 × 3 columns 2..5 of rows of 12; rhs: the transpose of 5 rows of 7 (3 × 5).
        let lhs = View::rows(&a[2..], 12);
        let rhs = View::rows(&b[1..], 7).t();
        let want = naive(4, 5, 3, lhs, rhs);
        let mut dst = vec![9f32; 4 * 8];
        matmul(4, 5, 3, &mut dst, 8, false, lhs, rhs, 1.0);
        for i in 0..4 {
            for j in 0..5 {
                assert!((dst[i * 8 + j] - want[i * 5 + j]).abs() < 1e-5);
            }
            assert_eq!(&dst[i * 8 + 5..i * 8 + 8], &[9.0; 3], "padding untouched");
        }
        // Accumulating twice at scale 0.5 doubles into the old values.
        let mut acc = dst.clone();
        matmul(4, 5, 3, &mut acc, 8, true, lhs, rhs, 0.5);
        for i in 0..4 {
            for j in 0..5 {
                let e = dst[i * 8 + j] + 0.5 * want[i * 5 + j];
                assert!((acc[i * 8 + j] - e).abs() < 1e-5);
            }
        }
    }

    #[test]
    #[should_panic(expected = "lhs")]
    fn a_view_past_its_slice_panics() {
        let a = vec![0f32; 10];
        let mut dst = vec![0f32; 4];
        matmul(
            2,
            2,
            3,
            &mut dst,
            2,
            false,
            View::rows(&a, 8),
            View::rows(&a, 2),
            1.0,
        );
    }
}

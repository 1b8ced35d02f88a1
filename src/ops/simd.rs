//! Small vector helpers written so that LLVM turns them into FMA loops, and the CPU
//! feature check for the SIMD kernels.

use std::mem::MaybeUninit;

/// Whether this CPU has AVX2, FMA and F16C: the SIMD paths of the quantized matmuls
/// (`qmatmul`, `qpacked`). Without them those kernels still work, in scalar code, and
/// callers keep the row-by-row kernels instead of the packed ones.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
pub(crate) const EXP_LO: f32 = -87.336_55;
pub(crate) const EXP_HI: f32 = 88.0;

/// `exp(x)`, Cephes' `expf` polynomial (relative error below 1e-7): 0 below -87.3 (and
/// for -inf and NaN), finite up to 88. Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let c = x.clamp(EXP_LO, EXP_HI);
    // t = MAGIC + round(c / ln 2); its low mantissa bits hold that integer n.
    let t = c * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    let mut q = 1.987_569_1e-4f32;
    q = q * r + 1.398_199_9e-3;
    q = q * r + 8.333_452e-3;
    q = q * r + 4.166_579_6e-2;
    q = q * r + 1.666_666_5e-1;
    q = q * r + 0.5;
    let p = q * (r * r) + r + 1.0;
    let scale = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    // False for NaN and -inf.
    if x >= EXP_LO {
        p * scale
    } else {
        0.0
    }
}

/// `out[i] = silu(gate[i]) * up[i]` (SwiGLU's product, `silu(g) = g / (1 + exp(-g))`,
/// candle's steps and the standard library's `exp`), spread over the thread pool. (`exp`
/// above would be faster still, but its last bits differ, and through 30 layers of
/// quantized activations that moves logits by more than the reference tests' margins.)
/// Every element of `out` is written, so it may come unwritten.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    spread(out, 1, |r, out| {
        for ((o, &g), &u) in out.iter_mut().zip(&gate[r.clone()]).zip(&up[r]) {
            o.write(g / (1.0 + (-g).exp()) * u);
        }
    });
}

/// `out = x + y`, elementwise, on the thread pool; every element of `out` is written.
pub fn add(x: &[f32], y: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(x.len() == y.len() && y.len() == out.len());
    spread(out, 1, |r, out| {
        for ((o, &a), &b) in out.iter_mut().zip(&x[r.clone()]).zip(&y[r]) {
            o.write(a + b);
        }
    });
}

/// RMS norm of each `alpha.len()`-value row of `x` into `out`, on the thread pool, with
/// candle's steps (`m = sqrt(Σ v² / n + eps)` summed in order, `v / m * alpha`), so the
/// same numbers as `candle_nn::ops::rms_norm`; every element of `out` is written.
pub fn rms_norm(x: &[f32], alpha: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let n = alpha.len();
    assert!(n > 0 && x.len() == out.len() && x.len().is_multiple_of(n));
    spread(out, n, |rows, out| {
        let src = &x[rows.start * n..rows.end * n];
        for (s, d) in src.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let sum2 = s.iter().map(|&v| v * v).sum::<f32>();
            let m = (sum2 / n as f32 + eps).sqrt();
            for ((d, &s), &a) in d.iter_mut().zip(s).zip(alpha) {
                d.write(s / m * a);
            }
        }
    });
}

/// Values per pool item of the elementwise ops (these and rotary embeddings); with at
/// most that much work they run inline (a decode step's few thousand values: not worth
/// waking the pool).
const CHUNK: usize = 4096;

/// Runs `f(rows, out_rows)` over `out` taken as rows of `step` values, a few rows per
/// item on the thread pool (`out_rows`: those rows of `out`), or inline for one item's
/// worth.
pub(super) fn spread<T: Send>(
    out: &mut [T],
    step: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [T]) + Sync,
) {
    let rows = out.len() / step;
    let per = (CHUNK / step).max(1);
    if rows <= per {
        return f(0..rows, out);
    }
    let out_ptr = out.as_mut_ptr() as usize;
    super::pool::global().execute_chunked(rows.div_ceil(per), |items| {
        let r = items.start * per..(items.end * per).min(rows);
        // SAFETY: rows `r` of `out` are this item's alone, and in bounds.
        let out = unsafe {
            std::slice::from_raw_parts_mut((out_ptr as *mut T).add(r.start * step), r.len() * step)
        };
        f(r, out)
    });
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = xi.mul_add(alpha, *yi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over several pool chunks (and a partial one), with large, tiny and non-finite-prone
    /// gates, against f64.
    #[test]
    fn silu_mul_matches_f64() {
        let n = 3 * 4096 + 77;
        let gate: Vec<f32> = (0..n)
            .map(|i| ((i as f32) * 0.37).sin() * 12.0 - 1.0)
            .collect();
        let up: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11).cos() * 3.0).collect();
        let mut out = vec![f32::NAN; n];
        silu_mul(&gate, &up, super::super::as_uninit(&mut out));
        for i in 0..n {
            let (g, u) = (gate[i] as f64, up[i] as f64);
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (out[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{i}: silu({g}) * {u} = {} vs {want}",
                out[i]
            );
        }
        let mut edge = [0f32; 4];
        silu_mul(
            &[-200.0, 200.0, 0.0, -1e-30],
            &[1.0, 1.0, 5.0, 1.0],
            super::super::as_uninit(&mut edge),
        );
        assert_eq!(edge[1], 200.0);
        assert!(edge[0].abs() < 1e-30 && edge[2] == 0.0 && edge[3].abs() < 1e-29);
    }

    /// Against candle's op, to the bit, for a decode step's few rows (inline) and a
    /// prompt's many (on the pool), and the residual add against candle's.
    #[test]
    fn rms_norm_and_add_equal_candle() {
        use candle_core::{Device, Tensor};
        for (rows, n) in [(1, 576), (3, 64), (300, 576), (97, 2048)] {
            let x: Vec<f32> = (0..rows * n)
                .map(|i| ((i as f32) * 0.173).sin() * 3.0 + 0.01)
                .collect();
            let y: Vec<f32> = (0..rows * n).map(|i| ((i as f32) * 0.029).cos()).collect();
            let alpha: Vec<f32> = (0..n).map(|i| 0.5 + (i as f32) * 0.001).collect();
            let dev = &Device::Cpu;
            let xt = Tensor::from_slice(&x, (rows, n), dev).unwrap();
            let yt = Tensor::from_slice(&y, (rows, n), dev).unwrap();
            let at = Tensor::from_slice(&alpha, n, dev).unwrap();
            let want: Vec<f32> = candle_nn::ops::rms_norm(&xt, &at, 1e-5)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut got = vec![f32::NAN; rows * n];
            rms_norm(&x, &alpha, 1e-5, super::super::as_uninit(&mut got));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "rms_norm, {rows} x {n}");
            let want: Vec<f32> = (&xt + &yt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            add(&x, &y, super::super::as_uninit(&mut got));
            assert_eq!(bits(&got), bits(&want), "add, {rows} x {n}");
        }
    }

    #[test]
    fn axpy_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let mut y = b.clone();
        axpy(2.0, &a, &mut y);
        for i in 0..37 {
            assert!((y[i] - (b[i] + 2.0 * a[i])).abs() < 1e-6);
        }
    }
}

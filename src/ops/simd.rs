//! Small vector helpers written so that LLVM turns them into FMA loops, and the CPU
//! feature check for the SIMD kernels.

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

const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.0;

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

//! Small vector helpers written so that LLVM turns them into FMA loops.

/// Dot product summed in ggml's `ggml_vec_dot_f16` order on AVX2: four 8-lane
/// accumulators over 32-element steps, folded pairwise, then a horizontal sum; the tail
/// (len % 32) is added last in order. Used where attention meets the f16 cache, so
/// scores match llama.cpp's bit for bit.
#[inline]
pub fn dot_ggml(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [[0f32; 8]; 4];
    let main = a.len() / 32 * 32;
    for (x, y) in a[..main].chunks_exact(32).zip(b[..main].chunks_exact(32)) {
        for j in 0..4 {
            for l in 0..8 {
                acc[j][l] = x[j * 8 + l].mul_add(y[j * 8 + l], acc[j][l]);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let r: [f32; 8] = std::array::from_fn(|l| (a0[l] + a2[l]) + (a1[l] + a3[l]));
    // _mm_add_ps(low, high), then two hadds.
    let t: [f32; 4] = std::array::from_fn(|i| r[i] + r[i + 4]);
    let (h0, h1) = (t[0] + t[1], t[2] + t[3]);
    let mut sum = h0 + h1;
    for (x, y) in a[main..].iter().zip(&b[main..]) {
        sum += x * y;
    }
    sum
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
    fn dot_and_axpy_match_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot_ggml(&a, &b) - naive).abs() < 1e-4);
        let long: Vec<f32> = (0..64).map(|i| i as f32 * 0.25).collect();
        let expect: f32 = long.iter().map(|x| x * x).sum();
        assert!((dot_ggml(&long, &long) - expect).abs() < 1e-2);
        let mut y = b.clone();
        axpy(2.0, &a, &mut y);
        for i in 0..37 {
            assert!((y[i] - (b[i] + 2.0 * a[i])).abs() < 1e-6);
        }
    }
}

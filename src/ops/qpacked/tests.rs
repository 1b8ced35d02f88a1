use half::f16;

use super::*;
use crate::ops::qmatmul::{BlockQ4_1, BlockQ8_0};

fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

fn rand(state: &mut u64) -> f32 {
    (next(state) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
}

/// `count` blocks of random bytes, then `fix` sets their float fields.
fn random_blocks<B: Copy>(count: usize, seed: u64, fix: impl Fn(&mut B, &mut u64)) -> Vec<B> {
    let mut s = seed;
    (0..count)
        .map(|_| {
            let bytes: Vec<u8> = (0..std::mem::size_of::<B>())
                .map(|_| next(&mut s) as u8)
                .collect();
            // SAFETY: the block types are plain old data.
            let mut b = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const B) };
            fix(&mut b, &mut s);
            b
        })
        .collect()
}

fn h(v: f32) -> f16 {
    f16::from_f32(v)
}

fn nib(qs: &[u8; 16], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 0x0F
    } else {
        qs[i - 16] >> 4
    }
}

// ggml's dequantizers, in f64, from the ggml blocks (not the packed forms).

fn deq_q4_0(b: &BlockQ4_0) -> Vec<f64> {
    (0..32)
        .map(|i| b.d.to_f64() * (nib(&b.qs, i) as f64 - 8.0))
        .collect()
}

fn deq_q4_1(b: &BlockQ4_1) -> Vec<f64> {
    (0..32)
        .map(|i| b.d.to_f64() * nib(&b.qs, i) as f64 + b.m.to_f64())
        .collect()
}

fn q5_values(qs: &[u8; 16], qh: [u8; 4]) -> Vec<f64> {
    let qh = u32::from_le_bytes(qh);
    let mut y = vec![0f64; 32];
    for j in 0..16 {
        let xh0 = ((qh >> j) << 4) & 0x10;
        let xh1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((qs[j] & 0x0F) as u32 | xh0) as f64;
        y[j + 16] = ((qs[j] >> 4) as u32 | xh1) as f64;
    }
    y
}

fn deq_q5_0(b: &BlockQ5_0) -> Vec<f64> {
    q5_values(&b.qs, b.qh)
        .iter()
        .map(|q| b.d.to_f64() * (q - 16.0))
        .collect()
}

fn deq_q5_1(b: &BlockQ5_1) -> Vec<f64> {
    q5_values(&b.qs, b.qh)
        .iter()
        .map(|q| b.d.to_f64() * q + b.m.to_f64())
        .collect()
}

fn deq_q8_0(b: &BlockQ8_0) -> Vec<f64> {
    b.qs.iter().map(|&q| b.d.to_f64() * q as f64).collect()
}

fn deq_q4_k(b: &BlockQ4K) -> Vec<f64> {
    let (d, dmin) = (b.d.to_f64(), b.dmin.to_f64());
    let mut y = Vec::with_capacity(256);
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let q = &b.qs[32 * c..32 * c + 32];
        for &v in q {
            y.push(d * sc1 as f64 * (v & 0x0F) as f64 - dmin * m1 as f64);
        }
        for &v in q {
            y.push(d * sc2 as f64 * (v >> 4) as f64 - dmin * m2 as f64);
        }
    }
    y
}

fn deq_q5_k(b: &BlockQ5K) -> Vec<f64> {
    let (d, dmin) = (b.d.to_f64(), b.dmin.to_f64());
    let mut y = Vec::with_capacity(256);
    let (mut u1, mut u2) = (1u8, 2u8);
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let ql = &b.qs[32 * c..32 * c + 32];
        for (&v, &h) in ql.iter().zip(&b.qh) {
            let q = (v & 0x0F) + if h & u1 != 0 { 16 } else { 0 };
            y.push(d * sc1 as f64 * q as f64 - dmin * m1 as f64);
        }
        for (&v, &h) in ql.iter().zip(&b.qh) {
            let q = (v >> 4) + if h & u2 != 0 { 16 } else { 0 };
            y.push(d * sc2 as f64 * q as f64 - dmin * m2 as f64);
        }
        u1 <<= 2;
        u2 <<= 2;
    }
    y
}

fn deq_q6_k(b: &BlockQ6K) -> Vec<f64> {
    let d = b.d.to_f64();
    let mut y = vec![0f64; 256];
    for n in 0..2 {
        let (ql, qh, sc) = (&b.ql[64 * n..], &b.qh[32 * n..], &b.scales[8 * n..]);
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let y = &mut y[128 * n..];
            y[l] = d * sc[is] as f64 * q1 as f64;
            y[l + 32] = d * sc[is + 2] as f64 * q2 as f64;
            y[l + 64] = d * sc[is + 4] as f64 * q3 as f64;
            y[l + 96] = d * sc[is + 6] as f64 * q4 as f64;
        }
    }
    y
}

/// The dequantized weights (`[n, k]`, row-major) times the quantized activations, in f64:
/// `(value, Σ |terms|)` per output.
fn reference(w: &[f64], xq: &[ActQ8], m: usize, n: usize, k: usize) -> Vec<(f64, f64)> {
    let kb = k / QK;
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0f64, 0f64);
            for col in 0..k {
                let xb = &xq[i * kb + col / QK];
                let t = w[j * k + col] * xb.qs[col % QK] as f64 * xb.d as f64;
                sum += t;
                mag += t.abs();
            }
            out.push((sum, mag));
        }
    }
    out
}

fn check(what: &str, got: &[f32], want: &[(f64, f64)]) {
    for (i, (&g, &(w, mag))) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= 2e-5 * mag + 1e-6,
            "{what}, element {i}: {g} vs {w} (magnitude {mag})"
        );
    }
}

/// `x` (`[m, k]`) quantized as the matmul does for a matrix of the 32-column formats
/// (`quantize_row`) or, with `super_blocks`, of the K-quants (`quantize_row_super`).
fn quantized(x: &[f32], m: usize, k: usize, super_blocks: bool) -> Vec<ActQ8> {
    let mut xq = vec![ZERO_ACT; m * k / QK];
    for (row, q) in x.chunks_exact(k).zip(xq.chunks_exact_mut(k / QK)) {
        if super_blocks {
            quantize_row_super(row, q);
        } else {
            quantize_row(row, q);
        }
    }
    xq
}

fn inputs(m: usize, k: usize, super_blocks: bool) -> (Vec<f32>, Vec<ActQ8>) {
    let mut s = 7;
    let x: Vec<f32> = (0..m * k).map(|_| rand(&mut s) * 3.0).collect();
    let xq = quantized(&x, m, k, super_blocks);
    (x, xq)
}

/// `kind`'s blocks packed and multiplied with every kernel set of this CPU, for several
/// row counts, against the f64 product of the ggml dequantization.
fn matches_reference<B: Copy>(
    kind: Kind,
    blocks: &[B],
    deq: impl Fn(&B) -> Vec<f64>,
    n: usize,
    k: usize,
    rows: &[usize],
) {
    let bytes: &[u8] = unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    };
    let w: Vec<f64> = blocks.iter().flat_map(&deq).collect();
    assert_eq!(w.len(), n * k);
    let p = PackedWeight::from_bytes(kind, bytes, n, k).expect("packs");
    for isa in Isa::available() {
        for &m in rows {
            let (x, xq) = inputs(m, k, p.super_blocks());
            let mut out = vec![0f32; m * n];
            matmul_many_with(isa, &x, m, &[&p], &mut [&mut out]);
            check(
                &format!("{kind:?} {} m={m}", isa.name()),
                &out,
                &reference(&w, &xq, m, n, k),
            );
        }
    }
}

const ROWS: [usize; 7] = [1, 2, 3, 4, 5, 17, 33];

fn small_scale(d: &mut f16, s: &mut u64) {
    *d = h(rand(s) * 0.05);
}

fn q4_0_blocks(count: usize, seed: u64) -> Vec<BlockQ4_0> {
    random_blocks(count, seed, |b: &mut BlockQ4_0, s| small_scale(&mut b.d, s))
}

fn q4_1_blocks(count: usize, seed: u64) -> Vec<BlockQ4_1> {
    random_blocks(count, seed, |b: &mut BlockQ4_1, s| {
        small_scale(&mut b.d, s);
        b.m = h(rand(s) * 0.2);
    })
}

fn q5_0_blocks(count: usize, seed: u64) -> Vec<BlockQ5_0> {
    random_blocks(count, seed, |b: &mut BlockQ5_0, s| small_scale(&mut b.d, s))
}

fn q5_1_blocks(count: usize, seed: u64) -> Vec<BlockQ5_1> {
    random_blocks(count, seed, |b: &mut BlockQ5_1, s| {
        small_scale(&mut b.d, s);
        b.m = h(rand(s) * 0.2);
    })
}

fn q8_0_blocks(count: usize, seed: u64) -> Vec<BlockQ8_0> {
    random_blocks(count, seed, |b: &mut BlockQ8_0, s| small_scale(&mut b.d, s))
}

fn q4_k_blocks(count: usize, seed: u64) -> Vec<BlockQ4K> {
    random_blocks(count, seed, |b: &mut BlockQ4K, s| {
        b.d = h(rand(s) * 0.002);
        b.dmin = h(rand(s) * 0.005);
    })
}

fn q5_k_blocks(count: usize, seed: u64) -> Vec<BlockQ5K> {
    random_blocks(count, seed, |b: &mut BlockQ5K, s| {
        b.d = h(rand(s) * 0.002);
        b.dmin = h(rand(s) * 0.005);
    })
}

fn q6_k_blocks(count: usize, seed: u64) -> Vec<BlockQ6K> {
    random_blocks(count, seed, |b: &mut BlockQ6K, s| {
        b.d = h(rand(s) * 0.001);
    })
}

#[test]
fn q4_0_packed_matches_the_dequantized_product() {
    let (n, k) = (24, 96);
    matches_reference(
        Kind::Q4_0,
        &q4_0_blocks(n * k / 32, 1),
        deq_q4_0,
        n,
        k,
        &ROWS,
    );
}

#[test]
fn q4_1_packed_matches_the_dequantized_product() {
    let (n, k) = (24, 96);
    matches_reference(
        Kind::Q4_1,
        &q4_1_blocks(n * k / 32, 2),
        deq_q4_1,
        n,
        k,
        &ROWS,
    );
}

#[test]
fn q5_0_packed_matches_the_dequantized_product() {
    let (n, k) = (16, 128);
    matches_reference(
        Kind::Q5_0,
        &q5_0_blocks(n * k / 32, 3),
        deq_q5_0,
        n,
        k,
        &ROWS,
    );
}

#[test]
fn q5_1_packed_matches_the_dequantized_product() {
    let (n, k) = (16, 128);
    matches_reference(
        Kind::Q5_1,
        &q5_1_blocks(n * k / 32, 4),
        deq_q5_1,
        n,
        k,
        &ROWS,
    );
}

#[test]
fn q8_0_packed_matches_the_dequantized_product() {
    let (n, k) = (16, 128);
    matches_reference(
        Kind::Q8_0,
        &q8_0_blocks(n * k / 32, 5),
        deq_q8_0,
        n,
        k,
        &ROWS,
    );
}

#[test]
fn q4_k_packed_matches_the_dequantized_product() {
    let (n, k) = (16, 512);
    matches_reference(
        Kind::Q4K,
        &q4_k_blocks(n * k / 256, 6),
        deq_q4_k,
        n,
        k,
        &ROWS,
    );
}

#[test]
fn q5_k_packed_matches_the_dequantized_product() {
    let (n, k) = (16, 512);
    matches_reference(
        Kind::Q5K,
        &q5_k_blocks(n * k / 256, 7),
        deq_q5_k,
        n,
        k,
        &ROWS,
    );
}

#[test]
fn q6_k_packed_matches_the_dequantized_product() {
    let (n, k) = (16, 512);
    matches_reference(
        Kind::Q6K,
        &q6_k_blocks(n * k / 256, 8),
        deq_q6_k,
        n,
        k,
        &ROWS,
    );
}

/// The batched path (`tiled`, from each format's `Unpack::BATCH_FROM` rows (8 to 48) with
/// AVX-512 VNNI; the row kernels elsewhere) at its edges: 40 rows leave a tile with one group of 8, 608 columns
/// leave a 96-column chunk after two full ones, K-quants span three chunks, and the row
/// counts leave partial batches and split the rows over two items (300).
#[test]
fn batched_path_matches_the_reference_at_every_edge() {
    const M: [usize; 6] = [8, 9, 15, 23, 70, 300];
    let (n, k, kk) = (40, 608, 768);
    matches_reference(Kind::Q4_0, &q4_0_blocks(n * k / 32, 31), deq_q4_0, n, k, &M);
    matches_reference(Kind::Q4_1, &q4_1_blocks(n * k / 32, 32), deq_q4_1, n, k, &M);
    matches_reference(Kind::Q5_0, &q5_0_blocks(n * k / 32, 33), deq_q5_0, n, k, &M);
    matches_reference(Kind::Q5_1, &q5_1_blocks(n * k / 32, 34), deq_q5_1, n, k, &M);
    matches_reference(Kind::Q8_0, &q8_0_blocks(n * k / 32, 35), deq_q8_0, n, k, &M);
    matches_reference(
        Kind::Q4K,
        &q4_k_blocks(n * kk / 256, 36),
        deq_q4_k,
        n,
        kk,
        &M,
    );
    matches_reference(
        Kind::Q5K,
        &q5_k_blocks(n * kk / 256, 37),
        deq_q5_k,
        n,
        kk,
        &M,
    );
    matches_reference(
        Kind::Q6K,
        &q6_k_blocks(n * kk / 256, 38),
        deq_q6_k,
        n,
        kk,
        &M,
    );
}

/// Blocks of one byte repeated (0x00: smallest values, 0xFF: largest), with unit scales,
/// against activations of +-127 everywhere: the largest integer sums the kernels see.
fn extreme<B: Copy>(byte: u8, fix: impl Fn(&mut B)) -> B {
    let bytes = vec![byte; std::mem::size_of::<B>()];
    // SAFETY: the block types are plain old data.
    let mut b = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const B) };
    fix(&mut b);
    b
}

#[test]
fn extreme_weights_and_activations_do_not_overflow() {
    let one = h(1.0);
    let (n, k) = (8, 256);
    let check_all = |kind: Kind, bytes: Vec<u8>, w: Vec<f64>| {
        let p = PackedWeight::from_bytes(kind, &bytes, n, k).expect("packs");
        for isa in Isa::available() {
            // One row (row kernels) and 48 (the batched path where there is one).
            for (sign, m) in [(1.0f32, 1), (-1.0, 1), (1.0, 48), (-1.0, 48)] {
                let x = vec![sign; m * k];
                let xq = quantized(&x, m, k, p.super_blocks());
                let mut out = vec![0f32; m * n];
                matmul_many_with(isa, &x, m, &[&p], &mut [&mut out]);
                check(
                    &format!("{kind:?} {} extreme, {m} rows", isa.name()),
                    &out,
                    &reference(&w, &xq, m, n, k),
                );
            }
        }
    };
    fn raw<B: Copy>(b: B, count: usize) -> Vec<u8> {
        let one: &[u8] = unsafe {
            std::slice::from_raw_parts(&b as *const B as *const u8, std::mem::size_of::<B>())
        };
        one.repeat(count)
    }
    for byte in [0x00u8, 0xFF] {
        let b = extreme(byte, |b: &mut BlockQ4_0| b.d = one);
        check_all(
            Kind::Q4_0,
            raw(b, n * k / 32),
            deq_q4_0(&b).repeat(n * k / 32),
        );
        let b = extreme(byte, |b: &mut BlockQ4_1| (b.d, b.m) = (one, one));
        check_all(
            Kind::Q4_1,
            raw(b, n * k / 32),
            deq_q4_1(&b).repeat(n * k / 32),
        );
        let b = extreme(byte, |b: &mut BlockQ5_0| b.d = one);
        check_all(
            Kind::Q5_0,
            raw(b, n * k / 32),
            deq_q5_0(&b).repeat(n * k / 32),
        );
        let b = extreme(byte, |b: &mut BlockQ5_1| (b.d, b.m) = (one, one));
        check_all(
            Kind::Q5_1,
            raw(b, n * k / 32),
            deq_q5_1(&b).repeat(n * k / 32),
        );
        let b = extreme(byte ^ 0x80, |b: &mut BlockQ8_0| b.d = one);
        check_all(
            Kind::Q8_0,
            raw(b, n * k / 32),
            deq_q8_0(&b).repeat(n * k / 32),
        );
        let b = extreme(byte, |b: &mut BlockQ4K| (b.d, b.dmin) = (one, one));
        check_all(
            Kind::Q4K,
            raw(b, n * k / 256),
            deq_q4_k(&b).repeat(n * k / 256),
        );
        let b = extreme(byte, |b: &mut BlockQ5K| (b.d, b.dmin) = (one, one));
        check_all(
            Kind::Q5K,
            raw(b, n * k / 256),
            deq_q5_k(&b).repeat(n * k / 256),
        );
        let b = extreme(byte, |b: &mut BlockQ6K| {
            b.d = one;
            b.scales = [127; 16];
        });
        check_all(
            Kind::Q6K,
            raw(b, n * k / 256),
            deq_q6_k(&b).repeat(n * k / 256),
        );
    }
}

/// Every SIMD kernel set against the scalar kernel, group by group, for 1 to 4 rows, and
/// the two-group kernels (where `isa` has them) against it for one row: to the bit for the
/// K-quants (their float steps are the same), within a tolerance for the others.
fn simd_agrees<T: Packed>(blocks: &[T::Block], n: usize, k: usize) {
    let p = PackedMatrix::<T>::new(blocks, n, k).expect("packs");
    let exact = T::COLS == QK_K;
    let (_, xq) = inputs(4, k, exact);
    let kb = k / QK;
    let x: [&[ActQ8]; 4] = std::array::from_fn(|c| &xq[c * kb..(c + 1) * kb]);
    let agree = |a: &[[f32; GROUP]], b: &[[f32; GROUP]], what: &str| {
        for (ra, rb) in a.iter().zip(b) {
            for (u, v) in ra.iter().zip(rb) {
                if exact {
                    assert_eq!(u.to_bits(), v.to_bits(), "{what}: {u} vs {v}");
                } else {
                    assert!(
                        (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                        "{what}: {u} vs {v}"
                    );
                }
            }
        }
    };
    let scalar = |w: &[T], x: &[&[ActQ8]]| -> Vec<[f32; GROUP]> {
        x.iter()
            .map(|&x| T::dot_8xr(Isa::SCALAR, w, [x])[0])
            .collect()
    };
    for isa in Isa::available() {
        for g in 0..n / GROUP {
            let w = p.group(g);
            let what = format!("{} group {g}", isa.name());
            agree(&T::dot_8xr(isa, w, x), &scalar(w, &x), &what);
            agree(&T::dot_8xr(isa, w, [x[0]]), &scalar(w, &x[..1]), &what);
            agree(
                &T::dot_8xr(isa, w, [x[1], x[2]]),
                &scalar(w, &x[1..3]),
                &what,
            );
            agree(
                &T::dot_8xr(isa, w, [x[1], x[2], x[3]]),
                &scalar(w, &x[1..]),
                &what,
            );
        }
        if T::has_pair(isa) {
            for g in 0..n / GROUP - 1 {
                let (w0, w1) = (p.group(g), p.group(g + 1));
                let pair = T::dot_pair(isa, w0, w1, x[0]).expect("has a pair kernel");
                let want = [scalar(w0, &x[..1])[0], scalar(w1, &x[..1])[0]];
                agree(&pair, &want, &format!("{} pair {g}", isa.name()));
            }
        }
    }
}

#[test]
fn simd_and_scalar_kernels_agree() {
    assert!(!Isa::available().is_empty());
    let (n, k) = (24, 768);
    simd_agrees::<Q4_0x8>(&q4_0_blocks(n * k / 32, 11), n, k);
    simd_agrees::<Q4_1x8>(&q4_1_blocks(n * k / 32, 12), n, k);
    simd_agrees::<Q5_0x8>(&q5_0_blocks(n * k / 32, 13), n, k);
    simd_agrees::<Q5_1x8>(&q5_1_blocks(n * k / 32, 14), n, k);
    simd_agrees::<Q8_0x8>(&q8_0_blocks(n * k / 32, 15), n, k);
    simd_agrees::<Q4Kx8>(&q4_k_blocks(n * k / 256, 16), n, k);
    simd_agrees::<Q5Kx8>(&q5_k_blocks(n * k / 256, 17), n, k);
    simd_agrees::<Q6Kx8>(&q6_k_blocks(n * k / 256, 18), n, k);
}

#[test]
fn mixed_formats_in_one_dispatch_equal_separate_products() {
    // A Q4_K_M layer: Q4_K, Q6_K and the Q5_0 fallback side by side over one input; at 16
    // rows, with AVX-512 VNNI, Q6_K and Q5_0 take the batched path and Q4_K the row kernels.
    let k = 256;
    fn bytes<B: Copy>(b: &[B]) -> &[u8] {
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, std::mem::size_of_val(b)) }
    }
    let q4k = q4_k_blocks(16, 21);
    let q6k = q6_k_blocks(8, 22);
    let q50 = q5_0_blocks(24 * 8, 23);
    let ws = [
        PackedWeight::from_bytes(Kind::Q4K, bytes(&q4k), 16, k).expect("packs"),
        PackedWeight::from_bytes(Kind::Q6K, bytes(&q6k), 8, k).expect("packs"),
        PackedWeight::from_bytes(Kind::Q5_0, bytes(&q50), 24, k).expect("packs"),
    ];
    for m in [1, 6, 16] {
        let (x, _) = inputs(m, k, false);
        let mut together: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; m * w.rows()]).collect();
        let mut refs: Vec<&mut [f32]> = together.iter_mut().map(|v| v.as_mut_slice()).collect();
        let wrefs: Vec<&PackedWeight> = ws.iter().collect();
        matmul_many(&x, m, &wrefs, &mut refs);
        for (w, t) in ws.iter().zip(&together) {
            let mut alone = vec![0f32; m * w.rows()];
            matmul_many(&x, m, &[w], &mut [&mut alone]);
            assert_eq!(&alone, t);
            // Each matrix got the activations of its kind: the K-quants, on the row
            // kernels (below every batched threshold), give the scalar kernel's bits over
            // the per-256 activations.
            if w.super_blocks() && m < 8 {
                let want = scalar_product(w, &quantized(&x, m, k, true), m);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(t), bits(&want), "{} rows", m);
            }
        }
    }
}

/// `xq` (`[m, k / 32]`) times `w` with the scalar kernel, group by group.
fn scalar_product(w: &PackedWeight, xq: &[ActQ8], m: usize) -> Vec<f32> {
    fn run<T: Packed>(p: &PackedMatrix<T>, xq: &[ActQ8], m: usize) -> Vec<f32> {
        let (n, kb) = (p.rows(), p.cols() / QK);
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for g in 0..n / GROUP {
                let [v] = T::dot_8xr(Isa::SCALAR, p.group(g), [&xq[i * kb..(i + 1) * kb]]);
                out[i * n + g * GROUP..][..GROUP].copy_from_slice(&v);
            }
        }
        out
    }
    each!(w, p => run(p, xq, m))
}

#[test]
fn shapes_that_do_not_pack_are_refused() {
    let w = q4_1_blocks(12 * 2, 5);
    assert!(PackedMatrix::<Q4_1x8>::new(&w, 12, 64).is_none());
    assert!(PackedMatrix::<Q4_1x8>::new(&w[..8], 8, 64).is_none());
    // K-quants need whole 256-column super-blocks.
    let k = q4_k_blocks(8 * 3, 6);
    assert!(PackedMatrix::<Q4Kx8>::new(&k, 8, 576).is_none());
    assert!(PackedWeight::from_bytes(Kind::Q4K, &[0u8; 100], 8, 256).is_none());
}

#[test]
fn simd_activation_quantization_equals_the_scalar_one() {
    let mut s = 3;
    let k = 32 * 40;
    let mut x: Vec<f32> = (0..k).map(|_| rand(&mut s) * 5.0).collect();
    // A zero block, a block of exact halves after scaling (ties round to even), one spike;
    // and for the per-256 scales a zero super-block and one of halves.
    x[..32].fill(0.0);
    for (i, v) in x[32..64].iter_mut().enumerate() {
        *v = if i == 0 { 127.0 } else { i as f32 + 0.5 };
    }
    x[100] = 1e30;
    x[256..512].fill(0.0);
    for (i, v) in x[512..768].iter_mut().enumerate() {
        *v = if i == 0 {
            127.0
        } else {
            (i % 127) as f32 + 0.5
        };
    }
    type Quantize = fn(&[f32], &mut [ActQ8]);
    let pairs: [(Quantize, Quantize); 2] = [
        (quantize_row, quantize_row_scalar),
        (quantize_row_super, quantize_row_super_scalar),
    ];
    for (simd, scalar) in pairs {
        let (mut a, mut b) = (vec![ZERO_ACT; k / 32], vec![ZERO_ACT; k / 32]);
        simd(&x, &mut a);
        scalar(&x, &mut b);
        for (a, b) in a.iter().zip(&b) {
            assert_eq!((a.qs, a.hs), (b.qs, b.hs));
            assert_eq!(
                (a.d.to_bits(), a.s.to_bits()),
                (b.d.to_bits(), b.s.to_bits())
            );
        }
        // Half-way values did round to even: 1.5 * 127 / 127 -> 2, 2.5 -> 2 (block 16 has
        // the scale 1 either way).
        assert_eq!(a[16].d, 1.0);
        assert_eq!(&a[16].qs[1..3], &[2, 2]);
    }
    let mut a = vec![ZERO_ACT; k / 32];
    quantize_row(&x, &mut a);
    assert_eq!(&a[1].qs[1..3], &[2, 2]);
}

/// `quantize_row_super`'s rule: one scale `amax / 127` per 256 values, shared by the 8
/// blocks of the super-block, so the largest |x| (and only values as large) quantizes to
/// +-127; each block keeps its own sums.
#[test]
fn activations_for_k_quants_share_one_scale_per_256_values() {
    let mut s = 5;
    let k = 3 * 256;
    let mut x: Vec<f32> = (0..k).map(|_| rand(&mut s)).collect();
    x[77] = -4.0;
    x[256 + 200] = 2.5;
    x[512..768].fill(0.0);
    for quantize in [quantize_row_super, quantize_row_super_scalar] {
        let mut q = vec![ZERO_ACT; k / 32];
        quantize(&x, &mut q);
        for (sb, amax) in [4.0f32, 2.5, 0.0].into_iter().enumerate() {
            for (j, b) in q[8 * sb..8 * sb + 8].iter().enumerate() {
                assert_eq!(b.d.to_bits(), (amax / 127.0).to_bits(), "super-block {sb}");
                let hs = [0, 16].map(|h| b.qs[h..h + 16].iter().map(|&v| v as i32).sum::<i32>());
                assert_eq!([b.hs[0] as i32, b.hs[1] as i32], hs);
                assert_eq!(b.s.to_bits(), (b.d * (hs[0] + hs[1]) as f32).to_bits());
                let extremes = b.qs.iter().filter(|v| v.unsigned_abs() == 127).count();
                let holds_max = [77, 256 + 200].iter().any(|&i| i / 32 == 8 * sb + j);
                assert_eq!(
                    extremes,
                    usize::from(holds_max),
                    "super-block {sb} block {j}"
                );
            }
        }
        assert_eq!(q[77 / 32].qs[77 % 32], -127);
        assert_eq!(q[(256 + 200) / 32].qs[(256 + 200) % 32], 127);
        assert!(q[16..].iter().all(|b| b.qs == [0; 32] && b.s == 0.0));
    }
}

/// A row's result does not depend on how many rows share its matmul, to the bit, whichever
/// path (row kernels or batched) each row count takes: greedy decoding relies on it.
#[test]
fn a_row_gives_the_same_bits_alone_and_in_any_batch() {
    fn bytes<B: Copy>(b: &[B]) -> &[u8] {
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u8, std::mem::size_of_val(b)) }
    }
    let (n, k, kk) = (40, 608, 768);
    let ws = [
        PackedWeight::from_bytes(Kind::Q4_0, bytes(&q4_0_blocks(n * k / 32, 41)), n, k),
        PackedWeight::from_bytes(Kind::Q4_1, bytes(&q4_1_blocks(n * k / 32, 42)), n, k),
        PackedWeight::from_bytes(Kind::Q5_0, bytes(&q5_0_blocks(n * k / 32, 43)), n, k),
        PackedWeight::from_bytes(Kind::Q5_1, bytes(&q5_1_blocks(n * k / 32, 44)), n, k),
        PackedWeight::from_bytes(Kind::Q8_0, bytes(&q8_0_blocks(n * k / 32, 45)), n, k),
        PackedWeight::from_bytes(Kind::Q4K, bytes(&q4_k_blocks(n * kk / 256, 46)), n, kk),
        PackedWeight::from_bytes(Kind::Q5K, bytes(&q5_k_blocks(n * kk / 256, 47)), n, kk),
        PackedWeight::from_bytes(Kind::Q6K, bytes(&q6_k_blocks(n * kk / 256, 48)), n, kk),
    ];
    for w in ws.iter().map(|w| w.as_ref().expect("packs")) {
        let k = w.cols();
        let m = 70;
        let (x, _) = inputs(m, k, w.super_blocks());
        for isa in Isa::available() {
            let mut batch = vec![0f32; m * n];
            matmul_many_with(isa, &x, m, &[w], &mut [&mut batch]);
            for i in [0, 9, 33, 69] {
                let mut alone = vec![0f32; n];
                matmul_many_with(isa, &x[i * k..(i + 1) * k], 1, &[w], &mut [&mut alone]);
                let got: Vec<u32> = batch[i * n..(i + 1) * n]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                let want: Vec<u32> = alone.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{:?} {} row {i}", w.cols(), isa.name());
            }
        }
    }
}

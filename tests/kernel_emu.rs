//! wick's CUDA kernels (`kernels/*.cu`), run on the CPU through the emulator of
//! `kernels/emu/` (`wick::ops::emu`), against CPU references. Every launch takes its grid,
//! block and argument list from `wick::ops::launch`, as the GPU path does, and the step
//! metadata from `kv::step_meta::pack_step`, as the device cache does.
//!
//! Paged attention is checked against a plain f64 attention over the same (dtype-rounded)
//! inputs, to within the output dtype's rounding, and against wick's CPU kernel, over head
//! sizes 64/128/256, GQA ratios 1 to 16, block sizes 16 and 32, scattered block tables,
//! bf16 and f16, and batches of decode rows (contexts up to ~4k, which take the
//! split-context path), whole prompts and prompt chunks over a cached context (the
//! tensor-core prefill kernel, to a 16k prefix), with unit and with sharp (scores spread
//! over hundreds) softmaxes, and bit for bit under shuffled thread schedules; with sliding
//! windows (smaller than, equal to and larger than the contexts, hiding whole partitions
//! and whole K/V tiles) and logit soft-capping, against the f64 attention and the CPU's
//! `paged_attention_windowed`, each also checked to differ from plain causal attention. The
//! tensor-core wrappers (mma, ldmatrix) are checked against a plain matrix product and the
//! PTX ISA's fragment layouts. Rope is checked against the CPU rope in both pair layouts,
//! whole and partial (half and three quarters of a head rotated), with and without an
//! attention factor, and with Gemma 3's two tables; write_kv and copy_range element for
//! element, greedy against the CPU argmax and an f64 logprob, and sampling row for row
//! against `sampling::gumbel`, its Rust statement. The emulator's own checks (deadlocks,
//! out-of-bounds accesses, misaligned vectors, writes to inputs) have tests of their own.
//!
//! Needs the emulator, which build.rs compiles with a C++ compiler: without one these tests
//! fail and say so.

mod kernel_support;

use kernel_support::{PagedInputs, Rng};

use half::{bf16, f16};
use wick::kv::step_meta::pack_step;
use wick::kv::CacheLayout;
use wick::model::ForwardBatch;
use wick::ops::emu::{self, Args};
use wick::ops::launch::{
    plan_splits, scratch_lens, AdjustLaunch, ArgSink, AttentionLaunch, AttentionShape,
    AttentionStage, ChooseRowsLaunch, CopyRangeLaunch, Dims, RopeLaunch, StepBufs, WriteKvLaunch,
};
use wick::ops::{AttnSeq, Rope, RopeScaling, RopeStyle};
use wick::sampling::gumbel::{sample_row, RowSample};

/// The 16-bit element type of a kernel instance.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Bf16,
    F16,
}

impl Ty {
    fn suffix(self) -> &'static str {
        match self {
            Ty::Bf16 => "bf16",
            Ty::F16 => "f16",
        }
    }
    fn bits(self, x: f32) -> u16 {
        match self {
            Ty::Bf16 => bf16::from_f32(x).to_bits(),
            Ty::F16 => f16::from_f32(x).to_bits(),
        }
    }
    fn value(self, b: u16) -> f32 {
        match self {
            Ty::Bf16 => bf16::from_bits(b).to_f32(),
            Ty::F16 => f16::from_bits(b).to_f32(),
        }
    }
    /// Rounds through the type, so references see exactly the kernel's inputs.
    fn round(self, x: f32) -> f32 {
        self.value(self.bits(x))
    }
    /// A quiet NaN: what unwritten outputs hold, so a missed element cannot pass.
    fn nan(self) -> u16 {
        match self {
            Ty::Bf16 => 0x7fc0,
            Ty::F16 => 0x7e00,
        }
    }
    /// One unit in the last place, relative: the spacing of values near `x` is at most
    /// `ulp * |x|` (2^-7 for bf16's 8 significant bits, 2^-10 for f16's 11).
    fn ulp(self) -> f64 {
        match self {
            Ty::Bf16 => 1.0 / 128.0,
            Ty::F16 => 1.0 / 1024.0,
        }
    }
}

fn launch(kernel: &str, dims: Dims, args: Args<'_>) {
    if let Err(e) = emu::launch(kernel, dims, args) {
        panic!("{kernel}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// The emulator itself.

#[test]
fn emulator_is_built() {
    emu::available().unwrap();
}

#[test]
fn conversions_round_to_nearest_even() {
    emu::available().unwrap();
    let check = |x: f32| {
        let (h, b) = (emu::round_f16(x), emu::round_bf16(x));
        if x.is_nan() {
            assert_eq!((h, b), (0x7fff, 0x7fff), "NaN {:#x}", x.to_bits());
        } else {
            assert_eq!(
                h,
                f16::from_f32(x).to_bits(),
                "f16 of {x:e} ({:#x})",
                x.to_bits()
            );
            assert_eq!(
                b,
                bf16::from_f32(x).to_bits(),
                "bf16 of {x:e} ({:#x})",
                x.to_bits()
            );
        }
    };
    // Every 16-bit value, the midpoints between neighbours (ties go to even) and the
    // floats just beside them, both signs.
    for bits in 0..=u16::MAX {
        for v in [
            f16::from_bits(bits).to_f32(),
            bf16::from_bits(bits).to_f32(),
        ] {
            if !v.is_finite() {
                check(v);
                continue;
            }
            let up = f32::from_bits(v.to_bits() + 1);
            for w in [v, up, f32::from_bits(v.to_bits().saturating_sub(1))] {
                check(w);
                check(-w);
            }
        }
        let (a, b) = (f16::from_bits(bits), f16::from_bits(bits.wrapping_add(1)));
        if a.is_finite() && b.is_finite() && (a.to_f32() < b.to_f32()) {
            let mid = (a.to_f32() as f64 + b.to_f32() as f64) / 2.0;
            let m = mid as f32;
            for w in [
                m,
                f32::from_bits(m.to_bits() + 1),
                f32::from_bits(m.to_bits() - 1),
            ] {
                check(w);
            }
        }
        let (a, b) = (bf16::from_bits(bits), bf16::from_bits(bits.wrapping_add(1)));
        if a.is_finite() && b.is_finite() && (a.to_f32() < b.to_f32()) {
            let m = f32::from_bits((a.to_f32().to_bits() + b.to_f32().to_bits()) / 2);
            for w in [
                m,
                f32::from_bits(m.to_bits() + 1),
                f32::from_bits(m.to_bits() - 1),
            ] {
                check(w);
            }
        }
    }
    // Random floats of every magnitude.
    let mut rng = Rng(5);
    for _ in 0..200_000 {
        check(f32::from_bits(rng.next() as u32));
    }
}

#[test]
fn warp_operations_and_barriers() {
    let threads = 96u32;
    let mut out = vec![-1i32; threads as usize * 8];
    let mut args = Args::new();
    args.arg(out.as_mut_slice());
    launch(
        "emu_warp_ops",
        Dims {
            grid: (1, 1, 1),
            block: (threads, 1, 1),
        },
        args,
    );
    for t in 0..threads as i32 {
        let lane = t % 32;
        let base = t - lane;
        let o = &out[t as usize * 8..][..8];
        let want = [
            t ^ 1,
            t ^ 16,
            if lane + 3 < 32 { t + 3 } else { t },
            if lane >= 5 { t - 5 } else { t },
            base + 7,
            0xaaaa_aaaau32 as i32,
            1,
            0,
        ];
        assert_eq!(o, want, "thread {t}");
    }
    for seed in [0, 3] {
        let blocks = 5u32;
        let mut sums = vec![0i32; blocks as usize];
        let mut args = Args::new().schedule(seed);
        args.arg(sums.as_mut_slice());
        launch(
            "emu_block_sum",
            Dims {
                grid: (blocks, 1, 1),
                block: (256, 1, 1),
            },
            args,
        );
        for (b, s) in sums.iter().enumerate() {
            assert_eq!(*s, (0..256).sum::<i32>() + 256 * b as i32);
        }
    }
}

/// The emulator reports GPU bugs as launch errors, never as a hang or silent success.
#[test]
fn gpu_bugs_are_reported() {
    let run = |kernel: &str, threads: u32, args: Args<'_>| -> String {
        let dims = Dims {
            grid: (2, 1, 1),
            block: (threads, 1, 1),
        };
        match emu::launch(kernel, dims, args) {
            Ok(()) => panic!("{kernel} ran without an error"),
            Err(e) => e.to_string(),
        }
    };
    let mut out = vec![0i32; 64];
    let mut a = Args::new();
    a.arg(out.as_mut_slice());
    let e = run("emu_bug_divergent_barrier", 64, a);
    assert!(e.contains("deadlock") && e.contains("__syncthreads"), "{e}");

    let mut a = Args::new();
    a.arg(out.as_mut_slice());
    let e = run("emu_bug_two_barriers", 64, a);
    assert!(e.contains("divergent __syncthreads"), "{e}");

    let mut a = Args::new();
    a.arg(out.as_mut_slice());
    let e = run("emu_bug_divergent_shuffle", 64, a);
    assert!(e.contains("deadlock") && e.contains("warp exchange"), "{e}");

    let mut f = vec![0f32; 10];
    let n = 10i32;
    let mut a = Args::new();
    a.arg(f.as_mut_slice());
    a.arg(&n);
    let e = run("emu_bug_out_of_bounds", 32, a);
    assert!(e.contains("0 bytes past the end of argument 0"), "{e}");

    let input = vec![0u16; 64];
    let mut o = vec![0u32; 32];
    let mut a = Args::new();
    a.arg(input.as_slice());
    a.arg(o.as_mut_slice());
    let e = run("emu_bug_misaligned", 32, a);
    assert!(e.contains("misaligned 16-byte"), "{e}");

    let input = vec![1f32; 4];
    let mut a = Args::new();
    a.arg(input.as_slice());
    let e = run("emu_bug_writes_input", 32, a);
    assert!(e.contains("read-only"), "{e}");
    assert_eq!(input, [1.0; 4], "the caller's buffer is untouched");

    // Checked against the kernel's parameter list before anything runs.
    let mut a = Args::new();
    a.arg(f.as_mut_slice());
    let e = run("emu_bug_out_of_bounds", 32, a);
    assert!(e.contains("takes 2 parameters"), "{e}");
    let (mut x, mut y) = (vec![0u16; 4], vec![0u32; 4]);
    let mut a = Args::new();
    a.arg(y.as_mut_slice());
    a.arg(x.as_mut_slice());
    let e = run("emu_bug_misaligned", 32, a);
    assert!(e.contains("points to 2-byte elements"), "{e}");
    let mut a = Args::new();
    a.arg(out.as_mut_slice());
    let e = run("emu_block_sum", 2048, a);
    assert!(e.contains("outside CUDA's limits"), "{e}");

    // A missing barrier: invisible when thread 0 happens to run first, caught by a
    // shuffled schedule.
    let run_race = |seed: u64| -> bool {
        let mut out = vec![0i32; 4 * 128];
        let mut a = Args::new().schedule(seed);
        a.arg(out.as_mut_slice());
        launch(
            "emu_bug_missing_barrier",
            Dims {
                grid: (4, 1, 1),
                block: (128, 1, 1),
            },
            a,
        );
        out.iter()
            .enumerate()
            .all(|(i, &v)| v == (i / 128) as i32 + 1)
    };
    assert!(run_race(0), "in thread order the race does not show");
    assert!(!run_race(7), "a shuffled schedule exposes it");
}

// ---------------------------------------------------------------------------------------
// Rope, write_kv, copy_range.

/// Runs `wick_rope_*` on `x` (`[positions][heads][head_dim]`, already rounded to `ty`) as
/// the device cache launches it for `rope`; checks every element against the CPU rope
/// (`Rope::apply`) and returns the output.
fn check_rope(rope: &Rope, x: &[f32], heads: usize, positions: &[u32], ty: Ty) -> Vec<f32> {
    let n = positions.len();
    let d = rope.head_dim();
    let mut want = x.to_vec();
    rope.apply(&mut want, heads, &rope.tables(positions));
    let xb: Vec<u16> = x.iter().map(|&v| ty.bits(v)).collect();
    let mut out = vec![ty.nan(); xb.len()];
    let l = RopeLaunch::new(n, heads, rope);
    let mut args = Args::new();
    l.args(
        &mut args,
        xb.as_slice(),
        out.as_mut_slice(),
        positions,
        rope.inv_freq(),
    );
    launch(&RopeLaunch::kernel(ty.suffix()), l.dims, args);
    let (style, rot) = (rope.style(), rope.rot_dim());
    for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
        // The f32 result, rounded once to the output type; the dimensions past rot_dim
        // copied bit for bit.
        let g = ty.value(g) as f64;
        let tol = if i % d < rot {
            ty.ulp() * (w as f64).abs() + 1e-6
        } else {
            0.0
        };
        assert!(
            (g - w as f64).abs() <= tol,
            "{style:?} d={d} rot={rot} scale={} {ty:?} element {i}: emulated {g} vs cpu {w}",
            rope.scale()
        );
    }
    out.iter().map(|&b| ty.value(b)).collect()
}

#[test]
fn rope_matches_the_cpu_rope() {
    let mut rng = Rng(7);
    // (style, head size, heads, rotated dimensions, cos/sin scale): whole heads; partial
    // rotary (half and three quarters of the head, as Phi-3 and Phi-4-mini) in both pair
    // layouts, with and without an attention factor (longrope's).
    for (style, d, heads, rot, scale) in [
        (RopeStyle::Interleaved, 64, 9, 64, 1.0),
        (RopeStyle::Neox, 128, 32, 128, 1.0),
        (RopeStyle::Neox, 64, 14, 64, 1.0),
        (RopeStyle::Interleaved, 256, 2, 256, 1.0),
        (RopeStyle::Neox, 128, 8, 64, 1.0),
        (RopeStyle::Neox, 128, 8, 96, 1.1902),
        (RopeStyle::Interleaved, 64, 5, 32, 1.1902),
        (RopeStyle::Interleaved, 256, 3, 192, 1.0),
        (RopeStyle::Neox, 96, 4, 96, 1.25),
    ] {
        let scaling = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let rope = Rope::partial(d, rot, scale, 500_000.0, &scaling, style);
        assert_eq!((rope.rot_dim(), rope.scale()), (rot, scale));
        let positions: Vec<u32> = vec![0, 1, 2, 17, 511, 4096, 32767, 100_000];
        let n = positions.len();
        for ty in [Ty::Bf16, Ty::F16] {
            let x: Vec<f32> = (0..n * heads * d).map(|_| ty.round(rng.normal())).collect();
            let got = check_rope(&rope, &x, heads, &positions, ty);
            if scale != 1.0 {
                // At position 0 the rotated part is only scaled: the factor was applied.
                let head = &got[..d];
                for (i, (&g, &x)) in head.iter().zip(&x[..d]).enumerate().take(rot) {
                    assert!(
                        (g as f64 - (x * scale) as f64).abs()
                            <= ty.ulp() * (x * scale).abs() as f64 + 1e-6,
                        "{style:?} d={d} rot={rot} {ty:?} dim {i}: {g} is not {x} * {scale}"
                    );
                }
            }
        }
    }
}

/// Gemma 3's pair of ropes (a global base with linear scaling, a local base unscaled, as
/// `ModelConfig::local_rope` makes it): the kernel takes either table and matches the CPU
/// rope of each, and the two differ (a layer that took the wrong one would show).
#[test]
fn rope_local_and_global_tables() {
    let mut rng = Rng(11);
    let (d, heads) = (256, 4);
    let global = Rope::partial(
        d,
        d,
        1.0,
        1_000_000.0,
        &RopeScaling::Linear { factor: 8.0 },
        RopeStyle::Neox,
    );
    let local = Rope::partial(d, d, 1.0, 10_000.0, &RopeScaling::None, RopeStyle::Neox);
    let positions: Vec<u32> = vec![3, 100, 1023, 5000];
    for ty in [Ty::Bf16, Ty::F16] {
        let x: Vec<f32> = (0..positions.len() * heads * d)
            .map(|_| ty.round(rng.normal()))
            .collect();
        let g = check_rope(&global, &x, heads, &positions, ty);
        let l = check_rope(&local, &x, heads, &positions, ty);
        let apart = g
            .iter()
            .zip(&l)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            apart > 0.5,
            "{ty:?}: the local and global ropes agree ({apart})"
        );
    }
}

#[test]
fn write_kv_fills_the_slots() {
    let mut rng = Rng(3);
    for (kv_heads, d, bs, ty) in [
        (2, 64, 16, Ty::Bf16),
        (8, 128, 32, Ty::F16),
        (8, 256, 16, Ty::Bf16), // a row of 2048 elements: more than one per thread
    ] {
        let layout = CacheLayout {
            num_blocks: 6,
            block_size: bs,
            num_kv_heads: kv_heads,
            head_dim: d,
        };
        let row = kv_heads * d;
        let capacity = (layout.num_blocks * bs) as u32;
        // Distinct slots in scrambled order, and one token with no slot.
        let mut slots: Vec<u32> = (0..capacity).collect();
        for i in (1..slots.len()).rev() {
            slots.swap(i, rng.below(i + 1));
        }
        slots.truncate(11);
        slots[4] = u32::MAX;
        let tokens = slots.len();
        let k: Vec<u16> = (0..tokens * row).map(|_| ty.bits(rng.normal())).collect();
        let v: Vec<u16> = (0..tokens * row).map(|_| ty.bits(rng.normal())).collect();
        let sentinel = 0x1234u16;
        let mut kc = vec![sentinel; layout.layer_len()];
        let mut vc = vec![sentinel; layout.layer_len()];
        let l = WriteKvLaunch::new(tokens, kv_heads, d, bs);
        let mut args = Args::new();
        l.args(
            &mut args,
            k.as_slice(),
            v.as_slice(),
            kc.as_mut_slice(),
            vc.as_mut_slice(),
            slots.as_slice(),
        );
        launch(&WriteKvLaunch::kernel(ty.suffix()), l.dims, args);
        let mut want_k = vec![sentinel; layout.layer_len()];
        let mut want_v = vec![sentinel; layout.layer_len()];
        for (t, &slot) in slots.iter().enumerate() {
            if slot == u32::MAX {
                continue;
            }
            let (block, within) = (slot as usize / bs, slot as usize % bs);
            for h in 0..kv_heads {
                for c in 0..d {
                    let dst = ((block * kv_heads + h) * bs + within) * d + c;
                    want_k[dst] = k[t * row + h * d + c];
                    want_v[dst] = v[t * row + h * d + c];
                }
            }
        }
        assert!(
            kc == want_k,
            "K cache, {kv_heads} heads x {d}, block size {bs}"
        );
        assert!(
            vc == want_v,
            "V cache, {kv_heads} heads x {d}, block size {bs}"
        );
    }
}

#[test]
fn copy_range_copies_a_block() {
    // One grid sweep, and a range longer than the whole grid (grid-stride loop).
    for (total, src, dst, len) in [
        (4096usize, 100usize, 3000usize, 900usize),
        (700_000, 5, 400_000, 290_000),
    ] {
        let host: Vec<u16> = (0..total as u32)
            .map(|i| (i.wrapping_mul(7919) % 65521) as u16)
            .collect();
        let mut buf = host.clone();
        let l = CopyRangeLaunch::new(src, dst, len);
        let mut args = Args::new();
        l.args(&mut args, buf.as_mut_slice());
        launch(CopyRangeLaunch::KERNEL, l.dims, args);
        let mut want = host.clone();
        want.copy_within(src..src + len, dst);
        assert!(buf == want, "copy of {len} elements");
    }
}

// ---------------------------------------------------------------------------------------
// Tensor-core wrappers (kernels/tensor_core.cuh): the emulator's mma and ldmatrix against
// a plain matrix product and the PTX ISA's fragment layouts.

/// Random 16-bit values (bits) of `ty`, and their values.
fn random16(rng: &mut Rng, n: usize, ty: Ty) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = (0..n).map(|_| ty.bits(rng.normal())).collect();
    let vals = bits.iter().map(|&b| ty.value(b)).collect();
    (bits, vals)
}

#[test]
fn mma_m16n8k16_is_a_matrix_product() {
    emu::available().unwrap();
    for (ty, seed) in [(Ty::Bf16, 3u64), (Ty::F16, 4), (Ty::Bf16, 5)] {
        let mut rng = Rng(seed);
        let (ab, a) = random16(&mut rng, 16 * 16, ty);
        // b as [n][k]: B(k, n) = bt[n * 16 + k].
        let (bb, bt) = random16(&mut rng, 8 * 16, ty);
        let c: Vec<f32> = (0..16 * 8).map(|_| rng.normal()).collect();
        let mut d = vec![f32::NAN; 16 * 8];
        let mut args = Args::new().schedule(seed);
        args.arg(d.as_mut_slice());
        args.arg(ab.as_slice());
        args.arg(bb.as_slice());
        args.arg(c.as_slice());
        let dims = Dims {
            grid: (1, 1, 1),
            block: (32, 1, 1),
        };
        launch(&format!("emu_mma_{}", ty.suffix()), dims, args);
        for i in 0..16 {
            for j in 0..8 {
                let want: f64 = c[i * 8 + j] as f64
                    + (0..16)
                        .map(|k| a[i * 16 + k] as f64 * bt[j * 16 + k] as f64)
                        .sum::<f64>();
                let mag: f64 = (0..16)
                    .map(|k| (a[i * 16 + k] as f64 * bt[j * 16 + k] as f64).abs())
                    .sum::<f64>()
                    + (c[i * 8 + j] as f64).abs();
                let got = d[i * 8 + j] as f64;
                // Exact products, 17 f32 additions.
                assert!(
                    (got - want).abs() <= 17.0 * mag * f32::EPSILON as f64,
                    "{ty:?} d[{i}][{j}] = {got}, want {want}"
                );
            }
        }
    }
}

#[test]
fn ldmatrix_follows_the_ptx_fragment_layout() {
    emu::available().unwrap();
    let mut rng = Rng(11);
    let m: Vec<u16> = (0..32 * 8).map(|_| rng.next() as u16).collect();
    // Lanes address the shared rows in a scrambled order.
    let mut rows: Vec<i32> = (0..32).collect();
    for i in (1..32).rev() {
        rows.swap(i, rng.below(i + 1));
    }
    for trans in [0i32, 1] {
        let mut out = vec![0u32; 32 * 4];
        let mut args = Args::new().schedule(trans as u64 + 1);
        args.arg(out.as_mut_slice());
        args.arg(m.as_slice());
        args.arg(rows.as_slice());
        args.arg(&trans);
        let dims = Dims {
            grid: (1, 1, 1),
            block: (32, 1, 1),
        };
        launch("emu_ldmatrix", dims, args);
        // Matrix i's row r is the shared row lane 8 i + r addressed.
        let at = |i: usize, r: usize, c: usize| m[rows[8 * i + r] as usize * 8 + c] as u32;
        for l in 0..32 {
            for i in 0..4 {
                let (r, c) = (l / 4, 2 * (l % 4));
                let want = if trans == 0 {
                    at(i, r, c) | at(i, r, c + 1) << 16
                } else {
                    at(i, c, r) | at(i, c + 1, r) << 16
                };
                assert_eq!(out[l * 4 + i], want, "trans={trans} lane {l} register {i}");
            }
        }
    }
}

#[test]
fn ldmatrix_feeds_mma_as_the_attention_kernel_does() {
    emu::available().unwrap();
    let ty = Ty::Bf16;
    let mut rng = Rng(21);
    let (ab, a) = random16(&mut rng, 16 * 16, ty);
    let (bb, b) = random16(&mut rng, 16 * 16, ty); // [k][n]
    let bt: Vec<u16> = (0..256).map(|i| bb[(i % 16) * 16 + i / 16]).collect(); // [n][k]
    for trans in [0i32, 1] {
        let mut d = vec![f32::NAN; 16 * 16];
        let mut args = Args::new().schedule(7 + trans as u64);
        args.arg(d.as_mut_slice());
        args.arg(ab.as_slice());
        args.arg(bb.as_slice());
        args.arg(bt.as_slice());
        args.arg(&trans);
        let dims = Dims {
            grid: (1, 1, 1),
            block: (32, 1, 1),
        };
        launch("emu_ldmatrix_mma_bf16", dims, args);
        for i in 0..16 {
            for j in 0..16 {
                let want: f64 = (0..16)
                    .map(|k| a[i * 16 + k] as f64 * b[k * 16 + j] as f64)
                    .sum();
                let mag: f64 = (0..16)
                    .map(|k| (a[i * 16 + k] as f64 * b[k * 16 + j] as f64).abs())
                    .sum();
                let got = d[i * 16 + j] as f64;
                assert!(
                    (got - want).abs() <= 16.0 * mag * f32::EPSILON as f64,
                    "trans={trans} d[{i}][{j}] = {got}, want {want}"
                );
            }
        }
    }
}

/// The emulator's cp.async writes shared memory only when a wait retires the copy's group.
#[test]
fn cp_async_lands_at_the_wait() {
    emu::available().unwrap();
    let src: Vec<u32> = (0..32 * 4).map(|i| 1000 + i).collect();
    let src2: Vec<u32> = (0..32 * 4).map(|i| 1 << 20 | i).collect();
    let mut out = vec![u32::MAX; 32 * 3];
    let mut args = Args::new().schedule(9);
    args.arg(out.as_mut_slice());
    args.arg(src.as_slice());
    args.arg(src2.as_slice());
    let dims = Dims {
        grid: (1, 1, 1),
        block: (32, 1, 1),
    };
    launch("emu_cp_async", dims, args);
    for t in 0..32 {
        let (a, b) = (src[4 * t], src2[4 * t]);
        assert_eq!(&out[t * 3..t * 3 + 3], &[0, a, a + b], "thread {t}");
    }
}

// ---------------------------------------------------------------------------------------
// Paged attention.

struct Case {
    head_dim: usize,
    num_heads: usize,
    kv_heads: usize,
    block_size: usize,
    /// Per sequence: (tokens already cached, new query tokens this step).
    seqs: Vec<(usize, usize)>,
    ty: Ty,
    /// Thread order after barriers and shuffles (0: in order).
    schedule: u64,
    /// Queries are drawn this many times larger (sharper softmax) than unit normals.
    q_scale: f32,
    /// Scratch partitions for split decode rows (`ops::launch::plan_splits`).
    split_capacity: usize,
    /// The layer's sliding window and attention logit soft-cap.
    window: Option<usize>,
    softcap: Option<f32>,
}

/// Runs one step of `case` through write_kv and paged attention (and the reduction when
/// the longest context spans several partitions, and the prefill kernel when the step has
/// prompt rows) and checks every output element; returns the output's bits.
fn check_attention(case: &Case, seed: u64) -> Vec<u16> {
    let Case {
        head_dim: d,
        num_heads: nh,
        kv_heads: nkv,
        block_size: bs,
        ty,
        schedule,
        ..
    } = *case;
    let mut rng = Rng(seed | 1);
    // Blocks for every sequence, handed out in a scrambled order, and the K/V of every
    // position (cached context and new tokens), rounded to the type.
    let PagedInputs {
        layout,
        tables,
        k: all_k,
        v: all_v,
        slots: all_slots,
    } = PagedInputs::new(&mut rng, &case.seqs, bs, nkv, d, |x| ty.round(x));
    let row_kv = nkv * d;
    // The device cache ([block][kv head][slot][dim]): earlier steps' context written here,
    // the rest NaN so a read of a slot nobody wrote shows.
    let mut k_cache = vec![ty.nan(); layout.layer_len()];
    let mut v_cache = vec![ty.nan(); layout.layer_len()];
    let mut new_k = Vec::new();
    let mut new_v = Vec::new();
    let mut new_slots = Vec::new();
    let mut positions = Vec::new();
    let mut base = 0;
    for &(c, q) in &case.seqs {
        for pos in 0..c + q {
            let i = base + pos;
            let slot = all_slots[i] as usize;
            let src = i * row_kv;
            if pos < c {
                for h in 0..nkv {
                    let dst = ((slot / bs * nkv + h) * bs + slot % bs) * d;
                    for e in 0..d {
                        k_cache[dst + e] = ty.bits(all_k[src + h * d + e]);
                        v_cache[dst + e] = ty.bits(all_v[src + h * d + e]);
                    }
                }
            } else {
                new_k.extend(all_k[src..src + row_kv].iter().map(|&x| ty.bits(x)));
                new_v.extend(all_v[src..src + row_kv].iter().map(|&x| ty.bits(x)));
                new_slots.push(all_slots[i]);
                positions.push(pos as u32);
            }
        }
        base += c + q;
    }

    // The step, packed as the device cache uploads it.
    let tokens: usize = case.seqs.iter().map(|s| s.1).sum();
    let mut q_start = Vec::new();
    let mut row = 0;
    for &(_, n) in &case.seqs {
        q_start.push(row);
        row += n;
    }
    let seqs: Vec<AttnSeq<'_>> = case
        .seqs
        .iter()
        .enumerate()
        .map(|(s, &(c, n))| AttnSeq {
            q_start: q_start[s],
            q_len: n,
            context_len: c + n,
            block_table: &tables[s],
        })
        .collect();
    let token_ids = vec![0u32; tokens];
    let batch = ForwardBatch {
        tokens: &token_ids,
        positions: &positions,
        slots: &new_slots,
        seqs: &seqs,
        logits_rows: &[],
    };
    let mut packed = Vec::new();
    let p = pack_step(&layout, &batch, case.split_capacity, &mut packed).expect("a valid step");

    // write_kv: this step's K/V into their slots.
    let w = WriteKvLaunch::new(tokens, nkv, d, bs);
    let mut args = Args::new().schedule(schedule);
    w.args(
        &mut args,
        new_k.as_slice(),
        new_v.as_slice(),
        k_cache.as_mut_slice(),
        v_cache.as_mut_slice(),
        &packed[p.slots()],
    );
    launch(&WriteKvLaunch::kernel(ty.suffix()), w.dims, args);

    // Attention.
    let q: Vec<f32> = (0..tokens * nh * d)
        .map(|_| ty.round(rng.normal() * case.q_scale))
        .collect();
    let qb: Vec<u16> = q.iter().map(|&x| ty.bits(x)).collect();
    let scale = 1.0 / (d as f32).sqrt();
    let a = AttentionLaunch::new(&AttentionShape {
        tokens,
        num_heads: nh,
        kv_heads: nkv,
        head_dim: d,
        block_size: bs,
        max_blocks: p.max_blocks,
        split: p.split,
        scale,
        window: case.window,
        softcap: case.softcap,
    })
    .expect("a shape the kernel takes");
    // Scratch for exactly the planned partitions: a write past them is reported. It starts
    // as a stale partition that would dominate any merge it entered (running max 1e4, sum
    // 1, values 100; a layer before this one leaves such data on the GPU), so reading a
    // partition that was not written this step (one outside a window) cannot pass.
    let (acc_len, ml_len) = scratch_lens(p.split.total_parts, nh, d);
    let mut out = vec![ty.nan(); tokens * nh * d];
    let mut part_acc = vec![100f32; acc_len];
    let mut part_ml: Vec<f32> = (0..ml_len)
        .map(|i| if i % 2 == 0 { 1e4 } else { 1.0 })
        .collect();
    let step = StepBufs {
        row_seq: &packed[p.row_seq()],
        q_start: &packed[p.q_start()],
        q_len: &packed[p.q_len()],
        context_len: &packed[p.context_len()],
        block_tables: &packed[p.block_tables()],
        part_start: &packed[p.part_start()],
        split_rows: &packed[p.split_rows()],
    };
    // The launches ops::cuda makes, in its order.
    for (stage, name, dims) in a.stages(ty.suffix()) {
        let mut args = Args::new().schedule(schedule);
        let (o, kc, vc) = (out.as_mut_slice(), k_cache.as_slice(), v_cache.as_slice());
        match stage {
            AttentionStage::Decode => {
                let (acc, ml) = (part_acc.as_mut_slice(), part_ml.as_mut_slice());
                a.args(&mut args, o, acc, ml, qb.as_slice(), kc, vc, step);
            }
            AttentionStage::Prefill => a.prefill_args(&mut args, o, qb.as_slice(), kc, vc, step),
            AttentionStage::Reduce => {
                a.reduce_args(&mut args, o, part_acc.as_slice(), part_ml.as_slice(), step)
            }
        }
        launch(&name, dims, args);
    }
    let got: Vec<f32> = out.iter().map(|&b| ty.value(b)).collect();
    // Rows of sequences with more than one new token: the prefill kernel's.
    let prompt_row: Vec<bool> = case
        .seqs
        .iter()
        .flat_map(|&(_, n)| std::iter::repeat_n(n > 1, n))
        .collect();
    assert_eq!(a.prefill.is_some(), prompt_row.contains(&true));

    // Reference 1: plain f64 attention over the same inputs. The kernels work in f32 and
    // round their output once to the type: within one unit in the last place. The prefill
    // kernel also rounds the softmax weights to the type for its tensor-core product (half
    // a unit each, relative), which moves the output by at most half a unit of the
    // weighted mean of |v|.
    let mut worst = 0f64;
    let mut weight_err = vec![0f64; got.len()];
    kernel_support::attention_f64_masked(
        &q,
        &all_k,
        &all_v,
        &case.seqs,
        nh,
        nkv,
        d,
        scale,
        case.window,
        case.softcap,
        |r, h, e, want, abs| {
            let g = got[(r * nh + h) * d + e] as f64;
            let err = (g - want).abs();
            worst = worst.max(err);
            let weights = if prompt_row[r] {
                ty.ulp() / 2.0 * abs
            } else {
                0.0
            };
            weight_err[(r * nh + h) * d + e] = weights;
            assert!(
                err <= ty.ulp() * want.abs() + weights + 1e-5,
                "d={d} heads={nh}/{nkv} bs={bs} {ty:?} seqs={:?} window={:?} softcap={:?}: \
                 row {r} head {h} dim {e}: emulated {g} vs f64 {want}",
                case.seqs,
                case.window,
                case.softcap
            );
        },
    );
    // A window that hides keys of some row, or a soft-cap, must change the result: the
    // output is far from plain causal attention's somewhere.
    let hides = case
        .window
        .is_some_and(|w| case.seqs.iter().any(|&(c, n)| c + n > w));
    if hides || case.softcap.is_some() {
        let mut apart = 0f64;
        kernel_support::attention_f64(&q, &all_k, &all_v, &case.seqs, nh, nkv, d, scale, {
            |r, h, e, plain| {
                apart = apart.max((got[(r * nh + h) * d + e] as f64 - plain).abs());
            }
        });
        assert!(
            apart > 0.05,
            "window={:?} softcap={:?} seqs={:?}: the output is within {apart:.2e} of plain \
             causal attention's",
            case.window,
            case.softcap,
            case.seqs
        );
    }

    // Reference 2: wick's CPU kernel (f16 cache, keys transposed, softmax weights rounded
    // to f16) on the same inputs.
    let mut kc = vec![f16::ZERO; layout.layer_len()];
    let mut vc = vec![f16::ZERO; layout.layer_len()];
    wick::ops::write_kv(&layout, &mut kc, &mut vc, &all_k, &all_v, &all_slots);
    let mut cpu = vec![0f32; tokens * nh * d];
    wick::ops::paged_attention_windowed(
        &layout,
        &kc,
        &vc,
        &q,
        nh,
        &seqs,
        scale,
        case.window,
        case.softcap,
        &mut cpu,
    );
    let mut cpu_worst = 0f64;
    for ((g, c), w) in got.iter().zip(&cpu).zip(&weight_err) {
        let err = (*g as f64 - *c as f64).abs();
        cpu_worst = cpu_worst.max(err);
        assert!(
            err <= ty.ulp() * (*c as f64).abs() + w + 2e-3,
            "d={d} heads={nh}/{nkv} bs={bs} {ty:?}: emulated {g} vs the CPU kernel's {c}"
        );
    }
    eprintln!(
        "ok d={d} heads={nh}/{nkv} bs={bs} {ty:?} parts={} seqs={:?} window={:?} softcap={:?}: \
         max err vs f64 {worst:.2e}, vs CPU {cpu_worst:.2e}",
        a.parts, case.seqs, case.window, case.softcap
    );
    out
}

/// Decode rows of assorted context lengths (1 to 1301: one, two and three partitions).
fn decode_rows() -> Vec<(usize, usize)> {
    vec![(0, 1), (16, 1), (31, 1), (511, 1), (512, 1), (1300, 1)]
}

/// A whole prompt, a prompt chunk over a cached context (two partitions), and decodes.
fn mixed_batch() -> Vec<(usize, usize)> {
    vec![(0, 21), (600, 4), (5, 1), (0, 1)]
}

fn run_cases(shapes: &[(usize, usize, usize, usize, Ty, bool)], seed: u64) {
    emu::available().unwrap();
    for (i, &(d, nh, nkv, bs, ty, mixed)) in shapes.iter().enumerate() {
        let case = Case {
            head_dim: d,
            num_heads: nh,
            kv_heads: nkv,
            block_size: bs,
            seqs: if mixed { mixed_batch() } else { decode_rows() },
            ty,
            schedule: if i % 2 == 1 { seed + i as u64 } else { 0 },
            q_scale: 1.0,
            split_capacity: 1 << 16,
            window: None,
            softcap: None,
        };
        check_attention(&case, seed + i as u64);
    }
}

#[test]
fn paged_attention_mha_and_small_groups() {
    run_cases(
        &[
            (64, 8, 8, 16, Ty::Bf16, false), // MHA
            (64, 8, 8, 32, Ty::F16, true),
            (128, 32, 8, 16, Ty::F16, false), // llama-3-8b: GQA 4
            (128, 32, 8, 32, Ty::Bf16, true),
            (64, 14, 2, 16, Ty::Bf16, true), // qwen2-0.5b: GQA 7
            (256, 8, 2, 16, Ty::F16, false), // head size 256, GQA 4
            (256, 8, 2, 32, Ty::Bf16, true),
        ],
        10,
    );
}

#[test]
fn paged_attention_large_groups() {
    run_cases(
        &[
            (128, 32, 4, 32, Ty::Bf16, false), // GQA 8: one full head group per block
            (128, 32, 4, 16, Ty::F16, true),
            (128, 32, 2, 32, Ty::F16, false), // GQA 16: two head subgroups per KV head
            (128, 32, 2, 16, Ty::Bf16, true),
            (64, 24, 2, 16, Ty::F16, true), // GQA 12: a full and a partial subgroup
        ],
        30,
    );
}

#[test]
fn long_contexts_split_across_partitions() {
    emu::available().unwrap();
    // The third: a scratch of 6 partitions makes the step split at 2,048 keys.
    for (bs, ty, nh, nkv, seqs, split_capacity) in [
        (16, Ty::Bf16, 16, 4, vec![(4000, 1), (2100, 2)], 1 << 16),
        (32, Ty::F16, 16, 2, vec![(3999, 1), (1023, 2)], 1 << 16),
        (
            16,
            Ty::F16,
            8,
            2,
            vec![(3000, 1), (5, 1), (4100, 1), (700, 3)],
            6,
        ),
    ] {
        let case = Case {
            head_dim: 128,
            num_heads: nh,
            kv_heads: nkv,
            block_size: bs,
            seqs,
            ty,
            schedule: bs as u64,
            q_scale: 1.0,
            split_capacity,
            window: None,
            softcap: None,
        };
        check_attention(&case, 99 + bs as u64);
    }
}

/// Prompt batches for the prefill kernel: a whole prompt (two tiles and a part), a chunk
/// over a cached prefix that is not a whole number of blocks, a two-row chunk, a decode row
/// beside them (the split-context kernel's, in the same step), and a short prompt.
fn prompt_batch() -> Vec<(usize, usize)> {
    vec![(0, 150), (77, 33), (300, 2), (40, 1), (0, 9)]
}

fn prefill_case(
    d: usize,
    nh: usize,
    nkv: usize,
    bs: usize,
    ty: Ty,
    seqs: Vec<(usize, usize)>,
) -> Case {
    Case {
        head_dim: d,
        num_heads: nh,
        kv_heads: nkv,
        block_size: bs,
        seqs,
        ty,
        schedule: 0,
        q_scale: 1.0,
        split_capacity: 1 << 16,
        window: None,
        softcap: None,
    }
}

/// The prefill kernel over head sizes 64/128/256, block sizes 16 and 32, bf16 and f16.
#[test]
fn prefill_head_and_block_sizes() {
    emu::available().unwrap();
    let mut i = 0;
    for d in [64, 128, 256] {
        for bs in [16, 32] {
            let ty = if (d / 64 + bs / 16) % 2 == 0 {
                Ty::Bf16
            } else {
                Ty::F16
            };
            let mut case = prefill_case(d, 8, 2, bs, ty, prompt_batch());
            case.schedule = if i % 2 == 1 { 40 + i } else { 0 };
            check_attention(&case, 200 + i);
            i += 1;
        }
    }
}

/// GQA ratios 1 to 16: a tile of 64 (token, head) rows holds whole tokens only when the
/// ratio divides 64; the others (3, 5, 6, 7, 12) split tokens across tiles.
#[test]
fn prefill_gqa_ratios() {
    emu::available().unwrap();
    for (i, (nh, nkv)) in [
        (4, 4),
        (4, 2),
        (6, 2),
        (4, 1),
        (5, 1),
        (12, 2),
        (14, 2),
        (8, 1),
        (12, 1),
        (16, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let ty = if i % 2 == 0 { Ty::F16 } else { Ty::Bf16 };
        let d = if i % 3 == 0 { 128 } else { 64 };
        let mut case = prefill_case(
            d,
            nh,
            nkv,
            16 << (i % 2),
            ty,
            vec![(0, 45), (130, 20), (9, 1)],
        );
        case.schedule = i as u64;
        check_attention(&case, 300 + i as u64);
    }
}

/// A chunk of 40 prompt rows over a cached prefix of ~16k tokens (one KV head of two query
/// heads, so it stays fast), and sharp softmaxes on prompt rows.
#[test]
fn prefill_long_context_and_sharp_softmax() {
    emu::available().unwrap();
    let mut case = prefill_case(128, 2, 1, 32, Ty::Bf16, vec![(16384 - 40, 40), (3, 1)]);
    case.schedule = 3;
    check_attention(&case, 400);
    for (ty, schedule) in [(Ty::Bf16, 0), (Ty::F16, 5)] {
        let mut case = prefill_case(64, 8, 2, 16, ty, vec![(0, 70), (500, 30)]);
        case.schedule = schedule;
        case.q_scale = 12.0;
        check_attention(&case, 401);
    }
}

/// The thread order does not change a single bit of the prefill kernel's output.
#[test]
fn prefill_does_not_depend_on_thread_order() {
    emu::available().unwrap();
    let mut case = prefill_case(64, 12, 2, 16, Ty::F16, vec![(0, 40), (90, 17), (3, 1)]);
    let first = check_attention(&case, 500);
    for schedule in [1, 2, 3] {
        case.schedule = schedule;
        assert!(
            check_attention(&case, 500) == first,
            "schedule {schedule} changes the output"
        );
    }
}

/// Scores spread over hundreds (queries 12 times larger): each row's softmax is dominated
/// by a few keys and most weights underflow, across partitions too.
#[test]
fn sharp_softmax() {
    emu::available().unwrap();
    for (ty, schedule) in [(Ty::Bf16, 0), (Ty::F16, 5)] {
        let case = Case {
            head_dim: 64,
            num_heads: 8,
            kv_heads: 2,
            block_size: 16,
            seqs: decode_rows(),
            ty,
            schedule,
            q_scale: 12.0,
            split_capacity: 1 << 16,
            window: None,
            softcap: None,
        };
        check_attention(&case, 123);
    }
}

/// A case of `seqs` with a sliding window and a soft-cap.
#[allow(clippy::too_many_arguments)]
fn masked_case(
    d: usize,
    nh: usize,
    nkv: usize,
    bs: usize,
    ty: Ty,
    seqs: Vec<(usize, usize)>,
    window: Option<usize>,
    softcap: Option<f32>,
) -> Case {
    Case {
        window,
        softcap,
        ..prefill_case(d, nh, nkv, bs, ty, seqs)
    }
}

/// Decode rows (the split-context kernel and its reduction) with sliding windows smaller
/// than, equal to and larger than their contexts: a window of 1 (a row sees only its own
/// key), 100 (of the 1,301-key row's three partitions of 512, two are wholly outside the
/// window and never run; the reduction merges one), 512 (exactly the 512-key row's
/// context), 600 (two partitions, the first starting inside the old first one) and 5,000
/// (larger than every context: plain attention); with and without soft-capping, head sizes
/// 128 and 256, GQA 4 and 8.
#[test]
fn decode_sliding_windows_and_softcap() {
    emu::available().unwrap();
    for (i, (d, nh, nkv, ty, window, softcap)) in [
        (128, 16, 4, Ty::Bf16, Some(100), None),
        (128, 16, 4, Ty::F16, Some(600), Some(1.5)),
        (256, 8, 2, Ty::Bf16, Some(512), Some(2.0)),
        (256, 8, 1, Ty::F16, Some(1), None),
        (128, 8, 2, Ty::F16, Some(5000), None),
        (256, 8, 2, Ty::F16, None, Some(1.5)),
        (64, 8, 2, Ty::Bf16, Some(33), Some(3.0)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut case = masked_case(d, nh, nkv, 16, ty, decode_rows(), window, softcap);
        case.schedule = i as u64 % 3;
        check_attention(&case, 600 + i as u64);
    }
    // Split at 2,048 keys (a scratch of 6 partitions), windows of 1,000 and 2,500 on
    // contexts of 3,001 and 4,101: the rows' windows span one and two partitions.
    for (i, window) in [1000, 2500].into_iter().enumerate() {
        let mut case = masked_case(
            128,
            8,
            2,
            16,
            Ty::Bf16,
            vec![(3000, 1), (5, 1), (4100, 1), (700, 3)],
            Some(window),
            Some(4.0),
        );
        case.split_capacity = 6;
        case.schedule = 9 + i as u64;
        check_attention(&case, 620 + i as u64);
    }
    // Sharp scores (queries 12 times larger), soft-capped to 5 within a window.
    let mut case = masked_case(64, 8, 2, 16, Ty::F16, decode_rows(), Some(300), Some(5.0));
    case.q_scale = 12.0;
    check_attention(&case, 630);
}

/// The prefill kernel with sliding windows: shorter than a K/V tile (8, 16: most of a
/// row's tiles lie wholly outside its window, and with one query head per KV head a tile's
/// 64 rows are 64 tokens, so the later rows start with tiles that hide every key), about a
/// tile (40), longer than some prompts and shorter than others (100), and longer than
/// every context (1,000); whole prompts, chunks over cached prefixes and a decode row in
/// the same step; soft-capping on and off; head sizes 64, 128 and 256; GQA 1 to 8.
#[test]
fn prefill_sliding_windows_and_softcap() {
    emu::available().unwrap();
    for (i, (d, nh, nkv, bs, ty, window, softcap)) in [
        (64, 4, 4, 16, Ty::F16, Some(8), None),
        (128, 8, 2, 32, Ty::Bf16, Some(40), Some(1.5)),
        (256, 8, 2, 16, Ty::F16, Some(16), Some(2.0)),
        (256, 16, 2, 32, Ty::Bf16, Some(100), None),
        (128, 4, 4, 16, Ty::Bf16, Some(1000), None),
        (128, 8, 1, 16, Ty::F16, None, Some(1.5)),
        (64, 12, 2, 32, Ty::Bf16, Some(100), Some(3.0)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut case = masked_case(d, nh, nkv, bs, ty, prompt_batch(), window, softcap);
        case.schedule = i as u64 % 3;
        check_attention(&case, 700 + i as u64);
    }
    // A chunk of 40 rows over a cached prefix of 2,000 keys with a window of 64 (the
    // tiles of all but the last ~100 keys are never loaded), head size 256 (Gemma's).
    let mut case = masked_case(
        256,
        8,
        2,
        16,
        Ty::Bf16,
        vec![(2000, 40), (500, 7), (3, 1)],
        Some(64),
        Some(2.5),
    );
    case.schedule = 4;
    check_attention(&case, 720);
    // Sharp scores soft-capped to 5 within a window.
    let mut case = masked_case(
        64,
        8,
        2,
        16,
        Ty::F16,
        vec![(0, 70), (500, 30)],
        Some(24),
        Some(5.0),
    );
    case.q_scale = 12.0;
    check_attention(&case, 721);
}

/// The thread order does not change a single bit of the windowed, soft-capped prefill.
#[test]
fn windowed_prefill_does_not_depend_on_thread_order() {
    emu::available().unwrap();
    let mut case = masked_case(
        64,
        4,
        4,
        16,
        Ty::Bf16,
        vec![(0, 40), (90, 17), (3, 1)],
        Some(12),
        Some(2.0),
    );
    let first = check_attention(&case, 800);
    for schedule in [1, 2] {
        case.schedule = schedule;
        assert!(
            check_attention(&case, 800) == first,
            "schedule {schedule} changes the output"
        );
    }
}

/// The thread order does not change a single bit of the attention output.
#[test]
fn attention_does_not_depend_on_thread_order() {
    emu::available().unwrap();
    let run = |schedule: u64| -> Vec<u16> {
        let (d, nh, nkv, bs) = (64usize, 16usize, 2usize, 16usize);
        let mut rng = Rng(77);
        let ctx = 1200;
        let layout = CacheLayout {
            num_blocks: ctx / bs + 2,
            block_size: bs,
            num_kv_heads: nkv,
            head_dim: d,
        };
        let kc: Vec<u16> = (0..layout.layer_len())
            .map(|_| Ty::F16.bits(rng.normal()))
            .collect();
        let vc: Vec<u16> = (0..layout.layer_len())
            .map(|_| Ty::F16.bits(rng.normal()))
            .collect();
        let q: Vec<u16> = (0..2 * nh * d)
            .map(|_| Ty::F16.bits(rng.normal()))
            .collect();
        // Two decode rows over the same (reversed) blocks, split in three and in two.
        let table: Vec<u32> = (0..layout.num_blocks as u32).rev().collect();
        let tables: Vec<u32> = table.iter().chain(&table).copied().collect();
        let (row_seq, q_start, q_len) = ([0u32, 1], [0u32, 1], [1u32, 1]);
        let context_len = [ctx as u32, ctx as u32 - 200];
        let mut split = Vec::new();
        let plan = plan_splits([(1, ctx), (1, ctx - 200)].into_iter(), 64, &mut split);
        assert_eq!((plan.total_parts, plan.split_rows), (5, 2));
        let a = AttentionLaunch::new(&AttentionShape {
            tokens: 2,
            num_heads: nh,
            kv_heads: nkv,
            head_dim: d,
            block_size: bs,
            max_blocks: table.len(),
            split: plan,
            scale: 0.125,
            window: None,
            softcap: None,
        })
        .unwrap();
        let (al, ml) = scratch_lens(plan.total_parts, nh, d);
        let (mut out, mut acc, mut m) = (vec![0u16; q.len()], vec![0f32; al], vec![0f32; ml]);
        let mut args = Args::new().schedule(schedule);
        let step = StepBufs {
            row_seq: &row_seq[..],
            q_start: &q_start[..],
            q_len: &q_len[..],
            context_len: &context_len[..],
            block_tables: &tables[..],
            part_start: &split[..2],
            split_rows: &split[2..],
        };
        a.args(
            &mut args,
            out.as_mut_slice(),
            acc.as_mut_slice(),
            m.as_mut_slice(),
            q.as_slice(),
            kc.as_slice(),
            vc.as_slice(),
            step,
        );
        launch(&a.kernel("f16"), a.attention, args);
        let mut args = Args::new().schedule(schedule);
        a.reduce_args(
            &mut args,
            out.as_mut_slice(),
            acc.as_slice(),
            m.as_slice(),
            step,
        );
        launch(
            &AttentionLaunch::reduce_kernel("f16"),
            a.reduce.unwrap(),
            args,
        );
        out
    };
    let first = run(0);
    for seed in [1, 2] {
        assert!(run(seed) == first, "schedule {seed} changes the output");
    }
}

// ---------------------------------------------------------------------------------------
// Greedy choice and sampling.

/// Runs one choice kernel over `rows` rows of `x`; returns the tokens and logprobs.
fn choose(
    kernel: &str,
    x: &[f32],
    vocab: usize,
    params: Option<&[RowSample]>,
    schedule: u64,
) -> (Vec<u32>, Vec<f32>) {
    let rows = x.len() / vocab;
    let l = ChooseRowsLaunch::new(rows, vocab);
    let mut ids = vec![0xdead_beef; rows];
    let mut lps = vec![f32::NAN; rows];
    let mut args = Args::new().schedule(schedule);
    l.args(&mut args, x, params, ids.as_mut_slice(), lps.as_mut_slice());
    launch(kernel, l.dims, args);
    (ids, lps)
}

#[test]
fn greedy_picks_the_cpu_argmax() {
    emu::available().unwrap();
    let mut rng = Rng(21);
    for vocab in [1usize, 100, 1000, 1024, 1500, 32_000, 50_257] {
        let rows = 4;
        let mut x: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 3.0).collect();
        if vocab > 10 {
            // Row 1: a tie for the maximum (the lower id wins); row 2: masked tokens;
            // row 3: NaN logits, one of them where the maximum would be.
            let r1 = &mut x[vocab..2 * vocab];
            let (a, b) = (rng.below(vocab / 2), vocab / 2 + rng.below(vocab / 2));
            r1[a] = 20.0;
            r1[b] = 20.0;
            let r2 = &mut x[2 * vocab..3 * vocab];
            for v in r2.iter_mut().step_by(3) {
                *v = f32::NEG_INFINITY;
            }
            let r3 = &mut x[3 * vocab..4 * vocab];
            for v in r3.iter_mut().skip(1).step_by(5) {
                *v = f32::NAN;
            }
            r3[rng.below(vocab)] = f32::NAN;
        }
        let (ids, lps) = choose(ChooseRowsLaunch::GREEDY, &x, vocab, None, 0);
        for r in 0..rows {
            let row = &x[r * vocab..(r + 1) * vocab];
            let want = wick::sampling::argmax(row).unwrap();
            assert_eq!(ids[r], want, "vocab {vocab} row {r}");
            let m = row[want as usize] as f64;
            let z: f64 = row
                .iter()
                .filter(|v| !v.is_nan())
                .map(|&v| (v as f64 - m).exp())
                .sum();
            let want_lp = -z.ln();
            assert!(
                (lps[r] as f64 - want_lp).abs() <= 1e-5 + 1e-5 * want_lp.abs(),
                "vocab {vocab} row {r}: logprob {} vs {want_lp}",
                lps[r]
            );
        }
    }
}

/// Greedy on degenerate rows: +inf logits (an f16 head that overflowed) give the first of
/// them with a finite logprob, -ln(their count); a row with nothing above -inf gives
/// NO_TOKEN, never token 0.
#[test]
fn greedy_on_infinite_and_empty_rows() {
    use wick::sampling::gumbel::NO_TOKEN;
    emu::available().unwrap();
    let vocab = 3000;
    let mut x = vec![0.25f32; 3 * vocab];
    x[700] = f32::INFINITY;
    x[2900] = f32::INFINITY;
    x[5] = f32::NAN;
    for v in &mut x[vocab..2 * vocab] {
        *v = f32::NEG_INFINITY;
    }
    for (i, v) in x[2 * vocab..].iter_mut().enumerate() {
        *v = if i % 2 == 0 {
            f32::NAN
        } else {
            f32::NEG_INFINITY
        };
    }
    let (ids, lps) = choose(ChooseRowsLaunch::GREEDY, &x, vocab, None, 7);
    assert_eq!(ids[0], 700);
    assert!((lps[0] + std::f32::consts::LN_2).abs() < 1e-6, "{}", lps[0]);
    assert_eq!((ids[1], ids[2]), (NO_TOKEN, NO_TOKEN));
}

fn sample_params(r: usize, vocab: usize) -> RowSample {
    RowSample {
        temperature: [1.0, 0.7, 1.3][r % 3],
        top_p: [1.0, 0.9, 0.5, 0.95][r % 4],
        min_p: [0.0, 0.05][r % 2],
        top_k: [0, 50, 1, 1000, 7][(r / 2) % 5] as u32,
        seed: 1000 + r as u64 + vocab as u64,
        step: (r * 7) as u32,
        row: r as u32,
    }
}

/// The device sampler draws exactly the token its Rust statement (`sampling::gumbel`)
/// draws, row for row: masked tokens, NaN logits, ties at the top_k bound, top_k past
/// the finite logits, under shuffled thread orders.
#[test]
fn sampling_matches_its_reference() {
    emu::available().unwrap();
    let mut rng = Rng(11);
    for (vocab, rows) in [(32_000usize, 20usize), (500, 20), (3000, 20), (49_152, 4)] {
        let mut x: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 3.0).collect();
        // Every fifth row has masked tokens (a logit_bias of -inf), every seventh NaNs,
        // row 3 coarse logits (many ties at every bound), row 8 only 3 finite logits.
        for row in x.chunks_mut(vocab).step_by(5) {
            for v in row.iter_mut().step_by(7) {
                *v = f32::NEG_INFINITY;
            }
        }
        for row in x.chunks_mut(vocab).skip(1).step_by(7) {
            for v in row.iter_mut().step_by(11) {
                *v = f32::NAN;
            }
        }
        if rows > 8 {
            for v in &mut x[3 * vocab..4 * vocab] {
                *v = v.round();
            }
            for (i, v) in x[8 * vocab..9 * vocab].iter_mut().enumerate() {
                if i % (vocab / 3) != 0 {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let params: Vec<RowSample> = (0..rows).map(|r| sample_params(r, vocab)).collect();
        let (ids, lps) = choose(
            ChooseRowsLaunch::SAMPLE,
            &x,
            vocab,
            Some(params.as_slice()),
            vocab as u64,
        );
        for r in 0..rows {
            let row = &x[r * vocab..(r + 1) * vocab];
            let (want, want_lp) = sample_row(row, &params[r]).unwrap();
            assert_eq!(ids[r], want, "vocab {vocab} row {r}: {:?}", params[r]);
            assert!(
                (lps[r] - want_lp).abs() <= 1e-5 * (1.0 + want_lp.abs()),
                "vocab {vocab} row {r}: logprob {} vs {want_lp}",
                lps[r]
            );
        }
    }
}

/// A sampled row with nothing above -inf gets NO_TOKEN (the request fails), not token 0.
#[test]
fn sampling_an_empty_row_gives_no_token() {
    use wick::sampling::gumbel::NO_TOKEN;
    emu::available().unwrap();
    let vocab = 2000;
    let mut x = vec![f32::NEG_INFINITY; 2 * vocab];
    for v in x[vocab..].iter_mut().step_by(2) {
        *v = f32::NAN;
    }
    let params = [
        RowSample {
            row: 0,
            ..sample_params(1, vocab)
        },
        RowSample {
            row: 1,
            ..sample_params(2, vocab)
        },
    ];
    let (ids, _) = choose(ChooseRowsLaunch::SAMPLE, &x, vocab, Some(&params), 3);
    assert_eq!(ids, vec![NO_TOKEN, NO_TOKEN]);
}

/// One seed, one text: the host sampler (what rows with `details`, top-n alternatives or
/// several candidates use) and the emulated device sampler choose the same token for
/// the same seed and step, over many parameter sets, with and without top-n.
#[test]
fn host_and_device_draw_the_same_tokens() {
    use wick::sampling::{Sampler, SamplingParams};
    emu::available().unwrap();
    let mut rng = Rng(31);
    let vocab = 4000;
    let rows = 48;
    let mut x: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 2.5).collect();
    for row in x.chunks_mut(vocab).step_by(6) {
        for v in row.iter_mut().step_by(9) {
            *v = f32::NEG_INFINITY;
        }
    }
    let mut params = Vec::new();
    let mut samplers = Vec::new();
    for r in 0..rows {
        let p = SamplingParams {
            do_sample: true,
            temperature: [1.0, 0.6, 1.4, 0.9][r % 4],
            top_k: [0, 40, 1, 400, 3999][r % 5],
            top_p: [1.0, 0.9, 0.5][r % 3],
            min_p: [0.0, 0.0, 0.05, 0.0][r % 4],
            seed: 77 + r as u64,
            ..Default::default()
        };
        let sampler = Sampler::new(&p, p.seed);
        let step = (r * 13) as u32;
        params.push(RowSample {
            row: r as u32,
            ..sampler.device_params(step).unwrap()
        });
        samplers.push((sampler, step));
    }
    let (ids, lps) = choose(ChooseRowsLaunch::SAMPLE, &x, vocab, Some(&params), 5);
    for (r, (sampler, step)) in samplers.iter_mut().enumerate() {
        let generated = vec![0u32; *step as usize];
        for top_n in [0, 5] {
            let mut row = x[r * vocab..(r + 1) * vocab].to_vec();
            let host = sampler.sample(&mut row, &[], &generated, top_n).unwrap();
            assert_eq!(host.id, ids[r], "row {r}, top_n {top_n}: {:?}", params[r]);
            assert!(
                (host.logprob - lps[r]).abs() <= 1e-4 * (1.0 + lps[r].abs()),
                "row {r}: logprob {} vs device {}",
                host.logprob,
                lps[r]
            );
        }
    }
}

/// `wick_adjust_f32` applies logit_bias and the penalties exactly as the host sampler
/// does (its processed logits, which greedy returns in place), over several rows with
/// different parameters and histories, with more entries than one grid of threads.
#[test]
fn adjust_matches_the_host_sampler() {
    use wick::sampling::{LogitAdjust, Sampler, SamplingParams};
    emu::available().unwrap();
    let mut rng = Rng(23);
    let (rows, vocab) = (5usize, 4000usize);
    let mut x: Vec<f32> = (0..rows * vocab).map(|_| rng.normal() * 4.0).collect();
    x[11] = 0.0;
    x[12] = f32::NEG_INFINITY;
    let mut want = x.clone();
    let mut adjust = LogitAdjust::default();
    for r in 0..rows {
        let params = SamplingParams {
            repetition_penalty: [1.3, 1.0, 0.8, 1.1, 2.0][r],
            frequency_penalty: [0.0, 0.5, 0.3, -0.2, 0.0][r],
            presence_penalty: [0.4, 0.0, 0.1, 0.0, 0.0][r],
            logit_bias: vec![(rng.below(vocab) as u32, 3.5), (12, 1.0), (11, -0.5)],
            ..Default::default()
        };
        let prompt: Vec<u32> = (0..900).map(|_| rng.below(vocab) as u32).collect();
        let generated: Vec<u32> = (0..200).map(|_| rng.below(300) as u32).collect();
        let row = &mut want[r * vocab..(r + 1) * vocab];
        Sampler::new(&params, 0)
            .sample(row, &prompt, &generated, 0)
            .unwrap();
        Sampler::new(&params, 0).device_adjust(&prompt, &generated, vocab, r, &mut adjust);
    }
    assert!(adjust.len() > 256, "more entries than one block");
    let packed = adjust.packed().to_vec();
    let l = AdjustLaunch::new(packed.len() / 4);
    let mut args = Args::new().schedule(5);
    l.args(&mut args, x.as_mut_slice(), packed.as_slice());
    launch(AdjustLaunch::KERNEL, l.dims, args);
    for (i, (g, w)) in x.iter().zip(&want).enumerate() {
        assert!(g == w, "logit {i} (row {}): {g} vs host {w}", i / vocab);
    }
}

/// `wick_mask_f32` leaves exactly the tokens each row's grammar mask allows (as
/// `TokenMask::apply` does on the host), on some rows of a batch, for a vocabulary that
/// is not a multiple of 32 and masks longer than it (an end token past the logits).
#[test]
fn grammar_masks_match_the_host() {
    use wick::grammar::TokenMask;
    use wick::ops::launch::{pack_masks, MaskLaunch};
    emu::available().unwrap();
    let mut rng = Rng(31);
    let (rows, vocab) = (4usize, 1000usize);
    let mut x: Vec<f32> = (0..rows * vocab).map(|_| rng.normal()).collect();
    let mut want = x.clone();
    let masks: Vec<(usize, TokenMask)> = [3usize, 1]
        .iter()
        .map(|&r| {
            let words = (0..vocab.div_ceil(32) + 1)
                .map(|_| (rng.below(1 << 16) as u32) << 16 | rng.below(1 << 16) as u32)
                .collect();
            (r, TokenMask { words })
        })
        .collect();
    for (r, m) in &masks {
        m.apply(&mut want[r * vocab..(r + 1) * vocab]);
    }
    let mut packed = Vec::new();
    pack_masks(
        vocab,
        masks.iter().map(|(r, m)| (*r, m.words.as_slice())),
        &mut packed,
    );
    let l = MaskLaunch::new(vocab, masks.len());
    let mut args = Args::new().schedule(7);
    l.args(&mut args, x.as_mut_slice(), packed.as_slice());
    launch(MaskLaunch::KERNEL, l.dims, args);
    let masked = want.iter().filter(|v| v.is_infinite()).count();
    assert!(masked > 500, "{masked} tokens masked");
    for (i, (g, w)) in x.iter().zip(&want).enumerate() {
        assert!(g == w, "logit {i} (row {}): {g} vs host {w}", i / vocab);
    }
}

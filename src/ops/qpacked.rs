//! Quantized weights repacked for batched CPU matmuls: groups of 8 weight rows are
//! interleaved block by block, so one 256-bit register holds 4 consecutive weights of each
//! of the 8 rows. An activation's 4 matching values are broadcast to all lanes, and one
//! byte dot product (`maddubs` + `madd` on AVX2, `vpdpbusd` with AVX-512 VNNI) then
//! computes 4-element partial dot products for all 8 rows at once, so the results of a
//! block land one row per lane: the block scales of the 8 rows are one vector (no per-pair
//! scalar scale arithmetic, no horizontal sums) and each unpacked weight register serves
//! up to four activation rows.
//!
//! Every GGUF format users commonly download has a packed form (`formats`): Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K. Activations are quantized once per matmul to 8
//! bits, in `ActQ8` blocks of 32 values: with one scale per block for the 32-column formats
//! (`quantize_row`), and with one scale per 256 values, shared by 8 blocks, for the
//! K-quants (`quantize_row_super`, llama.cpp's Q8_K numerics). A dispatch holding both
//! kinds (a Q4_K_M layer mixes Q4_K, Q6_K and their 32-column fallbacks) quantizes its
//! input both ways, each only if some matrix needs it. The 32-column formats are exact in
//! integers within a block; the K-quants compute a whole 256-column super-block's dot
//! product exactly in integers and then take one float step per super-block (the
//! formulas: `formats`' module comment). Only the order of float sums differs from ggml's
//! (and activation scales stay f32).
//!
//! Three kernels by shape, all giving a row the same bits: the row kernels above (small
//! batches), their 512-bit twins for a single activation row that take two groups per
//! call (`Packed::dot_pair`: decode of Q4_K, Q5_K, Q6_K and Q8_0 with AVX-512), and the
//! batched tile path for many rows (`tiled`), whose K-quant sums run on AMX tiles where
//! the CPU has them.
//!
//! The kernel set is chosen at run time (`Isa`): AMX (for the K-quants' batched path, with
//! AVX-512 VNNI for the rest) or AVX-512 VNNI where the CPU has it, AVX2 elsewhere, scalar
//! code without either; `WICK_CPU_KERNEL=avx512vnni|avx2|scalar` picks a lower one.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// `$e` with `$m` bound to the packed matrix inside any `PackedWeight`.
macro_rules! each {
    ($w:expr, $m:ident => $e:expr) => {
        match $w {
            PackedWeight::Q4_0($m) => $e,
            PackedWeight::Q4_1($m) => $e,
            PackedWeight::Q5_0($m) => $e,
            PackedWeight::Q5_1($m) => $e,
            PackedWeight::Q8_0($m) => $e,
            PackedWeight::Q4K($m) => $e,
            PackedWeight::Q5K($m) => $e,
            PackedWeight::Q6K($m) => $e,
        }
    };
}

mod formats;
#[cfg(target_arch = "x86_64")]
mod tiled;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use formats::*;

use super::qmatmul::QK;

/// Weight rows per group.
pub const GROUP: usize = 8;

/// 32 activations quantized as `d * q` (`q` in -127..=127), with `s = d * Σ q` and the
/// integer sums `hs` of `q[0..16]` and `q[16..32]` (the Q6_K kernels' offset of 32 per
/// weight is taken off with them, per 16-weight scale).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ActQ8 {
    pub qs: [i8; QK],
    pub d: f32,
    pub s: f32,
    pub hs: [i16; 2],
}

const ZERO_ACT: ActQ8 = ActQ8 {
    qs: [0; QK],
    d: 0.0,
    s: 0.0,
    hs: [0; 2],
};

/// Columns per K-quant super-block.
pub const QK_K: usize = 256;

/// Quantizes one row of activations for the 32-column formats (`x.len()` a multiple of
/// 32): per block `d = amax / 127`, `q = round_half_even(x * 127 / amax)`. The same
/// numbers with AVX2 where the CPU has it.
pub fn quantize_row(x: &[f32], out: &mut [ActQ8]) {
    quantize::<QK>(x, out)
}

/// Quantizes one row of activations for the K-quants (`x.len()` a multiple of 256): as
/// `quantize_row` with `amax` taken over 256 values, so the 8 blocks of a super-block
/// share one `d` (each keeps its own `s` and `hs`). The same numbers with AVX2 where the
/// CPU has it.
pub fn quantize_row_super(x: &[f32], out: &mut [ActQ8]) {
    quantize::<QK_K>(x, out)
}

/// One scale per `G` values (32 or 256).
fn quantize<const G: usize>(x: &[f32], out: &mut [ActQ8]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2 and FMA were detected.
        unsafe { x86::quantize_row::<G>(x, out) };
        return;
    }
    quantize_scalar::<G>(x, out)
}

/// `quantize_row` in plain code.
pub fn quantize_row_scalar(x: &[f32], out: &mut [ActQ8]) {
    quantize_scalar::<QK>(x, out)
}

/// `quantize_row_super` in plain code.
pub fn quantize_row_super_scalar(x: &[f32], out: &mut [ActQ8]) {
    quantize_scalar::<QK_K>(x, out)
}

fn quantize_scalar<const G: usize>(x: &[f32], out: &mut [ActQ8]) {
    for (xg, yg) in x.chunks_exact(G).zip(out.chunks_exact_mut(G / QK)) {
        let amax = xg.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (xb, yb) in xg.chunks_exact(QK).zip(yg.iter_mut()) {
            let mut hs = [0i32; 2];
            for (i, (q, &v)) in yb.qs.iter_mut().zip(xb).enumerate() {
                let r = ((v * id).round_ties_even() as i32).clamp(-127, 127);
                *q = r as i8;
                hs[i / 16] += r;
            }
            yb.d = d;
            yb.s = d * (hs[0] + hs[1]) as f32;
            // |Σ| <= 16 * 127 fits i16.
            yb.hs = hs.map(|h| h as i16);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Scalar,
    Avx2,
    Avx512Vnni,
    /// AVX-512 VNNI, and AMX for the K-quants' batched path.
    Amx,
}

/// A kernel set this CPU can run. Only obtainable through detection, so holding an `Isa`
/// is the proof that its instructions exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(Level);

impl Isa {
    pub const SCALAR: Isa = Isa(Level::Scalar);

    /// Every kernel set this CPU runs, lowest first (tests run each).
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::SCALAR];
        #[cfg(target_arch = "x86_64")]
        {
            if super::simd::has_avx2() {
                out.push(Isa(Level::Avx2));
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    out.push(Isa(Level::Avx512Vnni));
                    if tiled::amx_available() {
                        out.push(Isa(Level::Amx));
                    }
                }
            }
        }
        out
    }

    /// The best available, or the one `WICK_CPU_KERNEL` names when this CPU has it.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Isa::available();
            let wanted = std::env::var("WICK_CPU_KERNEL").ok();
            wanted
                .and_then(|w| all.iter().copied().find(|i| i.name() == w))
                .or(all.last().copied())
                .unwrap_or(Isa::SCALAR)
        })
    }

    /// `scalar`, `avx2`, `avx512vnni` or `amx`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512vnni",
            Level::Amx => "amx",
        }
    }

    /// The kernels matrices of `kind` run on with this set: `amx` only for the K-quants
    /// (the other formats keep the AVX-512 VNNI kernels).
    pub fn name_for(self, kind: Kind) -> &'static str {
        match (self.0, kind) {
            (Level::Amx, Kind::Q4K | Kind::Q5K | Kind::Q6K) => "amx",
            (Level::Amx, _) => "avx512vnni",
            _ => self.name(),
        }
    }
}

/// A packed format with its kernels.
pub trait Packed: Format {
    /// `out[c][r] = w_r · x_c` over the group's blocks `w` (8 rows) for `R` activation rows
    /// (`x[c]`: the row's activation blocks over the same columns, from `quantize_row`, or
    /// `quantize_row_super` for the K-quants).
    fn dot_8xr<const R: usize>(isa: Isa, w: &[Self], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R];

    /// Whether `dot_pair` has a kernel for this format with `isa`.
    fn has_pair(_isa: Isa) -> bool {
        false
    }

    /// `dot_8xr` of one activation row against two groups `w0`, `w1` (of equal length) in
    /// one call, with the same bits; `None` where `has_pair` is false.
    fn dot_pair(_isa: Isa, _w0: &[Self], _w1: &[Self], _x: &[ActQ8]) -> Option<[[f32; GROUP]; 2]> {
        None
    }
}

/// The kernel of a 32-column format in plain code: `sub_block`'s formula (CPUs without
/// AVX2, and the reference the SIMD kernels are tested against).
fn dot_scalar<T: Format, const R: usize>(w: &[T], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
    let subs = T::COLS / QK;
    let mut out = [[0f32; GROUP]; R];
    for (o, xr) in out.iter_mut().zip(x.iter()) {
        for (b, wb) in w.iter().enumerate() {
            for j in 0..subs {
                let xb = &xr[b * subs + j];
                for (r, acc) in o.iter_mut().enumerate() {
                    let (q, a, m) = wb.sub_block(r, j);
                    let sumi: i32 = q.iter().zip(&xb.qs).map(|(&q, &x)| q * x as i32).sum();
                    *acc += a * xb.d * sumi as f32 + m * xb.s;
                }
            }
        }
    }
    out
}

/// The kernel of a K-quant in plain code: `SuperBlock`'s formula, per super-block the
/// exact integer sums `isum` and `imin`, then `acc = fma(d xd, isum, acc)` and (Q4_K,
/// Q5_K) `acc = fma(-(dmin xd), imin, acc)`, `xd` the super-block's activation scale. The
/// SIMD kernels give the same bits.
fn dot_scalar_k<T: SuperBlock, const R: usize>(w: &[T], x: [&[ActQ8]; R]) -> [[f32; GROUP]; R] {
    let subs = T::COLS / QK;
    let mut out = [[0f32; GROUP]; R];
    for (o, xr) in out.iter_mut().zip(x.iter()) {
        for (b, wb) in w.iter().enumerate() {
            let xs = &xr[b * subs..(b + 1) * subs];
            let xd = xs[0].d;
            for (r, acc) in o.iter_mut().enumerate() {
                let (mut isum, mut imin) = (0i32, 0i32);
                for (j, xb) in xs.iter().enumerate() {
                    let (q, m) = wb.scaled_sub_block(r, j);
                    isum += q
                        .iter()
                        .zip(&xb.qs)
                        .map(|(&q, &x)| q * x as i32)
                        .sum::<i32>();
                    imin += m * (xb.hs[0] as i32 + xb.hs[1] as i32);
                }
                let (d, dmin) = wb.scales(r);
                *acc = (d * xd).mul_add(isum as f32, *acc);
                if T::MINS {
                    *acc = (-(dmin * xd)).mul_add(imin as f32, *acc);
                }
            }
        }
    }
    out
}

macro_rules! packed {
    ($($t:ty => $scalar:ident, $kernel:ident $(, $pair:ident)?);* $(;)?) => {$(
        impl Packed for $t {
            $(
            fn has_pair(isa: Isa) -> bool {
                isa.0 >= Level::Avx512Vnni
            }

            fn dot_pair(
                isa: Isa,
                w0: &[Self],
                w1: &[Self],
                x: &[ActQ8],
            ) -> Option<[[f32; GROUP]; 2]> {
                match isa.0 {
                    // SAFETY: an `Isa` exists only for instruction sets the CPU has.
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx512Vnni | Level::Amx => {
                        Some(unsafe { x86::vnni512::$pair(w0, w1, x) })
                    }
                    _ => None,
                }
            }
            )?
            fn dot_8xr<const R: usize>(
                isa: Isa,
                w: &[Self],
                x: [&[ActQ8]; R],
            ) -> [[f32; GROUP]; R] {
                match isa.0 {
                    // SAFETY: an `Isa` exists only for instruction sets the CPU has.
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx512Vnni | Level::Amx => unsafe { x86::vnni::$kernel(w, x) },
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx2 => unsafe { x86::avx2::$kernel(w, x) },
                    _ => $scalar(w, x),
                }
            }
        }
    )*};
}

packed!(
    Q4_0x8 => dot_scalar, q4_0;
    Q4_1x8 => dot_scalar, q4_1;
    Q5_0x8 => dot_scalar, q5_0;
    Q5_1x8 => dot_scalar, q5_1;
    Q8_0x8 => dot_scalar, q8_0, q8_0_pair;
    Q4Kx8 => dot_scalar_k, q4_k, q4_k_pair;
    Q5Kx8 => dot_scalar_k, q5_k, q5_k_pair;
    Q6Kx8 => dot_scalar_k, q6_k, q6_k_pair;
);

/// A weight matrix `[n, k]` repacked into groups of 8 rows (`n` a multiple of 8).
#[derive(Debug, Clone)]
pub struct PackedMatrix<T: Packed> {
    n: usize,
    k: usize,
    /// Group after group, each `k / T::COLS` blocks.
    blocks: Vec<T>,
}

impl<T: Packed> PackedMatrix<T> {
    /// `None` when `n` is not a multiple of 8, `k` not a multiple of the block width, or
    /// `w` is not `n * k / T::COLS` blocks.
    pub fn new(w: &[T::Block], n: usize, k: usize) -> Option<Self> {
        if !n.is_multiple_of(GROUP) || !k.is_multiple_of(T::COLS) || w.len() != n * (k / T::COLS) {
            return None;
        }
        let kb = k / T::COLS;
        let mut blocks = Vec::with_capacity(n / GROUP * kb);
        huge_pages(&mut blocks);
        for g in 0..n / GROUP {
            for b in 0..kb {
                blocks.push(T::pack(std::array::from_fn(|r| {
                    &w[(g * GROUP + r) * kb + b]
                })));
            }
        }
        Some(Self { n, k, blocks })
    }

    /// From a GGUF tensor's bytes (any alignment); `None` as `new`, or when the byte count
    /// is not whole blocks.
    pub fn from_bytes(bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        let size = std::mem::size_of::<T::Block>();
        if !bytes.len().is_multiple_of(size) {
            return None;
        }
        let w: Vec<T::Block> = bytes
            .chunks_exact(size)
            // SAFETY: `size` bytes per chunk; the block types are plain old data for which
            // any bit pattern is valid.
            .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr() as *const T::Block) })
            .collect();
        Self::new(&w, n, k)
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    fn group(&self, g: usize) -> &[T] {
        let kb = self.k / T::COLS;
        &self.blocks[g * kb..(g + 1) * kb]
    }

    /// Whether decode runs two groups per call with `isa`.
    fn pairs(&self, isa: Isa) -> bool {
        T::has_pair(isa)
    }

    /// Groups `g` and `g + 1` (or `g` alone, the last) against one activation row.
    fn run_pair(&self, isa: Isa, g: usize, x: &[ActQ8]) -> [[f32; GROUP]; 2] {
        if g + 1 < self.n / GROUP {
            if let Some(out) = T::dot_pair(isa, self.group(g), self.group(g + 1), x) {
                return out;
            }
        }
        [T::dot_8xr(isa, self.group(g), [x])[0], [0.0; GROUP]]
    }

    /// Row tile `rows` against group `g`, 4 activation rows at a time; `write(i, g, v)`
    /// takes row `i`'s 8 results.
    fn run_group<'x>(
        &self,
        isa: Isa,
        g: usize,
        rows: std::ops::Range<usize>,
        xrow: &impl Fn(usize) -> &'x [ActQ8],
        write: &impl Fn(usize, &[f32; GROUP]),
    ) {
        let wg = self.group(g);
        let mut i = rows.start;
        while i + 4 <= rows.end {
            let d = T::dot_8xr(isa, wg, [xrow(i), xrow(i + 1), xrow(i + 2), xrow(i + 3)]);
            for (c, v) in d.iter().enumerate() {
                write(i + c, v);
            }
            i += 4;
        }
        match rows.end - i {
            3 => {
                let d = T::dot_8xr(isa, wg, [xrow(i), xrow(i + 1), xrow(i + 2)]);
                for (c, v) in d.iter().enumerate() {
                    write(i + c, v);
                }
            }
            2 => {
                let d = T::dot_8xr(isa, wg, [xrow(i), xrow(i + 1)]);
                for (c, v) in d.iter().enumerate() {
                    write(i + c, v);
                }
            }
            1 => {
                let [d] = T::dot_8xr(isa, wg, [xrow(i)]);
                write(i, &d);
            }
            _ => {}
        }
    }
}

/// Asks the kernel to back `v`'s (not yet touched) allocation with 2 MiB pages where it
/// covers whole ones: decode streams every weight once per token, and with 4 KiB pages
/// each page costs a translation miss (dearer still in a virtual machine). A hint only:
/// where transparent huge pages are off or unsupported nothing changes.
fn huge_pages<T>(v: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_mut_ptr() as usize;
        let end = start + v.capacity() * std::mem::size_of::<T>();
        let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if last > first {
            // SAFETY: the range lies inside `v`'s allocation; MADV_HUGEPAGE changes how
            // its pages are backed, never their contents.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_HUGEPAGE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// The GGUF formats with a packed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// A packed matrix of any format.
#[derive(Debug, Clone)]
pub enum PackedWeight {
    Q4_0(PackedMatrix<Q4_0x8>),
    Q4_1(PackedMatrix<Q4_1x8>),
    Q5_0(PackedMatrix<Q5_0x8>),
    Q5_1(PackedMatrix<Q5_1x8>),
    Q8_0(PackedMatrix<Q8_0x8>),
    Q4K(PackedMatrix<Q4Kx8>),
    Q5K(PackedMatrix<Q5Kx8>),
    Q6K(PackedMatrix<Q6Kx8>),
}

impl PackedWeight {
    /// Repacks a `[n, k]` GGUF tensor; `None` when its shape does not pack (`n` not a
    /// multiple of 8, `k` not of the block width) or the bytes do not hold it.
    pub fn from_bytes(kind: Kind, bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        Some(match kind {
            Kind::Q4_0 => Self::Q4_0(PackedMatrix::from_bytes(bytes, n, k)?),
            Kind::Q4_1 => Self::Q4_1(PackedMatrix::from_bytes(bytes, n, k)?),
            Kind::Q5_0 => Self::Q5_0(PackedMatrix::from_bytes(bytes, n, k)?),
            Kind::Q5_1 => Self::Q5_1(PackedMatrix::from_bytes(bytes, n, k)?),
            Kind::Q8_0 => Self::Q8_0(PackedMatrix::from_bytes(bytes, n, k)?),
            Kind::Q4K => Self::Q4K(PackedMatrix::from_bytes(bytes, n, k)?),
            Kind::Q5K => Self::Q5K(PackedMatrix::from_bytes(bytes, n, k)?),
            Kind::Q6K => Self::Q6K(PackedMatrix::from_bytes(bytes, n, k)?),
        })
    }

    pub fn rows(&self) -> usize {
        each!(self, m => m.rows())
    }

    pub fn cols(&self) -> usize {
        each!(self, m => m.cols())
    }

    /// Whether it is a K-quant, whose kernels take activations quantized per 256 values
    /// (`quantize_row_super`) instead of per 32.
    pub fn super_blocks(&self) -> bool {
        matches!(self, Self::Q4K(_) | Self::Q5K(_) | Self::Q6K(_))
    }

    pub fn kind(&self) -> Kind {
        match self {
            Self::Q4_0(_) => Kind::Q4_0,
            Self::Q4_1(_) => Kind::Q4_1,
            Self::Q5_0(_) => Kind::Q5_0,
            Self::Q5_1(_) => Kind::Q5_1,
            Self::Q8_0(_) => Kind::Q8_0,
            Self::Q4K(_) => Kind::Q4K,
            Self::Q5K(_) => Kind::Q5K,
            Self::Q6K(_) => Kind::Q6K,
        }
    }
}

/// Activation rows handled by one work item: a tile stays in L1 while the weight groups
/// stream past it.
const ROW_TILE: usize = 16;

/// Several matmuls of the same input `x` (`[m, k]`, row-major) with packed weights of any
/// formats: `outs[i] = x · ws[i]^T` (`[m, n_i]`). The input is quantized once and all
/// products run in one dispatch to the thread pool, with the best kernels of this CPU.
pub fn matmul_many(x: &[f32], m: usize, ws: &[&PackedWeight], outs: &mut [&mut [f32]]) {
    matmul_many_with(Isa::best(), x, m, ws, outs)
}

/// `matmul_many` with the kernel set `isa`.
pub fn matmul_many_with(
    isa: Isa,
    x: &[f32],
    m: usize,
    ws: &[&PackedWeight],
    outs: &mut [&mut [f32]],
) {
    let mut outs: Vec<_> = outs.iter_mut().map(|o| super::as_uninit(o)).collect();
    matmul_many_uninit_with(isa, x, m, ws, &mut outs)
}

/// `matmul_many` into outputs not yet written (every element is written).
pub fn matmul_many_uninit(
    x: &[f32],
    m: usize,
    ws: &[&PackedWeight],
    outs: &mut [&mut [MaybeUninit<f32>]],
) {
    matmul_many_uninit_with(Isa::best(), x, m, ws, outs)
}

fn matmul_many_uninit_with(
    isa: Isa,
    x: &[f32],
    m: usize,
    ws: &[&PackedWeight],
    outs: &mut [&mut [MaybeUninit<f32>]],
) {
    let Some(k) = ws.first().map(|w| w.cols()) else {
        return;
    };
    assert!(x.len() == m * k && ws.len() == outs.len());
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert!(w.cols() == k && out.len() == m * w.rows());
    }
    // The input quantized per 32 values for the 32-column formats and per 256 for the
    // K-quants, each only where a matrix needs it.
    let want = [false, true].map(|sup| ws.iter().any(|w| w.super_blocks() == sup));
    let [xq, xq_super] = quantize_input(x, m, k, want);
    let [(kw, mut ko), (ow, mut oo)] = partition(ws, outs, PackedWeight::super_blocks);
    run_matrices(isa, &xq_super, m, &kw, &mut ko);
    run_matrices(isa, &xq, m, &ow, &mut oo);
}

/// `x` (`[m, k]`) quantized by `quantize_row` and by `quantize_row_super` (`[m, k / 32]`
/// each), each only where `want` asks for it (else empty), in one pass on the thread pool.
fn quantize_input(x: &[f32], m: usize, k: usize, want: [bool; 2]) -> [Vec<ActQ8>; 2] {
    let kb = k / QK;
    let mut xq = want.map(|w| {
        if w {
            vec![ZERO_ACT; m * kb]
        } else {
            Vec::new()
        }
    });
    let ptrs = xq.each_mut().map(|v| v.as_mut_ptr() as usize);
    type Quantize = fn(&[f32], &mut [ActQ8]);
    let quantizers: [Quantize; 2] = [quantize_row, quantize_row_super];
    super::pool::global().execute_chunked(m, |rows| {
        for i in rows {
            for ((&ptr, wanted), quantize) in ptrs.iter().zip(want).zip(quantizers) {
                if wanted {
                    // SAFETY: a wanted vector holds `m * kb` blocks; row `i` of it is
                    // written by this item alone.
                    let q = unsafe {
                        std::slice::from_raw_parts_mut((ptr as *mut ActQ8).add(i * kb), kb)
                    };
                    quantize(&x[i * k..(i + 1) * k], q);
                }
            }
        }
    });
    xq
}

/// The matrices `ws`, with their outputs, in two lists: those for which `first` holds, and
/// the others (either may be empty).
#[allow(clippy::type_complexity)]
fn partition<'w, 'o>(
    ws: &[&'w PackedWeight],
    outs: &'o mut [&mut [MaybeUninit<f32>]],
    first: impl Fn(&PackedWeight) -> bool,
) -> [(Vec<&'w PackedWeight>, Vec<&'o mut [MaybeUninit<f32>]>); 2] {
    let mut lists = [(vec![], vec![]), (vec![], vec![])];
    for (&w, o) in ws.iter().zip(outs.iter_mut()) {
        let (lw, lo) = &mut lists[usize::from(!first(w))];
        lw.push(w);
        lo.push(&mut **o);
    }
    lists
}

/// The matrices `ws` over their quantized input `xq` (`[m, k / 32]`): with AVX-512 VNNI
/// (and AMX), those whose format pays for the batched path at this row count take it,
/// the others the row kernels.
fn run_matrices(
    isa: Isa,
    xq: &[ActQ8],
    m: usize,
    ws: &[&PackedWeight],
    outs: &mut [&mut [MaybeUninit<f32>]],
) {
    #[cfg(target_arch = "x86_64")]
    if isa.0 >= Level::Avx512Vnni {
        let [(bw, mut bo), (rw, mut ro)] = partition(ws, outs, |w| tiled::batched(w, m));
        tiled::matmul_many(xq, m, &bw, &mut bo, isa.0 == Level::Amx);
        row_kernels(isa, xq, m, &rw, &mut ro);
        return;
    }
    row_kernels(isa, xq, m, ws, outs);
}

/// Work items numbered matrix after matrix, each matrix's `per(w)` items in a row (both
/// paths number their items so, then split them over the pool).
struct Items(Vec<usize>);

impl Items {
    fn new(ws: &[&PackedWeight], per: impl Fn(&PackedWeight) -> usize) -> Self {
        let mut first = Vec::with_capacity(ws.len() + 1);
        first.push(0);
        for w in ws {
            first.push(first[first.len() - 1] + per(w));
        }
        Self(first)
    }

    fn len(&self) -> usize {
        self.0[self.0.len() - 1]
    }

    /// `(matrix, item within the matrix)`.
    fn locate(&self, item: usize) -> (usize, usize) {
        let mat = self.0.partition_point(|&f| f <= item) - 1;
        (mat, item - self.0[mat])
    }
}

/// The row kernels over quantized input `xq` (`[m, k / 32]`).
fn row_kernels(
    isa: Isa,
    xq: &[ActQ8],
    m: usize,
    ws: &[&PackedWeight],
    outs: &mut [&mut [MaybeUninit<f32>]],
) {
    let Some(kb) = ws.first().map(|w| w.cols() / QK) else {
        return;
    };
    let pool = super::pool::global();
    let xrow = |i: usize| &xq[i * kb..(i + 1) * kb];
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    let row_tiles = m.div_ceil(ROW_TILE);
    // Decode with a two-group kernel: one item per pair of groups.
    let paired = |w: &PackedWeight| m == 1 && each!(w, p => p.pairs(isa));
    // Per matrix: row tile after row tile, group (or pair of groups) after group.
    let items = Items::new(ws, |w| match paired(w) {
        true => (w.rows() / GROUP).div_ceil(2),
        false => row_tiles * (w.rows() / GROUP),
    });
    let n_items = items.len();
    let run = |range: std::ops::Range<usize>| {
        for item in range {
            let (mat, local) = items.locate(item);
            let w = ws[mat];
            let (n, groups) = (w.rows(), w.rows() / GROUP);
            if paired(w) {
                let dst = out_ptrs[mat] as *mut f32;
                let g = 2 * local;
                let outs = each!(w, p => p.run_pair(isa, g, xrow(0)));
                for (h, v) in outs.iter().enumerate().take(groups - g) {
                    // SAFETY: groups `g`, `g + 1` of row 0 are this item's alone, in bounds.
                    unsafe {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), dst.add((g + h) * GROUP), GROUP)
                    };
                }
                continue;
            }
            let (tile, g) = (local / groups, local % groups);
            let rows = tile * ROW_TILE..m.min((tile + 1) * ROW_TILE);
            let dst = out_ptrs[mat] as *mut f32;
            // SAFETY (raw writes): each (matrix, row, group) of the outputs is written by
            // exactly one item, and the 8 columns of a group are in bounds (`n` is a
            // multiple of 8, `i < m`).
            let write = |i: usize, v: &[f32; GROUP]| unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), dst.add(i * n + g * GROUP), GROUP);
            };
            each!(w, p => p.run_group(isa, g, rows, &xrow, &write));
        }
    };
    if m == 1 {
        // Decode: one contiguous slice of weight groups per thread.
        pool.execute_contiguous(n_items, run);
    } else {
        pool.execute_chunked(n_items, run);
    }
}

#[cfg(test)]
mod tests;

//! The GGUF block types wick repacks, and their packed 8-row forms.
//!
//! Every packed form keeps the integer weights of its ggml block (nibbles stay nibbles,
//! 6-bit values stay 6 bits) and only moves bytes so that one 256-bit register holds 4
//! consecutive weights of each of the 8 rows (`qs[32 t + 4 r + e]`: row `r`, byte `e` of
//! the register `t`). The 6-bit sub-block scales of Q4_K/Q5_K are unpacked to bytes, which
//! adds 32 bytes per 8 rows and 256 columns (3 %); every other form has its blocks' size.
//!
//! `sub_block` states what a packed block means, in the plainest terms: the 32 integer
//! weights `q` of a row and sub-block, and `(a, b)` such that the row's dot product with
//! activations `x = xd * xq` is `a * xd * Σ q xq + b * xs` (`xs = xd * Σ xq`). For the
//! 32-column formats the scalar kernel is that formula and the SIMD kernels agree with it
//! (up to the order of float sums).
//!
//! The K-quants take activations with one scale `xd` per 256 (`super::quantize_row_super`)
//! and are computed per super-block as llama.cpp does (`SuperBlock`): with `sc_j`, `m_j`
//! the integer scale and min of sub-block `j` and `d`, `dmin` the row's block scales,
//! `isum = Σ_j sc_j Σ q xq` and `imin = Σ_j m_j Σ xq` (Q6_K: `sc` per 16 weights,
//! `q - 32` for `q`, no min), exact in i32, then `acc = fma(d * xd, isum, acc)` and
//! `acc = fma(-(dmin * xd), imin, acc)`, super-block after super-block. Every kernel,
//! scalar or SIMD, gives those bits.

use half::f16;

use super::super::qmatmul::{BlockQ4_1, BlockQ8_0};
use super::GROUP;

/// ggml `block_q4_0`: 32 weights `d * (q - 8)`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// ggml `block_q5_0`: 32 weights `d * (q - 16)`, `q` a nibble plus bit `i` of `qh`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// ggml `block_q5_1`: 32 weights `d * q + m`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// ggml `block_q4_K`: 256 weights in 8 sub-blocks of 32, `d * sc_j * q - dmin * m_j`
/// (6-bit `sc_j`, `m_j` packed in `scales`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// ggml `block_q5_K`: as Q4_K with a fifth bit per weight in `qh`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// ggml `block_q6_K`: 256 weights `d * sc_h * (q - 32)`, 6-bit `q`, one i8 scale per 16.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Eight rows' Q4_0 blocks: `qs` as in `Q4_1x8`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4_0x8 {
    pub d: [f16; GROUP],
    pub qs: [u8; 128],
}

/// Eight rows' Q4_1 blocks for the same 32 columns. `qs[32 t + 4 r + e]` is byte `4 t + e`
/// of row `r`'s ggml block: its low nibble is weight `4 t + e`, its high nibble weight
/// `4 t + e + 16`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4_1x8 {
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
    pub qs: [u8; 128],
}

/// Eight rows' Q5_0 blocks: `qs` as in `Q4_1x8`; byte `4 r + e` of `qh` holds row `r`'s
/// fifth bits: bit `t` for weight `4 t + e`, bit `4 + t` for weight `16 + 4 t + e`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q5_0x8 {
    pub d: [f16; GROUP],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Eight rows' Q5_1 blocks, laid out as `Q5_0x8`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q5_1x8 {
    pub d: [f16; GROUP],
    pub m: [f16; GROUP],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Eight rows' Q8_0 blocks for the same 32 columns: `qs[32 j + 4 r + e]` is weight
/// `4 j + e` of row `r`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q8_0x8 {
    pub d: [f16; GROUP],
    pub qs: [i8; 256],
}

/// Eight rows' Q4_K blocks for the same 256 columns. `qs[256 c + 32 u + 4 r + e]` is byte
/// `32 c + 4 u + e` of row `r`'s ggml `qs`: its low nibble is weight `4 u + e` of sub-block
/// `2 c`, its high nibble the same weight of sub-block `2 c + 1`. `sc[8 j + r]`, `m[8 j + r]`:
/// sub-block `j`'s scale and min of row `r`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4Kx8 {
    pub d: [f16; GROUP],
    pub dmin: [f16; GROUP],
    pub sc: [u8; 64],
    pub m: [u8; 64],
    pub qs: [u8; 1024],
}

/// Eight rows' Q5_K blocks: as `Q4Kx8`, and `qh[32 v + 4 r + e]` is byte `4 v + e` of row
/// `r`'s ggml `qh`, whose bit `j` is the fifth bit of weight `4 v + e` of sub-block `j`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q5Kx8 {
    pub d: [f16; GROUP],
    pub dmin: [f16; GROUP],
    pub sc: [u8; 64],
    pub m: [u8; 64],
    pub qh: [u8; 256],
    pub qs: [u8; 1024],
}

/// Eight rows' Q6_K blocks for the same 256 columns, sub-block (32 weights) after
/// sub-block. For sub-block `j`, `ql[128 j + 32 t + 4 r + e]` holds the low 4 bits of
/// weights `4 t + e` (low nibble) and `16 + 4 t + e` (high nibble) of row `r`, and bits
/// `2 i, 2 i + 1` of `qh[64 j + 32 u + 4 r + e]` the top 2 bits of weight `4 u + e + 8 i`.
/// `sc[8 h + r]`: the scale of row `r`'s weights `16 h .. 16 h + 16`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q6Kx8 {
    pub d: [f16; GROUP],
    pub sc: [i8; 128],
    pub ql: [u8; 1024],
    pub qh: [u8; 512],
}

const _: () = assert!(std::mem::size_of::<Q4_0x8>() == 8 * 18);
const _: () = assert!(std::mem::size_of::<Q4_1x8>() == 8 * 20);
const _: () = assert!(std::mem::size_of::<Q5_0x8>() == 8 * 22);
const _: () = assert!(std::mem::size_of::<Q5_1x8>() == 8 * 24);
const _: () = assert!(std::mem::size_of::<Q8_0x8>() == 8 * 34);
const _: () = assert!(std::mem::size_of::<Q4Kx8>() == 8 * 144 + 32);
const _: () = assert!(std::mem::size_of::<Q5Kx8>() == 8 * 176 + 32);
const _: () = assert!(std::mem::size_of::<Q6Kx8>() == 8 * 210);

/// What a packed form is made from and what its blocks mean (see the module comment).
pub trait Format: Copy + Send + Sync + 'static {
    /// The ggml block it is made from: plain old data, any bit pattern valid.
    type Block: Copy;
    /// Columns per block: 32, or 256 for the K-quants.
    const COLS: usize;
    /// `rows`: one ggml block of each of the group's 8 rows.
    fn pack(rows: [&Self::Block; GROUP]) -> Self;
    /// Row `r`, sub-block `j` (of `COLS / 32`): `(q, a, b)`.
    fn sub_block(&self, r: usize, j: usize) -> ([i32; 32], f32, f32);
}

/// The integer form of a K-quant super-block (see the module comment).
pub trait SuperBlock: Format {
    /// Whether the blocks have mins (Q4_K and Q5_K; not Q6_K).
    const MINS: bool;
    /// Row `r`'s block scales `(d, dmin)` (`dmin` 0 without mins).
    fn scales(&self, r: usize) -> (f32, f32);
    /// Row `r`, sub-block `j` (of 8): the 32 weights times their integer scale, and the
    /// integer min (0 without mins).
    fn scaled_sub_block(&self, r: usize, j: usize) -> ([i32; 32], i32);
}

/// The packed `qs` of the 32-column forms.
fn pack_nibbles(rows: [&[u8; 16]; GROUP]) -> [u8; 128] {
    let mut qs = [0u8; 128];
    for (r, row) in rows.iter().enumerate() {
        for t in 0..4 {
            qs[32 * t + 4 * r..][..4].copy_from_slice(&row[4 * t..4 * t + 4]);
        }
    }
    qs
}

/// Packed nibble of row `r`, weight `i` (inverse of `pack_nibbles`).
fn packed_nibble(qs: &[u8; 128], r: usize, i: usize) -> u8 {
    let (t, e) = ((i % 16) / 4, i % 4);
    let byte = qs[32 * t + 4 * r + e];
    if i < 16 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// The packed `qh` of Q5_0/Q5_1 from the rows' ggml `qh` (little-endian u32 of bits).
fn pack_fifth_bits(rows: [[u8; 4]; GROUP]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (r, qh) in rows.iter().enumerate() {
        let bits = u32::from_le_bytes(*qh);
        for e in 0..4 {
            let mut byte = 0u8;
            for t in 0..4 {
                byte |= (((bits >> (4 * t + e)) & 1) as u8) << t;
                byte |= (((bits >> (16 + 4 * t + e)) & 1) as u8) << (4 + t);
            }
            out[4 * r + e] = byte;
        }
    }
    out
}

fn packed_fifth_bit(qh: &[u8; 32], r: usize, i: usize) -> u8 {
    let (t, e) = ((i % 16) / 4, i % 4);
    let shift = if i < 16 { t } else { 4 + t };
    (qh[4 * r + e] >> shift) & 1
}

fn f16s<const N: usize>(f: impl Fn(usize) -> f16) -> [f16; N] {
    std::array::from_fn(f)
}

impl Format for Q4_0x8 {
    type Block = BlockQ4_0;
    const COLS: usize = 32;

    fn pack(rows: [&BlockQ4_0; GROUP]) -> Self {
        Self {
            d: f16s(|r| rows[r].d),
            qs: pack_nibbles(rows.map(|b| &b.qs)),
        }
    }

    fn sub_block(&self, r: usize, _: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| packed_nibble(&self.qs, r, i) as i32 - 8);
        (q, self.d[r].to_f32(), 0.0)
    }
}

impl Format for Q4_1x8 {
    type Block = BlockQ4_1;
    const COLS: usize = 32;

    fn pack(rows: [&BlockQ4_1; GROUP]) -> Self {
        Self {
            d: f16s(|r| rows[r].d),
            m: f16s(|r| rows[r].m),
            qs: pack_nibbles(rows.map(|b| &b.qs)),
        }
    }

    fn sub_block(&self, r: usize, _: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| packed_nibble(&self.qs, r, i) as i32);
        (q, self.d[r].to_f32(), self.m[r].to_f32())
    }
}

impl Format for Q5_0x8 {
    type Block = BlockQ5_0;
    const COLS: usize = 32;

    fn pack(rows: [&BlockQ5_0; GROUP]) -> Self {
        Self {
            d: f16s(|r| rows[r].d),
            qh: pack_fifth_bits(rows.map(|b| b.qh)),
            qs: pack_nibbles(rows.map(|b| &b.qs)),
        }
    }

    fn sub_block(&self, r: usize, _: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| {
            (packed_nibble(&self.qs, r, i) | packed_fifth_bit(&self.qh, r, i) << 4) as i32 - 16
        });
        (q, self.d[r].to_f32(), 0.0)
    }
}

impl Format for Q5_1x8 {
    type Block = BlockQ5_1;
    const COLS: usize = 32;

    fn pack(rows: [&BlockQ5_1; GROUP]) -> Self {
        Self {
            d: f16s(|r| rows[r].d),
            m: f16s(|r| rows[r].m),
            qh: pack_fifth_bits(rows.map(|b| b.qh)),
            qs: pack_nibbles(rows.map(|b| &b.qs)),
        }
    }

    fn sub_block(&self, r: usize, _: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| {
            (packed_nibble(&self.qs, r, i) | packed_fifth_bit(&self.qh, r, i) << 4) as i32
        });
        (q, self.d[r].to_f32(), self.m[r].to_f32())
    }
}

impl Format for Q8_0x8 {
    type Block = BlockQ8_0;
    const COLS: usize = 32;

    fn pack(rows: [&BlockQ8_0; GROUP]) -> Self {
        let mut qs = [0i8; 256];
        for (r, row) in rows.iter().enumerate() {
            for j in 0..8 {
                qs[32 * j + 4 * r..][..4].copy_from_slice(&row.qs[4 * j..4 * j + 4]);
            }
        }
        Self {
            d: f16s(|r| rows[r].d),
            qs,
        }
    }

    fn sub_block(&self, r: usize, _: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| self.qs[32 * (i / 4) + 4 * r + i % 4] as i32);
        (q, self.d[r].to_f32(), 0.0)
    }
}

/// Q4_K/Q5_K scales and mins unpacked to bytes, `[8 j + r]`.
fn k_scales(rows: [&[u8; 12]; GROUP]) -> ([u8; 64], [u8; 64]) {
    let (mut sc, mut m) = ([0u8; 64], [0u8; 64]);
    for (r, s) in rows.iter().enumerate() {
        for j in 0..8 {
            (sc[8 * j + r], m[8 * j + r]) = scale_min_k4(j, s);
        }
    }
    (sc, m)
}

/// The packed `qs` of Q4_K/Q5_K.
fn pack_k_nibbles(rows: [&[u8; 128]; GROUP]) -> [u8; 1024] {
    let mut qs = [0u8; 1024];
    for (r, row) in rows.iter().enumerate() {
        for c in 0..4 {
            for u in 0..8 {
                qs[256 * c + 32 * u + 4 * r..][..4]
                    .copy_from_slice(&row[32 * c + 4 * u..32 * c + 4 * u + 4]);
            }
        }
    }
    qs
}

/// Row `r`'s weight `i` of sub-block `j` in a packed K `qs` (4 bits).
fn packed_k_nibble(qs: &[u8; 1024], r: usize, j: usize, i: usize) -> u8 {
    let (c, u, e) = (j / 2, i / 4, i % 4);
    let byte = qs[256 * c + 32 * u + 4 * r + e];
    if j.is_multiple_of(2) {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

impl Format for Q4Kx8 {
    type Block = BlockQ4K;
    const COLS: usize = 256;

    fn pack(rows: [&BlockQ4K; GROUP]) -> Self {
        let (sc, m) = k_scales(rows.map(|b| &b.scales));
        Self {
            d: f16s(|r| rows[r].d),
            dmin: f16s(|r| rows[r].dmin),
            sc,
            m,
            qs: pack_k_nibbles(rows.map(|b| &b.qs)),
        }
    }

    fn sub_block(&self, r: usize, j: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| packed_k_nibble(&self.qs, r, j, i) as i32);
        (
            q,
            self.d[r].to_f32() * self.sc[8 * j + r] as f32,
            -self.dmin[r].to_f32() * self.m[8 * j + r] as f32,
        )
    }
}

impl Format for Q5Kx8 {
    type Block = BlockQ5K;
    const COLS: usize = 256;

    fn pack(rows: [&BlockQ5K; GROUP]) -> Self {
        let (sc, m) = k_scales(rows.map(|b| &b.scales));
        let mut qh = [0u8; 256];
        for (r, row) in rows.iter().enumerate() {
            for v in 0..8 {
                qh[32 * v + 4 * r..][..4].copy_from_slice(&row.qh[4 * v..4 * v + 4]);
            }
        }
        Self {
            d: f16s(|r| rows[r].d),
            dmin: f16s(|r| rows[r].dmin),
            sc,
            m,
            qh,
            qs: pack_k_nibbles(rows.map(|b| &b.qs)),
        }
    }

    fn sub_block(&self, r: usize, j: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| {
            let high = (self.qh[32 * (i / 4) + 4 * r + i % 4] >> j) & 1;
            (packed_k_nibble(&self.qs, r, j, i) | high << 4) as i32
        });
        (
            q,
            self.d[r].to_f32() * self.sc[8 * j + r] as f32,
            -self.dmin[r].to_f32() * self.m[8 * j + r] as f32,
        )
    }
}

/// Q4_K's and Q5_K's `SuperBlock`: the same fields (`d`, `dmin`, `sc`, `m`) and meaning.
macro_rules! k_super_block {
    ($t:ty) => {
        impl SuperBlock for $t {
            const MINS: bool = true;

            fn scales(&self, r: usize) -> (f32, f32) {
                (self.d[r].to_f32(), self.dmin[r].to_f32())
            }

            fn scaled_sub_block(&self, r: usize, j: usize) -> ([i32; 32], i32) {
                let (q, _, _) = self.sub_block(r, j);
                let sc = self.sc[8 * j + r] as i32;
                (q.map(|q| q * sc), self.m[8 * j + r] as i32)
            }
        }
    };
}

k_super_block!(Q4Kx8);
k_super_block!(Q5Kx8);

/// A Q6_K block's 256 weights (0..64), in ggml's order.
fn q6k_values(b: &BlockQ6K) -> [u8; 256] {
    let mut q = [0u8; 256];
    for n in 0..2 {
        let (ql, qh) = (&b.ql[64 * n..], &b.qh[32 * n..]);
        let y = &mut q[128 * n..];
        for l in 0..32 {
            y[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            y[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            y[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            y[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

impl Format for Q6Kx8 {
    type Block = BlockQ6K;
    const COLS: usize = 256;

    fn pack(rows: [&BlockQ6K; GROUP]) -> Self {
        let mut out = Self {
            d: f16s(|r| rows[r].d),
            sc: [0; 128],
            ql: [0; 1024],
            qh: [0; 512],
        };
        for (r, row) in rows.iter().enumerate() {
            let q = q6k_values(row);
            for h in 0..16 {
                out.sc[8 * h + r] = row.scales[h];
            }
            for j in 0..8 {
                let w = &q[32 * j..32 * j + 32];
                for t in 0..4 {
                    for e in 0..4 {
                        out.ql[128 * j + 32 * t + 4 * r + e] =
                            (w[4 * t + e] & 0x0F) | (w[16 + 4 * t + e] & 0x0F) << 4;
                    }
                }
                for u in 0..2 {
                    for e in 0..4 {
                        let mut byte = 0u8;
                        for i in 0..4 {
                            byte |= (w[4 * u + e + 8 * i] >> 4) << (2 * i);
                        }
                        out.qh[64 * j + 32 * u + 4 * r + e] = byte;
                    }
                }
            }
        }
        out
    }

    fn sub_block(&self, r: usize, j: usize) -> ([i32; 32], f32, f32) {
        let q = std::array::from_fn(|i| {
            let (t, e) = ((i % 16) / 4, i % 4);
            let lo = self.ql[128 * j + 32 * t + 4 * r + e];
            let lo = if i < 16 { lo & 0x0F } else { lo >> 4 };
            let (u, e2, k) = ((i % 8) / 4, i % 4, i / 8);
            let hi = (self.qh[64 * j + 32 * u + 4 * r + e2] >> (2 * k)) & 3;
            let sc = self.sc[8 * (2 * j + i / 16) + r] as i32;
            sc * ((lo | hi << 4) as i32 - 32)
        });
        (q, self.d[r].to_f32(), 0.0)
    }
}

impl SuperBlock for Q6Kx8 {
    const MINS: bool = false;

    fn scales(&self, r: usize) -> (f32, f32) {
        (self.d[r].to_f32(), 0.0)
    }

    fn scaled_sub_block(&self, r: usize, j: usize) -> ([i32; 32], i32) {
        // `sub_block`'s weights of Q6_K already carry their scale (`a` is `d`).
        (self.sub_block(r, j).0, 0)
    }
}

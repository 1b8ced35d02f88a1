//! How wick's kernels (`kernels/*.cu`) are launched: grid and block sizes, the number of
//! attention partitions, scalar arguments and each kernel's parameter order, computed once
//! here. The CUDA launcher (`ops::cuda`) and the CPU emulator (`ops::emu`, used by
//! `tests/kernel_emu.rs`) both launch through these, so the emulator runs the kernels
//! exactly as the GPU path configures them.
//!
//! Each launch type pushes its kernel's arguments, in parameter order, into an
//! [`ArgSink`]: cudarc's launch builder on the GPU, the emulator's argument list on the
//! CPU. Buffers are generic (device slices or host slices); scalars are pushed by reference
//! to the launch value, which must outlive the launch.

use super::rope::{Rope, RopeStyle};

/// Keys per attention partition: a decode row with a longer context is split across
/// thread blocks (flash-decoding) and merged by a second kernel (see [`plan_splits`]).
pub const PARTITION_SIZE: usize = 512;

/// `part_start` of a row that is not split.
pub const NOT_SPLIT: u32 = u32::MAX;

/// `part_start` of a prompt row (its sequence has more than one query row): the prefill
/// kernel (`wick_prefill_attention_*`, tensor cores) attends for it and the split-context
/// kernel skips it.
pub const PREFILL_ROW: u32 = u32::MAX - 1;

/// How one step's query rows are split across thread blocks.
///
/// Only decode rows (the single query row of their sequence) are split, each into
/// `ceil(keys / part_size)` partitions when it has more keys than one partition; prompt
/// rows never are (a chunk's rows already give the GPU many blocks), so a long prompt never
/// pays for a long decode row beside it, and the scratch the partitions need grows with
/// the decode rows' own contexts, not with the step's longest context times its rows.
/// `part_size` starts at [`PARTITION_SIZE`] and doubles until the partitions fit
/// `capacity` (the scratch allocated once with the cache), so no step needs more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SplitPlan {
    pub part_size: usize,
    /// Most partitions of any row (the grid's third dimension; 1 when none is split).
    pub max_parts: usize,
    /// Partitions of all split rows together (scratch slots used).
    pub total_parts: usize,
    /// Rows that are split (the reduction's grid).
    pub split_rows: usize,
    /// Sequences of the step (the prefill kernel walks them).
    pub seqs: usize,
    /// Sequences with more than one query row, and their rows: the prefill kernel's.
    pub prompt_seqs: usize,
    pub prompt_rows: usize,
}

/// Plans the splits of a step (see [`SplitPlan`]) whose sequences have these
/// `(q_len, context_len)`, rows in order; appends to `out` each row's first scratch
/// partition (or [`NOT_SPLIT`], or [`PREFILL_ROW`] for the rows of a sequence with more
/// than one query row), then the split rows.
pub fn plan_splits(
    seqs: impl Iterator<Item = (usize, usize)> + Clone,
    capacity: usize,
    out: &mut Vec<u32>,
) -> SplitPlan {
    let decode_keys = || seqs.clone().filter(|&(q, _)| q == 1).map(|(_, c)| c);
    let mut part_size = PARTITION_SIZE;
    loop {
        let total: usize = decode_keys()
            .filter(|&c| c > part_size)
            .map(|c| c.div_ceil(part_size))
            .sum();
        if total <= capacity {
            break;
        }
        part_size *= 2;
    }
    let split = |q_len: usize, ctx: usize| q_len == 1 && ctx > part_size;
    let mut plan = SplitPlan {
        part_size,
        max_parts: 1,
        ..Default::default()
    };
    for (q_len, ctx) in seqs.clone() {
        plan.seqs += 1;
        if split(q_len, ctx) {
            let parts = ctx.div_ceil(part_size);
            out.push(plan.total_parts as u32);
            plan.total_parts += parts;
            plan.max_parts = plan.max_parts.max(parts);
            plan.split_rows += 1;
        } else if q_len > 1 {
            plan.prompt_seqs += 1;
            plan.prompt_rows += q_len;
            out.extend(std::iter::repeat_n(PREFILL_ROW, q_len));
        } else {
            out.extend(std::iter::repeat_n(NOT_SPLIT, q_len));
        }
    }
    let mut row = 0u32;
    for (q_len, ctx) in seqs {
        if split(q_len, ctx) {
            out.push(row);
        }
        row += q_len as u32;
    }
    plan
}

/// f32 elements of the scratch buffers `(part_acc, part_ml)` for `parts` partitions of
/// `num_heads` heads of `head_dim`.
pub fn scratch_lens(parts: usize, num_heads: usize, head_dim: usize) -> (usize, usize) {
    let n = parts.max(1) * num_heads;
    (n * head_dim, n * 2)
}

/// Head sizes the attention kernel is instantiated for.
pub const HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// Most query heads per KV head one attention thread block handles (`GMAX` in the kernel).
const GMAX: usize = 8;
/// Warps per attention thread block (`NWARPS` in the kernel).
const NWARPS: u32 = 4;
/// Query rows (token, head) per prefill thread block (`PF_BM` in the kernel), 16 per warp.
pub const PREFILL_TILE_ROWS: usize = 64;
/// Warps per prefill thread block (`PF_WARPS` in the kernel).
const PREFILL_WARPS: u32 = 4;
/// Threads per block of the per-row choice kernels (`THREADS` in kernels/sampling.cu).
const CHOOSE_THREADS: u32 = 1024;

/// Grid and block sizes of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// Receives a kernel's arguments in parameter order.
pub trait ArgSink<A> {
    fn arg(&mut self, a: A);
}

/// `wick_rope_{bf16,f16}`: rotary embeddings of `tokens` rows of `heads` heads, as `rope`
/// rotates them on the CPU (`Rope::apply`): its first `rot_dim` dimensions of each head
/// (the rest copied), in its pair layout, cos and sin multiplied by its scale. The kernel's
/// `inv_freq` is `rope.inv_freq()`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeLaunch {
    pub dims: Dims,
    heads: i32,
    head_dim: i32,
    rot_dim: i32,
    interleaved: i32,
    scale: f32,
}

impl RopeLaunch {
    pub fn new(tokens: usize, heads: usize, rope: &Rope) -> Self {
        let head_dim = rope.head_dim();
        Self {
            dims: Dims {
                grid: (tokens as u32, 1, 1),
                block: ((heads * (head_dim / 2)).clamp(1, 512) as u32, 1, 1),
            },
            heads: heads as i32,
            head_dim: head_dim as i32,
            rot_dim: rope.rot_dim() as i32,
            interleaved: (rope.style() == RopeStyle::Interleaved) as i32,
            scale: rope.scale(),
        }
    }

    /// The kernel for element type `suffix` (`bf16` or `f16`).
    pub fn kernel(suffix: &str) -> String {
        format!("wick_rope_{suffix}")
    }

    pub fn args<'s, S, X, O, P, F>(&'s self, s: &mut S, x: X, out: O, positions: P, inv_freq: F)
    where
        S: ArgSink<X> + ArgSink<O> + ArgSink<P> + ArgSink<F> + ArgSink<&'s i32> + ArgSink<&'s f32>,
    {
        s.arg(x);
        s.arg(out);
        s.arg(positions);
        s.arg(inv_freq);
        s.arg(&self.heads);
        s.arg(&self.head_dim);
        s.arg(&self.rot_dim);
        s.arg(&self.interleaved);
        s.arg(&self.scale);
    }
}

/// `wick_write_kv_{bf16,f16}`: the K and V of `tokens` new tokens into their cache slots.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteKvLaunch {
    pub dims: Dims,
    kv_heads: i32,
    head_dim: i32,
    block_size: i32,
}

impl WriteKvLaunch {
    pub fn new(tokens: usize, kv_heads: usize, head_dim: usize, block_size: usize) -> Self {
        Self {
            dims: Dims {
                grid: (tokens as u32, 1, 1),
                block: ((kv_heads * head_dim).min(1024) as u32, 1, 1),
            },
            kv_heads: kv_heads as i32,
            head_dim: head_dim as i32,
            block_size: block_size as i32,
        }
    }

    pub fn kernel(suffix: &str) -> String {
        format!("wick_write_kv_{suffix}")
    }

    pub fn args<'s, S, X, C, U>(&'s self, s: &mut S, k: X, v: X, k_cache: C, v_cache: C, slots: U)
    where
        S: ArgSink<X> + ArgSink<C> + ArgSink<U> + ArgSink<&'s i32>,
    {
        s.arg(k);
        s.arg(v);
        s.arg(k_cache);
        s.arg(v_cache);
        s.arg(slots);
        s.arg(&self.kv_heads);
        s.arg(&self.head_dim);
        s.arg(&self.block_size);
    }
}

/// The shape of one paged-attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Query rows of the step.
    pub tokens: usize,
    pub num_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// Width of the padded block-table array.
    pub max_blocks: usize,
    /// How the rows are split across thread blocks.
    pub split: SplitPlan,
    pub scale: f32,
    /// The layer's sliding window: a query at position `p` attends only to the keys at
    /// `p + 1 - w ..= p` (`ops::paged_attention_windowed`); `None`: every earlier key.
    pub window: Option<usize>,
    /// Attention logit soft-capping: each scaled score `s` becomes `c * tanh(s / c)`.
    pub softcap: Option<f32>,
}

/// One step's metadata arrays as the attention kernel takes them (see `kv::step_meta`).
#[derive(Debug, Clone, Copy)]
pub struct StepBufs<B> {
    pub row_seq: B,
    pub q_start: B,
    pub q_len: B,
    pub context_len: B,
    pub block_tables: B,
    /// Per row: its first scratch partition, or [`NOT_SPLIT`].
    pub part_start: B,
    /// The split rows (the reduction's rows).
    pub split_rows: B,
}

/// One launch of an attention step (see [`AttentionLaunch::stages`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionStage {
    /// `wick_paged_attention_*`: decode rows ([`AttentionLaunch::args`]).
    Decode,
    /// `wick_prefill_attention_*`: prompt rows ([`AttentionLaunch::prefill_args`]).
    Prefill,
    /// `wick_reduce_partitions_*`: merges split rows ([`AttentionLaunch::reduce_args`]).
    Reduce,
}

/// `wick_paged_attention_*` (decode rows, split or not); when a row is split,
/// `wick_reduce_partitions_*`; when the step has prompt rows, `wick_prefill_attention_*`
/// (tensor cores) for them. The three write disjoint rows of one output, in any order.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionLaunch {
    /// Most partitions of any row (1: no reduction launch).
    pub parts: usize,
    pub attention: Dims,
    /// The reduction's launch, over the split rows.
    pub reduce: Option<Dims>,
    /// The prefill kernel's launch, over the prompt rows' tiles.
    pub prefill: Option<Dims>,
    seqs: i32,
    /// Rows the decode kernel attends for (the others are the prefill kernel's).
    decode_rows: usize,
    head_dim: usize,
    max_blocks: i32,
    num_heads: i32,
    kv_heads: i32,
    block_size: i32,
    part_size: i32,
    scale: f32,
    head_dim_i32: i32,
    /// The kernels' `window` (0: none) and `softcap` (0: none).
    window: i32,
    softcap: f32,
}

impl AttentionLaunch {
    /// The launches for `shape`, or why the kernel cannot take it.
    pub fn new(shape: &AttentionShape) -> Result<Self, String> {
        let s = shape;
        if !HEAD_DIMS.contains(&s.head_dim) {
            return Err(format!(
                "the CUDA attention kernel supports head sizes {HEAD_DIMS:?}, not {}",
                s.head_dim
            ));
        }
        if s.kv_heads == 0 || !s.num_heads.is_multiple_of(s.kv_heads) {
            return Err(format!(
                "{} query heads cannot share {} KV heads",
                s.num_heads, s.kv_heads
            ));
        }
        if s.window == Some(0) {
            return Err("a sliding window of 0 keys leaves a query nothing to attend to".into());
        }
        if let Some(c) = s.softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("attention soft-cap {c} is not a positive number"));
            }
        }
        let parts = s.split.max_parts.max(1);
        if parts > 65535 || s.split.split_rows > i32::MAX as usize {
            return Err(format!(
                "{} partitions of {} keys are beyond the attention kernel's grid",
                parts, s.split.part_size
            ));
        }
        let group = s.num_heads / s.kv_heads;
        let subgroups = group.div_ceil(GMAX);
        // Tiles of PREFILL_TILE_ROWS (token, head) rows per KV head: at most one partial
        // tile per prompt sequence (the kernel returns for blocks past the last).
        let tiles = (s.split.prompt_rows * group).div_ceil(PREFILL_TILE_ROWS) + s.split.prompt_seqs;
        if tiles > i32::MAX as usize || s.split.seqs > i32::MAX as usize {
            return Err(format!(
                "{} prompt rows are beyond the prefill kernel's grid",
                s.split.prompt_rows
            ));
        }
        Ok(Self {
            parts,
            attention: Dims {
                grid: (
                    s.tokens as u32,
                    (s.kv_heads * subgroups) as u32,
                    parts as u32,
                ),
                block: (NWARPS * 32, 1, 1),
            },
            reduce: (s.split.split_rows > 0).then_some(Dims {
                grid: (s.split.split_rows as u32, s.num_heads as u32, 1),
                block: (s.head_dim as u32, 1, 1),
            }),
            prefill: (s.split.prompt_seqs > 0).then_some(Dims {
                grid: (tiles as u32, s.kv_heads as u32, 1),
                block: (PREFILL_WARPS * 32, 1, 1),
            }),
            seqs: s.split.seqs as i32,
            decode_rows: s.tokens.saturating_sub(s.split.prompt_rows),
            head_dim: s.head_dim,
            max_blocks: s.max_blocks as i32,
            num_heads: s.num_heads as i32,
            kv_heads: s.kv_heads as i32,
            block_size: s.block_size as i32,
            part_size: s.split.part_size.min(i32::MAX as usize) as i32,
            scale: s.scale,
            head_dim_i32: s.head_dim as i32,
            // A window at least as long as any context is no window.
            window: s.window.map_or(0, |w| w.min(i32::MAX as usize) as i32),
            softcap: s.softcap.unwrap_or(0.0),
        })
    }

    pub fn kernel(&self, suffix: &str) -> String {
        format!("wick_paged_attention_{suffix}_d{}", self.head_dim)
    }

    /// The step's launches, in the order to make them, for element type `suffix`: the
    /// decode kernel when the step has decode rows (its blocks for prompt rows return at
    /// once), the prefill kernel when it has prompt rows, and the reduction, after the
    /// decode kernel whose partials it reads, when a row is split. `ops::cuda` and the
    /// emulator tests launch these.
    pub fn stages(&self, suffix: &str) -> Vec<(AttentionStage, String, Dims)> {
        let mut v = Vec::new();
        if self.decode_rows > 0 {
            v.push((AttentionStage::Decode, self.kernel(suffix), self.attention));
        }
        if let Some(d) = self.prefill {
            v.push((AttentionStage::Prefill, self.prefill_kernel(suffix), d));
        }
        if let Some(d) = self.reduce {
            v.push((AttentionStage::Reduce, Self::reduce_kernel(suffix), d));
        }
        v
    }

    pub fn reduce_kernel(suffix: &str) -> String {
        format!("wick_reduce_partitions_{suffix}")
    }

    pub fn prefill_kernel(&self, suffix: &str) -> String {
        format!("wick_prefill_attention_{suffix}_d{}", self.head_dim)
    }

    /// The prefill kernel's arguments (it reads the step's sequences, not its rows).
    #[allow(clippy::too_many_arguments)]
    pub fn prefill_args<'s, S, O, Q, C, B>(
        &'s self,
        s: &mut S,
        out: O,
        q: Q,
        k_cache: C,
        v_cache: C,
        step: StepBufs<B>,
    ) where
        S: ArgSink<O> + ArgSink<Q> + ArgSink<C> + ArgSink<B> + ArgSink<&'s i32> + ArgSink<&'s f32>,
    {
        s.arg(out);
        s.arg(q);
        s.arg(k_cache);
        s.arg(v_cache);
        s.arg(step.q_start);
        s.arg(step.q_len);
        s.arg(step.context_len);
        s.arg(step.block_tables);
        s.arg(&self.seqs);
        s.arg(&self.max_blocks);
        s.arg(&self.num_heads);
        s.arg(&self.kv_heads);
        s.arg(&self.block_size);
        s.arg(&self.scale);
        s.arg(&self.window);
        s.arg(&self.softcap);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn args<'s, S, O, A, Q, C, B>(
        &'s self,
        s: &mut S,
        out: O,
        part_acc: A,
        part_ml: A,
        q: Q,
        k_cache: C,
        v_cache: C,
        step: StepBufs<B>,
    ) where
        S: ArgSink<O>
            + ArgSink<A>
            + ArgSink<Q>
            + ArgSink<C>
            + ArgSink<B>
            + ArgSink<&'s i32>
            + ArgSink<&'s f32>,
    {
        s.arg(out);
        s.arg(part_acc);
        s.arg(part_ml);
        s.arg(q);
        s.arg(k_cache);
        s.arg(v_cache);
        s.arg(step.row_seq);
        s.arg(step.q_start);
        s.arg(step.q_len);
        s.arg(step.context_len);
        s.arg(step.block_tables);
        s.arg(step.part_start);
        s.arg(&self.max_blocks);
        s.arg(&self.num_heads);
        s.arg(&self.kv_heads);
        s.arg(&self.block_size);
        s.arg(&self.part_size);
        s.arg(&self.scale);
        s.arg(&self.window);
        s.arg(&self.softcap);
    }

    pub fn reduce_args<'s, S, O, P, B>(
        &'s self,
        s: &mut S,
        out: O,
        part_acc: P,
        part_ml: P,
        step: StepBufs<B>,
    ) where
        S: ArgSink<O> + ArgSink<P> + ArgSink<B> + ArgSink<&'s i32>,
    {
        s.arg(out);
        s.arg(part_acc);
        s.arg(part_ml);
        s.arg(step.split_rows);
        s.arg(step.part_start);
        s.arg(step.row_seq);
        s.arg(step.context_len);
        s.arg(&self.num_heads);
        s.arg(&self.head_dim_i32);
        s.arg(&self.part_size);
        s.arg(&self.window);
    }
}

/// `wick_copy_range`: `len` 16-bit elements within one buffer, from `src` to `dst`.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRangeLaunch {
    pub dims: Dims,
    src: u64,
    dst: u64,
    len: u64,
}

impl CopyRangeLaunch {
    pub const KERNEL: &'static str = "wick_copy_range";

    pub fn new(src: usize, dst: usize, len: usize) -> Self {
        Self {
            dims: Dims {
                grid: (len.div_ceil(256).min(1024) as u32, 1, 1),
                block: (256, 1, 1),
            },
            src: src as u64,
            dst: dst as u64,
            len: len as u64,
        }
    }

    pub fn args<'s, S, B>(&'s self, s: &mut S, buf: B)
    where
        S: ArgSink<B> + ArgSink<&'s u64>,
    {
        s.arg(buf);
        s.arg(&self.src);
        s.arg(&self.dst);
        s.arg(&self.len);
    }
}

/// One row's sampling parameters, as `wick_sample_f32` reads them (`RowSample` in
/// kernels/sampling.cu; the rule is stated in `sampling::gumbel`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct RowSample {
    pub temperature: f32,
    pub top_p: f32,
    pub min_p: f32,
    /// 0: no top-k.
    pub top_k: u32,
    pub seed: u64,
    /// Tokens generated so far (one draw per step).
    pub step: u32,
    /// The logits row to draw from (the device sampler's; the host ignores it).
    pub row: u32,
}

/// The per-row choice kernels of kernels/sampling.cu (`wick_greedy_f32`,
/// `wick_sample_f32`): one block per row of f32 logits.
#[derive(Debug, Clone, PartialEq)]
pub struct ChooseRowsLaunch {
    pub dims: Dims,
    vocab: i32,
}

impl ChooseRowsLaunch {
    pub const GREEDY: &'static str = "wick_greedy_f32";
    pub const SAMPLE: &'static str = "wick_sample_f32";

    pub fn new(rows: usize, vocab: usize) -> Self {
        Self {
            dims: Dims {
                grid: (rows as u32, 1, 1),
                block: (CHOOSE_THREADS, 1, 1),
            },
            vocab: vocab as i32,
        }
    }

    /// `params` (one [`RowSample`] per row) for `SAMPLE`, `None` for
    /// `GREEDY`.
    pub fn args<'s, S, X, P, I, L>(&'s self, s: &mut S, x: X, params: Option<P>, ids: I, lps: L)
    where
        S: ArgSink<X> + ArgSink<P> + ArgSink<I> + ArgSink<L> + ArgSink<&'s i32>,
    {
        s.arg(x);
        s.arg(&self.vocab);
        if let Some(p) = params {
            s.arg(p);
        }
        s.arg(ids);
        s.arg(lps);
    }
}

/// `wick_adjust_f32`: logit_bias and penalties on f32 logits in place, one thread per
/// entry of a `sampling::LogitAdjust` (`packed`: `4 * n` words).
#[derive(Debug, Clone, PartialEq)]
pub struct AdjustLaunch {
    pub dims: Dims,
    n: u32,
}

impl AdjustLaunch {
    pub const KERNEL: &'static str = "wick_adjust_f32";

    pub fn new(n: usize) -> Self {
        Self {
            dims: Dims {
                grid: (n.div_ceil(256).clamp(1, 1024) as u32, 1, 1),
                block: (256, 1, 1),
            },
            n: n as u32,
        }
    }

    pub fn args<'s, S, X, P>(&'s self, s: &mut S, logits: X, packed: P)
    where
        S: ArgSink<X> + ArgSink<P> + ArgSink<&'s u32>,
    {
        s.arg(logits);
        s.arg(packed);
        s.arg(&self.n);
    }
}

/// `wick_mask_f32`: grammar masks on f32 logits `[rows, vocab]` in place: `packed` is
/// `n` row numbers, then `n` masks of `ceil(vocab / 32)` words (see [`pack_masks`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskLaunch {
    pub dims: Dims,
    vocab: u32,
    n: u32,
}

impl MaskLaunch {
    pub const KERNEL: &'static str = "wick_mask_f32";

    pub fn new(vocab: usize, n: usize) -> Self {
        Self {
            dims: Dims {
                grid: (vocab.div_ceil(256).clamp(1, 64) as u32, n as u32, 1),
                block: (256, 1, 1),
            },
            vocab: vocab as u32,
            n: n as u32,
        }
    }

    pub fn args<'s, S, X, P>(&'s self, s: &mut S, logits: X, packed: P)
    where
        S: ArgSink<X> + ArgSink<P> + ArgSink<&'s u32>,
    {
        s.arg(logits);
        s.arg(&self.vocab);
        s.arg(packed);
        s.arg(&self.n);
    }
}

/// `wick_mask_f32`'s `packed` words, into `out`: the rows, then each row's mask cut or
/// padded (with disallowed tokens) to `ceil(vocab / 32)` words.
pub fn pack_masks<'m>(
    vocab: usize,
    masks: impl Iterator<Item = (usize, &'m [u32])> + Clone,
    out: &mut Vec<u32>,
) {
    let words = vocab.div_ceil(32);
    out.clear();
    out.extend(masks.clone().map(|(row, _)| row as u32));
    for (_, m) in masks {
        let take = m.len().min(words);
        out.extend_from_slice(&m[..take]);
        out.extend(std::iter::repeat_n(0, words - take));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seqs: &[(usize, usize)], capacity: usize) -> (SplitPlan, Vec<u32>, Vec<u32>) {
        let mut starts = Vec::new();
        let p = plan_splits(seqs.iter().copied(), capacity, &mut starts);
        let rows = starts.split_off(seqs.iter().map(|s| s.0).sum());
        (p, starts, rows)
    }

    #[test]
    fn only_decode_rows_longer_than_a_partition_are_split() {
        // A 4-row prompt chunk at context 5000, a decode row at 1300, one at 300, one at
        // 2048: the prompt rows and the short decode row stay whole.
        let (p, starts, rows) = plan(&[(4, 5000), (1, 1300), (1, 300), (1, 2048)], 100);
        assert_eq!(
            p,
            SplitPlan {
                part_size: 512,
                max_parts: 4,
                total_parts: 3 + 4,
                split_rows: 2,
                seqs: 4,
                prompt_seqs: 1,
                prompt_rows: 4,
            }
        );
        let (n, p) = (NOT_SPLIT, PREFILL_ROW);
        assert_eq!(starts, vec![p, p, p, p, 0, n, 3]);
        assert_eq!(rows, vec![4, 6]);
    }

    #[test]
    fn prompt_rows_never_pay_for_a_long_decode_row() {
        // The review's case: 4,096 prompt rows beside one decode row at 8k: 16 partitions
        // in all, not 16 for each of the 4,097 rows.
        let (p, starts, _) = plan(&[(4096, 4096), (1, 8192)], 1 << 20);
        assert_eq!((p.total_parts, p.max_parts, p.split_rows), (16, 16, 1));
        assert_eq!(starts.iter().filter(|&&s| s == PREFILL_ROW).count(), 4096);
        assert_eq!(starts[4096], 0);
    }

    #[test]
    fn partitions_grow_until_the_scratch_holds_them() {
        // 256 decode rows at 32k: 64 partitions each at 512 keys; a scratch of 4,096
        // partitions takes them at 2,048 keys (16 each).
        let seqs = vec![(1usize, 32_768usize); 256];
        let (p, _, rows) = plan(&seqs, 4096);
        assert_eq!((p.part_size, p.max_parts, p.total_parts), (2048, 16, 4096));
        assert_eq!(rows.len(), 256);
        // No scratch at all: nothing is split.
        let (p, starts, rows) = plan(&seqs, 0);
        assert_eq!((p.total_parts, p.split_rows, p.max_parts), (0, 0, 1));
        assert!(starts.iter().all(|&s| s == NOT_SPLIT) && rows.is_empty());
    }

    fn shape(split: SplitPlan) -> AttentionShape {
        AttentionShape {
            tokens: 3,
            num_heads: 32,
            kv_heads: 2,
            head_dim: 128,
            block_size: 16,
            max_blocks: 90,
            split,
            scale: 0.1,
            window: None,
            softcap: None,
        }
    }

    #[test]
    fn attention_partitions_and_subgroups() {
        let (split, _, _) = plan(&[(1, 1300), (1, 100), (1, 1000)], 64);
        let l = AttentionLaunch::new(&shape(split)).unwrap();
        assert_eq!(l.parts, 3);
        // 16 query heads per KV head: two subgroups of GMAX.
        assert_eq!(l.attention.grid, (3, 4, 3));
        assert_eq!(l.attention.block, (128, 1, 1));
        assert_eq!(l.reduce.unwrap().grid, (2, 32, 1));
        assert_eq!(scratch_lens(5, 32, 128), (5 * 32 * 128, 5 * 32 * 2));
        assert_eq!(l.prefill, None);
        let (split, _, _) = plan(&[(3, 1300)], 64);
        let short = AttentionLaunch::new(&shape(split)).unwrap();
        assert_eq!((short.parts, short.reduce), (1, None));
        // 3 prompt rows of 16 heads per KV head: 48 rows, one tile (and one spare block).
        let pf = short.prefill.unwrap();
        assert_eq!((pf.grid, pf.block), ((2, 2, 1), (128, 1, 1)));
        // Prompts of 100 and 30 rows beside a decode row, group 16: 2,080 rows, 33 tiles,
        // at most 2 more for the partial last tile of each sequence.
        let (split, _, _) = plan(&[(100, 100), (1, 7), (30, 900)], 64);
        let mixed = AttentionLaunch::new(&AttentionShape {
            tokens: 131,
            ..shape(split)
        })
        .unwrap();
        assert_eq!(mixed.prefill.unwrap().grid, (33 + 2, 2, 1));
        let stages: Vec<_> = mixed
            .stages("bf16")
            .into_iter()
            .map(|s| (s.0, s.1))
            .collect();
        assert_eq!(
            stages,
            vec![
                (
                    AttentionStage::Decode,
                    "wick_paged_attention_bf16_d128".into()
                ),
                (
                    AttentionStage::Prefill,
                    "wick_prefill_attention_bf16_d128".into()
                ),
            ]
        );
        assert_eq!(l.stages("f16").last().unwrap().0, AttentionStage::Reduce);
        // Only prompt rows (the 3 of `shape`): no decode launch.
        let (split, _, _) = plan(&[(3, 1300)], 64);
        let only = AttentionLaunch::new(&shape(split)).unwrap();
        assert_eq!(
            only.stages("f16").iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![AttentionStage::Prefill]
        );
        for bad in [
            AttentionShape {
                head_dim: 96,
                ..shape(split)
            },
            AttentionShape {
                kv_heads: 3,
                ..shape(split)
            },
            AttentionShape {
                split: SplitPlan {
                    max_parts: 65536,
                    ..split
                },
                ..shape(split)
            },
            AttentionShape {
                window: Some(0),
                ..shape(split)
            },
            AttentionShape {
                softcap: Some(0.0),
                ..shape(split)
            },
            AttentionShape {
                softcap: Some(f32::NAN),
                ..shape(split)
            },
        ] {
            assert!(AttentionLaunch::new(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arguments_come_in_parameter_order() {
        #[derive(Default)]
        struct Names(Vec<String>);
        impl ArgSink<&str> for Names {
            fn arg(&mut self, a: &str) {
                self.0.push(a.to_string());
            }
        }
        impl ArgSink<&i32> for Names {
            fn arg(&mut self, a: &i32) {
                self.0.push(a.to_string());
            }
        }
        impl ArgSink<&f32> for Names {
            fn arg(&mut self, a: &f32) {
                self.0.push(a.to_string());
            }
        }
        let l = AttentionLaunch::new(&AttentionShape {
            tokens: 1,
            num_heads: 8,
            kv_heads: 2,
            head_dim: 64,
            block_size: 16,
            max_blocks: 5,
            split: SplitPlan {
                part_size: 512,
                max_parts: 1,
                ..Default::default()
            },
            scale: 0.5,
            window: Some(4096),
            softcap: Some(50.0),
        })
        .unwrap();
        let mut n = Names::default();
        let step = StepBufs {
            row_seq: "row_seq",
            q_start: "q_start",
            q_len: "q_len",
            context_len: "context_len",
            block_tables: "block_tables",
            part_start: "part_start",
            split_rows: "split_rows",
        };
        l.args(&mut n, "out", "acc", "ml", "q", "k", "v", step);
        assert_eq!(
            n.0.join(" "),
            "out acc ml q k v row_seq q_start q_len context_len block_tables part_start \
             5 8 2 16 512 0.5 4096 50"
        );
        let mut n = Names::default();
        l.reduce_args(&mut n, "out", "acc", "ml", step);
        assert_eq!(
            n.0.join(" "),
            "out acc ml split_rows part_start row_seq context_len 8 64 512 4096"
        );
        let mut n = Names::default();
        l.prefill_args(&mut n, "out", "q", "k", "v", step);
        assert_eq!(
            n.0.join(" "),
            "out q k v q_start q_len context_len block_tables 0 5 8 2 16 0.5 4096 50"
        );
        // Phi-3's rope: 96 of 128 dimensions rotated, cos/sin scaled, pairs split in halves.
        let rope = Rope::partial(
            128,
            96,
            1.25,
            10_000.0,
            &crate::ops::RopeScaling::None,
            RopeStyle::Neox,
        );
        let r = RopeLaunch::new(3, 8, &rope);
        assert_eq!((r.dims.grid, r.dims.block), ((3, 1, 1), (512, 1, 1)));
        let mut n = Names::default();
        r.args(&mut n, "x", "out", "positions", "inv_freq");
        assert_eq!(n.0.join(" "), "x out positions inv_freq 8 128 96 0 1.25");
    }
}

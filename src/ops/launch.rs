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

/// Keys per attention partition: a row with a longer context is split across thread
/// blocks (flash-decoding) and merged by a second kernel.
pub const PARTITION_SIZE: usize = 512;

/// Head sizes the attention kernel is instantiated for.
pub const HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// Most query heads per KV head one attention thread block handles (`GMAX` in the kernel).
const GMAX: usize = 8;
/// Warps per attention thread block (`NWARPS` in the kernel).
const NWARPS: u32 = 4;
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

/// `wick_rope_{bf16,f16}`: rotary embeddings of `tokens` rows of `heads` heads.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeLaunch {
    pub dims: Dims,
    heads: i32,
    head_dim: i32,
    interleaved: i32,
}

impl RopeLaunch {
    pub fn new(tokens: usize, heads: usize, head_dim: usize, interleaved: bool) -> Self {
        Self {
            dims: Dims {
                grid: (tokens as u32, 1, 1),
                block: ((heads * (head_dim / 2)).min(512) as u32, 1, 1),
            },
            heads: heads as i32,
            head_dim: head_dim as i32,
            interleaved: interleaved as i32,
        }
    }

    /// The kernel for element type `suffix` (`bf16` or `f16`).
    pub fn kernel(suffix: &str) -> String {
        format!("wick_rope_{suffix}")
    }

    pub fn args<'s, S, X, O, P, F>(&'s self, s: &mut S, x: X, out: O, positions: P, inv_freq: F)
    where
        S: ArgSink<X> + ArgSink<O> + ArgSink<P> + ArgSink<F> + ArgSink<&'s i32>,
    {
        s.arg(x);
        s.arg(out);
        s.arg(positions);
        s.arg(inv_freq);
        s.arg(&self.heads);
        s.arg(&self.head_dim);
        s.arg(&self.interleaved);
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
    /// Longest context of any row: sets the number of partitions.
    pub max_context: usize,
    pub scale: f32,
}

/// One step's metadata arrays as the attention kernel takes them (see `kv::step_meta`).
#[derive(Debug, Clone, Copy)]
pub struct StepBufs<B> {
    pub row_seq: B,
    pub q_start: B,
    pub q_len: B,
    pub context_len: B,
    pub block_tables: B,
}

/// `wick_paged_attention_*` and, when a context spans several partitions,
/// `wick_reduce_partitions_*`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionLaunch {
    /// Partitions of the longest context (1: no reduction launch).
    pub parts: usize,
    pub attention: Dims,
    /// The reduction's launch, when `parts > 1`.
    pub reduce: Option<Dims>,
    head_dim: usize,
    max_blocks: i32,
    num_heads: i32,
    kv_heads: i32,
    block_size: i32,
    part_size: i32,
    scale: f32,
    head_dim_i32: i32,
    parts_i32: i32,
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
        let parts = s.max_context.div_ceil(PARTITION_SIZE).max(1);
        if parts > 65535 {
            return Err(format!(
                "a context of {} tokens is beyond the attention kernel's grid",
                s.max_context
            ));
        }
        let subgroups = (s.num_heads / s.kv_heads).div_ceil(GMAX);
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
            reduce: (parts > 1).then_some(Dims {
                grid: (s.tokens as u32, s.num_heads as u32, 1),
                block: (s.head_dim as u32, 1, 1),
            }),
            head_dim: s.head_dim,
            max_blocks: s.max_blocks as i32,
            num_heads: s.num_heads as i32,
            kv_heads: s.kv_heads as i32,
            block_size: s.block_size as i32,
            part_size: PARTITION_SIZE as i32,
            scale: s.scale,
            head_dim_i32: s.head_dim as i32,
            parts_i32: parts as i32,
        })
    }

    /// f32 elements of the partial-result buffers `(part_acc, part_ml)`; a single
    /// partition writes neither (one-element placeholders).
    pub fn part_lens(&self, tokens: usize) -> (usize, usize) {
        if self.parts > 1 {
            let n = tokens * self.num_heads as usize * self.parts;
            (n * self.head_dim, n * 2)
        } else {
            (1, 1)
        }
    }

    pub fn kernel(&self, suffix: &str) -> String {
        format!("wick_paged_attention_{suffix}_d{}", self.head_dim)
    }

    pub fn reduce_kernel(suffix: &str) -> String {
        format!("wick_reduce_partitions_{suffix}")
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
        s.arg(&self.max_blocks);
        s.arg(&self.num_heads);
        s.arg(&self.kv_heads);
        s.arg(&self.block_size);
        s.arg(&self.part_size);
        s.arg(&self.scale);
    }

    pub fn reduce_args<'s, S, O, P>(&'s self, s: &mut S, out: O, part_acc: P, part_ml: P)
    where
        S: ArgSink<O> + ArgSink<P> + ArgSink<&'s i32>,
    {
        s.arg(out);
        s.arg(part_acc);
        s.arg(part_ml);
        s.arg(&self.num_heads);
        s.arg(&self.head_dim_i32);
        s.arg(&self.parts_i32);
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
    pub _pad: u32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_partitions_and_subgroups() {
        let shape = AttentionShape {
            tokens: 3,
            num_heads: 32,
            kv_heads: 2,
            head_dim: 128,
            block_size: 16,
            max_blocks: 90,
            max_context: 1300,
            scale: 0.1,
        };
        let l = AttentionLaunch::new(&shape).unwrap();
        assert_eq!(l.parts, 3);
        // 16 query heads per KV head: two subgroups of GMAX.
        assert_eq!(l.attention.grid, (3, 4, 3));
        assert_eq!(l.attention.block, (128, 1, 1));
        assert_eq!(l.reduce.unwrap().grid, (3, 32, 1));
        assert_eq!(l.part_lens(3), (3 * 32 * 3 * 128, 3 * 32 * 3 * 2));
        let short = AttentionLaunch::new(&AttentionShape {
            max_context: 512,
            ..shape
        })
        .unwrap();
        assert_eq!(
            (short.parts, short.reduce, short.part_lens(3)),
            (1, None, (1, 1))
        );
        for bad in [
            AttentionShape {
                head_dim: 96,
                ..shape
            },
            AttentionShape {
                kv_heads: 3,
                ..shape
            },
            AttentionShape {
                max_context: 65536 * PARTITION_SIZE,
                ..shape
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
            max_context: 80,
            scale: 0.5,
        })
        .unwrap();
        let mut n = Names::default();
        let step = StepBufs {
            row_seq: "row_seq",
            q_start: "q_start",
            q_len: "q_len",
            context_len: "context_len",
            block_tables: "block_tables",
        };
        l.args(&mut n, "out", "acc", "ml", "q", "k", "v", step);
        assert_eq!(
            n.0.join(" "),
            "out acc ml q k v row_seq q_start q_len context_len block_tables 5 8 2 16 512 0.5"
        );
    }
}

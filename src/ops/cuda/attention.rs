//! Paged attention on the device (`kernels/attention.cu`: `wick_paged_attention_*` for
//! decode rows and, for split ones, `wick_reduce_partitions_*`; `wick_prefill_attention_*`
//! on tensor cores for prompt rows), as a candle custom op: the step's batch
//! ([`AttnMeta`]) and the split rows' partials ([`AttnScratch`]).

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{
    backend::BackendStorage, CpuStorage, CudaStorage, CustomOp1, Error, Layout, Result, Shape,
    Tensor,
};

use super::buffers::{alloc_like, raw_view, suffix, Out16};
use super::{config, Args, Kernels};
use crate::ops::launch::{
    scratch_lens, AttentionLaunch, AttentionShape, AttentionStage, SplitPlan, StepBufs,
};

impl Kernels {
    /// Paged attention of every query row (`q`: `[tokens, heads * head_dim]`) over one
    /// layer's cache; returns `[tokens, heads * head_dim]` in q's dtype. Split rows keep
    /// their partials in `scratch`, which must hold the plan's partitions.
    pub fn paged_attention(
        &self,
        q: &Tensor,
        k_cache: &CudaSlice<u16>,
        v_cache: &CudaSlice<u16>,
        meta: &AttnMeta<'_>,
        scratch: &mut AttnScratch,
    ) -> Result<Tensor> {
        let op = AttentionOp {
            k: self,
            k_cache,
            v_cache,
            meta,
            scratch: std::cell::RefCell::new(scratch),
        };
        // The kernel loads up to 16 bytes at once: q must start 16-byte aligned.
        let q = q.contiguous()?;
        let q = if q.layout().start_offset() % 8 == 0 {
            q
        } else {
            // A fresh buffer (an identity op's output starts at offset 0).
            q.affine(1.0, 0.0)?
        };
        q.apply_op1_no_bwd(&op)
    }
}

/// The partial results of split attention rows: allocated once, with the cache, for
/// `parts` partitions (`ops::launch::plan_splits` keeps every step within them), so no
/// layer allocates scratch.
pub struct AttnScratch {
    acc: CudaSlice<f32>,
    ml: CudaSlice<f32>,
    parts: usize,
}

impl AttnScratch {
    pub fn new(dev: &CudaDevice, parts: usize, num_heads: usize, head_dim: usize) -> Result<Self> {
        let (acc, ml) = scratch_lens(parts, num_heads, head_dim);
        Ok(Self {
            acc: alloc_like(dev, acc)?,
            ml: alloc_like(dev, ml)?,
            parts,
        })
    }

    /// Partitions it holds.
    pub fn parts(&self) -> usize {
        self.parts
    }
}

/// One step's batch as the attention kernel reads it, uploaded once per step and shared
/// by every layer.
pub struct AttnMeta<'a> {
    /// Sequence index of every query row.
    pub row_seq: CudaView<'a, u32>,
    /// Per sequence: first query row, query rows, context length after the step.
    pub q_start: CudaView<'a, u32>,
    pub q_len: CudaView<'a, u32>,
    pub context_len: CudaView<'a, u32>,
    /// `[seqs, max_blocks]` block tables, padded.
    pub block_tables: CudaView<'a, u32>,
    pub max_blocks: usize,
    /// Per row: its first scratch partition or `launch::NOT_SPLIT`; the split rows.
    pub part_start: CudaView<'a, u32>,
    pub split_rows: CudaView<'a, u32>,
    /// How the rows are split.
    pub split: SplitPlan,
    pub num_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
    /// The layer's sliding window and attention logit soft-cap (see
    /// `launch::AttentionShape`).
    pub window: Option<usize>,
    pub softcap: Option<f32>,
}

struct AttentionOp<'a> {
    k: &'a Kernels,
    k_cache: &'a CudaSlice<u16>,
    v_cache: &'a CudaSlice<u16>,
    meta: &'a AttnMeta<'a>,
    scratch: std::cell::RefCell<&'a mut AttnScratch>,
}

impl CustomOp1 for AttentionOp<'_> {
    fn name(&self) -> &'static str {
        "wick-paged-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(Error::Msg(
            "wick-paged-attention runs on CUDA; the CPU path uses ops::paged_attention".into(),
        ))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let m = self.meta;
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let row = m.num_heads * m.head_dim;
        let tokens = self.meta.row_seq.len();
        if n != tokens * row {
            return Err(Error::Msg(format!(
                "paged attention: q has {n} elements, expected {tokens} x {} x {}",
                m.num_heads, m.head_dim
            )));
        }
        let launch = AttentionLaunch::new(&AttentionShape {
            tokens,
            num_heads: m.num_heads,
            kv_heads: m.kv_heads,
            head_dim: m.head_dim,
            block_size: m.block_size,
            max_blocks: m.max_blocks,
            split: m.split,
            scale: m.scale,
            window: m.window,
            softcap: m.softcap,
        })
        .map_err(Error::Msg)?;
        let sfx = suffix(s.dtype())?;
        let mut out = Out16::new(&dev, s.dtype(), n)?;
        if tokens == 0 {
            return Ok((out.into_storage(&dev), l.shape().clone()));
        }
        let mut scratch = self.scratch.borrow_mut();
        if m.split.total_parts > scratch.parts {
            return Err(Error::Msg(format!(
                "paged attention: {} partitions planned, the scratch holds {}",
                m.split.total_parts, scratch.parts
            )));
        }
        let AttnScratch {
            acc: part_acc,
            ml: part_ml,
            ..
        } = &mut **scratch;
        let q = raw_view(s, l)?;
        let step = StepBufs {
            row_seq: &m.row_seq,
            q_start: &m.q_start,
            q_len: &m.q_len,
            context_len: &m.context_len,
            block_tables: &m.block_tables,
            part_start: &m.part_start,
            split_rows: &m.split_rows,
        };
        for (stage, name, dims) in launch.stages(sfx) {
            let f = self.k.func(&name)?;
            let stream = self.k.stream();
            let mut b = stream.launch_builder(&f);
            let (q, kc, vc) = (&q, self.k_cache, self.v_cache);
            match stage {
                AttentionStage::Decode => {
                    let (acc, ml) = (&mut *part_acc, &mut *part_ml);
                    launch.args(&mut Args(&mut b), &mut out, acc, ml, q, kc, vc, step);
                }
                AttentionStage::Prefill => {
                    launch.prefill_args(&mut Args(&mut b), &mut out, q, kc, vc, step);
                }
                AttentionStage::Reduce => {
                    let (acc, ml) = (&*part_acc, &*part_ml);
                    launch.reduce_args(&mut Args(&mut b), &mut out, acc, ml, step);
                }
            }
            // SAFETY: `stages` pairs each kernel with its own argument list, pushed in
            // parameter order above; block tables hold blocks of this cache for every
            // position below each row's context length, and the scratch holds the plan's
            // partitions (checked above).
            unsafe { b.launch(config(dims)) }.w()?;
        }
        Ok((out.into_storage(&dev), l.shape().clone()))
    }
}

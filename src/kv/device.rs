//! The paged KV cache in GPU memory (`cuda` feature), and the GPU [`AttentionBackend`]:
//! rope, cache writes and paged attention by wick's kernels (`kernels/*.cu`, loaded once
//! here), on 16-bit q/k/v.
//!
//! Same blocks, slots and block tables as the host cache; the storage is one K and one V
//! buffer per layer in the model's 16-bit dtype, laid out
//! `[num_blocks][num_kv_heads][block_size][head_dim]` for both (a key is `head_dim`
//! contiguous elements, which one warp reads in one coalesced load). The step's batch
//! (token ids, positions, slots, per-row sequence, per-sequence query ranges, context
//! lengths and padded block tables, attention's row splits, the rows whose logits are
//! wanted) is packed into one host vector, reused between steps, and uploaded in one copy
//! per step: every kernel and the model's embedding read views of it.
//!
//! Attention follows the host cache (`kv::cache`): each layer's sliding window and the
//! attention logit soft-cap go to the attention kernels, the rope's partial rotary and
//! attention factor to the rope kernel, and the layers with a window rotate by the local
//! rope where the model has one (Gemma 3); the softmax scale is `1 / sqrt(head_dim)` on
//! both (a model with another scale, Gemma's `query_pre_attn_scalar`, scales its queries).

use anyhow::{bail, ensure, Result};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::CudaDevice;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Storage, Tensor};

use super::step_meta::{pack_step, Packed};
use super::{scratch_bytes, scratch_parts, CacheLayout};
use crate::model::{AttentionBackend, ForwardBatch, StepInputs};
use crate::ops::cuda::{AttnMeta, AttnScratch, Kernels};
use crate::ops::Rope;

struct DeviceLayer {
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
}

pub struct DeviceKvCache {
    layout: CacheLayout,
    dtype: DType,
    layers: Vec<DeviceLayer>,
    kernels: Kernels,
    host: Vec<u32>,
    /// This step's upload (a u32 tensor on the device) and where each array sits in it.
    upload: Option<Tensor>,
    packed: Option<Packed>,
    num_heads: usize,
    scale: f32,
    /// The model's rope and its frequencies (uploaded once).
    rope: (Rope, CudaSlice<f32>),
    /// The rope of the layers with a window of their own where it is not the model's
    /// (Gemma 3's local base), and its frequencies.
    local_rope: Option<(Rope, CudaSlice<f32>)>,
    /// Each layer's sliding window (`None` past the list: the whole context).
    layer_windows: Vec<Option<usize>>,
    /// Attention logit soft-capping (Gemma 2), if any.
    softcap: Option<f32>,
    /// Split attention rows' partials, for every layer in turn.
    scratch: AttnScratch,
}

impl std::fmt::Debug for DeviceKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKvCache")
            .field("layout", &self.layout)
            .field("dtype", &self.dtype)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl DeviceKvCache {
    /// Allocates a zeroed cache of `dtype` (bf16 or f16) for `num_layers` layers of a
    /// model with `num_heads` query heads and rotary embedding `rope`.
    pub fn new(
        dev: &CudaDevice,
        num_layers: usize,
        layout: CacheLayout,
        dtype: DType,
        num_heads: usize,
        rope: &Rope,
    ) -> Result<Self> {
        ensure!(
            matches!(dtype, DType::BF16 | DType::F16),
            "the GPU KV cache holds bf16 or f16, not {dtype:?}"
        );
        ensure!(
            crate::ops::cuda::HEAD_DIMS.contains(&layout.head_dim),
            "the CUDA attention kernel supports head sizes {:?}, not {}",
            crate::ops::cuda::HEAD_DIMS,
            layout.head_dim
        );
        let kernels = Kernels::new(dev)?;
        let mut layers = Vec::with_capacity(num_layers);
        for _ in 0..num_layers {
            layers.push(DeviceLayer {
                k: dev.alloc_zeros::<u16>(layout.layer_len())?,
                v: dev.alloc_zeros::<u16>(layout.layer_len())?,
            });
        }
        Ok(Self {
            layout,
            dtype,
            layers,
            kernels,
            host: Vec::new(),
            upload: None,
            packed: None,
            num_heads,
            scale: 1.0 / (layout.head_dim as f32).sqrt(),
            rope: (rope.clone(), dev.clone_htod(rope.inv_freq())?),
            local_rope: None,
            layer_windows: Vec::new(),
            softcap: None,
            scratch: AttnScratch::new(dev, scratch_parts(&layout), num_heads, layout.head_dim)?,
        })
    }

    /// Each layer's sliding window (`windows[layer]`) and the attention logit soft-cap, as
    /// `KvCache::with_layer_attention` takes them.
    pub fn with_layer_attention(
        mut self,
        windows: Vec<Option<usize>>,
        softcap: Option<f32>,
    ) -> Self {
        self.layer_windows = windows;
        self.softcap = softcap;
        self
    }

    /// Rotates the queries and keys of the layers with a window by `rope` rather than by
    /// the model's (Gemma 3's local rope base), as `KvCache::with_local_rope`; `None`:
    /// every layer by the model's.
    pub fn with_local_rope(mut self, rope: Option<Rope>) -> Result<Self> {
        self.local_rope = match rope {
            Some(r) => {
                let (model, _) = &self.rope;
                ensure!(
                    r.head_dim() == model.head_dim() && r.rot_dim() == model.rot_dim(),
                    "the local rope rotates {} of {} dimensions, the model's {} of {}",
                    r.rot_dim(),
                    r.head_dim(),
                    model.rot_dim(),
                    model.head_dim()
                );
                let inv_freq = self.kernels.device().clone_htod(r.inv_freq())?;
                Some((r, inv_freq))
            }
            None => None,
        };
        Ok(self)
    }

    pub fn layout(&self) -> &CacheLayout {
        &self.layout
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Bytes of the K/V storage and the attention scratch.
    pub fn size_in_bytes(&self) -> usize {
        self.layers.len() * 2 * self.layout.layer_len() * 2
            + scratch_bytes(&self.layout, self.num_heads)
    }

    /// Copies the K/V of every layer from block `src` to block `dst`.
    pub fn copy_block(&mut self, src: usize, dst: usize) -> Result<()> {
        let l = self.layout;
        ensure!(
            src < l.num_blocks && dst < l.num_blocks && src != dst,
            "copy_block({src}, {dst}) outside 0..{}",
            l.num_blocks
        );
        let len = l.num_kv_heads * l.block_size * l.head_dim;
        let (s, d) = (l.block_offset(src, 0), l.block_offset(dst, 0));
        for layer in &mut self.layers {
            self.kernels.copy_range(&mut layer.k, s, d, len)?;
            self.kernels.copy_range(&mut layer.v, s, d, len)?;
        }
        Ok(())
    }

    /// Checks the step's batch and uploads it in one copy; returns the views of it the
    /// model reads (token ids, logits rows).
    pub fn begin_step(&mut self, batch: &ForwardBatch<'_>) -> Result<StepInputs> {
        let packed = pack_step(&self.layout, batch, self.scratch.parts(), &mut self.host)?;
        let dev = self.kernels.device();
        let storage = CudaStorage::wrap_cuda_slice(self.kernels.upload(&self.host)?, dev.clone());
        let upload = Tensor::from_storage(
            Storage::Cuda(storage),
            self.host.len(),
            BackpropOp::none(),
            false,
        );
        let view = |r: std::ops::Range<usize>| upload.narrow(0, r.start, r.len());
        let inputs = StepInputs {
            token_ids: view(packed.token_ids())?,
            logits_rows: view(packed.logits_rows())?,
        };
        self.upload = Some(upload);
        self.packed = Some(packed);
        Ok(inputs)
    }

    /// Rotates `q` and `k` at the step's positions, writes the new tokens' K/V
    /// (`[tokens, kv_heads * head_dim]`) into `layer` and attends every query row (`q`:
    /// `[tokens, heads * head_dim]`). All three must be in the cache's dtype.
    pub fn attend(&mut self, layer: usize, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let Some(p) = self.packed else {
            bail!("attend before begin_step");
        };
        let l = self.layout;
        let Some(cache) = self.layers.get_mut(layer) else {
            bail!("layer {layer} is outside the cache");
        };
        let Some(upload) = &self.upload else {
            bail!("attend before begin_step");
        };
        let (storage, _) = upload.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            bail!("the step's upload is not on the GPU");
        };
        let upload = storage.as_cuda_slice::<u32>()?;
        let view = |r: std::ops::Range<usize>| -> CudaView<'_, u32> { upload.slice(r) };
        let positions = view(p.positions());
        let kern = &self.kernels;
        let (window, local) = super::layer_attention(&self.layer_windows, None, layer);
        let (rope, inv_freq) = match &self.local_rope {
            Some(local_rope) if local => local_rope,
            _ => &self.rope,
        };
        let q = kern.rope(q, &positions, rope, inv_freq, self.num_heads)?;
        let k = kern.rope(k, &positions, rope, inv_freq, l.num_kv_heads)?;
        let v = v.contiguous()?;
        kern.write_kv(
            &k,
            &v,
            &mut cache.k,
            &mut cache.v,
            &view(p.slots()),
            l.num_kv_heads,
            l.head_dim,
            l.block_size,
        )?;
        let meta = AttnMeta {
            row_seq: view(p.row_seq()),
            q_start: view(p.q_start()),
            q_len: view(p.q_len()),
            context_len: view(p.context_len()),
            block_tables: view(p.block_tables()),
            max_blocks: p.max_blocks,
            part_start: view(p.part_start()),
            split_rows: view(p.split_rows()),
            split: p.split,
            num_heads: self.num_heads,
            kv_heads: l.num_kv_heads,
            head_dim: l.head_dim,
            block_size: l.block_size,
            scale: self.scale,
            window,
            softcap: self.softcap,
        };
        Ok(kern.paged_attention(&q, &cache.k, &cache.v, &meta, &mut self.scratch)?)
    }
}

impl AttentionBackend for DeviceKvCache {
    fn dtype(&self) -> DType {
        self.dtype
    }

    /// The rope was taken at construction; the step goes up in one copy.
    fn begin_step(&mut self, batch: &ForwardBatch<'_>, _rope: &Rope) -> Result<StepInputs> {
        DeviceKvCache::begin_step(self, batch)
    }

    fn attend(
        &mut self,
        layer: usize,
        _batch: &ForwardBatch<'_>,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        DeviceKvCache::attend(self, layer, q, k, v)
    }
}

//! wick's own CUDA kernels (`kernels/*.cu`, compiled by `build.rs` to a fatbin per file:
//! SASS for sm_80 and sm_90, PTX for compute_90), launched on candle's device and stream so
//! they order with candle's own kernels and cuBLAS calls.
//!
//! Element types: bf16 and f16 (the KV cache's dtype). Tensors must be contiguous.
//!
//! Grid and block sizes, partition counts and argument lists come from `ops::launch`,
//! which the CPU emulator (`ops::emu`) launches the same kernels with.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs,
    LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{
    backend::BackendStorage, CpuStorage, CudaStorage, CustomOp1, DType, Error, Layout, Result,
    Shape, Storage, Tensor,
};
use half::{bf16, f16};

use super::launch::{
    AdjustLaunch, ArgSink, AttentionLaunch, AttentionShape, ChooseRowsLaunch, CopyRangeLaunch,
    Dims, RopeLaunch, StepBufs, WriteKvLaunch,
};
pub use super::launch::{HEAD_DIMS, PARTITION_SIZE};

mod fatbin {
    include!(concat!(env!("OUT_DIR"), "/kernels_fatbin.rs"));
}

/// The oldest compute capability the kernels are built for (sm_80: A100).
pub const MIN_COMPUTE_CAP: u32 = 80;

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(Error::Msg(format!(
            "wick's CUDA kernels take bf16 or f16, not {other:?}"
        ))),
    }
}

/// wick's kernel modules, loaded into one device's context.
#[derive(Clone)]
pub struct Kernels {
    dev: CudaDevice,
    /// The device's compute capability, e.g. 90.
    cap: u32,
    /// `(kernel file, its module)`.
    modules: Vec<(&'static str, Arc<CudaModule>)>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("cap", &self.cap).finish()
    }
}

impl Kernels {
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        let ctx = dev.cuda_stream().context().clone();
        let (major, minor) = ctx.compute_capability().w()?;
        let cap = (major * 10 + minor) as u32;
        if cap < MIN_COMPUTE_CAP {
            return Err(Error::Msg(format!(
                "this GPU has compute capability {major}.{minor}; wick's CUDA kernels need 8.0 \
                 or newer (A100, L4, H100, ...)"
            )));
        }
        let mut modules = Vec::with_capacity(fatbin::FATBIN.len());
        for &(file, image) in fatbin::FATBIN {
            let module = ctx
                .load_module(Ptx::from_binary(image.to_vec()))
                .map_err(|e| {
                    let why = if e.0 == sys::CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU {
                        "the fatbin has no code this GPU runs".to_string()
                    } else {
                        e.error_string()
                            .map(|s| s.to_string_lossy().into_owned())
                            .unwrap_or_else(|_| format!("{e:?}"))
                    };
                    Error::Msg(format!(
                        "cannot load kernels/{file}.cu (sm_80, sm_90 and compute_90) on this \
                         GPU of compute capability {major}.{minor}: {why}"
                    ))
                })?;
            modules.push((file, module));
        }
        Ok(Self {
            dev: dev.clone(),
            cap,
            modules,
        })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    fn func(&self, name: &str) -> Result<CudaFunction> {
        self.func_in("attention", name)
    }

    /// The stream candle's own kernels run on (kernels launched on it order with them).
    fn stream(&self) -> Arc<CudaStream> {
        self.dev.cuda_stream()
    }

    /// Kernel `name` of `kernels/<file>.cu`.
    fn func_in(&self, file: &str, name: &str) -> Result<CudaFunction> {
        let (_, module) = self
            .modules
            .iter()
            .find(|(f, _)| *f == file)
            .ok_or_else(|| Error::Msg(format!("kernels/{file}.cu is not built in")))?;
        module.load_function(name).w()
    }

    /// Samples rows `rows` of f32 logits `[n, vocab]` on the device, row `rows[i]` with
    /// `params[i]` by `sampling::gumbel`'s rule; writes each row's token and logprob into
    /// `ids` and `lps` (resized to `rows.len()`). Only those reach the host.
    pub fn sample(
        &self,
        logits: &Tensor,
        rows: &[u32],
        params: &[crate::sampling::gumbel::RowSample],
        ids: &mut Vec<u32>,
        lps: &mut Vec<f32>,
    ) -> Result<()> {
        if rows.len() != params.len() {
            return Err(Error::Msg("sample: one parameter set per row".into()));
        }
        if rows.is_empty() {
            ids.clear();
            lps.clear();
            return Ok(());
        }
        let idx = Tensor::from_slice(rows, rows.len(), logits.device())?;
        let picked = logits.index_select(&idx, 0)?;
        self.choose_rows(&picked, ChooseRowsLaunch::SAMPLE, Some(params), ids, lps)
    }

    /// Greedy choice per row of f32 logits `[rows, vocab]`: the argmax token (lowest id
    /// among ties) and its log-probability under the plain softmax, into `ids` and `lps`
    /// (resized to `rows`). Only those reach the host.
    pub fn greedy(&self, logits: &Tensor, ids: &mut Vec<u32>, lps: &mut Vec<f32>) -> Result<()> {
        self.choose_rows(logits, ChooseRowsLaunch::GREEDY, None, ids, lps)
    }

    /// Runs a per-row choice kernel of kernels/sampling.cu (one 1024-thread block per row
    /// of f32 logits `[rows, vocab]`, then `params` when given, writing a token and a
    /// logprob per row) and brings the tokens and logprobs to the host.
    fn choose_rows(
        &self,
        logits: &Tensor,
        kernel: &str,
        params: Option<&[crate::sampling::gumbel::RowSample]>,
        ids_out: &mut Vec<u32>,
        lps_out: &mut Vec<f32>,
    ) -> Result<()> {
        let (rows, vocab) = logits.dims2()?;
        ids_out.clear();
        lps_out.clear();
        if rows == 0 {
            return Ok(());
        }
        let logits = logits.to_dtype(DType::F32)?.contiguous()?;
        let (st, l) = logits.storage_and_layout();
        let Storage::Cuda(st) = &*st else {
            return Err(Error::Msg(format!("{kernel}: logits are not on the GPU")));
        };
        let x = st
            .as_cuda_slice::<f32>()?
            .slice(l.start_offset()..l.start_offset() + rows * vocab);
        let params = params.map(|p| self.dev.clone_htod(p)).transpose()?;
        let mut ids = alloc_like::<u32>(&self.dev, rows)?;
        let mut lps = alloc_like::<f32>(&self.dev, rows)?;
        let f = self.func_in("sampling", kernel)?;
        let launch = ChooseRowsLaunch::new(rows, vocab);
        {
            let stream = self.stream();
            let mut b = stream.launch_builder(&f);
            launch.args(&mut Args(&mut b), &x, params.as_ref(), &mut ids, &mut lps);
            // SAFETY: matches wick_greedy_f32 / wick_sample_f32 (RowSample is repr(C), as
            // the kernel's struct); one output per row.
            unsafe { b.launch(config(launch.dims)) }.w()?;
        }
        ids_out.resize(rows, 0);
        lps_out.resize(rows, 0.0);
        self.dev.memcpy_dtoh(&ids, ids_out)?;
        self.dev.memcpy_dtoh(&lps, lps_out)?;
        Ok(())
    }

    /// Copies f32 `t` (any shape, contiguous) into `out` (resized to fit).
    pub fn download(&self, t: &Tensor, out: &mut Vec<f32>) -> Result<()> {
        let n = t.elem_count();
        out.clear();
        if n == 0 {
            return Ok(());
        }
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        let (st, l) = t.storage_and_layout();
        let Storage::Cuda(st) = &*st else {
            return Err(Error::Msg("download: the tensor is not on the GPU".into()));
        };
        let x = st
            .as_cuda_slice::<f32>()?
            .slice(l.start_offset()..l.start_offset() + n);
        out.resize(n, 0.0);
        self.dev.memcpy_dtoh(&x, out)?;
        Ok(())
    }

    /// Applies a step's logit_bias and penalties (`sampling::LogitAdjust::packed`: `4 * n`
    /// words) to f32 logits `[rows, vocab]` in place.
    pub fn adjust(&self, logits: &Tensor, packed: &[u32]) -> Result<()> {
        let n = packed.len() / 4;
        if n == 0 {
            return Ok(());
        }
        let (rows, vocab) = logits.dims2()?;
        if logits.dtype() != DType::F32 || !logits.is_contiguous() {
            return Err(Error::Msg("adjust: logits must be contiguous f32".into()));
        }
        if let Some(&bad) = packed[..n].iter().find(|&&i| i as usize >= rows * vocab) {
            return Err(Error::Msg(format!(
                "adjust: logit {bad} is outside the {rows} x {vocab} logits"
            )));
        }
        let (st, l) = logits.storage_and_layout();
        let Storage::Cuda(st) = &*st else {
            return Err(Error::Msg("adjust: logits are not on the GPU".into()));
        };
        let x = st
            .as_cuda_slice::<f32>()?
            .slice(l.start_offset()..l.start_offset() + rows * vocab);
        let packed = self.dev.clone_htod(packed)?;
        let f = self.func_in("sampling", AdjustLaunch::KERNEL)?;
        let launch = AdjustLaunch::new(n);
        let stream = self.stream();
        let mut b = stream.launch_builder(&f);
        launch.args(&mut Args(&mut b), &x, &packed);
        // SAFETY: matches wick_adjust_f32; every index was checked against the logits'
        // size, and entries name distinct logits (LogitAdjust), so threads do not race.
        unsafe { b.launch(config(launch.dims)) }.w()?;
        Ok(())
    }

    /// Rotary embeddings of `x` (`[tokens, heads * head_dim]`, bf16/f16), one position per
    /// token; `inv_freq` has `head_dim / 2` entries.
    pub fn rope(
        &self,
        x: &Tensor,
        positions: &CudaView<'_, u32>,
        inv_freq: &CudaSlice<f32>,
        heads: usize,
        interleaved: bool,
    ) -> Result<Tensor> {
        let op = RopeOp {
            k: self,
            positions,
            inv_freq,
            heads,
            interleaved,
        };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }

    /// Writes the new tokens' K and V (`[tokens, kv_heads * head_dim]`) into their slots of
    /// one layer's cache (`[blocks][kv_heads][block_size][head_dim]`, raw 16-bit storage).
    #[allow(clippy::too_many_arguments)]
    pub fn write_kv(
        &self,
        k: &Tensor,
        v: &Tensor,
        k_cache: &mut CudaSlice<u16>,
        v_cache: &mut CudaSlice<u16>,
        slots: &CudaView<'_, u32>,
        kv_heads: usize,
        head_dim: usize,
        block_size: usize,
    ) -> Result<()> {
        let tokens = k.dim(0)?;
        if tokens == 0 {
            return Ok(());
        }
        if k.dtype() != v.dtype()
            || k.dims() != v.dims()
            || k.elem_count() != tokens * kv_heads * head_dim
        {
            return Err(Error::Msg(format!(
                "write_kv: k {:?} {:?} and v {:?} {:?} do not match [{tokens}, {kv_heads} x {head_dim}]",
                k.dims(),
                k.dtype(),
                v.dims(),
                v.dtype()
            )));
        }
        let f = self.func(&WriteKvLaunch::kernel(suffix(k.dtype())?))?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (Storage::Cuda(ks), Storage::Cuda(vs)) = (&*ks, &*vs) else {
            return Err(Error::Msg("write_kv: tensors are not on the GPU".into()));
        };
        let launch = WriteKvLaunch::new(tokens, kv_heads, head_dim, block_size);
        let stream = self.stream();
        let (kv, vv) = (raw_view(ks, kl)?, raw_view(vs, vl)?);
        let mut b = stream.launch_builder(&f);
        launch.args(&mut Args(&mut b), &kv, &vv, k_cache, v_cache, slots);
        // SAFETY: the argument list matches wick_write_kv_*; every slot was reserved in the
        // cache by the block pool, so writes stay inside the buffers.
        unsafe { b.launch(config(launch.dims)) }.w()?;
        Ok(())
    }

    /// Paged attention of every query row (`q`: `[tokens, heads * head_dim]`) over one
    /// layer's cache; returns `[tokens, heads * head_dim]` in q's dtype.
    pub fn paged_attention(
        &self,
        q: &Tensor,
        k_cache: &CudaSlice<u16>,
        v_cache: &CudaSlice<u16>,
        meta: &AttnMeta<'_>,
    ) -> Result<Tensor> {
        let op = AttentionOp {
            k: self,
            k_cache,
            v_cache,
            meta,
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

    /// Copies `len` 16-bit elements within `buf` from offset `src` to `dst`.
    pub fn copy_range(
        &self,
        buf: &mut CudaSlice<u16>,
        src: usize,
        dst: usize,
        len: usize,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let f = self.func(CopyRangeLaunch::KERNEL)?;
        let launch = CopyRangeLaunch::new(src, dst, len);
        let stream = self.stream();
        let mut b = stream.launch_builder(&f);
        launch.args(&mut Args(&mut b), buf);
        // SAFETY: matches wick_copy_range; the caller passes in-bounds, disjoint ranges.
        unsafe { b.launch(config(launch.dims)) }.w()?;
        Ok(())
    }
}

// SAFETY: RowSample is repr(C) plain data (f32, u32 and u64 fields), laid out as the
// kernel's struct.
unsafe impl DeviceRepr for crate::sampling::gumbel::RowSample {}

/// cudarc's launch builder as the [`ArgSink`] that `ops::launch` pushes arguments into.
struct Args<'x, 'a>(&'x mut LaunchArgs<'a>);

impl<'a, A> ArgSink<A> for Args<'_, 'a>
where
    LaunchArgs<'a>: PushKernelArg<A>,
{
    fn arg(&mut self, a: A) {
        self.0.arg(a);
    }
}

fn config(d: Dims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: d.grid,
        block_dim: d.block,
        shared_mem_bytes: 0,
    }
}

/// A tensor's storage as a typeless 16-bit view starting at its layout's offset.
fn raw_view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, u16>> {
    let off = l.start_offset();
    let n = l.shape().elem_count();
    let view = match s.dtype() {
        DType::BF16 => {
            let sl = s.as_cuda_slice::<bf16>()?;
            // SAFETY: bf16 and u16 have the same size and alignment; kernels reinterpret.
            unsafe { sl.transmute::<u16>(sl.len()) }
        }
        DType::F16 => {
            let sl = s.as_cuda_slice::<f16>()?;
            // SAFETY: as above, for f16.
            unsafe { sl.transmute::<u16>(sl.len()) }
        }
        other => {
            return Err(Error::Msg(format!(
                "wick's CUDA kernels take bf16 or f16, not {other:?}"
            )))
        }
    };
    let view = view.ok_or_else(|| Error::Msg("cannot view tensor storage as 16-bit".into()))?;
    Ok(view.slice(off..off + n))
}

fn alloc_like<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel the buffer is allocated for.
    unsafe { dev.alloc::<T>(n) }
}

/// A kernel's 16-bit output buffer, typed by the tensor dtype it becomes.
enum Out16 {
    Bf16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
}

impl Out16 {
    fn new(dev: &CudaDevice, dtype: DType, n: usize) -> Result<Self> {
        match dtype {
            DType::BF16 => Ok(Out16::Bf16(alloc_like(dev, n)?)),
            DType::F16 => Ok(Out16::F16(alloc_like(dev, n)?)),
            other => Err(Error::Msg(format!(
                "wick's CUDA kernels take bf16 or f16, not {other:?}"
            ))),
        }
    }

    fn into_storage(self, dev: &CudaDevice) -> CudaStorage {
        match self {
            Out16::Bf16(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
            Out16::F16(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
        }
    }
}

// SAFETY: pushes the wrapped slice exactly as cudarc pushes a `&mut CudaSlice` (a
// kernel's output buffer).
unsafe impl<'a, 'b: 'a> PushKernelArg<&'b mut Out16> for LaunchArgs<'a> {
    #[inline(always)]
    fn arg(&mut self, arg: &'b mut Out16) -> &mut Self {
        match arg {
            Out16::Bf16(s) => self.arg(s),
            Out16::F16(s) => self.arg(s),
        }
    }
}

struct RopeOp<'a> {
    k: &'a Kernels,
    positions: &'a CudaView<'a, u32>,
    inv_freq: &'a CudaSlice<f32>,
    heads: usize,
    interleaved: bool,
}

impl CustomOp1 for RopeOp<'_> {
    fn name(&self) -> &'static str {
        "wick-rope"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(Error::Msg(
            "wick-rope runs on CUDA; the CPU path uses ops::rope".into(),
        ))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let half = self.inv_freq.len();
        let head_dim = 2 * half;
        let row = self.heads * head_dim;
        if row == 0 || !n.is_multiple_of(row) || n / row != self.positions.len() {
            return Err(Error::Msg(format!(
                "rope: {n} elements are not {} tokens of {} heads x {head_dim}",
                self.positions.len(),
                self.heads
            )));
        }
        let tokens = n / row;
        let mut out = Out16::new(&dev, s.dtype(), n)?;
        if tokens > 0 {
            let f = self.k.func(&RopeLaunch::kernel(suffix(s.dtype())?))?;
            let x = raw_view(s, l)?;
            let launch = RopeLaunch::new(tokens, self.heads, head_dim, self.interleaved);
            let stream = self.k.stream();
            let mut b = stream.launch_builder(&f);
            launch.args(
                &mut Args(&mut b),
                &x,
                &mut out,
                self.positions,
                self.inv_freq,
            );
            // SAFETY: matches wick_rope_*; sizes checked above.
            unsafe { b.launch(config(launch.dims)) }.w()?;
        }
        Ok((out.into_storage(&dev), l.shape().clone()))
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
    /// Longest context of any row: sets the number of partitions.
    pub max_context: usize,
    pub num_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub scale: f32,
}

struct AttentionOp<'a> {
    k: &'a Kernels,
    k_cache: &'a CudaSlice<u16>,
    v_cache: &'a CudaSlice<u16>,
    meta: &'a AttnMeta<'a>,
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
            max_context: m.max_context,
            scale: m.scale,
        })
        .map_err(Error::Msg)?;
        let sfx = suffix(s.dtype())?;
        let mut out = Out16::new(&dev, s.dtype(), n)?;
        if tokens == 0 {
            return Ok((out.into_storage(&dev), l.shape().clone()));
        }
        let (acc_len, ml_len) = launch.part_lens(tokens);
        let mut part_acc = alloc_like::<f32>(&dev, acc_len)?;
        let mut part_ml = alloc_like::<f32>(&dev, ml_len)?;
        let q = raw_view(s, l)?;
        let f = self.k.func(&launch.kernel(sfx))?;
        {
            let stream = self.k.stream();
            let mut b = stream.launch_builder(&f);
            let step = StepBufs {
                row_seq: &m.row_seq,
                q_start: &m.q_start,
                q_len: &m.q_len,
                context_len: &m.context_len,
                block_tables: &m.block_tables,
            };
            launch.args(
                &mut Args(&mut b),
                &mut out,
                &mut part_acc,
                &mut part_ml,
                &q,
                self.k_cache,
                self.v_cache,
                step,
            );
            // SAFETY: matches wick_paged_attention_*; block tables hold blocks of this
            // cache for every position below each row's context length.
            unsafe { b.launch(config(launch.attention)) }.w()?;
        }
        if let Some(dims) = launch.reduce {
            let f = self.k.func(&AttentionLaunch::reduce_kernel(sfx))?;
            let stream = self.k.stream();
            let mut b = stream.launch_builder(&f);
            launch.reduce_args(&mut Args(&mut b), &mut out, &part_acc, &part_ml);
            // SAFETY: matches wick_reduce_partitions_*; buffers sized above.
            unsafe { b.launch(config(dims)) }.w()?;
        }
        Ok((out.into_storage(&dev), l.shape().clone()))
    }
}

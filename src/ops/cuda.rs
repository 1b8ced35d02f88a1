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
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{
    backend::BackendStorage, CpuStorage, CudaStorage, CustomOp1, DType, Error, Layout, Result,
    Shape, Storage, Tensor,
};
use half::{bf16, f16};

use super::launch::{
    scratch_lens, AdjustLaunch, ArgSink, AttentionLaunch, AttentionShape, ChooseRowsLaunch,
    CopyRangeLaunch, Dims, RopeLaunch, SplitPlan, StepBufs, WriteKvLaunch,
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
    /// Host-device copies made through these kernels (and their clones).
    transfers: std::sync::Arc<TransferCounts>,
}

/// Host-to-device and device-to-host copies, counted (tests and `gpu-check` read them:
/// a step uploads its batch once and brings device-chosen tokens back once).
#[derive(Debug, Default)]
struct TransferCounts {
    htod: std::sync::atomic::AtomicU64,
    dtoh: std::sync::atomic::AtomicU64,
}

/// A snapshot of [`Kernels::transfers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfers {
    pub htod: u64,
    pub dtoh: u64,
}

/// Tokens chosen on the device for one step: every row's argmax and logprob, and the
/// sampled rows' draws, brought back in one copy into page-locked host memory (both
/// buffers are kept and only grow).
#[derive(Default)]
pub struct Choices {
    buf: Option<CudaSlice<u32>>,
    host: Option<PinnedHostSlice<u32>>,
    pub greedy_ids: Vec<u32>,
    pub greedy_lps: Vec<f32>,
    /// In the order of the `params` given to [`Kernels::choose`].
    pub sample_ids: Vec<u32>,
    pub sample_lps: Vec<f32>,
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
            transfers: Default::default(),
        })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Copies made so far (shared by clones).
    pub fn transfers(&self) -> Transfers {
        use std::sync::atomic::Ordering::Relaxed;
        Transfers {
            htod: self.transfers.htod.load(Relaxed),
            dtoh: self.transfers.dtoh.load(Relaxed),
        }
    }

    fn count(&self, htod: u64, dtoh: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.transfers.htod.fetch_add(htod, Relaxed);
        self.transfers.dtoh.fetch_add(dtoh, Relaxed);
    }

    /// Uploads `host` in one copy (counted).
    pub fn upload<T: DeviceRepr + 'static>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.count(1, 0);
        self.dev.clone_htod(host)
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

    /// Chooses tokens from f32 logits `[rows, vocab]`: every row's argmax and its
    /// logprob under the plain softmax (lowest id among ties), and a draw by
    /// `sampling::gumbel`'s rule from row `params[i].row` with `params[i]`. One upload of
    /// the parameters (when any) and one blocking copy back, into page-locked memory.
    pub fn choose(
        &self,
        logits: &Tensor,
        params: &[crate::ops::launch::RowSample],
        out: &mut Choices,
    ) -> Result<()> {
        let (rows, vocab) = logits.dims2()?;
        out.greedy_ids.clear();
        out.greedy_lps.clear();
        out.sample_ids.clear();
        out.sample_lps.clear();
        if rows == 0 {
            return Ok(());
        }
        if let Some(p) = params.iter().find(|p| p.row as usize >= rows) {
            return Err(Error::Msg(format!(
                "sample: row {} is outside the {rows} rows of logits",
                p.row
            )));
        }
        let logits = logits.to_dtype(DType::F32)?.contiguous()?;
        let (st, l) = logits.storage_and_layout();
        let Storage::Cuda(st) = &*st else {
            return Err(Error::Msg("choose: logits are not on the GPU".into()));
        };
        let x = st
            .as_cuda_slice::<f32>()?
            .slice(l.start_offset()..l.start_offset() + rows * vocab);
        // [greedy ids | greedy logprobs | sampled ids | sampled logprobs], the logprobs as
        // f32 bits.
        let s = params.len();
        let words = 2 * rows + 2 * s;
        if out.buf.as_ref().is_none_or(|b| b.len() < words) {
            out.buf = Some(alloc_like::<u32>(&self.dev, words.next_power_of_two())?);
        }
        if out.host.as_ref().is_none_or(|h| h.len() < words) {
            let ctx = self.stream().context().clone();
            // SAFETY: every word read back is first written by the copy below. Default
            // flags: write-combined memory is slow for the host to read.
            out.host = Some(
                unsafe { ctx.alloc_pinned_with_flags::<u32>(words.next_power_of_two(), 0) }.w()?,
            );
        }
        let (Some(buf), Some(host)) = (out.buf.as_mut(), out.host.as_mut()) else {
            return Err(Error::Msg("choose: buffers missing".into()));
        };
        let params_dev = if s > 0 {
            Some(self.upload(params)?)
        } else {
            None
        };
        let stream = self.stream();
        {
            let (mut greedy, mut sampled) = buf.split_at_mut(2 * rows);
            let (mut ids, mut lps) = greedy.split_at_mut(rows);
            let f = self.func_in("sampling", ChooseRowsLaunch::GREEDY)?;
            let launch = ChooseRowsLaunch::new(rows, vocab);
            let mut b = stream.launch_builder(&f);
            launch.args(
                &mut Args(&mut b),
                &x,
                None::<&CudaSlice<crate::ops::launch::RowSample>>,
                &mut ids,
                &mut lps,
            );
            // SAFETY: matches wick_greedy_f32 (`lps` is passed as the kernel's float*: four
            // bytes per row, read back as f32 bits); one output per row.
            unsafe { b.launch(config(launch.dims)) }.w()?;
            if let Some(p) = &params_dev {
                let (mut ids, mut rest) = sampled.split_at_mut(s);
                let mut lps = rest.slice_mut(..s);
                let f = self.func_in("sampling", ChooseRowsLaunch::SAMPLE)?;
                let launch = ChooseRowsLaunch::new(s, vocab);
                let mut b = stream.launch_builder(&f);
                launch.args(&mut Args(&mut b), &x, Some(p), &mut ids, &mut lps);
                // SAFETY: matches wick_sample_f32 (RowSample is repr(C), as the kernel's
                // struct; every row index was checked above); one output per draw.
                unsafe { b.launch(config(launch.dims)) }.w()?;
            }
        }
        let n = words;
        self.count(0, 1);
        stream.memcpy_dtoh(&buf.slice(..n), host).w()?;
        let h = host.as_slice().w()?;
        out.greedy_ids.extend_from_slice(&h[..rows]);
        out.greedy_lps
            .extend(h[rows..2 * rows].iter().map(|&b| f32::from_bits(b)));
        out.sample_ids.extend_from_slice(&h[2 * rows..2 * rows + s]);
        out.sample_lps
            .extend(h[2 * rows + s..n].iter().map(|&b| f32::from_bits(b)));
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
        self.count(0, 1);
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
        let packed = self.upload(packed)?;
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
unsafe impl DeviceRepr for crate::ops::launch::RowSample {}

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
        let f = self.k.func(&launch.kernel(sfx))?;
        {
            let stream = self.k.stream();
            let mut b = stream.launch_builder(&f);
            launch.args(
                &mut Args(&mut b),
                &mut out,
                &mut *part_acc,
                &mut *part_ml,
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
            launch.reduce_args(&mut Args(&mut b), &mut out, &*part_acc, &*part_ml, step);
            // SAFETY: matches wick_reduce_partitions_*; buffers sized above.
            unsafe { b.launch(config(dims)) }.w()?;
        }
        Ok((out.into_storage(&dev), l.shape().clone()))
    }
}

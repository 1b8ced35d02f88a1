//! wick's own CUDA kernels (`kernels/*.cu`, compiled by `build.rs` to a fatbin per file:
//! SASS for sm_80 and sm_90, PTX for compute_90), launched on candle's device and stream so
//! they order with candle's own kernels and cuBLAS calls.
//!
//! Element types: bf16 and f16 (the KV cache's dtype). Tensors must be contiguous.
//!
//! Grid and block sizes, partition counts and argument lists come from `ops::launch`,
//! which the CPU emulator (`ops::emu`) launches the same kernels with.
//!
//! [`Kernels`] loads the kernel modules and counts host-device copies; the launches live
//! by concern: `sampling` (choosing tokens, logit adjustments), `rope`, `cache`
//! (KV cache writes and copies), `attention` (paged attention); `buffers` holds the
//! views and output buffers between candle's storage and the kernels.

mod attention;
mod buffers;
mod cache;
mod rope;
mod sampling;

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs,
    LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{DType, Error, Result, Storage, Tensor};

use super::launch::{ArgSink, Dims};
pub use super::launch::{HEAD_DIMS, PARTITION_SIZE};
pub use attention::{AttnMeta, AttnScratch};
pub use sampling::Choices;

mod fatbin {
    include!(concat!(env!("OUT_DIR"), "/kernels_fatbin.rs"));
}

/// The oldest compute capability the kernels are built for (sm_80: A100).
pub const MIN_COMPUTE_CAP: u32 = 80;

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

    /// Copies f32 `t` (any shape, contiguous) into `out` (resized to fit).
    pub fn download(&self, t: &Tensor, out: &mut Vec<f32>) -> Result<()> {
        let n = t.elem_count();
        out.clear();
        if n == 0 {
            return Ok(());
        }
        let t = t.to_dtype(DType::F32)?.contiguous()?;
        with_f32(&t, n, "download: the tensor is not on the GPU", |x| {
            out.resize(n, 0.0);
            self.count(0, 1);
            self.dev.memcpy_dtoh(&x, out)
        })
    }
}

/// Runs `f` on the first `n` elements of f32 tensor `t`'s GPU storage (from its layout's
/// offset), holding the storage for the call; `not_gpu` is the error when `t` is
/// elsewhere.
fn with_f32<R>(
    t: &Tensor,
    n: usize,
    not_gpu: &str,
    f: impl FnOnce(CudaView<'_, f32>) -> Result<R>,
) -> Result<R> {
    let (st, l) = t.storage_and_layout();
    let Storage::Cuda(st) = &*st else {
        return Err(Error::Msg(not_gpu.into()));
    };
    let x = st
        .as_cuda_slice::<f32>()?
        .slice(l.start_offset()..l.start_offset() + n);
    f(x)
}

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

//! Between candle's tensor storage and the kernels: the element types the kernels take,
//! a tensor's storage as a raw 16-bit view, and the 16-bit output buffers that become
//! tensors.

use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchArgs, PushKernelArg,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{backend::BackendStorage, CudaStorage, DType, Error, Layout, Result};
use half::{bf16, f16};

/// The kernel name suffix for elements of `dtype`.
pub(super) fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => Err(not_16bit(other)),
    }
}

fn not_16bit(dtype: DType) -> Error {
    Error::Msg(format!(
        "wick's CUDA kernels take bf16 or f16, not {dtype:?}"
    ))
}

/// A tensor's storage as a typeless 16-bit view starting at its layout's offset.
pub(super) fn raw_view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, u16>> {
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
        other => return Err(not_16bit(other)),
    };
    let view = view.ok_or_else(|| Error::Msg("cannot view tensor storage as 16-bit".into()))?;
    Ok(view.slice(off..off + n))
}

pub(super) fn alloc_like<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel the buffer is allocated for.
    unsafe { dev.alloc::<T>(n) }
}

/// A kernel's 16-bit output buffer, typed by the tensor dtype it becomes.
pub(super) enum Out16 {
    Bf16(CudaSlice<bf16>),
    F16(CudaSlice<f16>),
}

impl Out16 {
    pub(super) fn new(dev: &CudaDevice, dtype: DType, n: usize) -> Result<Self> {
        match dtype {
            DType::BF16 => Ok(Out16::Bf16(alloc_like(dev, n)?)),
            DType::F16 => Ok(Out16::F16(alloc_like(dev, n)?)),
            other => Err(not_16bit(other)),
        }
    }

    pub(super) fn into_storage(self, dev: &CudaDevice) -> CudaStorage {
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

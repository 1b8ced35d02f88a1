//! Writes into one layer's KV cache (`wick_write_kv_*`) and copies within it
//! (`wick_copy_range`), `kernels/attention.cu`.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::WrapErr;
use candle_core::{Error, Result, Storage, Tensor};

use super::buffers::{raw_view, suffix};
use super::{config, Args, Kernels};
use crate::ops::launch::{CopyRangeLaunch, WriteKvLaunch};

impl Kernels {
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

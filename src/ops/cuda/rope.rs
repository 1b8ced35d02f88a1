//! Rotary embeddings on the device (`wick_rope_*` in `kernels/attention.cu`), as a
//! candle custom op.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    backend::BackendStorage, CpuStorage, CudaStorage, CustomOp1, Error, Layout, Result, Shape,
    Tensor,
};

use super::buffers::{raw_view, suffix, Out16};
use super::{config, Args, Kernels};
use crate::ops::launch::RopeLaunch;

impl Kernels {
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

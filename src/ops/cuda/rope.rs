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
use crate::ops::Rope;

impl Kernels {
    /// Rotary embeddings of `x` (`[tokens, heads * head_dim]`, bf16/f16) by `rope` (its
    /// rotated dimensions, pair layout and scale), one position per token; `inv_freq` is
    /// `rope.inv_freq()` on the device.
    pub fn rope(
        &self,
        x: &Tensor,
        positions: &CudaView<'_, u32>,
        rope: &Rope,
        inv_freq: &CudaSlice<f32>,
        heads: usize,
    ) -> Result<Tensor> {
        let op = RopeOp {
            k: self,
            positions,
            rope,
            inv_freq,
            heads,
        };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }
}

struct RopeOp<'a> {
    k: &'a Kernels,
    positions: &'a CudaView<'a, u32>,
    rope: &'a Rope,
    inv_freq: &'a CudaSlice<f32>,
    heads: usize,
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
        let head_dim = self.rope.head_dim();
        if self.inv_freq.len() != self.rope.rot_dim() / 2 {
            return Err(Error::Msg(format!(
                "rope: {} inverse frequencies for {} rotated dimensions",
                self.inv_freq.len(),
                self.rope.rot_dim()
            )));
        }
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
            let launch = RopeLaunch::new(tokens, self.heads, self.rope);
            let stream = self.k.stream();
            let mut b = stream.launch_builder(&f);
            launch.args(
                &mut Args(&mut b),
                &x,
                &mut out,
                self.positions,
                self.inv_freq,
            );
            // SAFETY: matches wick_rope_*; sizes checked above (x and out hold `tokens`
            // rows of `heads` heads of `head_dim`, inv_freq `rot_dim / 2` values).
            unsafe { b.launch(config(launch.dims)) }.w()?;
        }
        Ok((out.into_storage(&dev), l.shape().clone()))
    }
}

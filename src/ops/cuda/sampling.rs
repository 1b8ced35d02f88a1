//! Choosing tokens on the device ([`Kernels::choose`]: every row's argmax, the sampled
//! rows' draws, brought back in one copy) and a step's logit adjustments
//! ([`Kernels::adjust`]: logit_bias and penalties), `kernels/sampling.cu`.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, PinnedHostSlice};
use candle_core::cuda_backend::WrapErr;
use candle_core::{DType, Error, Result, Tensor};

use super::buffers::alloc_like;
use super::{config, with_f32, Args, Kernels};
use crate::ops::launch::{AdjustLaunch, ChooseRowsLaunch, MaskLaunch};

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

impl Kernels {
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
        let not_gpu = "choose: logits are not on the GPU";
        with_f32(&logits, rows * vocab, not_gpu, |x| {
            self.choose_from(&x, rows, vocab, params, out)
        })
    }

    /// `choose` over logits `x` (`[rows, vocab]`, f32), the rows of `params` checked.
    fn choose_from(
        &self,
        x: &CudaView<'_, f32>,
        rows: usize,
        vocab: usize,
        params: &[crate::ops::launch::RowSample],
        out: &mut Choices,
    ) -> Result<()> {
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
                x,
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
                launch.args(&mut Args(&mut b), x, Some(p), &mut ids, &mut lps);
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
        let not_gpu = "adjust: logits are not on the GPU";
        with_f32(logits, rows * vocab, not_gpu, |x| {
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
        })
    }

    /// Applies grammar masks (`launch::pack_masks`: `n` rows, then their masks) to f32
    /// logits `[rows, vocab]` in place: disallowed tokens become -inf.
    pub fn mask(&self, logits: &Tensor, n: usize, packed: &[u32]) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (rows, vocab) = logits.dims2()?;
        if logits.dtype() != DType::F32 || !logits.is_contiguous() {
            return Err(Error::Msg("mask: logits must be contiguous f32".into()));
        }
        if packed.len() != n + n * vocab.div_ceil(32) {
            return Err(Error::Msg(
                "mask: packed masks do not match the vocabulary".into(),
            ));
        }
        if let Some(&bad) = packed[..n].iter().find(|&&r| r as usize >= rows) {
            return Err(Error::Msg(format!(
                "mask: row {bad} is outside the {rows} rows"
            )));
        }
        let not_gpu = "mask: logits are not on the GPU";
        with_f32(logits, rows * vocab, not_gpu, |x| {
            let packed = self.upload(packed)?;
            let f = self.func_in("sampling", MaskLaunch::KERNEL)?;
            let launch = MaskLaunch::new(vocab, n);
            let stream = self.stream();
            let mut b = stream.launch_builder(&f);
            launch.args(&mut Args(&mut b), &x, &packed);
            // SAFETY: matches wick_mask_f32; every row was checked against the logits and
            // the masks' length against the vocabulary; threads write distinct logits.
            unsafe { b.launch(config(launch.dims)) }.w()?;
            Ok(())
        })
    }
}

// SAFETY: RowSample is repr(C) plain data (f32, u32 and u64 fields), laid out as the
// kernel's struct.
unsafe impl DeviceRepr for crate::ops::launch::RowSample {}

//! Linear layers and embeddings over quantized (GGUF) or dense (safetensors) weights.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Storage, Tensor};

use crate::ops::qmatmul;
use crate::ops::qpacked::{self, Kind, PackedWeight};

#[derive(Debug, Clone)]
enum Weight {
    /// Candle's matmul (dense, or quantized types it runs well).
    Candle(QMatMul),
    /// A format with a packed form (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) on an
    /// AVX2 CPU, repacked in groups of 8 rows for wick's batched kernels.
    Packed(Arc<PackedWeight>),
    /// Q4_1 / Q8_0 on the CPU through wick's own kernels.
    Own {
        tensor: Arc<QTensor>,
        n: usize,
        k: usize,
    },
}

/// `y = x W^T (+ b)` with `W` stored `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let packable = match (
            packed_kind(weight.dtype()),
            weight.device(),
            weight.shape().dims(),
        ) {
            (Some(kind), Device::Cpu, &[n, k]) if crate::ops::simd::has_avx2() => {
                Some((kind, n, k))
            }
            _ => None,
        };
        if let Some((kind, n, k)) = packable {
            let bytes = weight.data()?;
            // Shapes that do not pack (a K-quant's width not a multiple of 256 cannot
            // occur in a valid file; rows not a multiple of 8 can) take the paths below.
            if let Some(p) = PackedWeight::from_bytes(kind, &bytes, n, k) {
                note_kernel(weight.dtype(), qpacked::Isa::best().name_for(kind));
                return Ok(Self {
                    weight: Weight::Packed(Arc::new(p)),
                    bias,
                });
            }
        }
        let dtype = weight.dtype();
        let weight = match (weight.dtype(), weight.device(), weight.shape().dims()) {
            (GgmlDType::Q4_1 | GgmlDType::Q8_0, Device::Cpu, &[n, k])
                if k.is_multiple_of(qmatmul::QK) && n >= 4 =>
            {
                Weight::Own {
                    tensor: weight,
                    n,
                    k,
                }
            }
            _ => Weight::Candle(QMatMul::from_arc(weight)?),
        };
        note_kernel(
            dtype,
            match &weight {
                Weight::Own { .. } => "wick-rows",
                _ => "candle",
            },
        );
        Ok(Self { weight, bias })
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Candle(QMatMul::Tensor(weight)),
            bias,
        }
    }

    /// Several layers applied to the same input (q/k/v, gate/up). When all run on wick's
    /// own kernels with one weight type, the input is quantized once and the products
    /// share one dispatch to the thread pool.
    pub fn forward_many(layers: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(y) = Self::forward_packed(layers, x)? {
            return Ok(y);
        }
        let own: Option<Vec<(&Arc<QTensor>, usize, usize)>> = layers
            .iter()
            .map(|l| match &l.weight {
                Weight::Own { tensor, n, k } => Some((tensor, *n, *k)),
                _ => None,
            })
            .collect();
        let Some(own) = own.filter(|o| {
            o.iter()
                .all(|(t, _, k)| t.dtype() == o[0].0.dtype() && *k == o[0].2)
        }) else {
            return layers.iter().map(|l| l.forward(x)).collect();
        };
        let k = own[0].2;
        let ns: Vec<usize> = own.iter().map(|(_, n, _)| *n).collect();
        let bytes: Vec<_> = own
            .iter()
            .map(|(t, _, _)| t.data())
            .collect::<Result<_>>()?;
        let weights: Vec<(&[u8], usize)> =
            bytes.iter().zip(&ns).map(|(b, &n)| (&b[..], n)).collect();
        Self::run_on_cpu(layers, x, k, &ns, |xs, m, outs| match own[0].0.dtype() {
            GgmlDType::Q4_1 => own_matmul::<qmatmul::BlockQ4_1>(xs, m, k, &weights, outs),
            _ => own_matmul::<qmatmul::BlockQ8_0>(xs, m, k, &weights, outs),
        })
    }

    /// The shared frame of wick's CPU matmuls: checks that `x` has `k` columns, hands its
    /// rows as f32 and one `[m, n]` output per layer to `run`, which writes every element
    /// (so they are not zeroed first: tens of MiB per prefill step), then adds the biases.
    fn run_on_cpu(
        layers: &[&Linear],
        x: &Tensor,
        k: usize,
        ns: &[usize],
        run: impl FnOnce(&[f32], usize, &mut [&mut [MaybeUninit<f32>]]) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let (m, xk) = x.dims2()?;
        if xk != k {
            candle_core::bail!("matmul input has {xk} columns, weight expects {k}");
        }
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let xs = match &*storage {
            Storage::Cpu(cpu) => &cpu.as_slice::<f32>()?[layout.start_offset()..][..m * k],
            _ => candle_core::bail!("CPU quantized matmul given a non-CPU tensor"),
        };
        let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| Vec::with_capacity(m * n)).collect();
        let mut out_refs: Vec<&mut [MaybeUninit<f32>]> = outs
            .iter_mut()
            .zip(ns)
            .map(|(o, &n)| &mut o.spare_capacity_mut()[..m * n])
            .collect();
        run(xs, m, &mut out_refs)?;
        for (o, &n) in outs.iter_mut().zip(ns) {
            // SAFETY: `run` returned Ok, and the kernels write every element of their
            // outputs.
            unsafe { o.set_len(m * n) };
        }
        outs.into_iter()
            .zip(ns)
            .zip(layers)
            .map(|((o, &n), l)| {
                let y = Tensor::from_vec(o, (m, n), &Device::Cpu)?;
                match &l.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            })
            .collect()
    }

    /// `x`: `[rows, in]` -> `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::Candle(w) => {
                let y = w.forward(x)?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Weight::Own { .. } | Weight::Packed(_) => Linear::forward_many(&[self], x)?
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("matmul produced no output".into())),
        }
    }

    /// `forward_many` when every layer is packed (of any formats) with one input width;
    /// `None` otherwise.
    fn forward_packed(layers: &[&Linear], x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        let w: Option<Vec<&PackedWeight>> = layers
            .iter()
            .map(|l| match &l.weight {
                Weight::Packed(w) => Some(&**w),
                _ => None,
            })
            .collect();
        let Some(w) = w else {
            return Ok(None);
        };
        let Some(k) = w.first().map(|w| w.cols()) else {
            return Ok(Some(Vec::new()));
        };
        if w.iter().any(|w| w.cols() != k) {
            // Mixed widths: each layer on its own.
            return Ok(None);
        }
        let ns: Vec<usize> = w.iter().map(|w| w.rows()).collect();
        Self::run_on_cpu(layers, x, k, &ns, |xs, m, outs| {
            qpacked::matmul_many_uninit(xs, m, &w, outs);
            Ok(())
        })
        .map(Some)
    }

    /// The CPU kernel set this layer runs on: `amx`, `avx512vnni`, `avx2` or `scalar` for
    /// wick's own kernels, `candle` otherwise.
    pub fn kernel(&self) -> &'static str {
        match &self.weight {
            Weight::Packed(p) => qpacked::Isa::best().name_for(p.kind()),
            Weight::Own { .. } => "wick-rows",
            Weight::Candle(_) => "candle",
        }
    }
}

/// Quantized layers loaded in this process, by GGUF type and the kernel that runs them.
static KERNELS: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn note_kernel(dtype: GgmlDType, kernel: &'static str) {
    let mut k = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    *k.entry((format!("{dtype:?}"), kernel)).or_default() += 1;
}

/// Which kernels the quantized layers loaded so far run on, e.g.
/// `Q4K: avx512vnni x60, Q6K: avx512vnni x31, F32: candle x1`.
pub fn kernel_report() -> String {
    let k = KERNELS.lock().unwrap_or_else(|e| e.into_inner());
    k.iter()
        .map(|((dtype, kernel), n)| format!("{dtype}: {kernel} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The packed form of a GGUF type, if it has one.
fn packed_kind(dtype: GgmlDType) -> Option<Kind> {
    Some(match dtype {
        GgmlDType::Q4_0 => Kind::Q4_0,
        GgmlDType::Q4_1 => Kind::Q4_1,
        GgmlDType::Q5_0 => Kind::Q5_0,
        GgmlDType::Q5_1 => Kind::Q5_1,
        GgmlDType::Q8_0 => Kind::Q8_0,
        GgmlDType::Q4K => Kind::Q4K,
        GgmlDType::Q5K => Kind::Q5K,
        GgmlDType::Q6K => Kind::Q6K,
        _ => return None,
    })
}

/// Runs wick's kernel for weight blocks of type `T` over raw GGUF bytes.
fn own_matmul<T: qmatmul::QType>(
    xs: &[f32],
    m: usize,
    k: usize,
    weights: &[(&[u8], usize)],
    outs: &mut [&mut [MaybeUninit<f32>]],
) -> Result<()> {
    let ws = weights
        .iter()
        .map(|&(bytes, n)| {
            qmatmul::blocks::<T>(bytes)
                .map(|w| (w, n))
                .ok_or_else(|| candle_core::Error::Msg("misaligned quantized weight data".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    qmatmul::matmul_many_uninit(xs, m, k, &ws, outs);
    Ok(())
}

/// Token embedding table.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Rows are dequantized on lookup (the table may be shared with the output head).
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    /// The dtype of looked-up rows (quantized tables dequantize to f32).
    pub fn dtype(&self) -> DType {
        match self {
            Embedding::Quantized(_) => DType::F32,
            Embedding::Dense(t) => t.dtype(),
        }
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Quantized(q) => q.embedding(ids),
            Embedding::Dense(t) => t.index_select(ids, 0),
        }
    }
}

//! Linear layers and embeddings over quantized (GGUF) or dense (safetensors) weights.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Storage, Tensor};

use crate::ops::qmatmul;

#[derive(Debug, Clone)]
enum Weight {
    /// Candle's matmul (dense, or quantized types it runs well).
    Candle(QMatMul),
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
        Ok(Self { weight, bias })
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Candle(QMatMul::Tensor(weight)),
            bias,
        }
    }

    /// `x`: `[rows, in]` -> `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Own { tensor, n, k } => {
                let (m, xk) = x.dims2()?;
                if xk != *k {
                    candle_core::bail!("matmul input has {xk} columns, weight expects {k}");
                }
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                let (storage, layout) = x.storage_and_layout();
                let xs = match &*storage {
                    Storage::Cpu(cpu) => &cpu.as_slice::<f32>()?[layout.start_offset()..][..m * k],
                    _ => candle_core::bail!("CPU quantized matmul given a non-CPU tensor"),
                };
                let bytes = tensor.data()?;
                let bad = || candle_core::Error::Msg("misaligned quantized weight data".into());
                let mut out = vec![0f32; m * n];
                match tensor.dtype() {
                    GgmlDType::Q4_1 => {
                        let w = qmatmul::blocks::<qmatmul::BlockQ4_1>(&bytes).ok_or_else(bad)?;
                        qmatmul::matmul(xs, m, *k, w, *n, &mut out)
                    }
                    _ => {
                        let w = qmatmul::blocks::<qmatmul::BlockQ8_0>(&bytes).ok_or_else(bad)?;
                        qmatmul::matmul(xs, m, *k, w, *n, &mut out)
                    }
                }
                Tensor::from_vec(out, (m, *n), &Device::Cpu)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Token embedding table.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Rows are dequantized on lookup (the table may be shared with the output head).
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Quantized(q) => q.embedding(ids),
            Embedding::Dense(t) => t.index_select(ids, 0),
        }
    }
}

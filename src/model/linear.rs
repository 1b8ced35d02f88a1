//! Linear layers and embeddings over quantized (GGUF) or dense (safetensors) weights.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Module, Result, Tensor};

/// `y = x W^T (+ b)` with `W` stored `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: candle_core::quantized::QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn quantized(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight: candle_core::quantized::QMatMul::from_arc(weight)?,
            bias,
        })
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: candle_core::quantized::QMatMul::Tensor(weight),
            bias,
        }
    }

    /// `x`: `[rows, in]` -> `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
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

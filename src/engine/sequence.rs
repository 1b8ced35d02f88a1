//! A sequence: its tokens (prompt, then generated) and where they live in the KV cache.

use crate::kv::block_pool::PoolError;
use crate::kv::{BlockPool, BlockTable};

#[derive(Debug, Clone)]
pub struct Sequence {
    /// Prompt tokens followed by generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub block_table: BlockTable,
}

impl Sequence {
    pub fn new(prompt: Vec<u32>) -> Self {
        Self {
            prompt_len: prompt.len(),
            tokens: prompt,
            num_computed: 0,
            block_table: BlockTable::new(),
        }
    }

    /// Tokens not yet run through the model.
    pub fn num_pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// Makes room in its block table, from `pool`, for the next `n` tokens to compute.
    /// On failure nothing changes.
    pub fn reserve(
        &mut self,
        n: usize,
        block_size: usize,
        pool: &mut BlockPool,
    ) -> Result<(), PoolError> {
        let have = self.block_table.num_tokens();
        let want = self.num_computed + n;
        if want > have {
            self.block_table.grow(want - have, block_size, pool)?;
        }
        Ok(())
    }

    /// Returns its blocks to `pool`; nothing of it is computed any more.
    pub fn release(&mut self, pool: &mut BlockPool) -> Result<(), PoolError> {
        self.num_computed = 0;
        self.block_table.release(pool)
    }
}

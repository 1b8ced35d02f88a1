//! A sequence's block table: which pool blocks hold its tokens, in order.

use super::block_pool::{BlockId, BlockPool, PoolError};

#[derive(Debug, Clone, Default)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    /// Tokens whose K/V have a slot reserved in `blocks`.
    num_tokens: usize,
}

impl BlockTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Blocks needed beyond the current ones to hold `new_tokens` more tokens.
    pub fn blocks_needed(&self, new_tokens: usize, block_size: usize) -> usize {
        (self.num_tokens + new_tokens)
            .div_ceil(block_size)
            .saturating_sub(self.blocks.len())
    }

    /// Reserves slots for `new_tokens` more tokens, taking blocks from the pool as needed.
    /// On failure nothing changes.
    pub fn grow(
        &mut self,
        new_tokens: usize,
        block_size: usize,
        pool: &mut BlockPool,
    ) -> Result<(), PoolError> {
        let needed = self.blocks_needed(new_tokens, block_size);
        pool.allocate_into(needed, &mut self.blocks)?;
        self.num_tokens += new_tokens;
        Ok(())
    }

    /// Appends a full block taken from the prefix cache (the caller holds a reference on
    /// it already). The table must end on a block boundary.
    pub fn push_full(&mut self, block: BlockId, block_size: usize) {
        debug_assert_eq!(self.num_tokens, self.blocks.len() * block_size);
        self.blocks.push(block);
        self.num_tokens += block_size;
    }

    /// A copy of this table holding the same blocks (each gains a holder).
    pub fn fork(&self, pool: &mut BlockPool) -> Result<Self, PoolError> {
        for (i, &b) in self.blocks.iter().enumerate() {
            if let Err(e) = pool.retain(b) {
                // Undo what was taken.
                self.blocks[..i].iter().for_each(|&b| {
                    let _ = pool.release(b);
                });
                return Err(e);
            }
        }
        Ok(self.clone())
    }

    /// Swaps the last block for `block` (copy-on-write of a shared partial block),
    /// returning the old one, whose holder the caller must release.
    pub fn replace_last(&mut self, block: BlockId) -> Option<BlockId> {
        let last = self.blocks.last_mut()?;
        Some(std::mem::replace(last, block))
    }

    /// Forgets reserved slots past the first `num_tokens` (blocks that become empty are
    /// returned to the pool).
    pub fn truncate(
        &mut self,
        num_tokens: usize,
        block_size: usize,
        pool: &mut BlockPool,
    ) -> Result<(), PoolError> {
        if num_tokens >= self.num_tokens {
            return Ok(());
        }
        let keep = num_tokens.div_ceil(block_size);
        let dropped: Vec<BlockId> = self.blocks.drain(keep..).rev().collect();
        self.num_tokens = num_tokens;
        pool.release_all(&dropped)
    }

    /// The cache slot (block * block_size + offset) of the token at `position`.
    pub fn slot(&self, position: usize, block_size: usize) -> Option<u32> {
        let block = *self.blocks.get(position / block_size)?;
        Some(block * block_size as u32 + (position % block_size) as u32)
    }

    /// Returns every block to the pool, last block first (so that, among cached blocks,
    /// a sequence's tail is evicted before its head).
    pub fn release(&mut self, pool: &mut BlockPool) -> Result<(), PoolError> {
        let blocks = std::mem::take(&mut self.blocks);
        self.num_tokens = 0;
        blocks.iter().rev().try_for_each(|&b| pool.release(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_block_by_block() {
        let mut pool = BlockPool::new(8);
        let mut table = BlockTable::new();
        table.grow(5, 4, &mut pool).unwrap();
        assert_eq!(table.blocks().len(), 2);
        assert_eq!(table.blocks_needed(3, 4), 0);
        assert_eq!(table.blocks_needed(4, 4), 1);
        table.grow(3, 4, &mut pool).unwrap();
        assert_eq!(table.blocks().len(), 2);
        let b1 = table.blocks()[1];
        assert_eq!(table.slot(5, 4), Some(b1 * 4 + 1));
        assert_eq!(table.slot(8, 4), None);
        assert!(table.grow(100, 4, &mut pool).is_err());
        assert_eq!(table.num_tokens(), 8);
        table.release(&mut pool).unwrap();
        assert_eq!(pool.num_free(), 8);
    }
}

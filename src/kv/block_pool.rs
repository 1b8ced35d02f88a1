//! A fixed pool of KV blocks with a free list and reference counts.
//!
//! A block's reference count is the number of block tables that hold it. A block with
//! count zero is on the free list. Sharing (prefix reuse, forked candidates) raises the
//! count; a sequence that finishes or is preempted releases each of its blocks once.

use std::collections::VecDeque;

/// Index of a block in the pool (and in the cache tensors).
pub type BlockId = u32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("KV cache is full: {wanted} blocks wanted, {free} free")]
    OutOfBlocks { wanted: usize, free: usize },
    #[error("block {0} is not allocated")]
    NotAllocated(BlockId),
    #[error("block {0} is out of range")]
    OutOfRange(BlockId),
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    free: VecDeque<BlockId>,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            free: (0..num_blocks as BlockId).collect(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free()
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts.get(block as usize).copied().unwrap_or(0)
    }

    /// Takes `n` free blocks (each with reference count 1), or none at all.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>, PoolError> {
        if n > self.free.len() {
            return Err(PoolError::OutOfBlocks {
                wanted: n,
                free: self.free.len(),
            });
        }
        let blocks: Vec<BlockId> = self.free.drain(..n).collect();
        for &b in &blocks {
            self.ref_counts[b as usize] = 1;
        }
        Ok(blocks)
    }

    /// Adds one holder to an allocated block.
    pub fn retain(&mut self, block: BlockId) -> Result<(), PoolError> {
        let rc = self
            .ref_counts
            .get_mut(block as usize)
            .ok_or(PoolError::OutOfRange(block))?;
        if *rc == 0 {
            return Err(PoolError::NotAllocated(block));
        }
        *rc += 1;
        Ok(())
    }

    /// Drops one holder; the block returns to the free list when none is left.
    pub fn release(&mut self, block: BlockId) -> Result<(), PoolError> {
        let rc = self
            .ref_counts
            .get_mut(block as usize)
            .ok_or(PoolError::OutOfRange(block))?;
        if *rc == 0 {
            return Err(PoolError::NotAllocated(block));
        }
        *rc -= 1;
        if *rc == 0 {
            self.free.push_back(block);
        }
        Ok(())
    }

    pub fn release_all(&mut self, blocks: &[BlockId]) -> Result<(), PoolError> {
        blocks.iter().try_for_each(|&b| self.release(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_cycle() {
        let mut pool = BlockPool::new(4);
        let a = pool.allocate(3).unwrap();
        assert_eq!(pool.num_free(), 1);
        assert_eq!(
            pool.allocate(2),
            Err(PoolError::OutOfBlocks { wanted: 2, free: 1 })
        );
        pool.retain(a[0]).unwrap();
        pool.release_all(&a).unwrap();
        assert_eq!(pool.num_free(), 3);
        assert_eq!(pool.ref_count(a[0]), 1);
        pool.release(a[0]).unwrap();
        assert_eq!(pool.num_free(), 4);
        assert_eq!(pool.release(a[0]), Err(PoolError::NotAllocated(a[0])));
        assert_eq!(pool.retain(99), Err(PoolError::OutOfRange(99)));
    }
}

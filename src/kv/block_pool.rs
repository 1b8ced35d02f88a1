//! A fixed pool of KV blocks with a free list, reference counts and a prefix cache.
//!
//! A block's reference count is the number of block tables that hold it. A block with
//! count zero is free. Sharing (prefix reuse, forked candidates) raises the count; a
//! sequence that finishes or is preempted releases each of its blocks once.
//!
//! Prefix cache: a full block whose K/V are computed can be registered under a hash that
//! chains its tokens with its parent block's hash (see [`block_hash`]). A registered
//! block keeps its contents when freed and stays findable until the allocator reuses it:
//! free blocks are handed out least recently freed first, so the cache evicts in LRU
//! order for free.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Index of a block in the pool (and in the cache tensors).
pub type BlockId = u32;

/// Identity of a full block's contents: its tokens and everything before them.
pub type BlockHash = u64;

/// The hash of a full block holding `tokens`, after the block whose hash is `parent`
/// (None for a sequence's first block).
pub fn block_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    // SipHash with fixed keys: stable within a process, which is all the cache needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

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
    /// Free blocks, least recently freed first. Entries are (block, generation); an entry
    /// is stale (skipped) when the block was taken back by a prefix hit since.
    free: VecDeque<(BlockId, u32)>,
    free_gen: Vec<u32>,
    num_free: usize,
    /// Registered hash of each block, if any.
    hashes: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            ref_counts: vec![0; num_blocks],
            free: (0..num_blocks as BlockId).map(|b| (b, 0)).collect(),
            free_gen: vec![0; num_blocks],
            num_free: num_blocks,
            hashes: vec![None; num_blocks],
            cached: HashMap::new(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks with no holder (including cached ones, which are evicted on demand).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Blocks held by at least one block table.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_free
    }

    /// Blocks registered in the prefix cache (held or free).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Free blocks that still hold a cached prefix.
    pub fn num_cached_free(&self) -> usize {
        self.cached
            .values()
            .filter(|&&b| self.ref_counts[b as usize] == 0)
            .count()
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts.get(block as usize).copied().unwrap_or(0)
    }

    /// Takes `n` free blocks (each with reference count 1), or none at all. Cached blocks
    /// among them lose their cache entry.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>, PoolError> {
        let mut blocks = Vec::with_capacity(n);
        self.allocate_into(n, &mut blocks)?;
        Ok(blocks)
    }

    /// As [`allocate`](Self::allocate), appending the blocks to `out` (no allocation when
    /// `out` has room). On failure `out` is unchanged.
    pub fn allocate_into(&mut self, n: usize, out: &mut Vec<BlockId>) -> Result<(), PoolError> {
        if n > self.num_free {
            return Err(PoolError::OutOfBlocks {
                wanted: n,
                free: self.num_free,
            });
        }
        let target = out.len() + n;
        while out.len() < target {
            let Some((b, gen)) = self.free.pop_front() else {
                break;
            };
            let i = b as usize;
            if self.ref_counts[i] != 0 || self.free_gen[i] != gen {
                continue; // stale entry
            }
            if let Some(h) = self.hashes[i].take() {
                self.cached.remove(&h);
            }
            self.ref_counts[i] = 1;
            self.num_free -= 1;
            out.push(b);
        }
        debug_assert_eq!(
            out.len(),
            target,
            "free count out of step with the free list"
        );
        Ok(())
    }

    /// Adds one holder to an allocated block.
    pub fn retain(&mut self, block: BlockId) -> Result<(), PoolError> {
        *self.holders(block)? += 1;
        Ok(())
    }

    /// The holder count of an allocated block.
    fn holders(&mut self, block: BlockId) -> Result<&mut u32, PoolError> {
        let rc = self
            .ref_counts
            .get_mut(block as usize)
            .ok_or(PoolError::OutOfRange(block))?;
        if *rc == 0 {
            return Err(PoolError::NotAllocated(block));
        }
        Ok(rc)
    }

    /// Drops one holder; the block becomes free when none is left (keeping its cached
    /// contents until it is reused).
    pub fn release(&mut self, block: BlockId) -> Result<(), PoolError> {
        let i = block as usize;
        let rc = self.holders(block)?;
        *rc -= 1;
        if *rc == 0 {
            self.free_gen[i] = self.free_gen[i].wrapping_add(1);
            self.free.push_back((block, self.free_gen[i]));
            self.num_free += 1;
            if self.free.len() > 2 * self.num_blocks() + 64 {
                self.compact_free_list();
            }
        }
        Ok(())
    }

    /// Drops stale free-list entries (left by prefix hits on free blocks).
    fn compact_free_list(&mut self) {
        let (rc, gen) = (&self.ref_counts, &self.free_gen);
        self.free
            .retain(|&(b, g)| rc[b as usize] == 0 && gen[b as usize] == g);
    }

    pub fn release_all(&mut self, blocks: &[BlockId]) -> Result<(), PoolError> {
        blocks.iter().try_for_each(|&b| self.release(b))
    }

    /// The cached block holding the contents `hash`, if any.
    pub fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Takes a holder on a cached block found by [`lookup`](Self::lookup), reviving it
    /// from the free list if nobody held it.
    pub fn acquire_cached(&mut self, block: BlockId) -> Result<(), PoolError> {
        let i = block as usize;
        let rc = self
            .ref_counts
            .get_mut(i)
            .ok_or(PoolError::OutOfRange(block))?;
        if *rc == 0 {
            // Its free-list entry goes stale: the generation moves on.
            self.free_gen[i] = self.free_gen[i].wrapping_add(1);
            self.num_free -= 1;
        }
        *rc += 1;
        Ok(())
    }

    /// Registers a held, fully computed block under `hash`. Returns false (and registers
    /// nothing) when another block already holds the same contents or this block already
    /// has a hash.
    pub fn register(&mut self, block: BlockId, hash: BlockHash) -> bool {
        let i = block as usize;
        if i >= self.hashes.len() || self.hashes[i].is_some() || self.ref_counts[i] == 0 {
            return false;
        }
        if self.cached.contains_key(&hash) {
            return false;
        }
        self.cached.insert(hash, block);
        self.hashes[i] = Some(hash);
        true
    }

    /// Drops every cached entry of free blocks (e.g. to measure without the cache).
    pub fn clear_cache(&mut self) {
        let rc = &self.ref_counts;
        let hashes = &mut self.hashes;
        self.cached.retain(|_, &mut b| {
            let keep = rc[b as usize] > 0;
            if !keep {
                hashes[b as usize] = None;
            }
            keep
        });
    }

    /// Checks that the reference counts equal the holders in `tables` (each a list of
    /// blocks one block table holds) and that the free count matches.
    pub fn check_ref_counts<'a>(
        &self,
        tables: impl IntoIterator<Item = &'a [BlockId]>,
    ) -> Result<(), String> {
        let mut counts = vec![0u32; self.num_blocks()];
        for table in tables {
            for &b in table {
                let c = counts
                    .get_mut(b as usize)
                    .ok_or_else(|| format!("block {b} out of range"))?;
                *c += 1;
            }
        }
        if let Some(b) = (0..counts.len()).find(|&b| counts[b] != self.ref_counts[b]) {
            return Err(format!(
                "block {b}: ref count {} but held by {} block tables",
                self.ref_counts[b], counts[b]
            ));
        }
        let free = self.ref_counts.iter().filter(|&&c| c == 0).count();
        if free != self.num_free {
            return Err(format!(
                "{free} blocks have no holder but the pool counts {} free",
                self.num_free
            ));
        }
        Ok(())
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

    #[test]
    fn cached_blocks_survive_release_and_are_evicted_lru() {
        let mut pool = BlockPool::new(3);
        let a = pool.allocate(2).unwrap();
        let h0 = block_hash(None, &[1, 2]);
        let h1 = block_hash(Some(h0), &[3, 4]);
        assert_ne!(h1, block_hash(None, &[3, 4]), "hash depends on the parent");
        assert!(pool.register(a[0], h0));
        assert!(pool.register(a[1], h1));
        assert!(!pool.register(a[1], h0), "one hash per block");
        // Freed in reverse order: the tail is evicted first.
        pool.release(a[1]).unwrap();
        pool.release(a[0]).unwrap();
        assert_eq!(pool.num_free(), 3);
        assert_eq!(pool.num_cached(), 2);
        assert_eq!(pool.num_cached_free(), 2);
        // A hit revives a free block without touching the others.
        let hit = pool.lookup(h0).unwrap();
        pool.acquire_cached(hit).unwrap();
        assert_eq!(pool.num_free(), 2);
        pool.check_ref_counts([&[hit][..]]).unwrap();
        // Allocation takes the never-used block, then evicts the least recently freed.
        let b = pool.allocate(1).unwrap();
        assert!(!a.contains(&b[0]));
        assert_eq!(pool.lookup(h1), Some(a[1]));
        let c = pool.allocate(1).unwrap();
        assert_eq!(c, vec![a[1]]);
        assert_eq!(pool.lookup(h1), None, "evicted on reuse");
        assert_eq!(pool.lookup(h0), Some(hit), "held blocks stay cached");
        assert!(pool.allocate(1).is_err());
        pool.check_ref_counts([&[hit][..], &b[..], &c[..]]).unwrap();
        assert!(pool.check_ref_counts([&b[..]]).is_err());
    }

    #[test]
    fn stale_free_entries_are_skipped() {
        let mut pool = BlockPool::new(2);
        let a = pool.allocate(1).unwrap();
        let h = block_hash(None, &[7]);
        pool.register(a[0], h);
        pool.release(a[0]).unwrap();
        // Revive, release again: two entries for the same block in the free list.
        pool.acquire_cached(a[0]).unwrap();
        pool.release(a[0]).unwrap();
        let all = pool.allocate(2).unwrap();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1]);
        assert_eq!(pool.num_free(), 0);
        pool.release_all(&all).unwrap();
        pool.clear_cache();
        assert_eq!(pool.num_cached(), 0);
    }
}

//! Flattening a step's work (a chunk of new tokens from each of several sequences) into
//! the arrays the model consumes.
//!
//! A `FlatBatch` is meant to be kept and refilled every step ([`FlatBatch::clear`] then
//! [`FlatBatch::push`]): its vectors keep their capacity, so a steady stream of steps
//! makes no host allocation however large the batch.

use super::sequence::Sequence;
use crate::model::ForwardBatch;
use crate::ops::AttnSeq;

/// One sequence's part of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// First row of its new tokens.
    pub q_start: usize,
    /// Number of new tokens.
    pub q_len: usize,
    /// Tokens in the cache after this step.
    pub context_len: usize,
    /// Its block table: `block_tables[table_start..table_start + table_len]`.
    pub table_start: usize,
    pub table_len: usize,
    /// Its first logits row.
    pub first_row: usize,
}

#[derive(Debug, Clone, Default)]
pub struct FlatBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    /// Per sequence, in push order.
    pub seqs: Vec<SeqRange>,
    /// Every sequence's block table, concatenated.
    pub block_tables: Vec<u32>,
    pub logits_rows: Vec<u32>,
}

impl FlatBatch {
    /// Builds the batch for `items`: each is a sequence and how many of its pending tokens
    /// to run. Every sequence's block table must already hold slots for those tokens.
    /// Each item contributes one logits row: its last new token.
    pub fn build(items: &[(&Sequence, usize)], block_size: usize) -> anyhow::Result<Self> {
        let mut b = FlatBatch::default();
        for &(seq, n) in items {
            b.push(seq, n, false, block_size)?;
        }
        Ok(b)
    }

    /// Empties the batch, keeping its capacity.
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.slots.clear();
        self.seqs.clear();
        self.block_tables.clear();
        self.logits_rows.clear();
    }

    /// Adds `n` pending tokens of `seq`. With `all_rows` every new token gets a logits row
    /// (prompt logprobs), else only the last. On error the batch is left unchanged.
    pub fn push(
        &mut self,
        seq: &Sequence,
        n: usize,
        all_rows: bool,
        block_size: usize,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            n > 0 && seq.num_computed + n <= seq.tokens.len(),
            "chunk of {n} tokens does not fit a sequence with {} pending",
            seq.num_pending()
        );
        let start = seq.num_computed;
        let q_start = self.tokens.len();
        for pos in start..start + n {
            let Some(slot) = seq.block_table.slot(pos, block_size) else {
                self.tokens.truncate(q_start);
                self.positions.truncate(q_start);
                self.slots.truncate(q_start);
                anyhow::bail!("no KV slot reserved for position {pos}");
            };
            self.tokens.push(seq.tokens[pos]);
            self.positions.push(pos as u32);
            self.slots.push(slot);
        }
        let table = seq.block_table.blocks();
        self.seqs.push(SeqRange {
            q_start,
            q_len: n,
            context_len: start + n,
            table_start: self.block_tables.len(),
            table_len: table.len(),
            first_row: self.logits_rows.len(),
        });
        self.block_tables.extend_from_slice(table);
        if all_rows {
            self.logits_rows
                .extend((q_start..q_start + n).map(|r| r as u32));
        } else {
            self.logits_rows.push((q_start + n - 1) as u32);
        }
        Ok(())
    }

    /// Sequence `k`'s logits rows: `first..end`.
    pub fn item_rows(&self, k: usize) -> std::ops::Range<usize> {
        let first = self.seqs.get(k).map_or(0, |s| s.first_row);
        let end = self
            .seqs
            .get(k + 1)
            .map_or(self.logits_rows.len(), |s| s.first_row);
        first..end
    }

    /// The sequences as attention sees them, written into `out` (cleared first).
    pub fn fill_attn_seqs<'a>(&'a self, out: &mut Vec<AttnSeq<'a>>) {
        out.clear();
        out.extend(self.seqs.iter().map(|s| AttnSeq {
            q_start: s.q_start,
            q_len: s.q_len,
            context_len: s.context_len,
            block_table: &self.block_tables[s.table_start..s.table_start + s.table_len],
        }));
    }

    /// As [`fill_attn_seqs`](Self::fill_attn_seqs), into a new vector.
    pub fn attn_seqs(&self) -> Vec<AttnSeq<'_>> {
        let mut out = Vec::with_capacity(self.seqs.len());
        self.fill_attn_seqs(&mut out);
        out
    }

    pub fn forward_batch<'a>(&'a self, seqs: &'a [AttnSeq<'a>]) -> ForwardBatch<'a> {
        ForwardBatch {
            tokens: &self.tokens,
            positions: &self.positions,
            slots: &self.slots,
            seqs,
            logits_rows: &self.logits_rows,
        }
    }
}

/// Hands back `v`'s allocation, emptied, for elements of another lifetime: lets a buffer
/// of borrowed views (`AttnSeq<'a>`) be kept between steps without reallocating.
pub fn recycle<'b>(mut v: Vec<AttnSeq<'_>>) -> Vec<AttnSeq<'b>> {
    v.clear();
    // An empty iterator collected into the same layout reuses the allocation.
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockPool;

    fn seq(tokens: usize, computed: usize, pool: &mut BlockPool, bs: usize) -> Sequence {
        let mut s = Sequence::new((0..tokens as u32).collect());
        s.block_table.grow(tokens, bs, pool).unwrap();
        s.num_computed = computed;
        s
    }

    #[test]
    fn push_flattens_and_reuses_capacity() {
        let bs = 4;
        let mut pool = BlockPool::new(64);
        let a = seq(6, 0, &mut pool, bs);
        let b = seq(9, 8, &mut pool, bs);
        let mut batch = FlatBatch::default();
        batch.push(&a, 6, true, bs).unwrap();
        batch.push(&b, 1, false, bs).unwrap();
        assert_eq!(batch.tokens, [0, 1, 2, 3, 4, 5, 8]);
        assert_eq!(batch.positions, [0, 1, 2, 3, 4, 5, 8]);
        assert_eq!(batch.logits_rows, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(batch.item_rows(0), 0..6);
        assert_eq!(batch.item_rows(1), 6..7);
        let seqs = batch.attn_seqs();
        assert_eq!(seqs[0].block_table, a.block_table.blocks());
        assert_eq!(seqs[1].block_table, b.block_table.blocks());
        assert_eq!(
            (seqs[1].q_start, seqs[1].q_len, seqs[1].context_len),
            (6, 1, 9)
        );
        // A failed push leaves the batch as it was.
        let mut short = Sequence::new((0..8).collect());
        short.block_table.grow(4, bs, &mut pool).unwrap();
        let before = batch.clone();
        assert!(batch.push(&short, 8, false, bs).is_err());
        assert_eq!(batch.tokens, before.tokens);
        assert_eq!(batch.seqs, before.seqs);
        let cap = batch.tokens.capacity();
        batch.clear();
        assert!(batch.tokens.is_empty() && batch.tokens.capacity() == cap);
    }

    #[test]
    fn recycle_keeps_the_allocation() {
        let tables = [1u32, 2, 3];
        let mut v = Vec::with_capacity(32);
        v.push(AttnSeq {
            q_start: 0,
            q_len: 1,
            context_len: 1,
            block_table: &tables,
        });
        let ptr = v.as_ptr() as usize;
        let w: Vec<AttnSeq<'static>> = recycle(v);
        assert!(w.is_empty() && w.capacity() >= 32);
        assert_eq!(w.as_ptr() as usize, ptr);
    }
}

//! One step's batch as device attention reads it, packed into a single `u32` array so it
//! reaches the GPU in one copy: slots, positions, the sequence of every query row, per-sequence
//! query start, query length and context length, and block tables padded to the longest.
//! Checked here, on the host, so a bad batch is an error and never an out-of-bounds read
//! on the device.

use anyhow::{bail, ensure, Result};

use super::CacheLayout;
use crate::model::ForwardBatch;

/// Where each array sits in the packed upload.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    pub tokens: usize,
    pub seqs: usize,
    pub max_blocks: usize,
    pub max_context: usize,
}

impl Packed {
    pub fn slots(&self) -> std::ops::Range<usize> {
        0..self.tokens
    }
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.tokens..2 * self.tokens
    }
    pub fn row_seq(&self) -> std::ops::Range<usize> {
        2 * self.tokens..3 * self.tokens
    }
    pub fn q_start(&self) -> std::ops::Range<usize> {
        let o = 3 * self.tokens;
        o..o + self.seqs
    }
    pub fn q_len(&self) -> std::ops::Range<usize> {
        let o = 3 * self.tokens + self.seqs;
        o..o + self.seqs
    }
    pub fn context_len(&self) -> std::ops::Range<usize> {
        let o = 3 * self.tokens + 2 * self.seqs;
        o..o + self.seqs
    }
    pub fn block_tables(&self) -> std::ops::Range<usize> {
        let o = 3 * self.tokens + 3 * self.seqs;
        o..o + self.seqs * self.max_blocks
    }
    pub fn len(&self) -> usize {
        3 * self.tokens + 3 * self.seqs + self.seqs * self.max_blocks
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks `batch` against the cache and packs it into `out` (cleared first; its capacity
/// is reused across steps).
pub fn pack_step(
    layout: &CacheLayout,
    batch: &ForwardBatch<'_>,
    out: &mut Vec<u32>,
) -> Result<Packed> {
    let tokens = batch.tokens.len();
    let capacity = layout.num_blocks * layout.block_size;
    ensure!(
        batch.slots.len() == tokens && batch.positions.len() == tokens,
        "the batch has {tokens} tokens but {} slots and {} positions",
        batch.slots.len(),
        batch.positions.len()
    );
    let mut max_blocks = 1;
    let mut max_context = 0;
    let mut rows = 0;
    for (i, s) in batch.seqs.iter().enumerate() {
        ensure!(
            s.q_start == rows && s.q_len >= 1 && s.q_len <= s.context_len,
            "sequence {i}: query rows {}..+{} do not follow row {rows}, or do not fit its \
             context of {}",
            s.q_start,
            s.q_len,
            s.context_len
        );
        rows += s.q_len;
        ensure!(
            s.block_table.len() * layout.block_size >= s.context_len,
            "sequence {i}: {} blocks cannot hold {} tokens",
            s.block_table.len(),
            s.context_len
        );
        if let Some(&b) = s
            .block_table
            .iter()
            .find(|&&b| b as usize >= layout.num_blocks)
        {
            bail!(
                "sequence {i}: block {b} is outside the cache ({} blocks)",
                layout.num_blocks
            );
        }
        max_blocks = max_blocks.max(s.block_table.len());
        max_context = max_context.max(s.context_len);
    }
    ensure!(
        rows == tokens,
        "the sequences hold {rows} query rows, the batch {tokens} tokens"
    );
    if let Some(&s) = batch.slots.iter().find(|&&s| s as usize >= capacity) {
        bail!("slot {s} is outside the cache ({capacity} slots)");
    }
    let packed = Packed {
        tokens,
        seqs: batch.seqs.len(),
        max_blocks,
        max_context,
    };
    out.clear();
    out.reserve(packed.len());
    out.extend_from_slice(batch.slots);
    out.extend_from_slice(batch.positions);
    for (i, s) in batch.seqs.iter().enumerate() {
        out.extend(std::iter::repeat_n(i as u32, s.q_len));
    }
    out.extend(batch.seqs.iter().map(|s| s.q_start as u32));
    out.extend(batch.seqs.iter().map(|s| s.q_len as u32));
    out.extend(batch.seqs.iter().map(|s| s.context_len as u32));
    for s in batch.seqs {
        out.extend_from_slice(s.block_table);
        out.extend(std::iter::repeat_n(0, max_blocks - s.block_table.len()));
    }
    debug_assert_eq!(out.len(), packed.len());
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::AttnSeq;

    fn layout() -> CacheLayout {
        CacheLayout {
            num_blocks: 8,
            block_size: 4,
            num_kv_heads: 2,
            head_dim: 8,
        }
    }

    #[test]
    fn packs_a_mixed_batch() {
        // A 3-token prompt chunk after 2 cached tokens (blocks 5, 2), and a decode row at
        // context 9 (blocks 1, 7, 3).
        let seqs = [
            AttnSeq {
                q_start: 0,
                q_len: 3,
                context_len: 5,
                block_table: &[5, 2],
            },
            AttnSeq {
                q_start: 3,
                q_len: 1,
                context_len: 9,
                block_table: &[1, 7, 3],
            },
        ];
        let batch = ForwardBatch {
            tokens: &[10, 11, 12, 13],
            positions: &[2, 3, 4, 8],
            slots: &[22, 23, 8, 12],
            seqs: &seqs,
            logits_rows: &[2, 3],
        };
        let mut out = vec![99; 3];
        let p = pack_step(&layout(), &batch, &mut out).unwrap();
        assert_eq!(
            p,
            Packed {
                tokens: 4,
                seqs: 2,
                max_blocks: 3,
                max_context: 9
            }
        );
        assert_eq!(&out[p.slots()], &[22, 23, 8, 12]);
        assert_eq!(&out[p.positions()], &[2, 3, 4, 8]);
        assert_eq!(&out[p.row_seq()], &[0, 0, 0, 1]);
        assert_eq!(&out[p.q_start()], &[0, 3]);
        assert_eq!(&out[p.q_len()], &[3, 1]);
        assert_eq!(&out[p.context_len()], &[5, 9]);
        assert_eq!(&out[p.block_tables()], &[5, 2, 0, 1, 7, 3]);
        assert_eq!(out.len(), p.len());
    }

    #[test]
    fn refuses_batches_that_would_read_outside_the_cache() {
        let check = |seqs: &[AttnSeq<'_>], slots: &[u32], tokens: &[u32]| {
            let batch = ForwardBatch {
                tokens,
                positions: tokens,
                slots,
                seqs,
                logits_rows: &[],
            };
            pack_step(&layout(), &batch, &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        let seq = |q_start, q_len, context_len, block_table| AttnSeq {
            q_start,
            q_len,
            context_len,
            block_table,
        };
        assert!(check(&[seq(0, 1, 9, &[1, 2])], &[0], &[0]).contains("cannot hold 9"));
        assert!(check(&[seq(0, 1, 2, &[8])], &[0], &[0]).contains("block 8 is outside"));
        assert!(check(&[seq(0, 1, 2, &[1])], &[32], &[0]).contains("slot 32"));
        assert!(check(&[seq(1, 1, 2, &[1])], &[0], &[0]).contains("do not follow"));
        assert!(check(&[seq(0, 3, 2, &[1])], &[0, 1, 2], &[0, 1, 2]).contains("do not fit"));
        assert!(check(&[seq(0, 1, 2, &[1])], &[0, 1], &[0, 1]).contains("1 query rows"));
        assert!(check(&[seq(0, 1, 2, &[1])], &[0], &[0, 1]).contains("2 tokens but 1 slots"));
        let batch = ForwardBatch {
            tokens: &[0, 1],
            positions: &[0],
            slots: &[0, 1],
            seqs: &[seq(0, 2, 2, &[1])],
            logits_rows: &[],
        };
        let e = pack_step(&layout(), &batch, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("1 positions"), "{e}");
    }
}

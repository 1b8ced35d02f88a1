//! One step's batch as the device reads it, packed into a single `u32` array so it
//! reaches the GPU in one copy: slots, positions, the sequence of every query row, per-sequence
//! query start, query length and context length, and block tables padded to the longest.
//! Checked here, on the host, so a bad batch is an error and never an out-of-bounds read
//! on the device.

use anyhow::{bail, ensure, Result};

use super::CacheLayout;
use crate::model::ForwardBatch;
use crate::ops::launch::{plan_splits, SplitPlan};

/// Where each array sits in the packed upload.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    pub tokens: usize,
    pub seqs: usize,
    pub max_blocks: usize,
    /// How attention splits the rows (`part_start` and `split_rows` describe it per row).
    pub split: SplitPlan,
    /// Rows whose final hidden states are kept (the model's `logits_rows`).
    pub logits_rows: usize,
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
    pub fn part_start(&self) -> std::ops::Range<usize> {
        let o = self.block_tables().end;
        o..o + self.tokens
    }
    pub fn split_rows(&self) -> std::ops::Range<usize> {
        let o = self.part_start().end;
        o..o + self.split.split_rows
    }
    /// The batch's token ids (the embedding's input).
    pub fn token_ids(&self) -> std::ops::Range<usize> {
        let o = self.split_rows().end;
        o..o + self.tokens
    }
    /// The rows whose final hidden states are kept.
    pub fn logits_rows(&self) -> std::ops::Range<usize> {
        let o = self.token_ids().end;
        o..o + self.logits_rows
    }
    pub fn len(&self) -> usize {
        self.logits_rows().end
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks `batch` against the cache and packs it into `out` (cleared first; its capacity
/// is reused across steps), with attention's row splits planned for a scratch of
/// `split_capacity` partitions (`ops::launch::plan_splits`).
pub fn pack_step(
    layout: &CacheLayout,
    batch: &ForwardBatch<'_>,
    split_capacity: usize,
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
    }
    ensure!(
        rows == tokens,
        "the sequences hold {rows} query rows, the batch {tokens} tokens"
    );
    if let Some(&s) = batch.slots.iter().find(|&&s| s as usize >= capacity) {
        bail!("slot {s} is outside the cache ({capacity} slots)");
    }
    out.clear();
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
    // Per-row partition starts, then the split rows.
    let seqs = batch.seqs.iter().map(|s| (s.q_len, s.context_len));
    let split = plan_splits(seqs, split_capacity, out);
    if let Some(&r) = batch.logits_rows.iter().find(|&&r| r as usize >= tokens) {
        bail!("logits row {r} is outside the batch's {tokens} rows");
    }
    out.extend_from_slice(batch.tokens);
    out.extend_from_slice(batch.logits_rows);
    let packed = Packed {
        tokens,
        seqs: batch.seqs.len(),
        max_blocks,
        split,
        logits_rows: batch.logits_rows.len(),
    };
    debug_assert_eq!(out.len(), packed.len());
    Ok(packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::launch::{NOT_SPLIT, PREFILL_ROW};
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
        let p = pack_step(&layout(), &batch, 64, &mut out).unwrap();
        assert_eq!(
            p,
            Packed {
                tokens: 4,
                seqs: 2,
                max_blocks: 3,
                split: SplitPlan {
                    part_size: 512,
                    max_parts: 1,
                    total_parts: 0,
                    split_rows: 0,
                    seqs: 2,
                    prompt_seqs: 1,
                    prompt_rows: 3,
                },
                logits_rows: 2,
            }
        );
        assert_eq!(&out[p.slots()], &[22, 23, 8, 12]);
        assert_eq!(&out[p.positions()], &[2, 3, 4, 8]);
        assert_eq!(&out[p.row_seq()], &[0, 0, 0, 1]);
        assert_eq!(&out[p.q_start()], &[0, 3]);
        assert_eq!(&out[p.q_len()], &[3, 1]);
        assert_eq!(&out[p.context_len()], &[5, 9]);
        assert_eq!(&out[p.block_tables()], &[5, 2, 0, 1, 7, 3]);
        assert_eq!(
            &out[p.part_start()],
            &[PREFILL_ROW, PREFILL_ROW, PREFILL_ROW, NOT_SPLIT]
        );
        assert!(out[p.split_rows()].is_empty());
        assert_eq!(&out[p.token_ids()], &[10, 11, 12, 13]);
        assert_eq!(&out[p.logits_rows()], &[2, 3]);
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
            pack_step(&layout(), &batch, 64, &mut Vec::new())
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
        let e = pack_step(&layout(), &batch, 64, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("1 positions"), "{e}");
        let batch = ForwardBatch {
            tokens: &[0],
            positions: &[0],
            slots: &[0],
            seqs: &[seq(0, 1, 2, &[1])],
            logits_rows: &[1],
        };
        let e = pack_step(&layout(), &batch, 64, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("logits row 1"), "{e}");
    }

    #[test]
    fn a_long_decode_row_is_split_and_listed() {
        let layout = CacheLayout {
            num_blocks: 200,
            block_size: 16,
            num_kv_heads: 2,
            head_dim: 8,
        };
        let table: Vec<u32> = (0..100).collect();
        let seqs = [
            AttnSeq {
                q_start: 0,
                q_len: 2,
                context_len: 1500,
                block_table: &table,
            },
            AttnSeq {
                q_start: 2,
                q_len: 1,
                context_len: 1100,
                block_table: &table[..70],
            },
        ];
        let batch = ForwardBatch {
            tokens: &[1, 2, 3],
            positions: &[1498, 1499, 1099],
            slots: &[1498, 1499, 1099],
            seqs: &seqs,
            logits_rows: &[1, 2],
        };
        let mut out = Vec::new();
        let p = pack_step(&layout, &batch, 64, &mut out).unwrap();
        assert_eq!((p.split.max_parts, p.split.total_parts), (3, 3));
        assert_eq!(&out[p.part_start()], &[PREFILL_ROW, PREFILL_ROW, 0]);
        assert_eq!(&out[p.split_rows()], &[2]);
        assert_eq!(out.len(), p.len());
    }
}

//! Flattening a step's work (a chunk of new tokens from each of several sequences) into
//! the arrays the model consumes.

use super::sequence::Sequence;
use crate::model::ForwardBatch;
use crate::ops::AttnSeq;

#[derive(Debug, Clone, Default)]
pub struct FlatBatch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    /// (q_start, q_len, context_len) per sequence.
    pub ranges: Vec<(usize, usize, usize)>,
    pub block_tables: Vec<Vec<u32>>,
    pub logits_rows: Vec<u32>,
}

impl FlatBatch {
    /// Builds the batch for `items`: each is a sequence and how many of its pending tokens
    /// to run. Every sequence's block table must already hold slots for those tokens.
    /// Each item contributes one logits row: its last new token.
    pub fn build(items: &[(&Sequence, usize)], block_size: usize) -> anyhow::Result<Self> {
        let items: Vec<(&Sequence, usize, bool)> =
            items.iter().map(|&(s, n)| (s, n, false)).collect();
        Ok(Self::build_rows(&items, block_size)?.0)
    }

    /// As [`build`](Self::build), but an item whose flag is set gets a logits row for
    /// every new token (prompt logprobs). Also returns each item's first logits row; its
    /// last row is the one before the next item's first.
    pub fn build_rows(
        items: &[(&Sequence, usize, bool)],
        block_size: usize,
    ) -> anyhow::Result<(Self, Vec<usize>)> {
        let mut b = FlatBatch::default();
        let mut first_rows = Vec::with_capacity(items.len());
        for &(seq, n, all_rows) in items {
            anyhow::ensure!(
                n > 0 && seq.num_computed + n <= seq.tokens.len(),
                "chunk of {n} tokens does not fit a sequence with {} pending",
                seq.num_pending()
            );
            let start = seq.num_computed;
            let q_start = b.tokens.len();
            for pos in start..start + n {
                let slot = seq
                    .block_table
                    .slot(pos, block_size)
                    .ok_or_else(|| anyhow::anyhow!("no KV slot reserved for position {pos}"))?;
                b.tokens.push(seq.tokens[pos]);
                b.positions.push(pos as u32);
                b.slots.push(slot);
            }
            b.ranges.push((q_start, n, start + n));
            b.block_tables.push(seq.block_table.blocks().to_vec());
            first_rows.push(b.logits_rows.len());
            if all_rows {
                b.logits_rows
                    .extend((q_start..q_start + n).map(|r| r as u32));
            } else {
                b.logits_rows.push((q_start + n - 1) as u32);
            }
        }
        Ok((b, first_rows))
    }

    pub fn attn_seqs(&self) -> Vec<AttnSeq<'_>> {
        self.ranges
            .iter()
            .zip(&self.block_tables)
            .map(|(&(q_start, q_len, context_len), table)| AttnSeq {
                q_start,
                q_len,
                context_len,
                block_table: table,
            })
            .collect()
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

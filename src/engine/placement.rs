//! Where each row's token is chosen, and the step's logits as the samplers need them.
//!
//! On the CPU every item's logits row goes to the host sampler. On a GPU the device
//! chooses for a request with one candidate and no top-n alternatives whose sampler it
//! implements: a plain argmax for greedy rows (and for prompt chunks that do not end
//! the prompt, which choose nothing), a draw by `sampling::gumbel`'s rule for sampled
//! rows, after the request's logit_bias and penalties are applied on the device. Only
//! the rows the host samples are downloaded: requests with prompt logprobs (every row
//! of their prompt chunks), several candidates, top-n alternatives or a sampler the
//! device does not implement. Prompt logprobs are computed [`PROMPT_LOGPROB_CHUNK`]
//! rows at a time, so a long prompt's logits never exist whole. Grammar masks (see
//! `masks`) are applied where the token is chosen: on the device to its rows before any
//! choice or download, on the host to the row before the sampler sees it.

use anyhow::{anyhow, Result};
use candle_core::Tensor;

use super::batch::FlatBatch;
use super::masks::StepMasks;
use super::requests::Requests;
use super::runner::ModelRunner;
use super::scheduler::{Scheduler, StepPlan};
use crate::sampling::log_softmax_at;

/// Rows of prompt logits computed and brought to the host at once for prompt logprobs
/// (`decoder_input_details`, `echo`): a long prompt's `[prompt_len, vocab]` logits never
/// exist whole, on the device or on the host.
pub(crate) const PROMPT_LOGPROB_CHUNK: usize = 256;

/// `StepLogits::targets` of a row whose logprob is not wanted.
const NO_TARGET: u32 = u32::MAX;

/// What decides where an item's token is chosen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowFacts {
    /// Every row of the item wants its prompt logprob.
    pub all_rows: bool,
    /// One candidate, no top-n alternatives.
    pub single: bool,
    /// The item reaches the end of its tokens (a token is chosen from it).
    pub completes: bool,
    /// The request's sampler is greedy.
    pub greedy: bool,
}

/// Where an item's token is chosen: `device_sample` is the request's sampler as the
/// device runs it, if it can (see [`crate::sampling::Sampler::device_params`]).
pub(crate) fn row_mode(
    facts: RowFacts,
    device_sample: impl FnOnce() -> Option<crate::sampling::gumbel::RowSample>,
) -> RowMode {
    if facts.all_rows {
        RowMode::AllRows
    } else if !facts.single {
        RowMode::Host
    } else if !facts.completes || facts.greedy {
        // A prompt chunk that does not end the prompt samples nothing.
        RowMode::Greedy
    } else {
        device_sample().map_or(RowMode::Host, RowMode::Sample)
    }
}

/// Fills the step's batch from its plan, each item's logits targets, and where each
/// item's token is chosen (`modes`); on a GPU, also the logit_bias and penalties of the
/// rows chosen there.
pub(crate) fn prepare(
    plan: &StepPlan,
    scheduler: &Scheduler,
    requests: &mut Requests,
    runner: &ModelRunner,
    batch: &mut FlatBatch,
    modes: &mut Vec<RowMode>,
    logits: &mut StepLogits,
) -> Result<()> {
    batch.clear();
    modes.clear();
    logits.clear();
    let block_size = runner.block_size();
    let on_device = runner.chooses_on_device();
    let vocab = runner.model().config().vocab_size;
    for it in &plan.items {
        let seq = scheduler
            .sequence(it.id)
            .ok_or_else(|| anyhow!("sequence {} vanished", it.id))?;
        let mut found = requests.get_mut(it.id);
        let facts = match &found {
            Some((g, c)) => RowFacts {
                all_rows: g.wants_prompt_logprobs(),
                single: g.request.top_n_tokens == 0 && g.request.candidates == 1,
                completes: it.completes,
                greedy: c.sampler.is_greedy(),
            },
            None => RowFacts {
                all_rows: false,
                single: false,
                completes: it.completes,
                greedy: false,
            },
        };
        let (prompt, generated) = seq.tokens.split_at(seq.prompt_len.min(seq.tokens.len()));
        let mode = row_mode(facts, || {
            let (_, c) = found.as_ref()?;
            c.sampler.device_params(generated.len() as u32)
        });
        batch.push(seq, it.num_tokens, facts.all_rows, block_size)?;
        logits.push_targets(seq, it.num_tokens, facts.all_rows);
        if let (true, true, Some((_, c)), RowMode::Greedy | RowMode::Sample(_)) =
            (on_device, it.completes, &mut found, mode)
        {
            // logit_bias and penalties, applied on the device before the choice (to
            // this item's row of the step's choice logits).
            let row = modes.len();
            c.sampler
                .device_adjust(prompt, generated, vocab, row, &mut logits.adjust);
        }
        modes.push(mode);
    }
    Ok(())
}

/// One step's logits as the sampler needs them. The model stops at the final hidden
/// states of the step's logits rows; from those come the prompt logprobs of the rows that
/// want them ([`StepLogits::prompt_logprobs`], a chunk of rows at a time), and the logits
/// of each plan item's last row, the row its token is chosen from (item k's is row k of
/// the choice logits). On the host: every item's logits. From a GPU: the items whose
/// sampler needs the whole vocabulary (prompt-logprob items, samplers the device does not
/// implement, top-n alternatives), plus the device's argmax and its logprob for every
/// item. Kept between steps (refilled by [`StepLogits::gather`]).
#[derive(Default)]
pub(crate) struct StepLogits {
    vocab: usize,
    /// Downloaded item rows, packed; `at[k]` is item k's index in it.
    data: Vec<f32>,
    at: Vec<Option<usize>>,
    /// Per logits row: the token whose logprob is wanted, or `NO_TARGET` (filled by
    /// `prepare`), and after `prompt_logprobs` that logprob (NaN when not wanted).
    targets: Vec<u32>,
    prompt_lps: Vec<f32>,
    /// Rows of one prompt-logprob chunk, and their logits on the host.
    chunk_rows: Vec<u32>,
    chunk: Vec<f32>,
    /// Each item's last logits row.
    last_rows: Vec<u32>,
    /// Items sampled on the device (ascending).
    sample_rows: Vec<u32>,
    /// Per item: the device's argmax and its logprob; per sampled item: its draw.
    #[cfg(feature = "cuda")]
    chosen: crate::ops::cuda::Choices,
    /// logit_bias and penalties of the items chosen on the device (filled by `prepare`).
    pub adjust: crate::sampling::LogitAdjust,
    /// Items to download, and items to sample on the device with their parameters.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    wanted: Vec<u32>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    sample_params: Vec<crate::sampling::gumbel::RowSample>,
    /// The constrained items' grammar masks, packed for the device.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    mask_packed: Vec<u32>,
}

/// How a row's token is chosen when the logits are on a GPU.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum RowMode {
    /// Every row of the item wants its prompt logprob; its token is chosen on the host.
    AllRows,
    /// The item's last row goes to the host sampler.
    Host,
    /// A plain argmax, on the device.
    Greedy,
    /// Sampled on the device with these parameters.
    Sample(crate::sampling::gumbel::RowSample),
}

/// What sampling gets for a row.
pub(crate) enum RowChoice<'a> {
    Logits(&'a [f32]),
    /// A token chosen on the device, and its logprob.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Chosen(u32, f32),
}

impl StepLogits {
    /// Empties what `prepare` fills for a step (keeping capacity).
    pub fn clear(&mut self) {
        self.adjust.clear();
        self.targets.clear();
    }

    /// The targets of an item's logits rows: with `all_rows`, each row's next prompt
    /// token (whose logprob is wanted) for the `n` tokens of `seq` from its first
    /// uncomputed one; otherwise none for its one row.
    pub fn push_targets(&mut self, seq: &super::sequence::Sequence, n: usize, all_rows: bool) {
        if !all_rows {
            self.targets.push(NO_TARGET);
            return;
        }
        let start = seq.num_computed;
        self.targets.extend((start..start + n).map(|pos| {
            if pos + 1 < seq.prompt_len {
                seq.tokens[pos + 1]
            } else {
                NO_TARGET
            }
        }));
    }

    /// Computes the prompt logprobs the step's rows want (`targets`), from the final
    /// hidden states `[logits rows, hidden]`, [`PROMPT_LOGPROB_CHUNK`] rows at a time;
    /// returns the hidden states of each item's last row (the rows tokens are chosen from).
    pub fn prompt_logprobs(
        &mut self,
        runner: &ModelRunner,
        hidden: &Tensor,
        batch: &FlatBatch,
    ) -> Result<Tensor> {
        let rows = hidden.dim(0)?;
        self.vocab = runner.model().config().vocab_size;
        let vocab = self.vocab;
        self.prompt_lps.clear();
        self.prompt_lps.resize(rows, f32::NAN);
        let mut chunk_rows = std::mem::take(&mut self.chunk_rows);
        chunk_rows.clear();
        chunk_rows.extend((0..rows as u32).filter(|&r| {
            self.targets
                .get(r as usize)
                .is_some_and(|&t| t != NO_TARGET)
        }));
        for part in chunk_rows.chunks(PROMPT_LOGPROB_CHUNK) {
            let idx = Tensor::from_slice(part, part.len(), hidden.device())?;
            let logits = runner.logits(&hidden.index_select(&idx, 0)?)?;
            to_host(runner, &logits, &mut self.chunk)?;
            for (i, &r) in part.iter().enumerate() {
                let (r, row) = (r as usize, &self.chunk[i * vocab..(i + 1) * vocab]);
                self.prompt_lps[r] = log_softmax_at(row, self.targets[r]);
            }
        }
        self.chunk_rows = chunk_rows;
        let items = batch.seqs.len();
        if rows == items {
            return Ok(hidden.clone());
        }
        self.last_rows.clear();
        self.last_rows
            .extend((0..items).map(|k| batch.item_rows(k).end as u32 - 1));
        let idx = Tensor::from_slice(&self.last_rows, items, hidden.device())?;
        Ok(hidden.index_select(&idx, 0)?)
    }

    /// The prompt logprob computed for logits row `r`.
    pub fn prompt_logprob(&self, r: usize) -> Option<f32> {
        self.prompt_lps.get(r).copied().filter(|lp| !lp.is_nan())
    }

    /// Brings the choice logits `[items, vocab]` (item k's last row is row k) to the host:
    /// all of them from the CPU; from a GPU only the items the host samples (`Host` and
    /// `AllRows`), with the others' tokens chosen on the device by the runner's kernels.
    pub fn gather(
        &mut self,
        runner: &ModelRunner,
        logits: Tensor,
        modes: &[RowMode],
        masks: &StepMasks,
    ) -> Result<()> {
        let rows = logits.dim(0)?;
        self.vocab = runner.model().config().vocab_size;
        self.at.clear();
        self.sample_rows.clear();
        #[cfg(feature = "cuda")]
        if let Some(kernels) = runner.kernels() {
            if !self.adjust.is_empty() {
                kernels.adjust(&logits, self.adjust.packed())?;
            }
            // Grammar masks after the adjustments, before any choice.
            let masked = masks.computed().map(|(k, m)| (k, m.words.as_slice()));
            crate::ops::launch::pack_masks(self.vocab, masked, &mut self.mask_packed);
            let n = masks.computed().count();
            kernels.mask(&logits, n, &self.mask_packed)?;
            self.wanted.clear();
            self.sample_params.clear();
            for (k, mode) in modes.iter().enumerate() {
                match mode {
                    RowMode::AllRows | RowMode::Host => self.wanted.push(k as u32),
                    RowMode::Greedy => {}
                    RowMode::Sample(p) => {
                        self.sample_rows.push(k as u32);
                        self.sample_params.push(crate::ops::launch::RowSample {
                            row: k as u32,
                            ..*p
                        });
                    }
                }
            }
            // Every item's argmax and the sampled items' draws: one copy back.
            kernels.choose(&logits, &self.sample_params, &mut self.chosen)?;
            self.at.resize(rows, None);
            for (i, &r) in self.wanted.iter().enumerate() {
                self.at[r as usize] = Some(i);
            }
            self.data.clear();
            if !self.wanted.is_empty() {
                let idx = Tensor::from_slice(&self.wanted, self.wanted.len(), logits.device())?;
                kernels.download(&logits.index_select(&idx, 0)?, &mut self.data)?;
            }
            return Ok(());
        }
        let _ = (modes, masks);
        copy_to_host(&logits, &mut self.data)?;
        self.at.extend((0..rows).map(Some));
        Ok(())
    }

    /// Item `k`'s logits, when on the host.
    fn row(&self, k: usize) -> Option<&[f32]> {
        let i = (*self.at.get(k)?)?;
        self.data.get(i * self.vocab..(i + 1) * self.vocab)
    }

    /// What sampling gets for item `k`: its logits when downloaded, else the device's
    /// draw or greedy choice.
    pub fn choice(&self, k: usize) -> Option<RowChoice<'_>> {
        if let Some(row) = self.row(k) {
            return Some(RowChoice::Logits(row));
        }
        #[cfg(feature = "cuda")]
        {
            let c = &self.chosen;
            if let Ok(i) = self.sample_rows.binary_search(&(k as u32)) {
                return Some(RowChoice::Chosen(
                    *c.sample_ids.get(i)?,
                    *c.sample_lps.get(i)?,
                ));
            }
            Some(RowChoice::Chosen(
                *c.greedy_ids.get(k)?,
                *c.greedy_lps.get(k)?,
            ))
        }
        #[cfg(not(feature = "cuda"))]
        None
    }
}

/// Copies f32 logits to the host (from the GPU through the runner's kernels).
fn to_host(runner: &ModelRunner, t: &Tensor, out: &mut Vec<f32>) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Some(kernels) = runner.kernels() {
        return Ok(kernels.download(t, out)?);
    }
    let _ = runner;
    copy_to_host(t, out)
}

/// Copies an f32 tensor's elements into `out` (cleared first); from CPU memory without
/// an intermediate vector.
fn copy_to_host(t: &Tensor, out: &mut Vec<f32>) -> Result<()> {
    out.clear();
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            if let Ok(data) = cpu.as_slice::<f32>() {
                out.extend_from_slice(&data[a..b]);
                return Ok(());
            }
        }
    }
    out.extend(
        t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::batch::FlatBatch;
    use crate::engine::runner::CacheConfig;
    use crate::engine::sequence::Sequence;
    use crate::kv::BlockPool;
    use crate::model::random::{load, RandomShape, RandomSpec};
    use crate::sampling::gumbel::RowSample;
    use candle_core::{DType, Device};

    const SIMPLE: RowFacts = RowFacts {
        all_rows: false,
        single: true,
        completes: true,
        greedy: false,
    };

    fn sample() -> Option<RowSample> {
        Some(RowSample {
            temperature: 0.7,
            top_p: 1.0,
            min_p: 0.0,
            top_k: 0,
            seed: 1,
            step: 0,
            row: 0,
        })
    }

    #[test]
    fn prompt_logprob_rows_go_to_the_host_before_anything_else() {
        let facts = RowFacts {
            all_rows: true,
            greedy: true,
            ..SIMPLE
        };
        assert!(matches!(row_mode(facts, sample), RowMode::AllRows));
    }

    #[test]
    fn several_candidates_or_alternatives_are_sampled_on_the_host() {
        let facts = RowFacts {
            single: false,
            greedy: true,
            ..SIMPLE
        };
        assert!(matches!(row_mode(facts, sample), RowMode::Host));
    }

    #[test]
    fn greedy_rows_and_unfinished_prompt_chunks_take_the_argmax() {
        let greedy = RowFacts {
            greedy: true,
            ..SIMPLE
        };
        let chunk = RowFacts {
            completes: false,
            ..SIMPLE
        };
        for facts in [greedy, chunk] {
            assert!(matches!(row_mode(facts, || None), RowMode::Greedy));
        }
    }

    #[test]
    fn a_sampler_the_device_cannot_run_goes_to_the_host() {
        assert!(matches!(row_mode(SIMPLE, sample), RowMode::Sample(_)));
        assert!(matches!(row_mode(SIMPLE, || None), RowMode::Host));
    }

    /// On the CPU every item's last row reaches the host whole, and the prompt logprobs
    /// of a chunk's rows are the log-softmax of those rows' logits.
    #[test]
    fn cpu_steps_bring_every_item_row_and_the_wanted_prompt_logprobs() {
        let spec = RandomSpec {
            shape: RandomShape::Tiny,
            seed: 4,
        };
        let (model, _) = load(spec, DType::F32, &Device::Cpu).unwrap();
        let cache = CacheConfig {
            block_size: 16,
            num_blocks: 8,
        };
        let vocab = model.config().vocab_size;
        let mut runner = ModelRunner::new(model, cache);
        let mut pool = BlockPool::new(cache.num_blocks);
        let mut a = Sequence::new(vec![5, 6, 7, 8]);
        let mut b = Sequence::new(vec![9, 10, 11]);
        a.reserve(4, 16, &mut pool).unwrap();
        b.reserve(3, 16, &mut pool).unwrap();
        let mut batch = FlatBatch::default();
        let mut logits = StepLogits::default();
        batch.push(&a, 4, true, 16).unwrap();
        logits.push_targets(&a, 4, true);
        batch.push(&b, 3, false, 16).unwrap();
        logits.push_targets(&b, 3, false);
        let hidden = runner.forward_hidden(&batch).unwrap();
        let all = runner.logits(&hidden).unwrap();
        let last = logits.prompt_logprobs(&runner, &hidden, &batch).unwrap();
        let chosen = runner.logits(&last).unwrap();
        logits
            .gather(
                &runner,
                chosen,
                &[RowMode::AllRows, RowMode::Host],
                &Default::default(),
            )
            .unwrap();
        // Rows 0..4 are a's (targets 6, 7, 8, none), row 4 is b's last.
        for (r, target) in [(0, 6u32), (1, 7), (2, 8)] {
            let row = all.get(r).unwrap().to_vec1::<f32>().unwrap();
            let want = log_softmax_at(&row, target);
            let got = logits.prompt_logprob(r).unwrap();
            assert!((got - want).abs() < 1e-5, "row {r}: {got} vs {want}");
        }
        assert_eq!(logits.prompt_logprob(3), None);
        assert_eq!(logits.prompt_logprob(4), None);
        for (k, r) in [(0, 3), (1, 4)] {
            let want = all.get(r).unwrap().to_vec1::<f32>().unwrap();
            match logits.choice(k) {
                Some(RowChoice::Logits(got)) => {
                    assert_eq!(got.len(), vocab);
                    assert_eq!(got, &want[..], "item {k}");
                }
                _ => panic!("item {k} has no logits on the host"),
            }
        }
    }
}

//! The engine core: requests, their sequences, and the step loop that runs on the
//! engine thread (plan with the scheduler, run the model, sample, detokenize, check
//! stops, send events).

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{anyhow, Result};
use candle_core::Tensor;

use super::batch::FlatBatch;
use super::handle::{Command, EngineConfig, Submission};
use super::request::{
    Completion, EngineError, Event, FinishReason, GeneratedToken, GenerationRequest, Timings,
    TokenInfo,
};
use super::runner::ModelRunner;
use super::scheduler::{Scheduler, SeqId, StepPlan};
use super::sequence::Sequence;
use super::stats::{EngineStats, StepFigures};
use crate::sampling::{log_softmax_at, Sampler, StopSequences};

/// Rows of prompt logits computed and brought to the host at once for prompt logprobs
/// (`decoder_input_details`, `echo`): a long prompt's `[prompt_len, vocab]` logits never
/// exist whole, on the device or on the host.
pub(crate) const PROMPT_LOGPROB_CHUNK: usize = 256;

/// `StepLogits::targets` of a row whose logprob is not wanted.
const NO_TARGET: u32 = u32::MAX;
use crate::tokenizer::{DecodeStream, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

/// One request: its candidates and where its events go.
struct Group {
    request: GenerationRequest,
    events: UnboundedSender<Event>,
    /// Sequence ids of candidates, by candidate index (None once finished).
    candidates: Vec<Option<SeqId>>,
    forked: bool,
    unfinished: usize,
    /// Prompt token logprobs gathered so far (when asked).
    prefill: Vec<TokenInfo>,
    prefill_sent: bool,
    queued: Instant,
    started: Option<Instant>,
    first_token: Option<Instant>,
}

/// A candidate's generation state (the scheduler holds its tokens and blocks).
struct Candidate {
    group: u64,
    index: usize,
    sampler: Sampler,
    detok: DecodeStream,
    stop: StopSequences,
    text: String,
    cumulative_logprob: f64,
}

pub(crate) struct EngineCore {
    runner: ModelRunner,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
    eos_ids: Vec<u32>,
    groups: HashMap<u64, Group>,
    candidates: HashMap<SeqId, Candidate>,
    next_group: u64,
    next_seq: SeqId,
    shutting_down: bool,
    /// The step's buffers, reused from step to step.
    scratch: StepScratch,
}

/// Everything a step fills, kept between steps so that their capacity is reused: a
/// steady stream of steps makes no host allocation on the way to and from the model,
/// whatever the batch size. (Each generated token still costs its event to the client.)
#[derive(Default)]
struct StepScratch {
    plan: StepPlan,
    batch: FlatBatch,
    /// Per plan item: how its token is chosen.
    modes: Vec<RowMode>,
    /// Requests with an item in the step.
    gids: Vec<u64>,
    logits: StepLogits,
    /// A row's logits, copied for a sampler that processes them in place.
    row: Vec<f32>,
}

impl EngineCore {
    pub fn new(
        runner: ModelRunner,
        tokenizer: Arc<Tokenizer>,
        stats: Arc<EngineStats>,
        config: EngineConfig,
    ) -> Self {
        let scheduler = Scheduler::new(config.scheduler.clone(), runner.pool().num_blocks());
        let eos_ids = tokenizer.eos_ids().to_vec();
        Self {
            runner,
            scheduler,
            tokenizer,
            stats,
            config,
            eos_ids,
            groups: HashMap::new(),
            candidates: HashMap::new(),
            next_group: 0,
            next_seq: 0,
            shutting_down: false,
            scratch: StepScratch::default(),
        }
    }

    /// One small forward pass, so the first request does not pay for lazy setup.
    pub fn warmup(&mut self) -> Result<()> {
        let n = 16
            .min(self.config.scheduler.max_batch_prefill_tokens)
            .max(1);
        let id = SeqId::MAX;
        let vocab = self.runner.model().config().vocab_size as u32;
        let prompt: Vec<u32> = (0..n as u32).map(|t| t % vocab).collect();
        self.scheduler.add(id, Sequence::new(prompt), true);
        let mut s = std::mem::take(&mut self.scratch);
        let result = self
            .scheduler
            .schedule_into(&mut s.plan)
            .map_err(anyhow::Error::from)
            .and_then(|()| self.forward(&mut s));
        self.scratch = s;
        self.scheduler.remove(id)?;
        self.scheduler.clear_prefix_cache();
        result.map(|_| ())
    }

    /// Serves commands until the handle is dropped or shut down.
    pub fn run(&mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if !self.scheduler.has_work() {
                match commands.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.shutting_down = true;
                        break;
                    }
                }
            }
            if self.shutting_down {
                return;
            }
            self.drop_cancelled();
            if self.scheduler.has_work() {
                self.step();
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(sub) => self.admit(sub),
            Command::ClearPrefixCache => {
                self.scheduler.clear_prefix_cache();
                self.publish_gauges();
            }
            Command::Shutdown => self.shutting_down = true,
        }
    }

    fn admit(&mut self, sub: Submission) {
        let Submission {
            request,
            events,
            queued,
        } = sub;
        let total = request.prompt.len() + request.stopping.max_new_tokens;
        if let Err(e) = self.scheduler.check_fits(total) {
            let _ = events.send(Event::Error(EngineError::Validation(e.to_string())));
            self.stats.leave();
            self.stats.failed();
            return;
        }
        let gid = self.next_group;
        self.next_group += 1;
        let sid = self.new_seq_id();
        let cand = self.new_candidate(gid, 0, &request);
        self.candidates.insert(sid, cand);
        self.scheduler.add(
            sid,
            Sequence::new(request.prompt.clone()),
            request.prompt_logprobs,
        );
        let mut candidates = vec![None; request.candidates];
        candidates[0] = Some(sid);
        let prefill = if request.prompt_logprobs {
            vec![self.prompt_token(request.prompt[0], f32::NAN)]
        } else {
            Vec::new()
        };
        self.groups.insert(
            gid,
            Group {
                unfinished: request.candidates,
                request,
                events,
                candidates,
                forked: false,
                prefill,
                prefill_sent: false,
                queued,
                started: None,
                first_token: None,
            },
        );
        self.publish_gauges();
    }

    fn new_seq_id(&mut self) -> SeqId {
        let id = self.next_seq;
        self.next_seq += 1;
        id
    }

    fn new_candidate(&self, group: u64, index: usize, r: &GenerationRequest) -> Candidate {
        let seed = r.sampling.seed.wrapping_add(index as u64);
        // A few prompt tokens give the detokenizer the context for the first token's
        // leading space.
        let tail = &r.prompt[r.prompt.len().saturating_sub(4)..];
        Candidate {
            group,
            index,
            sampler: Sampler::new(&r.sampling, seed),
            detok: DecodeStream::new(tail),
            stop: StopSequences::new(
                r.stopping.stop_sequences.clone(),
                r.stopping.include_stop_sequence,
            ),
            text: String::new(),
            cumulative_logprob: 0.0,
        }
    }

    fn prompt_token(&self, id: u32, logprob: f32) -> TokenInfo {
        TokenInfo {
            id,
            text: self.token_text(id),
            logprob,
            special: self.tokenizer.is_special(id),
        }
    }

    fn token_text(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Removes requests whose receiver is gone.
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .groups
            .iter()
            .filter(|(_, g)| g.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for gid in gone {
            self.end_group(gid);
            self.stats.cancelled();
        }
        self.publish_gauges();
    }

    /// Forgets a request and every sequence it still has.
    fn end_group(&mut self, gid: u64) {
        if let Some(g) = self.groups.remove(&gid) {
            for sid in g.candidates.into_iter().flatten() {
                self.candidates.remove(&sid);
                if let Err(e) = self.scheduler.remove(sid) {
                    tracing::error!("releasing sequence {sid}: {e}");
                }
            }
            self.stats.leave();
        }
    }

    fn fail_group(&mut self, gid: u64, err: EngineError) {
        // Release first (blocks and the in-flight slot), then tell the client.
        let events = self.groups.get(&gid).map(|g| g.events.clone());
        self.end_group(gid);
        if let Some(events) = events {
            let _ = events.send(Event::Error(err));
        }
        self.stats.failed();
    }

    /// Ends every request with `err` (engine stopping).
    pub fn fail_all(&mut self, err: EngineError) {
        let all: Vec<u64> = self.groups.keys().copied().collect();
        for gid in all {
            self.fail_group(gid, err.clone());
        }
        self.publish_gauges();
    }

    fn figures(&self) -> StepFigures {
        let pool = self.scheduler.pool();
        StepFigures {
            queue_size: self.scheduler.num_waiting() as u64,
            running: self.scheduler.num_running() as u64,
            blocks_used: pool.num_used() as u64,
            blocks_cached: pool.num_cached() as u64,
            batch_tokens: (pool.num_used() * self.scheduler.config().block_size) as u64,
            ..Default::default()
        }
    }

    fn publish_gauges(&self) {
        self.stats.gauges(self.figures());
    }

    /// Fills the step's batch from its plan, and how each item's token is chosen.
    fn prepare(&mut self, s: &mut StepScratch) -> Result<()> {
        let StepScratch {
            plan,
            batch,
            modes,
            logits,
            ..
        } = s;
        batch.clear();
        modes.clear();
        logits.adjust.clear();
        logits.targets.clear();
        let block_size = self.runner.block_size();
        let on_device = self.runner.chooses_on_device();
        let vocab = self.runner.model().config().vocab_size;
        for it in &plan.items {
            let seq = self
                .scheduler
                .sequence(it.id)
                .ok_or_else(|| anyhow!("sequence {} vanished", it.id))?;
            let group = self
                .candidates
                .get(&it.id)
                .and_then(|c| self.groups.get(&c.group));
            // Every row of a prompt chunk when its logprobs are wanted.
            let all_rows =
                group.is_some_and(|g| g.request.prompt_logprobs && !g.prefill_sent && !g.forked);
            // The device chooses for single-candidate requests without top-n alternatives
            // whose sampler it implements; everything else gets its row on the host.
            let simple =
                group.is_some_and(|g| g.request.top_n_tokens == 0 && g.request.candidates == 1);
            let (prompt, generated) = seq.tokens.split_at(seq.prompt_len.min(seq.tokens.len()));
            let cand = self.candidates.get_mut(&it.id);
            let mode = match &cand {
                _ if all_rows => RowMode::AllRows,
                _ if !simple => RowMode::Host,
                // A prompt chunk that does not end the prompt samples nothing.
                _ if !it.completes => RowMode::Greedy,
                Some(c) if c.sampler.is_greedy() => RowMode::Greedy,
                Some(c) => c
                    .sampler
                    .device_params(generated.len() as u32)
                    .map_or(RowMode::Host, RowMode::Sample),
                None => RowMode::Host,
            };
            batch.push(seq, it.num_tokens, all_rows, block_size)?;
            if all_rows {
                // Each row's next prompt token, whose logprob is wanted.
                let start = seq.num_computed;
                logits
                    .targets
                    .extend((start..start + it.num_tokens).map(|pos| {
                        if pos + 1 < seq.prompt_len {
                            seq.tokens[pos + 1]
                        } else {
                            NO_TARGET
                        }
                    }));
            } else {
                logits.targets.push(NO_TARGET);
            }
            if let (true, true, Some(c), RowMode::Greedy | RowMode::Sample(_)) =
                (on_device, it.completes, cand, mode)
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

    /// Runs the model on the step's plan and brings its logits (or chosen tokens) to the
    /// host, into `s.logits`.
    fn forward(&mut self, s: &mut StepScratch) -> Result<()> {
        self.prepare(s)?;
        let hidden = self.runner.forward_hidden(&s.batch)?;
        let last = s.logits.prompt_logprobs(&self.runner, &hidden, &s.batch)?;
        let logits = self.runner.logits(&last)?;
        s.logits.gather(&self.runner, logits, &s.modes)
    }

    fn step(&mut self) {
        let mut s = std::mem::take(&mut self.scratch);
        self.step_with(&mut s);
        self.scratch = s;
    }

    fn step_with(&mut self, s: &mut StepScratch) {
        match self.scheduler.schedule_into(&mut s.plan) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!("scheduling failed: {e}");
                self.fail_all(EngineError::Generation(e.to_string()));
                return;
            }
        };
        if s.plan.is_empty() {
            self.publish_gauges();
            return;
        }
        let now = Instant::now();
        s.gids.clear();
        s.gids.extend(
            s.plan
                .items
                .iter()
                .filter_map(|it| self.candidates.get(&it.id).map(|c| c.group)),
        );
        s.gids.sort_unstable();
        s.gids.dedup();
        for gid in &s.gids {
            if let Some(g) = self.groups.get_mut(gid) {
                g.started.get_or_insert(now);
            }
        }
        let result = match &self.config.fault_hook {
            Some(hook) => {
                let ids: Vec<u64> = s
                    .gids
                    .iter()
                    .filter_map(|g| self.groups.get(g).map(|g| g.request.id))
                    .collect();
                hook(&ids).map_err(|e| anyhow!(e))
            }
            None => Ok(()),
        }
        .and_then(|()| self.forward(s));
        if let Err(e) = result {
            // A failed step fails the requests in it; the others go on.
            tracing::error!("step failed: {e:#}");
            for &gid in &s.gids {
                self.fail_group(gid, EngineError::Generation(format!("{e:#}")));
            }
            self.publish_gauges();
            return;
        }
        let StepScratch {
            plan,
            batch,
            logits,
            row: row_buf,
            ..
        } = s;
        if let Err(e) = self.scheduler.complete(plan) {
            tracing::error!("completing step: {e}");
        }
        let mut figures = self.figures();
        figures.prefill_tokens = plan.prefill_tokens as u64;
        figures.decode_tokens = plan.decode_tokens as u64;
        figures.preemptions = plan.preempted.len() as u64;
        figures.prefix_hit_tokens = plan.prefix_hit_tokens as u64;
        for (k, item) in plan.items.iter().enumerate() {
            let rows = batch.item_rows(k);
            if rows.is_empty() {
                continue;
            }
            let (first, last) = (rows.start, rows.end - 1);
            self.record_prompt_logprobs(item.id, item.num_tokens, logits, first, last);
            if !item.completes {
                continue;
            }
            let result = match logits.choice(k) {
                Some(row) => self.on_logits(item.id, row, row_buf),
                None => Err(anyhow!("no logits for item {k}")),
            };
            if let Err(e) = result {
                if let Some(gid) = self.candidates.get(&item.id).map(|c| c.group) {
                    self.fail_group(gid, EngineError::Generation(format!("{e:#}")));
                }
            }
        }
        let after = self.figures();
        figures.queue_size = after.queue_size;
        figures.running = after.running;
        figures.blocks_used = after.blocks_used;
        figures.blocks_cached = after.blocks_cached;
        figures.batch_tokens = after.batch_tokens;
        self.stats.record_step(figures);
        if self.config.check_invariants {
            if let Err(e) = self.scheduler.check_invariants() {
                panic!("KV block invariant broken: {e}");
            }
        }
    }

    /// Gathers prompt logprobs from a prompt chunk's rows, and sends them once the
    /// prompt is done.
    fn record_prompt_logprobs(
        &mut self,
        sid: SeqId,
        n: usize,
        logits: &StepLogits,
        first: usize,
        last: usize,
    ) {
        let Some(gid) = self.candidates.get(&sid).map(|c| c.group) else {
            return;
        };
        let Some(seq) = self.scheduler.sequence(sid) else {
            return;
        };
        let Some(g) = self.groups.get(&gid) else {
            return;
        };
        if !g.request.prompt_logprobs || g.prefill_sent || g.forked || last + 1 - first != n {
            return;
        }
        let prompt_len = g.request.prompt.len();
        // Rows cover positions [computed - n, computed); row r predicts position r + 1.
        let start = seq.num_computed - n;
        let mut infos = Vec::new();
        for (r, pos) in (start..start + n).enumerate() {
            let target = pos + 1;
            if target >= prompt_len || target < g.prefill.len() {
                continue;
            }
            let Some(logprob) = logits.prompt_logprob(first + r) else {
                continue;
            };
            let id = g.request.prompt[target];
            infos.push(self.prompt_token(id, logprob));
        }
        let done = seq.num_computed >= prompt_len;
        if let Some(g) = self.groups.get_mut(&gid) {
            g.prefill.extend(infos);
            if done && g.prefill.len() == prompt_len {
                g.prefill_sent = true;
                let tokens = std::mem::take(&mut g.prefill);
                let _ = g.events.send(Event::Prefill { tokens });
            }
        }
    }

    /// Samples the next token of `sid` (and, at the end of a multi-candidate prompt, of
    /// its forks) from its logits row.
    /// `buf` holds a copy of the row for each candidate's sampler.
    fn on_logits(&mut self, sid: SeqId, row: RowChoice<'_>, buf: &mut Vec<f32>) -> Result<()> {
        let gid = self
            .candidates
            .get(&sid)
            .map(|c| c.group)
            .ok_or_else(|| anyhow!("sequence {sid} has no candidate"))?;
        // The new candidates' ids are consecutive (`new_seq_id`).
        let mut children = self.next_seq..self.next_seq;
        let fork_now = self
            .groups
            .get(&gid)
            .is_some_and(|g| !g.forked && g.request.candidates > 1);
        if fork_now {
            let n = self.groups[&gid].request.candidates;
            for index in 1..n {
                let child = self.new_seq_id();
                if let Some((src, dst)) = self.scheduler.fork(sid, child)? {
                    self.runner.copy_block(src, dst)?;
                }
                let cand = self.new_candidate(gid, index, &self.groups[&gid].request);
                self.candidates.insert(child, cand);
                if let Some(g) = self.groups.get_mut(&gid) {
                    g.candidates[index] = Some(child);
                }
                children.end = child + 1;
            }
        }
        if let Some(g) = self.groups.get_mut(&gid) {
            g.forked = true;
        }
        let targets = std::iter::once(sid).chain(children);
        match row {
            RowChoice::Logits(row) => {
                for target in targets {
                    buf.clear();
                    buf.extend_from_slice(row);
                    self.sample_one(target, Choice::Sample(buf))?;
                }
            }
            RowChoice::Chosen(id, logprob) => {
                for target in targets {
                    self.sample_one(target, Choice::Chosen(id, logprob))?;
                }
            }
        }
        Ok(())
    }

    fn sample_one(&mut self, sid: SeqId, choice: Choice<'_>) -> Result<()> {
        let Some(cand) = self.candidates.get_mut(&sid) else {
            return Ok(());
        };
        let gid = cand.group;
        let Some(g) = self.groups.get_mut(&gid) else {
            return Ok(());
        };
        let seq = self
            .scheduler
            .sequence(sid)
            .ok_or_else(|| anyhow!("sequence {sid} vanished"))?;
        let prompt = &seq.tokens[..seq.prompt_len];
        let generated = &seq.tokens[seq.prompt_len..];
        let top_n = g.request.top_n_tokens;
        let sampled = match choice {
            Choice::Sample(logits) => cand.sampler.sample(logits, prompt, generated, top_n)?,
            // Chosen on the device (see `forward`): the argmax, or a draw by
            // `sampling::gumbel`'s rule from the same distribution.
            Choice::Chosen(crate::sampling::gumbel::NO_TOKEN, _) => {
                return Err(crate::sampling::NoToken.into())
            }
            Choice::Chosen(id, logprob) => crate::sampling::Sampled {
                id,
                logprob,
                top: Vec::new(),
            },
        };
        let n_generated = generated.len() + 1;
        let id = sampled.id;
        let tok = &self.tokenizer;
        let special = tok.is_special(id);
        let raw = cand.detok.step(tok, id)?;
        let stop = cand.stop.push(&raw);
        let mut piece = stop.emit;
        let eos = !g.request.stopping.ignore_eos && self.eos_ids.contains(&id);
        let mut reason = if stop.stopped {
            Some(FinishReason::StopSequence)
        } else if eos {
            Some(FinishReason::EosToken)
        } else if n_generated >= g.request.stopping.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        if reason.is_some() && !stop.stopped {
            // Text the detokenizer still holds (an unfinished character), then whatever
            // the stop matcher held back.
            let tail = cand.stop.push(&cand.detok.flush(tok)?);
            piece.push_str(&tail.emit);
            if tail.stopped {
                reason = Some(FinishReason::StopSequence);
            } else {
                piece.push_str(&cand.stop.finish());
            }
        }
        cand.text.push_str(&piece);
        cand.cumulative_logprob += sampled.logprob as f64;
        let index = cand.index;
        let top_tokens = sampled
            .top
            .iter()
            .map(|&(t, lp)| TokenInfo {
                id: t,
                text: tok.decode(&[t], false).unwrap_or_default(),
                logprob: lp,
                special: tok.is_special(t),
            })
            .collect();
        let token = GeneratedToken {
            token: TokenInfo {
                id,
                text: tok.decode(&[id], false).unwrap_or_default(),
                logprob: sampled.logprob,
                special,
            },
            text_piece: piece,
            top_tokens,
        };
        let now = Instant::now();
        g.first_token.get_or_insert(now);
        if g.request.prompt_logprobs && !g.prefill_sent {
            // The prompt was fully cached or chunk bookkeeping missed rows: send what
            // we have so the order of events holds.
            g.prefill_sent = true;
            let tokens = std::mem::take(&mut g.prefill);
            let _ = g.events.send(Event::Prefill { tokens });
        }
        let _ = g.events.send(Event::Token {
            candidate: index,
            token,
            last: reason.is_some(),
        });
        self.scheduler.append_token(sid, id)?;
        let Some(reason) = reason else {
            return Ok(());
        };
        let cand = self.candidates.remove(&sid);
        if let Some(c) = &cand {
            let _ = g.events.send(Event::CandidateFinished {
                candidate: c.index,
                reason,
                text: c.text.clone(),
                generated_tokens: n_generated,
                cumulative_logprob: c.cumulative_logprob,
            });
        }
        g.candidates[index] = None;
        g.unfinished -= 1;
        let all_done = g.unfinished == 0 && g.forked;
        self.scheduler.remove(sid)?;
        if all_done {
            let started = g.started.unwrap_or(now);
            // Free the in-flight slot before the client hears it is done, so a client
            // that sends its next request at once is not refused as overloaded.
            self.stats.leave();
            let _ = g.events.send(Event::Done(Completion {
                prompt_tokens: g.request.prompt.len(),
                seed: g.request.sampling.seed,
                timings: Timings {
                    queued: g.queued,
                    started,
                    first_token: g.first_token.unwrap_or(now),
                    finished: now,
                },
            }));
            self.groups.remove(&gid);
            self.stats.finished();
        }
        Ok(())
    }
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
struct StepLogits {
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
    adjust: crate::sampling::LogitAdjust,
    /// Items to download, and items to sample on the device with their parameters.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    wanted: Vec<u32>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    sample_params: Vec<crate::sampling::gumbel::RowSample>,
}

/// How a row's token is chosen when the logits are on a GPU.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum RowMode {
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
enum RowChoice<'a> {
    Logits(&'a [f32]),
    /// A token chosen on the device, and its logprob.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Chosen(u32, f32),
}

enum Choice<'a> {
    Sample(&'a mut [f32]),
    Chosen(u32, f32),
}

impl StepLogits {
    /// Computes the prompt logprobs the step's rows want (`targets`), from the final
    /// hidden states `[logits rows, hidden]`, [`PROMPT_LOGPROB_CHUNK`] rows at a time;
    /// returns the hidden states of each item's last row (the rows tokens are chosen from).
    fn prompt_logprobs(
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
    fn prompt_logprob(&self, r: usize) -> Option<f32> {
        self.prompt_lps.get(r).copied().filter(|lp| !lp.is_nan())
    }

    /// Brings the choice logits `[items, vocab]` (item k's last row is row k) to the host:
    /// all of them from the CPU; from a GPU only the items the host samples (`Host` and
    /// `AllRows`), with the others' tokens chosen on the device by the runner's kernels.
    fn gather(&mut self, runner: &ModelRunner, logits: Tensor, modes: &[RowMode]) -> Result<()> {
        let rows = logits.dim(0)?;
        self.vocab = runner.model().config().vocab_size;
        self.at.clear();
        self.sample_rows.clear();
        #[cfg(feature = "cuda")]
        if let Some(kernels) = runner.kernels() {
            if !self.adjust.is_empty() {
                kernels.adjust(&logits, self.adjust.packed())?;
            }
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
        let _ = modes;
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
    fn choice(&self, k: usize) -> Option<RowChoice<'_>> {
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
    use crate::engine::request::StoppingParams;
    use crate::engine::runner::CacheConfig;
    use crate::engine::scheduler::SchedulerConfig;
    use crate::model::random::{load, RandomShape, RandomSpec};
    use crate::sampling::SamplingParams;
    use crate::test_alloc::allocations;
    use candle_core::{DType, Device};

    fn engine(batch: usize) -> (EngineCore, Vec<tokio::sync::mpsc::UnboundedReceiver<Event>>) {
        engine_masking(batch, None)
    }

    /// `engine(batch)`, with every token of request `masked` biased to -inf.
    fn engine_masking(
        batch: usize,
        masked: Option<usize>,
    ) -> (EngineCore, Vec<tokio::sync::mpsc::UnboundedReceiver<Event>>) {
        let spec = RandomSpec {
            shape: RandomShape::Tiny,
            seed: 5,
        };
        let (model, tok) = load(spec, DType::F32, &Device::Cpu).unwrap();
        let cache = CacheConfig {
            block_size: 16,
            num_blocks: 4 * batch + 8,
        };
        let runner = ModelRunner::new(model, cache);
        let config = EngineConfig {
            scheduler: SchedulerConfig {
                max_batch_size: batch,
                max_batch_prefill_tokens: 4096,
                ..Default::default()
            },
            check_invariants: true,
            ..Default::default()
        };
        let mut core = EngineCore::new(
            runner,
            Arc::new(tok),
            Arc::new(EngineStats::default()),
            config,
        );
        let mut receivers = Vec::new();
        for i in 0..batch {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            // Greedy, sampled and penalised rows, so every row mode is prepared.
            let vocab = core.runner.model().config().vocab_size as u32;
            let sampling = SamplingParams {
                do_sample: i % 3 != 0,
                temperature: 0.8,
                top_k: if i % 3 == 1 { 20 } else { 0 },
                top_p: 0.9,
                repetition_penalty: if i % 3 == 2 { 1.2 } else { 1.0 },
                seed: i as u64,
                logit_bias: if masked == Some(i) {
                    (0..vocab).map(|t| (t, f32::NEG_INFINITY)).collect()
                } else {
                    Vec::new()
                },
                ..Default::default()
            };
            core.admit(Submission {
                request: GenerationRequest {
                    id: i as u64,
                    // 20 prompt tokens: the measured steps stay inside the second block.
                    prompt: (0..20).map(|t| 40 + t + i as u32).collect(),
                    sampling,
                    stopping: StoppingParams {
                        max_new_tokens: 100,
                        stop_sequences: vec![],
                        include_stop_sequence: true,
                        ignore_eos: true,
                    },
                    top_n_tokens: 0,
                    prompt_logprobs: false,
                    candidates: 1,
                },
                events: tx,
                queued: Instant::now(),
            });
            receivers.push(rx);
        }
        (core, receivers)
    }

    /// Allocations of one decode step's preparation (plan, batch, row modes) and of
    /// bringing its logits to the host, with the model's forward pass left out.
    fn step_allocations(core: &mut EngineCore) -> (u64, u64) {
        let mut s = std::mem::take(&mut core.scratch);
        let a0 = allocations();
        core.scheduler.schedule_into(&mut s.plan).unwrap();
        core.prepare(&mut s).unwrap();
        let a1 = allocations();
        let hidden = core.runner.forward_hidden(&s.batch).unwrap();
        let a2 = allocations();
        let last = s
            .logits
            .prompt_logprobs(&core.runner, &hidden, &s.batch)
            .unwrap();
        let a3 = allocations();
        let logits = core.runner.logits(&last).unwrap();
        let a4 = allocations();
        s.logits.gather(&core.runner, logits, &s.modes).unwrap();
        let a5 = allocations();
        assert_eq!(s.plan.decode_tokens, s.plan.items.len());
        // Put the step back so the engine stays consistent.
        core.scheduler.complete(&s.plan).unwrap();
        for k in 0..s.plan.items.len() {
            let row = s.logits.choice(k).unwrap();
            core.on_logits(s.plan.items[k].id, row, &mut s.row).unwrap();
        }
        core.scratch = s;
        (a1 - a0, (a3 - a2) + (a5 - a4))
    }

    #[test]
    fn steady_steps_allocate_nothing_outside_the_model() {
        for batch in [3, 24] {
            let (mut core, _rx) = engine(batch);
            // Prefill, then two decode steps to size the buffers.
            for _ in 0..3 {
                core.step();
            }
            assert_eq!(core.scheduler.num_running(), batch);
            for _ in 0..2 {
                let (prepare, gather) = step_allocations(&mut core);
                assert_eq!(
                    (prepare, gather),
                    (0, 0),
                    "batch {batch}: preparing a decode step and gathering its logits allocated"
                );
            }
        }
    }

    /// A row with no token to choose (every logit -inf) fails its own request with a
    /// generation error, never a made-up token; the other requests go on and its blocks
    /// are released.
    #[test]
    fn a_row_with_no_token_fails_only_its_request() {
        for masked in [0, 1] {
            // Request 0 is greedy, request 1 sampled.
            let (mut core, mut rx) = engine_masking(3, Some(masked));
            for _ in 0..4 {
                core.step();
            }
            let mut failed = false;
            while let Ok(e) = rx[masked].try_recv() {
                match e {
                    Event::Error(EngineError::Generation(m)) => {
                        assert!(m.contains("no token can be chosen"), "{m}");
                        failed = true;
                    }
                    Event::Token { token, .. } => panic!("a token from a masked row: {token:?}"),
                    _ => {}
                }
            }
            assert!(failed, "request {masked} did not fail");
            assert_eq!(core.scheduler.num_running(), 2);
            let others = (0..3).filter(|&i| i != masked);
            for i in others {
                let mut tokens = 0;
                while let Ok(e) = rx[i].try_recv() {
                    assert!(!matches!(e, Event::Error(_)), "request {i} failed");
                    tokens += matches!(e, Event::Token { .. }) as usize;
                }
                assert_eq!(tokens, 4, "request {i}");
            }
        }
    }

    /// Prompt logprobs of a prompt longer than several chunks: every position's logprob
    /// equals the log-softmax of the whole prompt's logits, computed in one piece.
    #[test]
    fn prompt_logprobs_in_chunks_equal_the_whole_prompt_logits() {
        let spec = RandomSpec {
            shape: RandomShape::Tiny,
            seed: 9,
        };
        let (model, tok) = load(spec, DType::F32, &Device::Cpu).unwrap();
        let cache = CacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        let n = 2 * PROMPT_LOGPROB_CHUNK + 37;
        let prompt: Vec<u32> = (0..n as u32).map(|t| (t * 7 + 3) % 500).collect();
        // The reference: one forward over every row, whole logits.
        let mut reference =
            ModelRunner::new(load(spec, DType::F32, &Device::Cpu).unwrap().0, cache);
        let mut seq = Sequence::new(prompt.clone());
        reference.reserve(&mut seq, n).unwrap();
        let mut batch = FlatBatch::default();
        batch.push(&seq, n, true, 16).unwrap();
        let logits = reference.forward(&batch).unwrap();
        let want: Vec<f32> = (0..n - 1)
            .map(|r| {
                let row = logits.get(r).unwrap().to_vec1::<f32>().unwrap();
                log_softmax_at(&row, prompt[r + 1])
            })
            .collect();
        let config = EngineConfig {
            scheduler: SchedulerConfig {
                max_batch_size: 4,
                max_batch_prefill_tokens: 4096,
                ..Default::default()
            },
            check_invariants: true,
            ..Default::default()
        };
        let mut core = EngineCore::new(
            ModelRunner::new(model, cache),
            Arc::new(tok),
            Arc::new(EngineStats::default()),
            config,
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        core.admit(Submission {
            request: GenerationRequest {
                id: 0,
                prompt: prompt.clone(),
                sampling: SamplingParams::default(),
                stopping: StoppingParams {
                    max_new_tokens: 2,
                    stop_sequences: vec![],
                    include_stop_sequence: true,
                    ignore_eos: true,
                },
                top_n_tokens: 0,
                prompt_logprobs: true,
                candidates: 1,
            },
            events: tx,
            queued: Instant::now(),
        });
        core.step();
        let mut got = None;
        while let Ok(e) = rx.try_recv() {
            if let Event::Prefill { tokens } = e {
                got = Some(tokens);
            }
        }
        let got = got.expect("prompt logprobs were sent");
        // The first prompt token has no logprob (nothing predicts it).
        assert_eq!(got.len(), n);
        for (i, t) in got.iter().skip(1).enumerate() {
            assert_eq!(t.id, prompt[i + 1]);
            assert!(
                (t.logprob - want[i]).abs() < 1e-4,
                "position {}: {} vs {}",
                i + 1,
                t.logprob,
                want[i]
            );
        }
    }
}

//! The engine core: the step loop that runs on the engine thread, and the same loop run
//! in place for the CLI and tests ([`EngineCore::submit`] + [`EngineCore::step`], as
//! nano-vllm's `add_request` + `step`).
//!
//! One step: the scheduler plans which sequences run and how many of their tokens
//! (`scheduler`); the plan becomes one flattened batch, and each item's row is placed
//! where its token will be chosen (`placement`); the runner runs the model; each chosen
//! token becomes text and events for its request (`output`), and the requests' books
//! are kept (`requests`): forks for several candidates, finished candidates, ended
//! requests. A failed step fails only the requests in it; a request whose row cannot
//! give a token fails alone; a request whose client has gone is dropped before the next
//! step and its blocks are freed.

use std::ops::Range;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{anyhow, Result};
use tokio::sync::mpsc::unbounded_channel;

use super::batch::FlatBatch;
use super::handle::{Command, EngineConfig, EventReceiver, Submission};
use super::masks::StepMasks;
use super::output::token_info;
use super::placement::{RowChoice, RowMode, StepLogits};
use super::request::{EngineError, Event, FinishReason, GenerationRequest};
use super::requests::{Group, GroupId, Requests};
use super::runner::ModelRunner;
use super::scheduler::{Scheduler, SeqId, StepPlan};
use super::sequence::Sequence;
use super::stats::{EngineStats, StatsSnapshot, StepFigures};
use crate::grammar::TokenMask;
use crate::kv::BlockPool;
use crate::sampling::{Sampled, Sampler};
use crate::tokenizer::Tokenizer;

/// The step loop over one model: the runner, the scheduler (the one block allocator)
/// and the requests in flight.
pub struct EngineCore {
    runner: ModelRunner,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
    eos_ids: Vec<u32>,
    requests: Requests,
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
    gids: Vec<GroupId>,
    logits: StepLogits,
    /// Grammar masks of the constrained items.
    masks: StepMasks,
    /// A row's logits, copied for a sampler that processes them in place.
    row: Vec<f32>,
}

/// How sampling gets a candidate's token.
enum Choice<'a> {
    /// From its logits row (processed in place).
    Sample(&'a mut [f32]),
    /// Chosen on the device, with its logprob.
    Chosen(u32, f32),
}

impl EngineCore {
    /// An engine over `runner`; its scheduler's blocks are the runner's cache blocks
    /// (the runner's block size wins over `config.scheduler.block_size`).
    pub fn new(
        runner: ModelRunner,
        tokenizer: Arc<Tokenizer>,
        stats: Arc<EngineStats>,
        mut config: EngineConfig,
    ) -> Self {
        config.scheduler.block_size = runner.block_size();
        let scheduler = Scheduler::new(config.scheduler.clone(), runner.num_blocks());
        let eos_ids = tokenizer.eos_ids().to_vec();
        Self {
            runner,
            scheduler,
            tokenizer,
            stats,
            config,
            eos_ids,
            requests: Requests::default(),
            shutting_down: false,
            scratch: StepScratch::default(),
        }
    }

    /// Queues a request in this engine (run it with [`EngineCore::step`]); fails as
    /// [`super::EngineHandle::submit`] does for a request that can never run here.
    pub fn submit(&mut self, request: GenerationRequest) -> Result<EventReceiver, EngineError> {
        let vocab = self.runner.model().config().vocab_size;
        let kv_tokens = self.runner.num_blocks() * self.runner.block_size();
        request.validate(vocab, kv_tokens)?;
        self.stats.try_enter(u64::MAX);
        let (events, rx) = unbounded_channel();
        self.admit(Submission {
            request,
            events,
            queued: Instant::now(),
        });
        Ok(rx)
    }

    /// Whether a request is waiting or running.
    pub fn has_work(&self) -> bool {
        self.scheduler.has_work()
    }

    /// The KV block pool (the scheduler's).
    pub fn pool(&self) -> &BlockPool {
        self.scheduler.pool()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Drops the free blocks of the prefix cache.
    pub fn clear_prefix_cache(&mut self) {
        self.scheduler.clear_prefix_cache();
        self.publish_gauges();
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
    pub(crate) fn run(&mut self, commands: mpsc::Receiver<Command>) {
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
            self.step();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(sub) => self.admit(sub),
            Command::ClearPrefixCache => self.clear_prefix_cache(),
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
        let first = request
            .prompt_logprobs
            .then(|| token_info(&self.tokenizer, request.prompt[0], f32::NAN));
        let seq = Sequence::new(request.prompt.clone());
        let no_prefix_reuse = request.prompt_logprobs;
        let sid = self.requests.admit(request, events, queued, first);
        self.scheduler.add(sid, seq, no_prefix_reuse);
        self.publish_gauges();
    }

    /// Removes requests whose receiver is gone.
    fn drop_cancelled(&mut self) {
        for gid in self.requests.closed() {
            self.end_group(gid);
            self.stats.cancelled();
        }
        self.publish_gauges();
    }

    /// Forgets a request and releases every sequence it still has.
    fn end_group(&mut self, gid: GroupId) -> Option<Group> {
        let (g, live) = self.requests.remove(gid)?;
        for sid in live {
            if let Err(e) = self.scheduler.remove(sid) {
                tracing::error!("releasing sequence {sid}: {e}");
            }
        }
        self.stats.leave();
        Some(g)
    }

    fn fail_group(&mut self, gid: GroupId, err: EngineError) {
        // Release first (blocks and the in-flight slot), then tell the client.
        if let Some(g) = self.end_group(gid) {
            g.send(Event::Error(err));
        }
        self.stats.failed();
    }

    /// Ends every request with `err` (engine stopping).
    pub fn fail_all(&mut self, err: EngineError) {
        let all: Vec<GroupId> = self.requests.ids().collect();
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

    /// Fills the step's batch from its plan, and where each item's token is chosen.
    fn prepare(&mut self, s: &mut StepScratch) -> Result<()> {
        let StepScratch {
            plan,
            batch,
            modes,
            logits,
            ..
        } = s;
        super::placement::prepare(
            plan,
            &self.scheduler,
            &mut self.requests,
            &self.runner,
            batch,
            modes,
            logits,
        )
    }

    /// Runs the model on the step's plan and brings its logits (or chosen tokens) to the
    /// host, into `s.logits`; the constrained items' grammar masks are computed on a
    /// second thread meanwhile (`masks`), into `s.masks`.
    fn forward(&mut self, s: &mut StepScratch) -> Result<()> {
        let mut masks = std::mem::take(&mut s.masks);
        masks.lend(&s.plan, &mut self.requests);
        let logits = if masks.is_empty() {
            self.forward_logits(s)
        } else {
            let (logits, joined, waited) = std::thread::scope(|scope| {
                let side = scope.spawn(|| masks.compute());
                let logits = self.forward_logits(s);
                let waiting = Instant::now();
                let joined = side.join();
                (logits, joined, waiting.elapsed())
            });
            self.stats.record_masks(&masks.times, waited);
            joined
                .map_err(|_| anyhow!("grammar mask computation panicked"))
                .and(logits)
        };
        masks.give_back(&mut self.requests);
        s.masks = masks;
        s.logits.gather(&self.runner, logits?, &s.modes, &s.masks)
    }

    /// The model's choice logits for the step (on its device).
    fn forward_logits(&mut self, s: &mut StepScratch) -> Result<candle_core::Tensor> {
        self.prepare(s)?;
        let hidden = self.runner.forward_hidden(&s.batch)?;
        let last = s.logits.prompt_logprobs(&self.runner, &hidden, &s.batch)?;
        self.runner.logits(&last)
    }

    /// Drops cancelled requests, then runs one step if there is work.
    pub fn step(&mut self) {
        self.drop_cancelled();
        if !self.scheduler.has_work() {
            return;
        }
        let mut s = std::mem::take(&mut self.scratch);
        self.step_with(&mut s);
        self.scratch = s;
    }

    fn step_with(&mut self, s: &mut StepScratch) {
        if let Err(e) = self.scheduler.schedule_into(&mut s.plan) {
            tracing::error!("scheduling failed: {e}");
            self.fail_all(EngineError::Generation(e.to_string()));
            return;
        }
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
                .filter_map(|it| self.requests.group_of(it.id)),
        );
        s.gids.sort_unstable();
        s.gids.dedup();
        for &gid in &s.gids {
            if let Some(g) = self.requests.group_mut(gid) {
                g.started.get_or_insert(now);
            }
        }
        let result = self.fault(&s.gids).and_then(|()| self.forward(s));
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
            masks,
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
            self.record_prompt_logprobs(item.id, item.num_tokens, logits, rows);
            if !item.completes {
                continue;
            }
            let mask = match masks.of(k) {
                None => Ok(None),
                Some(Ok(m)) => Ok(Some(m)),
                Some(Err(e)) => Err(anyhow!("grammar: {e}")),
            };
            let result = match (logits.choice(k), mask) {
                (Some(row), Ok(mask)) => self.on_logits(item.id, row, mask, row_buf),
                (_, Err(e)) => Err(e),
                (None, _) => Err(anyhow!("no logits for item {k}")),
            };
            if let Err(e) = result {
                if let Some(gid) = self.requests.group_of(item.id) {
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
        figures.elapsed_us = now.elapsed().as_micros() as u64;
        self.stats.record_step(figures);
        if self.config.check_invariants {
            if let Err(e) = self.scheduler.check_invariants() {
                panic!("KV block invariant broken: {e}");
            }
        }
    }

    /// The test hook's verdict on a step of these requests.
    fn fault(&self, gids: &[GroupId]) -> Result<()> {
        let Some(hook) = &self.config.fault_hook else {
            return Ok(());
        };
        let ids: Vec<u64> = gids
            .iter()
            .filter_map(|&g| self.requests.group(g).map(|g| g.request.id))
            .collect();
        hook(&ids).map_err(|e| anyhow!(e))
    }

    /// Gathers prompt logprobs from a prompt chunk's logits `rows`, and sends them once
    /// the prompt is done.
    fn record_prompt_logprobs(
        &mut self,
        sid: SeqId,
        n: usize,
        logits: &StepLogits,
        rows: Range<usize>,
    ) {
        let Some(seq) = self.scheduler.sequence(sid) else {
            return;
        };
        let Some((g, _)) = self.requests.get_mut(sid) else {
            return;
        };
        if !g.wants_prompt_logprobs() || rows.len() != n {
            return;
        }
        let prompt_len = g.request.prompt.len();
        // Rows cover positions [computed - n, computed); row r predicts position r + 1.
        let start = seq.num_computed - n;
        for (r, pos) in (start..start + n).enumerate() {
            let target = pos + 1;
            if target >= prompt_len || target < g.prefill.len() {
                continue;
            }
            let Some(logprob) = logits.prompt_logprob(rows.start + r) else {
                continue;
            };
            let id = g.request.prompt[target];
            g.prefill.push(token_info(&self.tokenizer, id, logprob));
        }
        if seq.num_computed >= prompt_len && g.prefill.len() == prompt_len {
            g.send_prefill();
        }
    }

    /// Samples the next token of `sid` (and, at the end of a multi-candidate prompt, of
    /// its forks, which share its grammar state) from its logits row, within its grammar
    /// `mask` (already applied on the device to a device's choice).
    /// `buf` holds a copy of the row for each candidate's sampler.
    fn on_logits(
        &mut self,
        sid: SeqId,
        row: RowChoice<'_>,
        mask: Option<&TokenMask>,
        buf: &mut Vec<f32>,
    ) -> Result<()> {
        let gid = self
            .requests
            .group_of(sid)
            .ok_or_else(|| anyhow!("sequence {sid} has no candidate"))?;
        let children = self.fork_candidates(gid, sid)?;
        let targets = std::iter::once(sid).chain(children);
        match row {
            RowChoice::Logits(row) => {
                for target in targets {
                    buf.clear();
                    buf.extend_from_slice(row);
                    if let Some(mask) = mask {
                        mask.apply(buf);
                    }
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

    /// At a request's first token: forks its other candidates from `sid` (their ids
    /// are consecutive, returned), copying a shared partial block.
    fn fork_candidates(&mut self, gid: GroupId, sid: SeqId) -> Result<Range<SeqId>> {
        let start = self.requests.next_seq_id();
        let Some(g) = self.requests.group_mut(gid) else {
            return Ok(start..start);
        };
        if g.forked {
            return Ok(start..start);
        }
        g.forked = true;
        for index in 1..g.request.candidates {
            let child = self.requests.next_seq_id();
            if let Some((src, dst)) = self.scheduler.fork(sid, child)? {
                self.runner.copy_block(src, dst)?;
            }
            self.requests.add_candidate(gid, index);
        }
        Ok(start..self.requests.next_seq_id())
    }

    /// Chooses `sid`'s next token, sends it, and ends the candidate (and the request
    /// with its last candidate) when it finishes.
    fn sample_one(&mut self, sid: SeqId, choice: Choice<'_>) -> Result<()> {
        let Some((g, cand)) = self.requests.get_mut(sid) else {
            return Ok(());
        };
        let seq = self
            .scheduler
            .sequence(sid)
            .ok_or_else(|| anyhow!("sequence {sid} vanished"))?;
        let (prompt, generated) = seq.tokens.split_at(seq.prompt_len);
        let sampled = choose(&mut cand.sampler, choice, prompt, generated, &g.request)?;
        let n_generated = generated.len() + 1;
        let grammar_complete = match &mut cand.constraint {
            Some(c) => {
                c.accept(sampled.id)?;
                c.is_complete()
            }
            None => false,
        };
        let accepted = cand.output.accept(
            &self.tokenizer,
            &sampled,
            n_generated,
            &g.request.stopping,
            &self.eos_ids,
            grammar_complete,
        )?;
        let now = Instant::now();
        g.first_token.get_or_insert(now);
        if g.request.prompt_logprobs && !g.prefill_sent {
            // The prompt was fully cached or chunk bookkeeping missed rows: send what
            // we have so the order of events holds.
            g.send_prefill();
        }
        g.send(Event::Token {
            candidate: cand.index,
            token: accepted.token,
            last: accepted.finish.is_some(),
        });
        self.scheduler.append_token(sid, sampled.id)?;
        match accepted.finish {
            Some(reason) => self.finish_candidate(sid, reason, n_generated, now),
            None => Ok(()),
        }
    }

    /// Ends candidate `sid`, and its request when it was the last.
    fn finish_candidate(
        &mut self,
        sid: SeqId,
        reason: FinishReason,
        generated_tokens: usize,
        now: Instant,
    ) -> Result<()> {
        let Some(cand) = self.requests.finish_candidate(sid) else {
            return Ok(());
        };
        let gid = cand.group;
        if let Some(g) = self.requests.group(gid) {
            g.send(cand.output.finished(cand.index, reason, generated_tokens));
        }
        self.scheduler.remove(sid)?;
        if self
            .requests
            .group(gid)
            .is_some_and(|g| g.unfinished == 0 && g.forked)
        {
            // Free the in-flight slot before the client hears it is done, so a client
            // that sends its next request at once is not refused as overloaded.
            self.stats.leave();
            if let Some((g, _)) = self.requests.remove(gid) {
                g.send(g.done(now));
            }
            self.stats.finished();
        }
        Ok(())
    }
}

/// The token a candidate's sampler chooses from its row, or the device's choice.
fn choose(
    sampler: &mut Sampler,
    choice: Choice<'_>,
    prompt: &[u32],
    generated: &[u32],
    request: &GenerationRequest,
) -> Result<Sampled> {
    Ok(match choice {
        Choice::Sample(logits) => {
            sampler.sample(logits, prompt, generated, request.top_n_tokens)?
        }
        // Chosen on the device (see `placement`): the argmax, or a draw by
        // `sampling::gumbel`'s rule from the same distribution.
        Choice::Chosen(crate::sampling::gumbel::NO_TOKEN, _) => {
            return Err(crate::sampling::NoToken.into())
        }
        Choice::Chosen(id, logprob) => Sampled {
            id,
            logprob,
            top: Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::placement::PROMPT_LOGPROB_CHUNK;
    use crate::engine::request::StoppingParams;
    use crate::engine::runner::CacheConfig;
    use crate::engine::scheduler::SchedulerConfig;
    use crate::model::random::{load, RandomShape, RandomSpec};
    use crate::sampling::log_softmax_at;
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
                    grammar: None,
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
        s.logits
            .gather(&core.runner, logits, &s.modes, &s.masks)
            .unwrap();
        let a5 = allocations();
        assert_eq!(s.plan.decode_tokens, s.plan.items.len());
        // Put the step back so the engine stays consistent.
        core.scheduler.complete(&s.plan).unwrap();
        for k in 0..s.plan.items.len() {
            let row = s.logits.choice(k).unwrap();
            core.on_logits(s.plan.items[k].id, row, None, &mut s.row)
                .unwrap();
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
        let mut pool = BlockPool::new(cache.num_blocks);
        let mut seq = Sequence::new(prompt.clone());
        seq.reserve(n, 16, &mut pool).unwrap();
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
                grammar: None,
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

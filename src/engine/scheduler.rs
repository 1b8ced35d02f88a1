//! The scheduling policy: which sequences run in the next step and how many of their
//! tokens, within the step's token budgets and the KV blocks available.
//!
//! One policy, as vLLM v1 and TGI's router: running sequences first, oldest first (a
//! decode is one token; a prompt still being prefilled takes a chunk of the remaining
//! prefill budget), then waiting sequences first-come first-served while the prefill
//! budget, the batch size and free blocks allow. A running sequence that needs a block
//! when none is free preempts the most recently admitted one, which goes back to the
//! front of the queue to be recomputed. New admissions reuse every leading block of their
//! tokens found in the prefix cache. While a batch runs, TGI's `waiting_served_ratio`
//! and `max_waiting_tokens` decide whether a step admits at all: admission is planned as
//! a dry run and kept only if enough requests fit.
//!
//! The scheduler knows sequences only by id, tokens and block tables: the engine core runs
//! the model and samples, then reports back with [`Scheduler::complete`].

use std::collections::{HashMap, VecDeque};

use super::sequence::Sequence;
use crate::kv::{block_hash, BlockHash, BlockId, BlockPool, BlockTable};

pub type SeqId = u64;

/// TGI's batching knobs, same names and meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Most prompt tokens computed in one step (prompts longer than what is left are
    /// prefilled in chunks across steps).
    pub max_batch_prefill_tokens: usize,
    /// Most sequences in one step.
    pub max_batch_size: usize,
    /// Steps after the last admission during which `waiting_served_ratio` may hold
    /// waiting requests back (to gather them into one prefill); from then on whatever
    /// fits is admitted.
    pub max_waiting_tokens: usize,
    /// While a batch is running, waiting requests are admitted only when at least this
    /// fraction of the running batch size (rounded down) of them would be admitted in the
    /// step, within its budgets and the free blocks, as TGI's router; or once
    /// `max_waiting_tokens` steps have passed since the last admission.
    pub waiting_served_ratio: f32,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Reuse cached prefix blocks.
    pub prefix_caching: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_batch_prefill_tokens: 4096,
            max_batch_size: 256,
            max_waiting_tokens: 20,
            waiting_served_ratio: 0.3,
            block_size: crate::kv::DEFAULT_BLOCK_SIZE,
            prefix_caching: true,
        }
    }
}

/// A sequence as the scheduler tracks it.
#[derive(Debug)]
struct Entry {
    seq: Sequence,
    /// Hashes of the sequence's full blocks, computed as tokens arrive.
    hashes: Vec<BlockHash>,
    /// How many leading blocks of the block table are registered in the prefix cache
    /// (or found there).
    registered: usize,
    /// Never look this sequence's prefix up in the cache (its prompt logits are needed).
    no_prefix_reuse: bool,
}

impl Entry {
    /// Extends `hashes` over every full block of the tokens.
    fn update_hashes(&mut self, block_size: usize) {
        let full = self.seq.tokens.len() / block_size;
        while self.hashes.len() < full {
            let j = self.hashes.len();
            let parent = j.checked_sub(1).map(|p| self.hashes[p]);
            let tokens = &self.seq.tokens[j * block_size..(j + 1) * block_size];
            self.hashes.push(block_hash(parent, tokens));
        }
    }
}

/// One sequence's work in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledItem {
    pub id: SeqId,
    /// Pending tokens to compute now (slots are reserved).
    pub num_tokens: usize,
    /// The chunk reaches the end of the tokens: the step yields this sequence's next token.
    pub completes: bool,
}

/// A waiting sequence that fits in the step: its block table with the prefix-cache hits
/// and the new chunk's slots.
#[derive(Debug)]
struct Admission {
    id: SeqId,
    table: BlockTable,
    hit_blocks: usize,
    num_tokens: usize,
    completes: bool,
}

/// The outcome of planning one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub items: Vec<ScheduledItem>,
    /// Sequences preempted while planning (now at the front of the queue).
    pub preempted: Vec<SeqId>,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
    /// Tokens of newly admitted sequences found in the prefix cache.
    pub prefix_hit_tokens: usize,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Empties the plan, keeping its capacity.
    pub fn clear(&mut self) {
        self.items.clear();
        self.preempted.clear();
        self.prefill_tokens = 0;
        self.decode_tokens = 0;
        self.prefix_hit_tokens = 0;
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("sequence {0} is unknown")]
    Unknown(SeqId),
    #[error("{needed} tokens need {blocks} KV blocks but the cache has {total}")]
    TooLong {
        needed: usize,
        blocks: usize,
        total: usize,
    },
    #[error(transparent)]
    Pool(#[from] crate::kv::PoolError),
}

#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    entries: HashMap<SeqId, Entry>,
    waiting: VecDeque<SeqId>,
    /// In admission order, oldest first.
    running: Vec<SeqId>,
    /// Steps since the last one that admitted waiting requests (TGI's `waiting_tokens`):
    /// at `max_waiting_tokens`, `waiting_served_ratio` no longer holds admissions back.
    waiting_steps: usize,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, num_blocks: usize) -> Self {
        Self {
            cfg,
            pool: BlockPool::new(num_blocks),
            entries: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            waiting_steps: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn sequence(&self, id: SeqId) -> Option<&Sequence> {
        self.entries.get(&id).map(|e| &e.seq)
    }

    /// Slots a sequence of `tokens` tokens may ever need, in blocks, and whether the
    /// cache can hold it at all.
    pub fn check_fits(&self, tokens: usize) -> Result<(), ScheduleError> {
        let blocks = tokens.div_ceil(self.cfg.block_size);
        if blocks > self.pool.num_blocks() {
            return Err(ScheduleError::TooLong {
                needed: tokens,
                blocks,
                total: self.pool.num_blocks(),
            });
        }
        Ok(())
    }

    /// Queues a new sequence at the back of the waiting queue.
    pub fn add(&mut self, id: SeqId, seq: Sequence, no_prefix_reuse: bool) {
        let mut entry = Entry {
            seq,
            hashes: Vec::new(),
            registered: 0,
            no_prefix_reuse,
        };
        entry.update_hashes(self.cfg.block_size);
        self.entries.insert(id, entry);
        self.waiting.push_back(id);
    }

    /// Appends a sampled token to a sequence.
    pub fn append_token(&mut self, id: SeqId, token: u32) -> Result<(), ScheduleError> {
        let bs = self.cfg.block_size;
        let e = self
            .entries
            .get_mut(&id)
            .ok_or(ScheduleError::Unknown(id))?;
        e.seq.tokens.push(token);
        e.update_hashes(bs);
        Ok(())
    }

    /// Forgets a sequence (finished or cancelled) and releases its blocks.
    pub fn remove(&mut self, id: SeqId) -> Result<Sequence, ScheduleError> {
        let mut e = self.entries.remove(&id).ok_or(ScheduleError::Unknown(id))?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        e.seq.release(&mut self.pool)?;
        Ok(e.seq)
    }

    /// A new running sequence `child` that shares `parent`'s computed tokens (and blocks;
    /// a partial last block is copied: the returned (src, dst) block pair must be copied
    /// in the cache before the next step). Without a free block for the copy the child
    /// waits at the front of the queue and is recomputed from the prefix cache.
    pub fn fork(
        &mut self,
        parent: SeqId,
        child: SeqId,
    ) -> Result<Option<(BlockId, BlockId)>, ScheduleError> {
        let bs = self.cfg.block_size;
        let p = self
            .entries
            .get(&parent)
            .ok_or(ScheduleError::Unknown(parent))?;
        let mut seq = p.seq.clone();
        let hashes = p.hashes.clone();
        let registered = p.registered;
        let no_prefix_reuse = p.no_prefix_reuse;
        let partial = seq.block_table.num_tokens() % bs != 0;
        let mut copy = None;
        let runnable = !partial || self.pool.num_free() > 0;
        if runnable {
            seq.block_table = p.seq.block_table.fork(&mut self.pool)?;
            if partial {
                let fresh = self.pool.allocate(1)?[0];
                if let Some(old) = seq.block_table.replace_last(fresh) {
                    self.pool.release(old)?;
                    copy = Some((old, fresh));
                }
            }
        } else {
            seq.block_table = Default::default();
            seq.num_computed = 0;
        }
        self.entries.insert(
            child,
            Entry {
                seq,
                hashes,
                registered: if runnable { registered } else { 0 },
                no_prefix_reuse,
            },
        );
        if runnable {
            self.running.push(child);
        } else {
            self.waiting.push_front(child);
        }
        Ok(copy)
    }

    fn preempt_newest(&mut self, plan: &mut StepPlan) -> Result<Option<SeqId>, ScheduleError> {
        let Some(victim) = self.running.pop() else {
            return Ok(None);
        };
        let e = self
            .entries
            .get_mut(&victim)
            .ok_or(ScheduleError::Unknown(victim))?;
        e.seq.block_table.release(&mut self.pool)?;
        e.seq.num_computed = 0;
        e.registered = 0;
        self.waiting.push_front(victim);
        plan.preempted.push(victim);
        Ok(Some(victim))
    }

    /// Plans the next step and reserves the KV slots it writes.
    pub fn schedule(&mut self) -> Result<StepPlan, ScheduleError> {
        let mut plan = StepPlan::default();
        self.schedule_into(&mut plan)?;
        Ok(plan)
    }

    /// As [`schedule`](Self::schedule), into a plan kept between steps (cleared first),
    /// so a steady step makes no allocation.
    pub fn schedule_into(&mut self, plan: &mut StepPlan) -> Result<(), ScheduleError> {
        plan.clear();
        let bs = self.cfg.block_size;
        let mut prefill_budget = self.cfg.max_batch_prefill_tokens;

        // 1. Running sequences, oldest first.
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let e = self.entries.get(&id).ok_or(ScheduleError::Unknown(id))?;
            let pending = e.seq.num_pending();
            let n = if pending <= 1 {
                pending
            } else {
                pending.min(prefill_budget)
            };
            if n == 0 {
                i += 1;
                continue;
            }
            let mut scheduled = false;
            loop {
                let e = self
                    .entries
                    .get_mut(&id)
                    .ok_or(ScheduleError::Unknown(id))?;
                let have = e.seq.block_table.num_tokens();
                let grow = (e.seq.num_computed + n).saturating_sub(have);
                if e.seq.block_table.blocks_needed(grow, bs) <= self.pool.num_free() {
                    e.seq.block_table.grow(grow, bs, &mut self.pool)?;
                    scheduled = true;
                    break;
                }
                match self.preempt_newest(plan)? {
                    Some(victim) if victim == id => break,
                    Some(_) => continue,
                    None => break,
                }
            }
            if !scheduled {
                break; // this sequence preempted itself: nothing after it is running
            }
            let completes = n == pending;
            plan.items.push(ScheduledItem {
                id,
                num_tokens: n,
                completes,
            });
            if pending > 1 {
                prefill_budget -= n;
                plan.prefill_tokens += n;
            } else {
                plan.decode_tokens += 1;
            }
            i += 1;
        }

        // 2. Waiting sequences, first come first served, unless something was preempted
        // this step (memory is short) or TGI's waiting rules hold admissions back.
        let admitted = if plan.preempted.is_empty() {
            self.admit(plan, prefill_budget)?
        } else {
            0
        };
        // TGI's `waiting_tokens`: steps since the last one that admitted requests.
        self.waiting_steps = if admitted > 0 {
            1
        } else {
            self.waiting_steps.saturating_add(1)
        };
        Ok(())
    }

    /// Admits waiting sequences into the step as TGI's router does (`batching_task` and
    /// `Queue::next_batch`): while a batch is running and fewer than `max_waiting_tokens`
    /// steps have passed since the last admission, the requests that would be admitted
    /// now (a dry run under the prefill budget, the batch size and the free blocks) are
    /// admitted only if there are at least `waiting_served_ratio` × the running batch
    /// size of them; otherwise nobody is and the running sequences keep decoding.
    /// Returns how many were admitted.
    fn admit(
        &mut self,
        plan: &mut StepPlan,
        prefill_budget: usize,
    ) -> Result<usize, ScheduleError> {
        if self.waiting.is_empty()
            || self.running.len() >= self.cfg.max_batch_size
            || prefill_budget == 0
        {
            return Ok(0);
        }
        let min_size =
            if self.running.is_empty() || self.waiting_steps >= self.cfg.max_waiting_tokens {
                0
            } else {
                // Floor, as TGI (a negative or NaN ratio gives 0).
                (self.running.len() as f32 * self.cfg.waiting_served_ratio) as usize
            };
        if self.waiting.len() < min_size {
            return Ok(0);
        }
        let admissions = if min_size <= 1 {
            // Any admission meets the minimum: plan on the pool itself.
            self.plan_admissions(None, prefill_budget)?
        } else {
            // Dry run on a copy of the pool, kept only if enough requests fit, so a
            // held-back step leaves the cache exactly as it was (reference counts, the
            // prefix cache and its LRU order).
            let mut trial = self.pool.clone();
            let admissions = self.plan_admissions(Some(&mut trial), prefill_budget)?;
            if admissions.len() < min_size {
                return Ok(0);
            }
            self.pool = trial;
            admissions
        };
        let admitted = admissions.len();
        for a in admissions {
            let e = self
                .entries
                .get_mut(&a.id)
                .ok_or(ScheduleError::Unknown(a.id))?;
            debug_assert_eq!(self.waiting.front(), Some(&a.id));
            e.seq.block_table = a.table;
            if a.hit_blocks > 0 {
                e.seq.num_computed = a.hit_blocks * self.cfg.block_size;
                e.registered = a.hit_blocks;
            }
            self.waiting.pop_front();
            self.running.push(a.id);
            plan.items.push(ScheduledItem {
                id: a.id,
                num_tokens: a.num_tokens,
                completes: a.completes,
            });
            plan.prefill_tokens += a.num_tokens;
            plan.prefix_hit_tokens += a.hit_blocks * self.cfg.block_size;
        }
        Ok(admitted)
    }

    /// The admissions from the front of the queue that fit in this step, with the
    /// blocks they take from `pool` (the scheduler's own when None), in queue order.
    fn plan_admissions(
        &mut self,
        pool: Option<&mut BlockPool>,
        mut prefill_budget: usize,
    ) -> Result<Vec<Admission>, ScheduleError> {
        let bs = self.cfg.block_size;
        let pool = match pool {
            Some(p) => p,
            None => &mut self.pool,
        };
        let mut admissions = Vec::new();
        for &id in &self.waiting {
            if self.running.len() + admissions.len() >= self.cfg.max_batch_size
                || prefill_budget == 0
            {
                break;
            }
            let e = self.entries.get(&id).ok_or(ScheduleError::Unknown(id))?;
            // Leading blocks found in the prefix cache (always leaving one token to
            // compute, whose logits give the next token).
            let mut hits: Vec<BlockId> = Vec::new();
            if self.cfg.prefix_caching && !e.no_prefix_reuse && e.seq.num_computed == 0 {
                let max_hits = e.seq.tokens.len().saturating_sub(1) / bs;
                for &h in e.hashes.iter().take(max_hits) {
                    match pool.lookup(h) {
                        Some(b) => hits.push(b),
                        None => break,
                    }
                }
            }
            let hit_tokens = hits.len() * bs;
            let start = e.seq.num_computed.max(hit_tokens);
            let n = e.seq.tokens.len().saturating_sub(start).min(prefill_budget);
            let blocks_after = (start + n).div_ceil(bs);
            let new_blocks =
                blocks_after.saturating_sub(hits.len().max(e.seq.block_table.blocks().len()));
            let hits_free = hits.iter().filter(|&&b| pool.ref_count(b) == 0).count();
            if new_blocks + hits_free > pool.num_free() {
                break;
            }
            let mut table = e.seq.block_table.clone();
            for &b in &hits {
                pool.acquire_cached(b)?;
                table.push_full(b, bs);
            }
            let grow = (start + n).saturating_sub(table.num_tokens());
            table.grow(grow, bs, pool)?;
            admissions.push(Admission {
                id,
                table,
                hit_blocks: hits.len(),
                num_tokens: n,
                completes: start + n == e.seq.tokens.len(),
            });
            prefill_budget -= n;
        }
        Ok(admissions)
    }

    /// Records that the plan's tokens were computed, and registers newly full blocks in
    /// the prefix cache.
    pub fn complete(&mut self, plan: &StepPlan) -> Result<(), ScheduleError> {
        let bs = self.cfg.block_size;
        for item in &plan.items {
            let Some(e) = self.entries.get_mut(&item.id) else {
                continue; // removed in the meantime
            };
            e.seq.num_computed += item.num_tokens;
            let full = (e.seq.num_computed / bs).min(e.hashes.len());
            if self.cfg.prefix_caching {
                while e.registered < full {
                    let j = e.registered;
                    // Another block may hold the same contents already: then this one
                    // simply stays private.
                    self.pool
                        .register(e.seq.block_table.blocks()[j], e.hashes[j]);
                    e.registered += 1;
                }
            }
        }
        Ok(())
    }

    /// Ids of every sequence the scheduler holds.
    pub fn ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.entries.keys().copied()
    }

    /// Checks the pool's reference counts against every block table.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool
            .check_ref_counts(self.entries.values().map(|e| e.seq.block_table.blocks()))?;
        for (&id, e) in &self.entries {
            let in_running = self.running.contains(&id);
            let in_waiting = self.waiting.contains(&id);
            if in_running == in_waiting {
                return Err(format!(
                    "sequence {id}: running {in_running}, waiting {in_waiting}"
                ));
            }
            if in_waiting && !e.seq.block_table.blocks().is_empty() {
                return Err(format!("waiting sequence {id} holds blocks"));
            }
        }
        Ok(())
    }

    /// Drops the prefix cache's free blocks.
    pub fn clear_prefix_cache(&mut self) {
        self.pool.clear_cache();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(prefill: usize, batch: usize, bs: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_batch_prefill_tokens: prefill,
            max_batch_size: batch,
            max_waiting_tokens: 4,
            waiting_served_ratio: 0.3,
            block_size: bs,
            prefix_caching: true,
        }
    }

    /// Runs one step as the engine would: plan, "compute", append a token to every
    /// sequence whose chunk completes. Returns the plan.
    fn step(s: &mut Scheduler, next_token: &mut u32) -> StepPlan {
        let plan = s.schedule().unwrap();
        s.complete(&plan).unwrap();
        for it in &plan.items {
            if it.completes {
                *next_token += 1;
                s.append_token(it.id, 1000 + *next_token % 7).unwrap();
            }
        }
        s.check_invariants().unwrap();
        plan
    }

    fn generated(s: &Scheduler, id: SeqId) -> usize {
        let seq = s.sequence(id).unwrap();
        seq.tokens.len() - seq.prompt_len
    }

    #[test]
    fn budgets_hold_in_every_step_and_nobody_starves() {
        let (prefill, batch, bs) = (64, 6, 4);
        let mut s = Scheduler::new(cfg(prefill, batch, bs), 60);
        let mut tok = 0;
        let mut arrival = HashMap::new();
        let mut admitted_at = HashMap::new();
        let mut next_id = 0;
        let max_new = 12;
        for t in 0..400u64 {
            // A steady load: a new request every other step, prompts of 1..100 tokens.
            if t % 2 == 0 && t < 300 {
                let len = 1 + (t as usize * 37) % 100;
                s.add(next_id, Sequence::new((0..len as u32).collect()), false);
                arrival.insert(next_id, t);
                next_id += 1;
            }
            let plan = step(&mut s, &mut tok);
            assert!(plan.prefill_tokens <= prefill, "prefill budget exceeded");
            assert!(plan.items.len() <= batch, "batch size exceeded");
            assert!(s.num_running() <= batch);
            assert!(s.pool().num_used() <= s.pool().num_blocks());
            for it in &plan.items {
                admitted_at.entry(it.id).or_insert(t);
            }
            let done: Vec<SeqId> = s.ids().filter(|&id| generated(&s, id) >= max_new).collect();
            for id in done {
                s.remove(id).unwrap();
            }
        }
        assert!(!s.has_work(), "everything finishes");
        assert_eq!(s.pool().num_used(), 0);
        // Bounded wait: nobody waits more than a generous multiple of a request's life.
        let worst = arrival
            .iter()
            .map(|(id, &a)| admitted_at[id] - a)
            .max()
            .unwrap();
        assert!(worst <= 60, "a request waited {worst} steps");
    }

    #[test]
    fn long_prompts_are_chunked_alongside_decodes() {
        let mut s = Scheduler::new(cfg(8, 4, 4), 64);
        let mut tok = 0;
        s.add(0, Sequence::new(vec![1, 2, 3]), false);
        step(&mut s, &mut tok); // prefill of the short one
        s.add(1, Sequence::new((0..30).collect()), false);
        let mut chunks = 0;
        while generated(&s, 1) == 0 {
            let plan = step(&mut s, &mut tok);
            assert!(plan.items.iter().any(|i| i.id == 0 && i.num_tokens == 1));
            assert!(plan.prefill_tokens <= 8);
            chunks += 1;
        }
        assert_eq!(chunks, 4, "30 tokens in chunks of 8");
    }

    #[test]
    fn preemption_requeues_the_newest_and_recomputes_it() {
        // 6 blocks of 4 tokens; two sequences that will each want 4 blocks.
        let mut s = Scheduler::new(cfg(64, 4, 4), 6);
        let mut tok = 0;
        s.add(0, Sequence::new((0..8).collect()), false);
        s.add(1, Sequence::new((10..18).collect()), false);
        let mut preempted = 0;
        for _ in 0..40 {
            let plan = step(&mut s, &mut tok);
            preempted += plan.preempted.len();
            if let Some(&v) = plan.preempted.first() {
                assert_eq!(v, 1, "the newest goes");
                assert!(s.sequence(1).unwrap().block_table.blocks().is_empty());
            }
            let done: Vec<SeqId> = s.ids().filter(|&id| generated(&s, id) >= 10).collect();
            for id in done {
                s.remove(id).unwrap();
            }
        }
        assert!(preempted > 0);
        assert!(!s.has_work());
    }

    #[test]
    fn shared_prefix_blocks_are_reused() {
        let mut s = Scheduler::new(cfg(64, 4, 4), 32);
        let mut tok = 0;
        let prefix: Vec<u32> = (100..120).collect(); // 5 full blocks
        let mut a = prefix.clone();
        a.extend([1, 2, 3]);
        s.add(0, Sequence::new(a), false);
        let p = step(&mut s, &mut tok);
        assert_eq!((p.prefill_tokens, p.prefix_hit_tokens), (23, 0));
        s.remove(0).unwrap();
        let mut b = prefix.clone();
        b.extend([7, 8]);
        s.add(1, Sequence::new(b), false);
        let p = step(&mut s, &mut tok);
        assert_eq!((p.prefill_tokens, p.prefix_hit_tokens), (2, 20));
        // A prompt that is entirely cached still computes its last block.
        s.add(2, Sequence::new(prefix.clone()), false);
        let p = step(&mut s, &mut tok);
        assert_eq!(p.prefix_hit_tokens, 16);
        assert!(p.items.iter().any(|i| i.id == 2 && i.num_tokens == 4));
        // Opting out computes everything.
        s.add(3, Sequence::new(prefix), true);
        let p = step(&mut s, &mut tok);
        assert_eq!(p.prefix_hit_tokens, 0);
        for id in [1, 2, 3] {
            s.remove(id).unwrap();
        }
        assert_eq!(s.pool().num_used(), 0);
        assert!(s.pool().num_cached() >= 5);
    }

    #[test]
    fn fork_shares_full_blocks_and_copies_the_partial_one() {
        let mut s = Scheduler::new(cfg(64, 4, 4), 8);
        let mut tok = 0;
        s.add(0, Sequence::new((0..6).collect()), false);
        let plan = s.schedule().unwrap();
        s.complete(&plan).unwrap();
        let copy = s.fork(0, 1).unwrap().unwrap();
        let (p, c) = (s.sequence(0).unwrap(), s.sequence(1).unwrap());
        assert_eq!(p.block_table.blocks()[0], c.block_table.blocks()[0]);
        assert_eq!(copy, (p.block_table.blocks()[1], c.block_table.blocks()[1]));
        assert_ne!(copy.0, copy.1);
        assert_eq!(s.pool().ref_count(p.block_table.blocks()[0]), 2);
        s.append_token(0, 50).unwrap();
        s.append_token(1, 51).unwrap();
        s.check_invariants().unwrap();
        let plan = step(&mut s, &mut tok);
        assert_eq!(plan.decode_tokens, 2);
        s.remove(0).unwrap();
        s.remove(1).unwrap();
        assert_eq!(s.pool().num_used(), 0);
    }

    /// A scheduler (16-token blocks, `max_waiting_tokens` 4, ratio 0.3) whose running
    /// batch is `n` two-token prompts, just prefilled: `extra` blocks stay free.
    fn running_batch(n: u32, extra: usize) -> (Scheduler, u32) {
        let mut s = Scheduler::new(cfg(1024, 64, 16), n as usize + extra);
        let mut tok = 0;
        for i in 0..n {
            s.add(
                i as SeqId,
                Sequence::new(vec![10 + 2 * i, 11 + 2 * i]),
                false,
            );
        }
        let plan = step(&mut s, &mut tok);
        assert_eq!(
            plan.items.len(),
            n as usize,
            "nothing runs: all admitted at once"
        );
        assert_eq!(s.pool().num_free(), extra);
        (s, tok)
    }

    /// `n` ten-token prompts of their own, queued with ids from 100.
    fn queue_prompts(s: &mut Scheduler, n: u32) {
        for i in 0..n {
            let prompt = (0..10).map(|t| 5000 + 10 * i + t).collect();
            s.add(100 + i as SeqId, Sequence::new(prompt), false);
        }
    }

    #[test]
    fn waiting_served_ratio_counts_what_fits_not_what_waits() {
        // 10 running, 10 waiting, but one free block: one admission fits, fewer than
        // 10 × 0.3 = 3, so nobody is admitted until 4 steps have passed since the last
        // admission (a count of waiting requests would have admitted one at once).
        let (mut s, mut tok) = running_batch(10, 1);
        queue_prompts(&mut s, 10);
        for k in 1..4 {
            let plan = step(&mut s, &mut tok);
            assert_eq!(plan.decode_tokens, 10, "step {k}: the batch keeps decoding");
            assert_eq!(plan.prefill_tokens, 0, "step {k}: held back");
            assert_eq!((s.num_running(), s.num_waiting()), (10, 10));
            assert_eq!(s.pool().num_free(), 1, "a held step takes no block");
        }
        let plan = step(&mut s, &mut tok);
        assert_eq!((plan.prefill_tokens, plan.decode_tokens), (10, 10));
        assert_eq!((s.num_running(), s.num_waiting()), (11, 9));
        assert!(plan.items.iter().any(|i| i.id == 100 && i.completes));
    }

    #[test]
    fn waiting_served_ratio_admits_when_enough_fit() {
        for (free, at_step, admitted) in [(3, 1, 3), (10, 1, 10), (2, 4, 2), (0, 0, 0)] {
            let (mut s, mut tok) = running_batch(10, free);
            queue_prompts(&mut s, 10);
            for k in 1..=6 {
                let plan = step(&mut s, &mut tok);
                let n = plan.items.iter().filter(|i| i.num_tokens == 10).count();
                let expect = if k == at_step { admitted } else { 0 };
                assert_eq!(n, expect, "{free} free blocks, step {k}");
                assert_eq!(plan.prefill_tokens, 10 * n);
            }
            assert_eq!(s.num_waiting(), 10 - admitted);
        }
    }

    #[test]
    fn max_waiting_tokens_counts_steps_since_the_last_admission() {
        // As TGI's `waiting_tokens`: the steps count whether or not anybody waits.
        let (mut s, mut tok) = running_batch(10, 20);
        for _ in 0..5 {
            step(&mut s, &mut tok);
        }
        queue_prompts(&mut s, 1);
        let plan = step(&mut s, &mut tok);
        assert_eq!(
            plan.prefill_tokens, 10,
            "admitted at once: 5 steps since the last"
        );
        // The admission restarts the count: the next one waits 3 steps (1 of 11 × 0.3).
        s.add(
            200,
            Sequence::new((0..10).map(|t| 7000 + t).collect()),
            false,
        );
        for _ in 1..4 {
            assert_eq!(step(&mut s, &mut tok).prefill_tokens, 0);
        }
        let plan = step(&mut s, &mut tok);
        assert!(plan.items.iter().any(|i| i.id == 200));
    }

    #[test]
    fn a_held_back_step_leaves_the_prefix_cache_as_it_was() {
        // Two cached free blocks (a 32-token prompt computed, then removed), 10 running
        // sequences, one more free block. The first waiting request would take both
        // cached blocks and the free one; the second fits no more: held back.
        let mut s = Scheduler::new(cfg(1024, 64, 16), 13);
        let mut tok = 0;
        let prefix: Vec<u32> = (0..32).map(|t| 9000 + t).collect();
        s.add(50, Sequence::new(prefix.clone()), false);
        step(&mut s, &mut tok);
        s.remove(50).unwrap();
        assert_eq!(s.pool().num_cached_free(), 2);
        for i in 0..10 {
            s.add(
                i,
                Sequence::new(vec![10 + 2 * i as u32, 11 + 2 * i as u32]),
                false,
            );
        }
        step(&mut s, &mut tok);
        assert_eq!((s.num_running(), s.pool().num_free()), (10, 3));
        let mut first = prefix;
        first.extend([1, 2, 3, 4]);
        s.add(100, Sequence::new(first), false);
        for i in 1..3 {
            s.add(100 + i, Sequence::new(vec![8000 + i as u32; 4]), false);
        }
        for _ in 1..4 {
            let plan = step(&mut s, &mut tok);
            assert_eq!(plan.prefill_tokens, 0);
            assert_eq!(s.pool().num_free(), 3);
            assert_eq!(
                s.pool().num_cached_free(),
                2,
                "the dry run took no cached block"
            );
        }
        let plan = step(&mut s, &mut tok);
        assert_eq!((plan.prefill_tokens, plan.prefix_hit_tokens), (4, 32));
        assert_eq!(s.pool().num_free(), 0);
    }

    #[test]
    fn too_long_is_refused_up_front() {
        let s = Scheduler::new(cfg(64, 4, 4), 2);
        assert!(s.check_fits(8).is_ok());
        assert!(matches!(
            s.check_fits(9),
            Err(ScheduleError::TooLong { .. })
        ));
    }
}

//! Counters and gauges the engine keeps for the server to export. Plain atomics owned by
//! one engine (no global registry): the server reads a snapshot when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct EngineStats {
    // Gauges.
    queue_size: AtomicU64,
    running: AtomicU64,
    in_flight: AtomicU64,
    blocks_total: AtomicU64,
    blocks_used: AtomicU64,
    blocks_cached: AtomicU64,
    batch_tokens: AtomicU64,
    last_prefill_tokens: AtomicU64,
    last_decode_tokens: AtomicU64,
    // Counters.
    steps: AtomicU64,
    prefill_tokens: AtomicU64,
    decode_tokens: AtomicU64,
    preemptions: AtomicU64,
    prefix_hit_tokens: AtomicU64,
    requests_finished: AtomicU64,
    requests_cancelled: AtomicU64,
    requests_failed: AtomicU64,
    step_us: AtomicU64,
    grammar: MaskTimes,
}

/// Upper bounds (microseconds) of the grammar mask time histogram's buckets.
pub const MASK_BUCKETS_US: [u64; 16] = [
    5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 250, 500, 1_000, 2_500, 5_000, 10_000,
];

/// How long grammar masks took: a histogram of the time per mask, and how long steps
/// waited for masks once their forward pass was done (the part of mask time that is
/// not hidden behind the model).
#[derive(Debug, Default)]
struct MaskTimes {
    buckets: [AtomicU64; MASK_BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
    wait_us: AtomicU64,
}

/// A copy of the grammar mask figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaskSnapshot {
    /// Masks per bucket of [`MASK_BUCKETS_US`] (not cumulative), the last past it.
    pub buckets: [u64; MASK_BUCKETS_US.len() + 1],
    pub count: u64,
    /// Total microseconds computing masks.
    pub sum_us: u64,
    /// Total microseconds steps waited for masks after their forward pass.
    pub wait_us: u64,
}

impl MaskSnapshot {
    /// The upper bound (microseconds) of the bucket holding quantile `q` of the mask
    /// times; None with no masks, `u64::MAX` past the last bucket.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(MASK_BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }

    /// The figures gathered since `earlier`.
    pub fn since(&self, earlier: &MaskSnapshot) -> MaskSnapshot {
        MaskSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i] - earlier.buckets[i]),
            count: self.count - earlier.count,
            sum_us: self.sum_us - earlier.sum_us,
            wait_us: self.wait_us - earlier.wait_us,
        }
    }
}

/// A copy of the engine's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Sequences waiting for admission (including preempted ones).
    pub queue_size: u64,
    /// Sequences in the running batch.
    pub running: u64,
    /// Requests submitted and not yet answered with a terminal event.
    pub in_flight: u64,
    pub blocks_total: u64,
    /// Blocks held by at least one sequence.
    pub blocks_used: u64,
    /// Blocks registered in the prefix cache (held or free).
    pub blocks_cached: u64,
    /// Tokens (prompt + generated) of the running sequences.
    pub batch_tokens: u64,
    /// Prefill and decode tokens of the last step.
    pub last_prefill_tokens: u64,
    pub last_decode_tokens: u64,
    pub steps: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    pub preemptions: u64,
    pub prefix_hit_tokens: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
    pub requests_failed: u64,
    /// Total microseconds spent in steps.
    pub step_us: u64,
    pub grammar: MaskSnapshot,
}

/// The figures one step changes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepFigures {
    pub queue_size: u64,
    pub running: u64,
    pub blocks_used: u64,
    pub blocks_cached: u64,
    pub batch_tokens: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    pub preemptions: u64,
    pub prefix_hit_tokens: u64,
    /// The step's wall time.
    pub elapsed_us: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            queue_size: self.queue_size.load(Relaxed),
            running: self.running.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            blocks_total: self.blocks_total.load(Relaxed),
            blocks_used: self.blocks_used.load(Relaxed),
            blocks_cached: self.blocks_cached.load(Relaxed),
            batch_tokens: self.batch_tokens.load(Relaxed),
            last_prefill_tokens: self.last_prefill_tokens.load(Relaxed),
            last_decode_tokens: self.last_decode_tokens.load(Relaxed),
            steps: self.steps.load(Relaxed),
            prefill_tokens: self.prefill_tokens.load(Relaxed),
            decode_tokens: self.decode_tokens.load(Relaxed),
            preemptions: self.preemptions.load(Relaxed),
            prefix_hit_tokens: self.prefix_hit_tokens.load(Relaxed),
            requests_finished: self.requests_finished.load(Relaxed),
            requests_cancelled: self.requests_cancelled.load(Relaxed),
            requests_failed: self.requests_failed.load(Relaxed),
            step_us: self.step_us.load(Relaxed),
            grammar: MaskSnapshot {
                buckets: std::array::from_fn(|i| self.grammar.buckets[i].load(Relaxed)),
                count: self.grammar.count.load(Relaxed),
                sum_us: self.grammar.sum_us.load(Relaxed),
                wait_us: self.grammar.wait_us.load(Relaxed),
            },
        }
    }

    /// Records one step's mask times and how long it waited for them.
    pub(crate) fn record_masks(&self, times: &[std::time::Duration], waited: std::time::Duration) {
        let g = &self.grammar;
        for t in times {
            let us = t.as_micros() as u64;
            let b = MASK_BUCKETS_US.partition_point(|&ub| ub < us);
            g.buckets[b].fetch_add(1, Relaxed);
            g.sum_us.fetch_add(us, Relaxed);
        }
        g.count.fetch_add(times.len() as u64, Relaxed);
        g.wait_us.fetch_add(waited.as_micros() as u64, Relaxed);
    }

    pub(crate) fn set_blocks_total(&self, n: u64) {
        self.blocks_total.store(n, Relaxed);
    }

    /// Takes an in-flight slot unless `limit` are taken.
    pub(crate) fn try_enter(&self, limit: u64) -> bool {
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    pub(crate) fn leave(&self) {
        let _ = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    pub(crate) fn record_step(&self, f: StepFigures) {
        self.gauges(f);
        self.steps.fetch_add(1, Relaxed);
        self.last_prefill_tokens.store(f.prefill_tokens, Relaxed);
        self.last_decode_tokens.store(f.decode_tokens, Relaxed);
        self.prefill_tokens.fetch_add(f.prefill_tokens, Relaxed);
        self.decode_tokens.fetch_add(f.decode_tokens, Relaxed);
        self.preemptions.fetch_add(f.preemptions, Relaxed);
        self.prefix_hit_tokens
            .fetch_add(f.prefix_hit_tokens, Relaxed);
        self.step_us.fetch_add(f.elapsed_us, Relaxed);
    }

    /// Updates the gauges only (after admissions or removals without a step).
    pub(crate) fn gauges(&self, f: StepFigures) {
        self.queue_size.store(f.queue_size, Relaxed);
        self.running.store(f.running, Relaxed);
        self.blocks_used.store(f.blocks_used, Relaxed);
        self.blocks_cached.store(f.blocks_cached, Relaxed);
        self.batch_tokens.store(f.batch_tokens, Relaxed);
    }

    pub(crate) fn finished(&self) {
        self.requests_finished.fetch_add(1, Relaxed);
    }

    pub(crate) fn cancelled(&self) {
        self.requests_cancelled.fetch_add(1, Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.requests_failed.fetch_add(1, Relaxed);
    }
}

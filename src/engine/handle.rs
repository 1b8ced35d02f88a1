//! The engine thread and the handle the server holds.
//!
//! One OS thread per model runs the step loop; the async server talks to it through a
//! channel. `submit` returns the receiver of the request's events; dropping it cancels
//! the request at the next step and frees its blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::core::EngineCore;
use super::request::{EngineError, Event, GenerationRequest};
use super::runner::{CacheConfig, ModelRunner};
use super::scheduler::SchedulerConfig;
use super::stats::{EngineStats, StatsSnapshot};
use crate::model::{LoadedModel, ModelConfig};
use crate::tokenizer::Tokenizer;

/// The receiving end of one request's events.
pub type EventReceiver = UnboundedReceiver<Event>;

/// A test hook: called before each step with the ids of the requests in it; returning
/// an error fails that step as a device error would.
pub type FaultHook = Arc<dyn Fn(&[u64]) -> Result<(), String> + Send + Sync>;

/// Everything that shapes an engine, with TGI's names.
#[derive(Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// Requests in flight beyond which `submit` answers `Overloaded`.
    pub max_concurrent_requests: usize,
    /// KV cache size in tokens; None: `kv_memory_fraction` of available memory.
    pub max_batch_total_tokens: Option<usize>,
    pub kv_memory_fraction: f64,
    /// On a GPU: the fraction of its memory wick may use in all (TGI's
    /// `--cuda-memory-fraction`); the KV cache gets what the weights and a step's
    /// activations leave.
    pub cuda_memory_fraction: f64,
    /// Check block reference counts after every step (on in debug builds).
    pub check_invariants: bool,
    pub fault_hook: Option<FaultHook>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            scheduler: SchedulerConfig::default(),
            max_concurrent_requests: 128,
            max_batch_total_tokens: None,
            kv_memory_fraction: 0.2,
            cuda_memory_fraction: 1.0,
            check_invariants: cfg!(debug_assertions),
            fault_hook: None,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("scheduler", &self.scheduler)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_batch_total_tokens", &self.max_batch_total_tokens)
            .field("kv_memory_fraction", &self.kv_memory_fraction)
            .field("check_invariants", &self.check_invariants)
            .field("fault_hook", &self.fault_hook.is_some())
            .finish()
    }
}

pub(crate) enum Command {
    Submit(Submission),
    /// Clears the prefix cache's free blocks.
    ClearPrefixCache,
    Shutdown,
}

pub(crate) struct Submission {
    pub request: GenerationRequest,
    pub events: UnboundedSender<Event>,
    pub queued: Instant,
}

struct Shared {
    name: String,
    config: ModelConfig,
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<String>,
    stats: Arc<EngineStats>,
    ready: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    max_concurrent_requests: usize,
    /// KV capacity in tokens.
    kv_tokens: usize,
    block_size: usize,
}

/// Marks the engine stopped when its thread ends, even by a panic (whose requests then
/// see their event channel close), so the server stops reporting healthy.
struct StopGuard {
    ready: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped.load(Ordering::SeqCst) {
            tracing::error!("the engine thread panicked: the requests in flight fail");
        }
        self.ready.store(false, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Starts the engine thread for `model`: allocates the KV cache, warms the model up
    /// (one small forward pass), then serves submissions.
    pub fn start(model: LoadedModel, config: EngineConfig) -> Result<Self> {
        let cfg = model.model.config().clone();
        // Activations and logits of the largest step stay free on a GPU.
        let reserve = super::memory::reserve_bytes(&cfg, &config.scheduler);
        let cache = CacheConfig::for_device(
            &cfg,
            model.model.device(),
            config.scheduler.block_size,
            config.max_batch_total_tokens,
            config.kv_memory_fraction,
            config.cuda_memory_fraction,
            reserve,
        )?;
        anyhow::ensure!(
            config.scheduler.max_batch_prefill_tokens > 0,
            "max_batch_prefill_tokens must be at least 1"
        );
        anyhow::ensure!(
            config.scheduler.max_batch_size > 0,
            "max_batch_size must be at least 1"
        );
        let tokenizer = Arc::new(model.tokenizer);
        let stats = Arc::new(EngineStats::default());
        stats.set_blocks_total(cache.num_blocks as u64);
        let shared = Arc::new(Shared {
            name: model.name,
            config: cfg,
            tokenizer: tokenizer.clone(),
            chat_template: model.chat_template,
            stats: stats.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            stopped: Arc::new(AtomicBool::new(false)),
            max_concurrent_requests: config.max_concurrent_requests,
            kv_tokens: cache.num_blocks * cache.block_size,
            block_size: cache.block_size,
        });
        let (tx, rx) = mpsc::channel();
        let (ready, stopped) = (shared.ready.clone(), shared.stopped.clone());
        let runner = ModelRunner::try_new(model.model, cache)?;
        std::thread::Builder::new()
            .name("wick-engine".into())
            .spawn(move || {
                // However the thread ends (a panic included), the handle learns it: the
                // first guard covers building the core, the second (dropped before the
                // core, whose drop closes the requests' channels) makes sure a client
                // that sees its request fail already sees the engine stopped.
                let _building = StopGuard {
                    ready: ready.clone(),
                    stopped: stopped.clone(),
                };
                let mut core = EngineCore::new(runner, tokenizer, stats, config);
                let _running = StopGuard {
                    ready: ready.clone(),
                    stopped: stopped.clone(),
                };
                match core.warmup() {
                    Ok(()) => {
                        ready.store(true, Ordering::SeqCst);
                        tracing::info!("engine ready");
                        core.run(rx);
                    }
                    Err(e) => tracing::error!("engine warm-up failed: {e:#}"),
                }
                ready.store(false, Ordering::SeqCst);
                stopped.store(true, Ordering::SeqCst);
                // Whatever is still queued gets its terminal event.
                core.fail_all(EngineError::ShutDown);
            })
            .context("starting the engine thread")?;
        Ok(Self {
            commands: tx,
            shared,
        })
    }

    /// Queues a request. Fails at once with `Overloaded` when `max_concurrent_requests`
    /// are in flight, with `Validation` when it can never fit the KV cache, with
    /// `ShutDown` when the engine has stopped.
    pub fn submit(&self, request: GenerationRequest) -> Result<EventReceiver, EngineError> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(EngineError::ShutDown);
        }
        self.validate(&request)?;
        let stats = &self.shared.stats;
        if !stats.try_enter(self.shared.max_concurrent_requests as u64) {
            return Err(EngineError::Overloaded);
        }
        let (tx, rx) = unbounded_channel();
        let sub = Submission {
            request,
            events: tx,
            queued: Instant::now(),
        };
        if self.commands.send(Command::Submit(sub)).is_err() {
            stats.leave();
            return Err(EngineError::ShutDown);
        }
        Ok(rx)
    }

    fn validate(&self, r: &GenerationRequest) -> Result<(), EngineError> {
        r.validate(self.shared.config.vocab_size, self.shared.kv_tokens)
    }

    /// True once the engine thread has ended (shut down, failed to warm up, or panicked).
    pub fn has_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    /// True once the model has warmed up, until the engine stops.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }

    /// The models.toml chat template override, if any (else the tokenizer's own).
    pub fn chat_template_override(&self) -> Option<&str> {
        self.shared.chat_template.as_deref()
    }

    pub fn model_name(&self) -> &str {
        &self.shared.name
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.shared.config
    }

    /// KV cache capacity in tokens.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.shared.kv_tokens
    }

    pub fn block_size(&self) -> usize {
        self.shared.block_size
    }

    pub fn max_concurrent_requests(&self) -> usize {
        self.shared.max_concurrent_requests
    }

    /// Drops the free blocks of the prefix cache (tests and benchmarks).
    pub fn clear_prefix_cache(&self) {
        let _ = self.commands.send(Command::ClearPrefixCache);
    }

    /// Stops the engine: every request still in flight ends with `ShutDown`.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

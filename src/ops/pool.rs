//! The CPU kernels' thread pool: `n - 1` workers plus the calling thread share each
//! operation.
//!
//! Workers spin briefly between operations (a decode step dispatches hundreds of small
//! ones, microseconds apart), then yield, then sleep on a condition variable. The caller
//! waits for stragglers the same way: spin, then yield. Yielding matters when the cores
//! are oversubscribed (a busy machine, a test harness running engines side by side): a
//! pure spin-wait burns the time slice the descheduled worker needs to finish, and one
//! step can stall for whole scheduler periods.
//!
//! Work is split by a shared cursor, so a fast thread absorbs the chunks of a slow one.
//! One pool per process (the kernels have no handle to thread through), as llama.cpp's
//! and candle's.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Spins before a waiting thread starts yielding, and yields before a worker sleeps.
const SPINS: u32 = 20_000;
const YIELDS: u32 = 200;

/// The operation being run: a type-erased `&dyn Fn(usize)` called with each worker's id.
#[derive(Clone, Copy)]
struct Job {
    call: unsafe fn(*const (), usize),
    data: *const (),
}

struct Inner {
    /// Bumped once per operation; workers run the job when they see a new value.
    generation: AtomicUsize,
    job: Mutex<Option<Job>>,
    /// Workers still running the current operation.
    pending: AtomicUsize,
    sleepers: Mutex<usize>,
    wake: Condvar,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

// The raw job pointer is only dereferenced while the caller blocks in `execute`.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

pub struct WorkPool {
    inner: Arc<Inner>,
    workers: usize,
    /// One operation at a time.
    call: Mutex<()>,
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

unsafe fn trampoline<F: Fn(usize) + Sync>(data: *const (), tid: usize) {
    (*(data as *const F))(tid)
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl WorkPool {
    /// A pool running operations on `threads` threads (the caller included).
    pub fn new(threads: usize) -> Self {
        let workers = threads.max(1) - 1;
        let inner = Arc::new(Inner {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        for tid in 1..=workers {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name(format!("wick-cpu-{tid}"))
                .spawn(move || worker(inner, tid))
                .expect("spawning a CPU worker thread");
        }
        Self {
            inner,
            workers,
            call: Mutex::new(()),
        }
    }

    /// Threads an operation runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(tid)` once on each thread, `tid` in `0..threads()` (0 is the caller), and
    /// returns when all are done. Nested calls from inside an operation run inline.
    pub fn execute<F: Fn(usize) + Sync>(&self, f: F) {
        if self.workers == 0 || IN_POOL.with(|c| c.get()) {
            for tid in 0..self.threads() {
                f(tid);
            }
            return;
        }
        let _one = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &*self.inner;
        *inner.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job {
            call: trampoline::<F>,
            data: &f as *const F as *const (),
        });
        inner.pending.store(self.workers, Ordering::SeqCst);
        inner.generation.fetch_add(1, Ordering::SeqCst);
        {
            let sleepers = inner.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            if *sleepers > 0 {
                inner.wake.notify_all();
            }
        }
        IN_POOL.with(|c| c.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        IN_POOL.with(|c| c.set(false));
        // The workers borrow `f`: wait for all of them whatever happened here.
        wait_until(|| inner.pending.load(Ordering::Acquire) == 0);
        *inner.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if inner.panicked.swap(false, Ordering::SeqCst) {
            panic!("a CPU worker thread panicked");
        }
    }

    /// Runs `f` over `0..n_items` split into one contiguous range per thread, so each
    /// thread streams its part of the data front to back (what the hardware prefetcher
    /// likes; the matmuls' decode path).
    pub fn execute_contiguous<F: Fn(std::ops::Range<usize>) + Sync>(&self, n_items: usize, f: F) {
        let chunk = n_items.div_ceil(self.threads());
        self.execute(|tid| {
            let start = (tid * chunk).min(n_items);
            f(start..n_items.min(start + chunk));
        });
    }

    /// Runs `f` over `0..n_items` in chunks shared out through a cursor.
    pub fn execute_chunked<F: Fn(std::ops::Range<usize>) + Sync>(&self, n_items: usize, f: F) {
        if n_items == 0 {
            return;
        }
        let threads = self.threads();
        if threads == 1 || IN_POOL.with(|c| c.get()) {
            f(0..n_items);
            return;
        }
        // About 8 grabs per thread: little cursor traffic, small tail imbalance.
        let chunk = n_items.div_ceil(threads * 8).max(1);
        let cursor = AtomicUsize::new(0);
        self.execute(|_| loop {
            let start = cursor.fetch_add(chunk, Ordering::Relaxed);
            if start >= n_items {
                break;
            }
            f(start..n_items.min(start + chunk));
        });
    }
}

impl Drop for WorkPool {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let _s = self.inner.sleepers.lock();
        self.inner.wake.notify_all();
    }
}

fn worker(inner: Arc<Inner>, tid: usize) {
    IN_POOL.with(|c| c.set(true));
    // The generation the pool started at: an operation may be posted before this thread
    // first runs, and must not be mistaken for the starting state.
    let mut seen = 0;
    loop {
        // Wait for the next operation: spin, yield, then sleep.
        let mut spins = 0u32;
        let mut yields = 0u32;
        loop {
            if inner.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else if yields < YIELDS {
                yields += 1;
                std::thread::yield_now();
            } else {
                let mut sleepers = inner.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                while inner.generation.load(Ordering::Acquire) == seen {
                    sleepers = inner.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
                break;
            }
        }
        seen = inner.generation.load(Ordering::Acquire);
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = *inner.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // SAFETY: the caller of `execute` keeps the closure alive until `pending`
            // reaches zero, which happens only after this call returns.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { (job.call)(job.data, tid) }));
            if r.is_err() {
                inner.panicked.store(true, Ordering::SeqCst);
            }
        }
        inner.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process's pool, sized by `RAYON_NUM_THREADS` (set by `--threads`) or the number
/// of available cores.
pub fn global() -> &'static WorkPool {
    static POOL: OnceLock<WorkPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        WorkPool::new(threads)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_across_many_operations() {
        let pool = WorkPool::new(3);
        for n in [0usize, 1, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.execute_chunked(n, |r| {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        let tids: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..500 {
            pool.execute(|t| {
                tids[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(tids.iter().all(|t| t.load(Ordering::Relaxed) == 500));
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = WorkPool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let sum = AtomicUsize::new(0);
        pool.execute_chunked(64, |r| {
            sum.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn nested_calls_run_inline() {
        let pool = WorkPool::new(2);
        let count = AtomicUsize::new(0);
        pool.execute_chunked(4, |r| {
            pool.execute_chunked(r.len(), |r2| {
                count.fetch_add(r2.len(), Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_panicking_operation_panics_the_caller_and_the_pool_survives() {
        let pool = WorkPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.execute(|t| {
                if t == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.execute(|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}

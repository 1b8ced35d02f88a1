//! A counting global allocator for the crate's unit tests: it counts the allocations
//! (and reallocations) each thread makes, so a test can check that a path allocates
//! nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by the current thread so far.
pub fn allocations() -> u64 {
    COUNT.try_with(|c| c.get()).unwrap_or(0)
}

#[test]
fn counts_this_threads_allocations() {
    let before = allocations();
    let v: Vec<u64> = Vec::with_capacity(16);
    assert_eq!(allocations(), before + 1);
    drop(v);
    let before = allocations();
    std::thread::spawn(|| vec![1u8; 64]).join().unwrap();
    // The other thread's allocation is its own (spawning allocates here, though).
    let mine = allocations() - before;
    let v = std::thread::spawn(|| {
        let start = allocations();
        let x: Vec<u8> = Vec::with_capacity(64);
        let n = allocations() - start;
        drop(x);
        n
    })
    .join()
    .unwrap();
    assert_eq!(v, 1);
    assert!(mine >= 1);
}

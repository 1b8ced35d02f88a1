//! The continuous-batching engine on the default model: batch invariance, prefix
//! caching, preemption and cancellation, driven through the public handle.

mod common;

use std::collections::HashMap;

use wick::engine::{
    EngineConfig, EngineHandle, Event, EventReceiver, FinishReason, GenerationRequest,
    SchedulerConfig, StoppingParams,
};
use wick::model::{self, LoadOptions};
use wick::sampling::SamplingParams;

fn engine(kv_tokens: usize, tweak: impl FnOnce(&mut EngineConfig)) -> EngineHandle {
    let loaded = model::load(&common::default_model(), &LoadOptions::default()).expect("loads");
    let mut config = EngineConfig {
        scheduler: SchedulerConfig {
            max_batch_prefill_tokens: 256,
            max_batch_size: 64,
            ..Default::default()
        },
        max_concurrent_requests: 2048,
        max_batch_total_tokens: Some(kv_tokens),
        check_invariants: true,
        ..Default::default()
    };
    tweak(&mut config);
    let handle = EngineHandle::start(loaded, config).expect("engine starts");
    while !handle.is_ready() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    handle
}

fn request(id: u64, prompt: Vec<u32>, max_new: usize) -> GenerationRequest {
    GenerationRequest {
        id,
        prompt,
        sampling: SamplingParams::default(),
        stopping: StoppingParams {
            max_new_tokens: max_new,
            stop_sequences: vec![],
            include_stop_sequence: true,
            ignore_eos: true,
        },
        top_n_tokens: 0,
        prompt_logprobs: false,
        grammar: None,
        candidates: 1,
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    streamed: String,
    reason: FinishReason,
}

/// Collects a request's events, checking their order (tokens, one CandidateFinished,
/// then exactly one terminal event).
fn collect(mut rx: EventReceiver) -> Outcome {
    let (mut tokens, mut streamed) = (Vec::new(), String::new());
    let mut finished = None;
    let mut last_flagged = false;
    loop {
        match rx.blocking_recv().expect("a terminal event arrives") {
            Event::Prefill { .. } => {}
            Event::Token {
                candidate,
                token,
                last,
            } => {
                assert_eq!(candidate, 0);
                assert!(finished.is_none(), "token after the candidate finished");
                assert!(!last_flagged, "a token after the one flagged last");
                last_flagged = last;
                tokens.push(token.token.id);
                streamed.push_str(&token.text_piece);
            }
            Event::CandidateFinished {
                text,
                reason,
                generated_tokens,
                ..
            } => {
                assert!(last_flagged, "the candidate's last token was flagged");
                assert_eq!(generated_tokens, tokens.len());
                finished = Some((text, reason));
            }
            Event::Done(c) => {
                let (text, reason) = finished.expect("candidate finished before Done");
                assert!(c.timings.first_token >= c.timings.queued);
                assert!(
                    rx.blocking_recv().is_none(),
                    "nothing after the terminal event"
                );
                return Outcome {
                    tokens,
                    text,
                    streamed,
                    reason,
                };
            }
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
}

/// Prompts of varied lengths built from real text.
fn prompts(handle: &EngineHandle, n: usize) -> Vec<Vec<u32>> {
    let text = "The quick brown fox jumps over the lazy dog. A journey of a thousand miles \
                begins with a single step. To be or not to be, that is the question. ";
    let base = handle
        .tokenizer()
        .encode(&text.repeat(8), false)
        .expect("encodes");
    (0..n)
        .map(|i| base[i * 7 % 40..(i * 7 % 40) + 3 + i * 13].to_vec())
        .collect()
}

fn wait_idle(handle: &EngineHandle) {
    for _ in 0..2000 {
        let s = handle.stats();
        if s.in_flight == 0 && s.running == 0 && s.queue_size == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("engine did not go idle: {:?}", handle.stats());
}

#[test]
fn concurrent_requests_equal_their_solo_runs() {
    let handle = engine(16384, |_| {});
    let ps = prompts(&handle, 16);
    let solo: Vec<Outcome> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| collect(handle.submit(request(i as u64, p.clone(), 24)).unwrap()))
        .collect();
    let rxs: Vec<EventReceiver> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            handle
                .submit(request(100 + i as u64, p.clone(), 24))
                .unwrap()
        })
        .collect();
    let together: Vec<Outcome> = rxs.into_iter().map(collect).collect();
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "request {i} differs when batched");
        assert_eq!(a.text, a.streamed, "stream pieces concatenate to the text");
        assert_eq!(a.tokens.len(), 24);
        assert_eq!(a.reason, FinishReason::Length);
    }
    wait_idle(&handle);
    let s = handle.stats();
    assert!(s.steps > 0 && s.decode_tokens > 0);
    assert_eq!(s.blocks_used, 0);
}

#[test]
fn shared_prefix_is_computed_once() {
    let handle = engine(16384, |_| {});
    let text = "You are a helpful assistant who answers questions about astronomy, \
                physics and the history of science with care. "
        .repeat(12);
    let prefix: Vec<u32> = handle.tokenizer().encode(&text, false).unwrap()[..200].to_vec();
    let tail_a = handle
        .tokenizer()
        .encode(" What is a comet?", false)
        .unwrap();
    let tail_b = handle
        .tokenizer()
        .encode(" Why is the sky blue at noon?", false)
        .unwrap();
    let prompt_b: Vec<u32> = prefix.iter().chain(&tail_b).copied().collect();

    // Cache off (cleared): the reference output.
    let reference = collect(handle.submit(request(1, prompt_b.clone(), 16)).unwrap());
    wait_idle(&handle);
    handle.clear_prefix_cache();

    let prompt_a: Vec<u32> = prefix.iter().chain(&tail_a).copied().collect();
    collect(handle.submit(request(2, prompt_a, 16)).unwrap());
    wait_idle(&handle);
    let before = handle.stats();
    let out = collect(handle.submit(request(3, prompt_b.clone(), 16)).unwrap());
    wait_idle(&handle);
    let after = handle.stats();
    let hits = (after.prefix_hit_tokens - before.prefix_hit_tokens) as usize;
    let computed = (after.prefill_tokens - before.prefill_tokens) as usize;
    let block = handle.block_size();
    assert_eq!(
        hits,
        200 / block * block,
        "every full block of the prefix is reused"
    );
    assert_eq!(computed, prompt_b.len() - hits, "only the tail is computed");
    assert_eq!(out, reference, "cached prefix gives the cache-off output");
}

#[test]
fn a_small_cache_preempts_and_still_finishes_everything_identically() {
    let big = engine(16384, |_| {});
    let ps = prompts(&big, 8);
    let reference: Vec<Outcome> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| collect(big.submit(request(i as u64, p.clone(), 40)).unwrap()))
        .collect();
    drop(big);
    // Room for the longest request alone, but not for all at once.
    let longest = ps.iter().map(|p| p.len()).max().unwrap() + 40;
    let small = engine(longest + 48, |c| c.scheduler.prefix_caching = false);
    let rxs: Vec<EventReceiver> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| small.submit(request(i as u64, p.clone(), 40)).unwrap())
        .collect();
    let outs: Vec<Outcome> = rxs.into_iter().map(collect).collect();
    assert_eq!(outs, reference);
    wait_idle(&small);
    let s = small.stats();
    assert!(s.preemptions > 0, "the pool was too small for all: {s:?}");
    assert_eq!(s.blocks_used, 0);
}

#[test]
fn random_submits_and_cancels_leave_no_block_behind() {
    let handle = engine(4096, |c| c.scheduler.max_batch_prefill_tokens = 64);
    let ps: Vec<Vec<u32>> = prompts(&handle, 12)
        .into_iter()
        .map(|p| p[..p.len().min(40)].to_vec())
        .collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut live: HashMap<u64, EventReceiver> = HashMap::new();
    let mut completed = 0;
    for op in 0..1000u64 {
        match next() % 4 {
            // Submit.
            0 | 1 => {
                let p = ps[(next() % ps.len() as u64) as usize].clone();
                let max_new = 1 + (next() % 8) as usize;
                let rx = handle.submit(request(op, p, max_new)).unwrap();
                live.insert(op, rx);
            }
            // Cancel (drop the receiver) a random live request, possibly mid-stream.
            2 => {
                if let Some(&k) = live.keys().nth((next() % (live.len() as u64 + 1)) as usize) {
                    live.remove(&k);
                }
            }
            // Read what has arrived; retire finished requests; now and then wait for
            // one request to finish, so the engine makes progress under the churn.
            _ => {
                if next() % 8 == 0 {
                    if let Some(&k) = live.keys().next() {
                        let mut rx = live.remove(&k).unwrap();
                        loop {
                            match rx.blocking_recv() {
                                Some(Event::Done(_)) => break,
                                Some(Event::Error(e)) => panic!("request failed: {e}"),
                                Some(_) => {}
                                None => panic!("no terminal event"),
                            }
                        }
                        completed += 1;
                    }
                }
                live.retain(|_, rx| loop {
                    match rx.try_recv() {
                        Ok(Event::Done(_)) => {
                            completed += 1;
                            break false;
                        }
                        Ok(Event::Error(e)) => panic!("request failed: {e}"),
                        Ok(_) => continue,
                        Err(_) => break true,
                    }
                });
            }
        }
    }
    drop(live);
    wait_idle(&handle);
    let s = handle.stats();
    assert_eq!(
        s.blocks_used, 0,
        "every block is free or only cached: {s:?}"
    );
    assert!(s.requests_cancelled > 0 && completed > 0, "{s:?}");
    // The engine still serves normally afterwards.
    let out = collect(handle.submit(request(5000, ps[0].clone(), 4)).unwrap());
    assert_eq!(out.tokens.len(), 4);
}

#[test]
fn overload_and_impossible_requests_are_refused() {
    let handle = engine(512, |c| c.max_concurrent_requests = 2);
    let p = prompts(&handle, 1).remove(0);
    let a = handle.submit(request(1, p.clone(), 200)).unwrap();
    let b = handle.submit(request(2, p.clone(), 200)).unwrap();
    assert_eq!(
        handle.submit(request(3, p.clone(), 4)).unwrap_err(),
        wick::engine::EngineError::Overloaded
    );
    drop((a, b));
    wait_idle(&handle);
    assert!(handle.submit(request(4, p.clone(), 4)).is_ok());
    assert!(matches!(
        handle.submit(request(5, p, 10_000)).unwrap_err(),
        wick::engine::EngineError::Validation(_)
    ));
}

#[test]
fn a_failing_step_fails_its_requests_and_the_engine_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let armed = Arc::new(AtomicBool::new(false));
    let hook_armed = armed.clone();
    let handle = engine(4096, move |c| {
        c.fault_hook = Some(Arc::new(move |ids: &[u64]| {
            if hook_armed.load(Ordering::SeqCst) && ids.contains(&666) {
                Err("injected device fault".to_string())
            } else {
                Ok(())
            }
        }))
    });
    let p = prompts(&handle, 2);
    armed.store(true, Ordering::SeqCst);
    let mut bad = handle.submit(request(666, p[0].clone(), 8)).unwrap();
    let err = loop {
        match bad.blocking_recv().expect("terminal event") {
            Event::Error(e) => break e,
            Event::Done(_) => panic!("the faulty request cannot finish"),
            _ => {}
        }
    };
    assert!(matches!(err, wick::engine::EngineError::Generation(ref m) if m.contains("injected")));
    assert!(bad.blocking_recv().is_none(), "one terminal event");
    // Others are served, and the failed request's blocks are back.
    let out = collect(handle.submit(request(1, p[1].clone(), 6)).unwrap());
    assert_eq!(out.tokens.len(), 6);
    wait_idle(&handle);
    let s = handle.stats();
    assert_eq!((s.blocks_used, s.requests_failed), (0, 1), "{s:?}");
}

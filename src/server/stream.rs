//! One request's life as a typed stream: what every generation route formats.
//!
//! A route validates a request, then hands its engine request(s) to
//! [`GenerationStream::start`] (one per prompt: OpenAI's completions take several). The
//! stream submits them (all or none), merges their engine events and yields, in order:
//! each prompt's `Prefill` (when prompt logprobs were asked), the generated `Token`s (a
//! candidate's last token carries its [`CandidateEnd`]), then exactly one terminal item:
//! [`Item::Finished`] once every prompt is done, or [`Item::Failed`] with the first error.
//! Nothing comes after the terminal item. The stream also owns the request's
//! [`RequestLog`]: the terminal item writes the request's one log line (with its timings
//! and metrics); a stream dropped before it (the client went away) logs a cancellation,
//! and dropping it drops the engine receivers, which cancels the request in the engine.
//!
//! The engine's order of events is the contract the stream checks: a candidate's last
//! token is followed at once by its `CandidateFinished`, and `Done` comes after every
//! candidate has finished. A request whose events break it, or whose channel closes
//! before its terminal event, fails with `incomplete_generation`. Routes only turn items
//! into their wire format (TGI JSON or SSE, OpenAI chat or completions).

use std::sync::Arc;
use std::task::Poll;

use super::error::{ApiError, Flavor};
use super::state::{AppState, Elapsed, RequestLog};
use crate::engine::{
    Completion, Event, EventReceiver, FinishReason, GeneratedToken, GenerationRequest, Timings,
    TokenInfo,
};

/// How a candidate ended (its `CandidateFinished` event).
#[derive(Debug, Clone)]
pub struct CandidateEnd {
    pub reason: FinishReason,
    /// The full generated text.
    pub text: String,
    pub generated_tokens: usize,
    /// Sum of the chosen tokens' logprobs.
    pub cumulative_logprob: f64,
}

impl CandidateEnd {
    /// Mean logprob per generated token (TGI's best_of criterion).
    pub fn mean_logprob(&self) -> f64 {
        self.cumulative_logprob / self.generated_tokens.max(1) as f64
    }
}

/// One item of a request's stream.
#[derive(Debug)]
pub enum Item {
    /// A prompt's tokens with their logprobs (only when prompt logprobs were asked).
    Prefill {
        prompt: usize,
        tokens: Vec<TokenInfo>,
    },
    /// A generated token; `end` is set on its candidate's last token.
    Token {
        prompt: usize,
        candidate: usize,
        token: GeneratedToken,
        end: Option<CandidateEnd>,
    },
    /// Terminal: every prompt is done; the success is logged.
    Finished(Finished),
    /// Terminal: the request failed (in the route's error flavor); the failure is logged.
    Failed(ApiError),
}

/// What a finished request reports.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The timings as logged (TGI's timing headers).
    pub elapsed: Elapsed,
    /// Prompt tokens over all prompts.
    pub prompt_tokens: usize,
    /// Generated tokens as logged: the chosen candidate's under [`Summary::Best`], all
    /// candidates' otherwise.
    pub generated_tokens: usize,
    /// Per prompt: the engine's completion.
    pub completions: Vec<Completion>,
    /// Per prompt, in candidate order: how each candidate ended.
    pub ends: Vec<Vec<CandidateEnd>>,
    /// Under [`Summary::Best`]: the chosen candidate of the first prompt (else 0).
    pub best: usize,
}

/// Which figures a finished request's log line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// TGI: the answer is one sequence, the candidate with the highest mean token
    /// logprob (the lowest index on ties): its tokens, finish reason and seed.
    Best,
    /// A whole OpenAI answer: every candidate's tokens; the finish reason and timings of
    /// the first prompt's first candidate.
    ByIndex,
    /// A streamed OpenAI answer: every candidate's tokens; the finish reason of the
    /// candidate that finished last and the timings of the prompt done first, in the
    /// order the client saw them.
    ByArrival,
}

/// The candidate with the highest mean token logprob, the lowest index on ties.
fn best_candidate(ends: &[CandidateEnd]) -> usize {
    (0..ends.len())
        .max_by(|&a, &b| {
            ends[a]
                .mean_logprob()
                .total_cmp(&ends[b].mean_logprob())
                .then(b.cmp(&a))
        })
        .unwrap_or(0)
}

/// One prompt's progress.
struct Prompt {
    events: Option<EventReceiver>,
    ends: Vec<Option<CandidateEnd>>,
    completion: Option<Completion>,
}

/// Where a request's end is recorded: [`RequestLog`] (the log line and the metrics); a
/// recorder in the tests.
pub trait Ledger {
    /// The request id.
    fn id(&self) -> u64;
    fn prompt_tokens(&self) -> usize;
    fn succeed(
        &mut self,
        timings: &Timings,
        generated_tokens: usize,
        finish_reason: &str,
        seed: Option<u64>,
    ) -> Elapsed;
    fn fail(&mut self, err: &ApiError);
}

impl Ledger for RequestLog {
    fn id(&self) -> u64 {
        self.id
    }

    fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    fn succeed(
        &mut self,
        timings: &Timings,
        generated_tokens: usize,
        finish_reason: &str,
        seed: Option<u64>,
    ) -> Elapsed {
        RequestLog::succeed(self, timings, generated_tokens, finish_reason, seed)
    }

    fn fail(&mut self, err: &ApiError) {
        RequestLog::fail(self, err)
    }
}

/// A request's events as [`Item`]s; see the module documentation.
pub struct GenerationStream<L: Ledger = RequestLog> {
    log: L,
    flavor: Flavor,
    summary: Summary,
    /// Whether the request samples (the seed is logged only then).
    sampling: bool,
    prompts: Vec<Prompt>,
    /// Where the next poll of the merged events starts (fairness across prompts).
    cursor: usize,
    /// The finish reason of the candidate that finished last.
    last_reason: Option<FinishReason>,
    /// The timings of the prompt done first.
    first_timings: Option<Timings>,
    ended: bool,
}

impl GenerationStream {
    /// Submits `requests` (each with the log's request id), all or none: on a refusal the
    /// receivers already taken are dropped (cancelled) and the error, already logged as
    /// the request's end, is returned to answer with.
    pub fn start(
        st: &Arc<AppState>,
        mut log: RequestLog,
        requests: Vec<GenerationRequest>,
        flavor: Flavor,
        summary: Summary,
    ) -> Result<Self, ApiError> {
        let prompt_tokens = requests.iter().map(|r| r.prompt.len()).sum();
        let max_new = requests.first().map_or(0, |r| r.stopping.max_new_tokens);
        log.validated(prompt_tokens, max_new);
        let sampling = requests.first().is_some_and(|r| r.sampling.do_sample);
        let submitted = requests
            .into_iter()
            .map(|mut r| {
                r.id = log.id;
                let candidates = r.candidates;
                st.submit(r).map(|rx| (rx, candidates))
            })
            .collect::<Result<Vec<_>, _>>();
        match submitted {
            Ok(receivers) => Ok(Self::new(log, receivers, flavor, summary, sampling)),
            Err(e) => Err(log.refuse(e.flavor(flavor))),
        }
    }
}

impl<L: Ledger> GenerationStream<L> {
    /// The stream of submitted requests: per prompt, its receiver and its number of
    /// candidates.
    fn new(
        log: L,
        receivers: Vec<(EventReceiver, usize)>,
        flavor: Flavor,
        summary: Summary,
        sampling: bool,
    ) -> Self {
        let prompts = receivers
            .into_iter()
            .map(|(rx, candidates)| Prompt {
                events: Some(rx),
                ends: vec![None; candidates],
                completion: None,
            })
            .collect();
        Self {
            log,
            flavor,
            summary,
            sampling,
            prompts,
            cursor: 0,
            last_reason: None,
            first_timings: None,
            ended: false,
        }
    }

    /// The request id (OpenAI's `id` field).
    pub fn id(&self) -> u64 {
        self.log.id()
    }

    /// The next item; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<Item> {
        if self.ended {
            return None;
        }
        let item = self.advance().await;
        if matches!(item, Item::Finished(_) | Item::Failed(_)) {
            self.ended = true;
            // The other prompts' receivers go now: a failed request stops everywhere.
            for p in &mut self.prompts {
                p.events = None;
            }
        }
        Some(item)
    }

    async fn advance(&mut self) -> Item {
        loop {
            let Some((p, event)) = self.recv_any().await else {
                return self.fail(ApiError::incomplete());
            };
            match event {
                Event::Prefill { tokens } => return Item::Prefill { prompt: p, tokens },
                Event::Token {
                    candidate,
                    token,
                    last,
                } => {
                    if candidate >= self.prompts[p].ends.len() {
                        return self.fail(ApiError::incomplete());
                    }
                    if !last {
                        return Item::Token {
                            prompt: p,
                            candidate,
                            token,
                            end: None,
                        };
                    }
                    // Its `CandidateFinished` follows at once, on the same channel.
                    return match self.recv_from(p).await {
                        Some(Event::CandidateFinished {
                            candidate: c,
                            reason,
                            text,
                            generated_tokens,
                            cumulative_logprob,
                        }) if c == candidate => {
                            let end = CandidateEnd {
                                reason,
                                text,
                                generated_tokens,
                                cumulative_logprob,
                            };
                            self.prompts[p].ends[candidate] = Some(end.clone());
                            self.last_reason = Some(reason);
                            Item::Token {
                                prompt: p,
                                candidate,
                                token,
                                end: Some(end),
                            }
                        }
                        Some(Event::Error(e)) => self.fail(e.into()),
                        _ => self.fail(ApiError::incomplete()),
                    };
                }
                Event::CandidateFinished { .. } => return self.fail(ApiError::incomplete()),
                Event::Done(completion) => {
                    let prompt = &mut self.prompts[p];
                    if prompt.ends.is_empty() || prompt.ends.iter().any(Option::is_none) {
                        return self.fail(ApiError::incomplete());
                    }
                    self.first_timings.get_or_insert(completion.timings);
                    prompt.completion = Some(completion);
                    prompt.events = None;
                    if self.prompts.iter().all(|p| p.completion.is_some()) {
                        return self.finish();
                    }
                }
                Event::Error(e) => return self.fail(e.into()),
            }
        }
    }

    /// The next event of any prompt still running; `None` once all channels are closed.
    async fn recv_any(&mut self) -> Option<(usize, Event)> {
        std::future::poll_fn(|cx| {
            let n = self.prompts.len();
            let mut open = false;
            for k in 0..n {
                let p = (self.cursor + k) % n;
                let Some(rx) = self.prompts[p].events.as_mut() else {
                    continue;
                };
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(event)) => {
                        self.cursor = (p + 1) % n;
                        return Poll::Ready(Some((p, event)));
                    }
                    Poll::Ready(None) => self.prompts[p].events = None,
                    Poll::Pending => open = true,
                }
            }
            if open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await
    }

    async fn recv_from(&mut self, p: usize) -> Option<Event> {
        match self.prompts[p].events.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        }
    }

    fn fail(&mut self, e: ApiError) -> Item {
        let e = e.flavor(self.flavor);
        self.log.fail(&e);
        Item::Failed(e)
    }

    fn finish(&mut self) -> Item {
        let mut completions = Vec::with_capacity(self.prompts.len());
        let mut ends = Vec::with_capacity(self.prompts.len());
        for p in &mut self.prompts {
            let e: Option<Vec<_>> = std::mem::take(&mut p.ends).into_iter().collect();
            if let (Some(c), Some(e)) = (p.completion.take(), e) {
                completions.push(c);
                ends.push(e);
            }
        }
        if completions.len() < self.prompts.len() || ends.iter().any(Vec::is_empty) {
            return self.fail(ApiError::incomplete());
        }
        let (Some(first), Some(first_ends)) = (completions.first(), ends.first()) else {
            return self.fail(ApiError::incomplete());
        };
        let all: usize = ends.iter().flatten().map(|e| e.generated_tokens).sum();
        let best = match self.summary {
            Summary::Best => best_candidate(first_ends),
            Summary::ByIndex | Summary::ByArrival => 0,
        };
        let (generated_tokens, reason, timings, seed) = match self.summary {
            Summary::Best => {
                let e = &first_ends[best];
                let seed = first.seed.wrapping_add(best as u64);
                (e.generated_tokens, e.reason, first.timings, seed)
            }
            Summary::ByIndex => (all, first_ends[0].reason, first.timings, first.seed),
            Summary::ByArrival => (
                all,
                self.last_reason.unwrap_or(first_ends[0].reason),
                self.first_timings.unwrap_or(first.timings),
                first.seed,
            ),
        };
        let reason = match self.flavor {
            Flavor::Tgi => reason.as_tgi(),
            Flavor::OpenAi => reason.as_openai(),
        };
        let seed = self.sampling.then_some(seed);
        let elapsed = self.log.succeed(&timings, generated_tokens, reason, seed);
        Item::Finished(Finished {
            elapsed,
            prompt_tokens: self.log.prompt_tokens(),
            generated_tokens,
            completions,
            ends,
            best,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use axum::http::StatusCode;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

    use super::*;
    use crate::engine::EngineError;

    /// What a stream recorded: its log lines.
    #[derive(Default)]
    struct Lines {
        succeeded: Vec<(usize, String, Option<u64>)>,
        failed: Vec<ApiError>,
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Lines>>);

    impl Recorder {
        fn count(&self) -> usize {
            let l = self.0.lock().unwrap();
            l.succeeded.len() + l.failed.len()
        }
    }

    impl Ledger for Recorder {
        fn id(&self) -> u64 {
            7
        }

        fn prompt_tokens(&self) -> usize {
            3
        }

        fn succeed(&mut self, t: &Timings, n: usize, reason: &str, seed: Option<u64>) -> Elapsed {
            let mut l = self.0.lock().unwrap();
            l.succeeded.push((n, reason.to_string(), seed));
            Elapsed::new(t.queued, t, n)
        }

        fn fail(&mut self, err: &ApiError) {
            self.0.lock().unwrap().failed.push(err.clone());
        }
    }

    fn token(candidate: usize, text: &str, logprob: f32, last: bool) -> Event {
        Event::Token {
            candidate,
            token: GeneratedToken {
                token: TokenInfo {
                    id: 5,
                    text: text.into(),
                    logprob,
                    special: false,
                },
                text_piece: text.into(),
                top_tokens: Vec::new(),
            },
            last,
        }
    }

    fn finished(candidate: usize, reason: FinishReason, text: &str, n: usize, lp: f64) -> Event {
        Event::CandidateFinished {
            candidate,
            reason,
            text: text.into(),
            generated_tokens: n,
            cumulative_logprob: lp,
        }
    }

    fn done(seed: u64) -> Event {
        let now = Instant::now();
        Event::Done(Completion {
            prompt_tokens: 3,
            seed,
            timings: Timings {
                queued: now,
                started: now,
                first_token: now,
                finished: now,
            },
        })
    }

    /// A stream over one channel per prompt (`candidates` each), with the senders.
    fn stream(
        prompts: usize,
        candidates: usize,
        flavor: Flavor,
        summary: Summary,
    ) -> (
        GenerationStream<Recorder>,
        Vec<UnboundedSender<Event>>,
        Recorder,
    ) {
        let rec = Recorder::default();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..prompts)
            .map(|_| {
                let (tx, rx) = unbounded_channel();
                (tx, (rx, candidates))
            })
            .unzip();
        let s = GenerationStream::new(rec.clone(), rxs, flavor, summary, true);
        (s, txs, rec)
    }

    async fn drain(s: &mut GenerationStream<Recorder>) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(i) = s.next().await {
            items.push(i);
        }
        items
    }

    #[tokio::test]
    async fn a_last_token_carries_its_end_and_done_is_the_one_terminal_item() {
        let (mut s, txs, rec) = stream(1, 1, Flavor::Tgi, Summary::Best);
        for e in [
            token(0, "a", -1.0, false),
            token(0, "b", -1.0, true),
            finished(0, FinishReason::EosToken, "ab", 2, -2.0),
            done(4),
        ] {
            txs[0].send(e).unwrap();
        }
        let items = drain(&mut s).await;
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(matches!(&items[0], Item::Token { end: None, .. }));
        match &items[1] {
            Item::Token { end: Some(e), .. } => assert_eq!(e.text, "ab"),
            other => panic!("{other:?}"),
        }
        match &items[2] {
            Item::Finished(f) => assert_eq!((f.generated_tokens, f.prompt_tokens), (2, 3)),
            other => panic!("{other:?}"),
        }
        {
            let l = rec.0.lock().unwrap();
            assert_eq!(l.succeeded, vec![(2, "eos_token".to_string(), Some(4))]);
            assert!(l.failed.is_empty());
        }
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_channel_closed_before_done_fails_once_as_incomplete() {
        let (mut s, txs, rec) = stream(1, 1, Flavor::Tgi, Summary::Best);
        txs[0].send(token(0, "a", -1.0, false)).unwrap();
        drop(txs);
        let items = drain(&mut s).await;
        match items.as_slice() {
            [Item::Token { .. }, Item::Failed(e)] => {
                assert_eq!(e.kind, "incomplete_generation");
                assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rec.count(), 1);
    }

    #[tokio::test]
    async fn an_engine_error_fails_once_in_the_routes_flavor() {
        let (mut s, txs, rec) = stream(1, 1, Flavor::OpenAi, Summary::ByArrival);
        txs[0].send(token(0, "a", -1.0, false)).unwrap();
        txs[0]
            .send(Event::Error(EngineError::Generation("boom".into())))
            .unwrap();
        // Nothing after the terminal event is read.
        txs[0].send(done(1)).unwrap();
        let items = drain(&mut s).await;
        match items.as_slice() {
            [Item::Token { .. }, Item::Failed(e)] => {
                assert_eq!(e.status, StatusCode::FAILED_DEPENDENCY);
                assert_eq!(e.flavor, Flavor::OpenAi);
            }
            other => panic!("{other:?}"),
        }
        let l = rec.0.lock().unwrap();
        assert_eq!((l.failed.len(), l.succeeded.len()), (1, 0));
        assert_eq!(l.failed[0].flavor, Flavor::OpenAi);
    }

    #[tokio::test]
    async fn an_error_right_after_a_last_token_fails_without_the_token() {
        let (mut s, txs, rec) = stream(1, 1, Flavor::Tgi, Summary::Best);
        txs[0].send(token(0, "a", -1.0, true)).unwrap();
        txs[0].send(Event::Error(EngineError::ShutDown)).unwrap();
        let items = drain(&mut s).await;
        match items.as_slice() {
            [Item::Failed(e)] => assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE),
            other => panic!("{other:?}"),
        }
        assert_eq!(rec.count(), 1);
    }

    #[tokio::test]
    async fn events_out_of_the_engines_order_are_incomplete() {
        let orders: [Vec<Event>; 4] = [
            // A last token whose CandidateFinished does not follow.
            vec![token(0, "a", -1.0, true), done(1)],
            // Done before every candidate finished.
            vec![
                token(0, "a", -1.0, true),
                finished(0, FinishReason::Length, "a", 1, -1.0),
                done(1),
            ],
            // A CandidateFinished without its last token.
            vec![finished(0, FinishReason::Length, "", 0, 0.0)],
            // A token of a candidate the request does not have.
            vec![token(5, "a", -1.0, false)],
        ];
        for events in orders {
            let (mut s, txs, rec) = stream(1, 2, Flavor::Tgi, Summary::Best);
            for e in events {
                txs[0].send(e).unwrap();
            }
            let items = drain(&mut s).await;
            match items.last() {
                Some(Item::Failed(e)) => assert_eq!(e.kind, "incomplete_generation"),
                other => panic!("{other:?}"),
            }
            assert_eq!(rec.count(), 1);
        }
    }

    /// Two candidates: 0 ends first (eos, mean logprob -2), 1 ends last (length, -0.5).
    fn two_candidates(tx: &UnboundedSender<Event>) {
        for e in [
            token(0, "a", -2.0, true),
            finished(0, FinishReason::EosToken, "a", 1, -2.0),
            token(1, "b", -0.5, false),
            token(1, "c", -0.5, true),
            finished(1, FinishReason::Length, "bc", 2, -1.0),
            done(10),
        ] {
            tx.send(e).unwrap();
        }
    }

    #[tokio::test]
    async fn best_logs_the_candidate_with_the_highest_mean_logprob_and_its_seed() {
        let (s, txs, rec) = stream(1, 2, Flavor::Tgi, Summary::Best);
        two_candidates(&txs[0]);
        let (results, f) = s.collect().await.unwrap();
        assert_eq!((f.best, f.generated_tokens), (1, 2));
        assert_eq!(
            rec.0.lock().unwrap().succeeded,
            vec![(2, "length".to_string(), Some(11))]
        );
        let r = &results[0];
        assert_eq!(r.candidates.len(), 2);
        assert_eq!(r.candidates[1].text, "bc");
        assert_eq!(r.candidates[1].tokens.len(), 2);
        assert_eq!(r.completion.seed, 10);
    }

    #[tokio::test]
    async fn openai_logs_count_every_candidate_with_the_first_or_the_last_reason() {
        for (summary, reason) in [(Summary::ByIndex, "stop"), (Summary::ByArrival, "length")] {
            let (mut s, txs, rec) = stream(1, 2, Flavor::OpenAi, summary);
            two_candidates(&txs[0]);
            drain(&mut s).await;
            assert_eq!(
                rec.0.lock().unwrap().succeeded,
                vec![(3, reason.to_string(), Some(10))],
                "{summary:?}"
            );
        }
    }

    #[tokio::test]
    async fn prompts_finish_together_and_one_error_fails_them_all() {
        let (mut s, txs, rec) = stream(2, 1, Flavor::OpenAi, Summary::ByIndex);
        txs[0].send(token(0, "a", -1.0, true)).unwrap();
        txs[0]
            .send(finished(0, FinishReason::Length, "a", 1, -1.0))
            .unwrap();
        txs[0].send(done(1)).unwrap();
        txs[1].send(Event::Error(EngineError::Overloaded)).unwrap();
        let items = drain(&mut s).await;
        assert!(matches!(items.last(), Some(Item::Failed(_))), "{items:?}");
        assert!(!items.iter().any(|i| matches!(i, Item::Finished(_))));
        assert_eq!(rec.count(), 1);

        let (s, txs, rec) = stream(2, 1, Flavor::OpenAi, Summary::ByIndex);
        for (p, tx) in txs.iter().enumerate() {
            tx.send(Event::Prefill { tokens: Vec::new() }).unwrap();
            tx.send(token(0, "x", -1.0, true)).unwrap();
            tx.send(finished(0, FinishReason::Length, "x", p + 1, -1.0))
                .unwrap();
            tx.send(done(1)).unwrap();
        }
        let (results, f) = s.collect().await.unwrap();
        assert_eq!(
            (results.len(), f.completions.len(), f.generated_tokens),
            (2, 2, 3)
        );
        assert_eq!(rec.count(), 1);
    }
}

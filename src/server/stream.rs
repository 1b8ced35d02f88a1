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

use axum::response::Response;

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
pub fn best_candidate(ends: &[CandidateEnd]) -> usize {
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

/// A request's events as [`Item`]s; see the module documentation.
pub struct GenerationStream {
    log: RequestLog,
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
    /// receivers already taken are dropped (cancelled), the failure is logged and its
    /// answer returned.
    pub fn start(
        st: &Arc<AppState>,
        mut log: RequestLog,
        requests: Vec<GenerationRequest>,
        flavor: Flavor,
        summary: Summary,
    ) -> Result<Self, Response> {
        let prompt_tokens = requests.iter().map(|r| r.prompt.len()).sum();
        let max_new = requests.first().map_or(0, |r| r.stopping.max_new_tokens);
        log.validated(prompt_tokens, max_new);
        let sampling = requests.first().is_some_and(|r| r.sampling.do_sample);
        let submitted = requests
            .into_iter()
            .map(|mut r| {
                r.id = log.id;
                let candidates = r.candidates;
                st.submit(r).map(|rx| Prompt {
                    events: Some(rx),
                    ends: vec![None; candidates],
                    completion: None,
                })
            })
            .collect::<Result<Vec<_>, _>>();
        match submitted {
            Ok(prompts) => Ok(Self {
                log,
                flavor,
                summary,
                sampling,
                prompts,
                cursor: 0,
                last_reason: None,
                first_timings: None,
                ended: false,
            }),
            Err(e) => Err(log.reject(e.flavor(flavor))),
        }
    }

    /// The request id (OpenAI's `id` field).
    pub fn id(&self) -> u64 {
        self.log.id
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
            prompt_tokens: self.log.prompt_tokens,
            generated_tokens,
            completions,
            ends,
            best,
        })
    }
}

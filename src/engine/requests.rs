//! Request bookkeeping: which requests are in the engine, their candidates and where
//! their events go.
//!
//! A request is a group of candidates (TGI `best_of`, OpenAI `n`) generated from one
//! prompt. It enters with one sequence, candidate 0; when its prompt is done and its
//! first token is chosen, the other candidates are forked from it (sharing the prompt's
//! blocks) and get consecutive sequence ids. A group ends when its last candidate
//! finishes, when it fails, or when its client goes away (its event receiver is
//! dropped); ending it hands back the ids of the sequences it still has, so the caller
//! can release their blocks. The scheduler holds the sequences' tokens and blocks; this
//! table holds what the scheduler does not know: requests, samplers, text and timings.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::output::TokenOutput;
use super::request::{Completion, Event, GenerationRequest, Timings, TokenInfo};
use super::scheduler::SeqId;
use crate::grammar::Constraint;
use crate::sampling::Sampler;

pub(crate) type GroupId = u64;

/// One request: its candidates and where its events go.
pub(crate) struct Group {
    pub request: GenerationRequest,
    pub events: UnboundedSender<Event>,
    /// Sequence ids of candidates, by candidate index (None once finished).
    pub candidates: Vec<Option<SeqId>>,
    /// The other candidates have been forked from candidate 0.
    pub forked: bool,
    pub unfinished: usize,
    /// Prompt token logprobs gathered so far (when asked).
    pub prefill: Vec<TokenInfo>,
    pub prefill_sent: bool,
    pub queued: Instant,
    pub started: Option<Instant>,
    pub first_token: Option<Instant>,
}

impl Group {
    /// Whether a prompt chunk of this request wants the logprobs of all its rows.
    pub fn wants_prompt_logprobs(&self) -> bool {
        self.request.prompt_logprobs && !self.prefill_sent && !self.forked
    }

    /// Sends `event`; a client that has gone away is noticed by `closed`.
    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Sends the prompt logprobs gathered so far, once.
    pub fn send_prefill(&mut self) {
        self.prefill_sent = true;
        let tokens = std::mem::take(&mut self.prefill);
        self.send(Event::Prefill { tokens });
    }

    /// The terminal success event, at `now`.
    pub fn done(&self, now: Instant) -> Event {
        Event::Done(Completion {
            prompt_tokens: self.request.prompt.len(),
            seed: self.request.sampling.seed,
            timings: Timings {
                queued: self.queued,
                started: self.started.unwrap_or(now),
                first_token: self.first_token.unwrap_or(now),
                finished: now,
            },
        })
    }
}

/// A candidate's generation state (the scheduler holds its tokens and blocks).
pub(crate) struct Candidate {
    pub group: GroupId,
    pub index: usize,
    pub sampler: Sampler,
    pub output: TokenOutput,
    /// Where the candidate is in its request's grammar (lent to a step while its mask
    /// is computed, see `masks`).
    pub constraint: Option<Constraint>,
}

/// Every request in the engine, by group id, and every live candidate, by sequence id.
#[derive(Default)]
pub(crate) struct Requests {
    groups: HashMap<GroupId, Group>,
    candidates: HashMap<SeqId, Candidate>,
    next_group: GroupId,
    next_seq: SeqId,
}

impl Requests {
    /// Enters a request with its first candidate; returns that candidate's sequence id.
    /// `first_prompt_token` starts the prompt logprobs when they are asked for.
    pub fn admit(
        &mut self,
        request: GenerationRequest,
        events: UnboundedSender<Event>,
        queued: Instant,
        first_prompt_token: Option<TokenInfo>,
    ) -> SeqId {
        let gid = self.next_group;
        self.next_group += 1;
        let sid = self.new_seq_id();
        self.candidates
            .insert(sid, Self::candidate(gid, 0, &request));
        let mut candidates = vec![None; request.candidates];
        candidates[0] = Some(sid);
        self.groups.insert(
            gid,
            Group {
                unfinished: request.candidates,
                request,
                events,
                candidates,
                forked: false,
                prefill: first_prompt_token.into_iter().collect(),
                prefill_sent: false,
                queued,
                started: None,
                first_token: None,
            },
        );
        sid
    }

    fn new_seq_id(&mut self) -> SeqId {
        let id = self.next_seq;
        self.next_seq += 1;
        id
    }

    fn candidate(group: GroupId, index: usize, r: &GenerationRequest) -> Candidate {
        let seed = r.sampling.seed.wrapping_add(index as u64);
        Candidate {
            group,
            index,
            sampler: Sampler::new(&r.sampling, seed),
            output: TokenOutput::new(&r.prompt, &r.stopping),
            constraint: r.grammar.as_ref().map(|g| g.start()),
        }
    }

    /// The sequence id the next forked candidate will get.
    pub fn next_seq_id(&self) -> SeqId {
        self.next_seq
    }

    /// Adds candidate `index` of group `gid` (a fork of candidate 0) under the next
    /// sequence id, which it returns.
    pub fn add_candidate(&mut self, gid: GroupId, index: usize) -> Option<SeqId> {
        let g = self.groups.get_mut(&gid)?;
        let slot = g.candidates.get_mut(index)?;
        let sid = self.next_seq;
        self.next_seq += 1;
        *slot = Some(sid);
        let cand = Self::candidate(gid, index, &g.request);
        self.candidates.insert(sid, cand);
        Some(sid)
    }

    pub fn group(&self, gid: GroupId) -> Option<&Group> {
        self.groups.get(&gid)
    }

    pub fn group_mut(&mut self, gid: GroupId) -> Option<&mut Group> {
        self.groups.get_mut(&gid)
    }

    /// The group of sequence `sid`.
    pub fn group_of(&self, sid: SeqId) -> Option<GroupId> {
        self.candidates.get(&sid).map(|c| c.group)
    }

    /// The group of sequence `sid` and the candidate, both mutable.
    pub fn get_mut(&mut self, sid: SeqId) -> Option<(&mut Group, &mut Candidate)> {
        let c = self.candidates.get_mut(&sid)?;
        Some((self.groups.get_mut(&c.group)?, c))
    }

    pub fn ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Groups whose client has gone away.
    pub fn closed(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, g)| g.events.is_closed())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Forgets candidate `sid` (it finished); returns it.
    pub fn finish_candidate(&mut self, sid: SeqId) -> Option<Candidate> {
        let c = self.candidates.remove(&sid)?;
        if let Some(g) = self.groups.get_mut(&c.group) {
            if let Some(slot) = g.candidates.get_mut(c.index) {
                *slot = None;
            }
            g.unfinished = g.unfinished.saturating_sub(1);
        }
        Some(c)
    }

    /// Forgets a request; returns it with the sequence ids it still had (to release).
    pub fn remove(&mut self, gid: GroupId) -> Option<(Group, Vec<SeqId>)> {
        let g = self.groups.remove(&gid)?;
        let live: Vec<SeqId> = g.candidates.iter().flatten().copied().collect();
        for sid in &live {
            self.candidates.remove(sid);
        }
        Some((g, live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::request::StoppingParams;
    use crate::sampling::SamplingParams;
    use tokio::sync::mpsc::unbounded_channel;

    fn request(candidates: usize) -> GenerationRequest {
        GenerationRequest {
            id: 7,
            prompt: vec![1, 2, 3],
            sampling: SamplingParams::default(),
            stopping: StoppingParams {
                max_new_tokens: 4,
                stop_sequences: vec![],
                include_stop_sequence: true,
                ignore_eos: false,
            },
            top_n_tokens: 0,
            prompt_logprobs: false,
            grammar: None,
            candidates,
        }
    }

    #[test]
    fn forked_candidates_get_consecutive_sequence_ids() {
        let mut r = Requests::default();
        let (tx, _rx) = unbounded_channel();
        let first = r.admit(request(3), tx, Instant::now(), None);
        let gid = r.group_of(first).unwrap();
        let next = r.next_seq_id();
        let a = r.add_candidate(gid, 1).unwrap();
        let b = r.add_candidate(gid, 2).unwrap();
        assert_eq!((a, b), (next, next + 1));
        assert_eq!(r.get_mut(b).map(|(_, c)| c.index), Some(2));
        assert_eq!(
            r.group(gid).unwrap().candidates,
            vec![Some(first), Some(a), Some(b)]
        );
        // No slot for a fourth candidate.
        assert_eq!(r.add_candidate(gid, 3), None);
    }

    #[test]
    fn removing_a_group_hands_back_its_unfinished_sequences() {
        let mut r = Requests::default();
        let (tx, _rx) = unbounded_channel();
        let first = r.admit(request(3), tx, Instant::now(), None);
        let gid = r.group_of(first).unwrap();
        let a = r.add_candidate(gid, 1).unwrap();
        let b = r.add_candidate(gid, 2).unwrap();
        let done = r.finish_candidate(a).unwrap();
        assert_eq!(done.index, 1);
        assert_eq!(r.group(gid).unwrap().unfinished, 2);
        let (g, live) = r.remove(gid).unwrap();
        assert_eq!(g.request.id, 7);
        assert_eq!(live, vec![first, b]);
        assert!(r.get_mut(first).is_none() && r.get_mut(b).is_none());
        assert!(r.remove(gid).is_none());
    }

    #[test]
    fn a_dropped_receiver_closes_its_group_only() {
        let mut r = Requests::default();
        let (tx0, rx0) = unbounded_channel();
        let (tx1, _rx1) = unbounded_channel();
        let a = r.admit(request(1), tx0, Instant::now(), None);
        let _b = r.admit(request(1), tx1, Instant::now(), None);
        assert!(r.closed().is_empty());
        drop(rx0);
        assert_eq!(r.closed(), vec![r.group_of(a).unwrap()]);
    }

    #[test]
    fn prompt_logprobs_start_with_the_first_prompt_token_and_are_sent_once() {
        let mut r = Requests::default();
        let (tx, mut rx) = unbounded_channel();
        let mut req = request(1);
        req.prompt_logprobs = true;
        let first = TokenInfo {
            id: 1,
            text: "a".into(),
            logprob: f32::NAN,
            special: false,
        };
        let sid = r.admit(req, tx, Instant::now(), Some(first));
        let (g, _) = r.get_mut(sid).unwrap();
        assert!(g.wants_prompt_logprobs());
        g.send_prefill();
        assert!(!g.wants_prompt_logprobs());
        match rx.try_recv() {
            Ok(Event::Prefill { tokens }) => assert_eq!(tokens.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}

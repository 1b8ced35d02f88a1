//! What a candidate's chosen tokens become for the client: each token is detokenized
//! (text held back while a character is unfinished), matched against the stop
//! sequences (text held back while a stop string may be starting), and checked for the
//! end of the candidate, in this order of precedence: a stop sequence, an
//! end-of-sequence token (unless ignored), `max_new_tokens`. At the end, whatever the
//! detokenizer and the stop matcher still hold is released, so the pieces of a
//! candidate's tokens concatenate to exactly its final text.

use anyhow::Result;

use super::request::{Event, FinishReason, GeneratedToken, StoppingParams, TokenInfo};
use crate::sampling::{Sampled, StopSequences};
use crate::tokenizer::{DecodeStream, Tokenizer};

/// One candidate's text so far and the state that turns its next token into text.
pub(crate) struct TokenOutput {
    detok: DecodeStream,
    stop: StopSequences,
    text: String,
    cumulative_logprob: f64,
}

/// A chosen token as the client sees it, and whether it ends the candidate.
pub(crate) struct Accepted {
    pub token: GeneratedToken,
    pub finish: Option<FinishReason>,
}

impl TokenOutput {
    /// `prompt` gives the detokenizer the context for the first token's leading space.
    pub fn new(prompt: &[u32], stopping: &StoppingParams) -> Self {
        let tail = &prompt[prompt.len().saturating_sub(4)..];
        Self {
            detok: DecodeStream::new(tail),
            stop: StopSequences::new(
                stopping.stop_sequences.clone(),
                stopping.include_stop_sequence,
            ),
            text: String::new(),
            cumulative_logprob: 0.0,
        }
    }

    /// Turns the candidate's `n_generated`-th token into its piece of text and decides
    /// whether the candidate ends with it.
    pub fn accept(
        &mut self,
        tok: &Tokenizer,
        sampled: &Sampled,
        n_generated: usize,
        stopping: &StoppingParams,
        eos_ids: &[u32],
        grammar_complete: bool,
    ) -> Result<Accepted> {
        let id = sampled.id;
        let raw = self.detok.step(tok, id)?;
        let stop = self.stop.push(&raw);
        let mut piece = stop.emit;
        // A complete grammar ends the candidate as its end-of-sequence token would.
        let eos = (!stopping.ignore_eos && eos_ids.contains(&id)) || grammar_complete;
        let mut finish = if stop.stopped {
            Some(FinishReason::StopSequence)
        } else if eos {
            Some(FinishReason::EosToken)
        } else if n_generated >= stopping.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        if finish.is_some() && !stop.stopped {
            // Text the detokenizer still holds (an unfinished character), then whatever
            // the stop matcher held back.
            let tail = self.stop.push(&self.detok.flush(tok)?);
            piece.push_str(&tail.emit);
            if tail.stopped {
                finish = Some(FinishReason::StopSequence);
            } else {
                piece.push_str(&self.stop.finish());
            }
        }
        self.text.push_str(&piece);
        self.cumulative_logprob += sampled.logprob as f64;
        let top_tokens = sampled
            .top
            .iter()
            .map(|&(t, lp)| token_info(tok, t, lp))
            .collect();
        Ok(Accepted {
            token: GeneratedToken {
                token: token_info(tok, id, sampled.logprob),
                text_piece: piece,
                top_tokens,
            },
            finish,
        })
    }

    /// The candidate's `CandidateFinished` event.
    pub fn finished(
        &self,
        candidate: usize,
        reason: FinishReason,
        generated_tokens: usize,
    ) -> Event {
        Event::CandidateFinished {
            candidate,
            reason,
            text: self.text.clone(),
            generated_tokens,
            cumulative_logprob: self.cumulative_logprob,
        }
    }
}

/// A token with its own text (special tokens included) and a logprob.
pub(crate) fn token_info(tok: &Tokenizer, id: u32, logprob: f32) -> TokenInfo {
    TokenInfo {
        id,
        text: tok.decode(&[id], false).unwrap_or_default(),
        logprob,
        special: tok.is_special(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        Tokenizer::byte_level(300).unwrap()
    }

    fn stopping(max_new_tokens: usize, stops: &[&str], include: bool) -> StoppingParams {
        StoppingParams {
            max_new_tokens,
            stop_sequences: stops.iter().map(|s| s.to_string()).collect(),
            include_stop_sequence: include,
            ignore_eos: false,
        }
    }

    fn sampled(id: u32) -> Sampled {
        Sampled {
            id,
            logprob: -0.5,
            top: Vec::new(),
        }
    }

    /// Feeds `text`'s tokens one by one; returns the pieces and the finish reason.
    fn run(
        tok: &Tokenizer,
        text: &str,
        stop: &StoppingParams,
        eos: &[u32],
    ) -> (Vec<String>, Option<FinishReason>, TokenOutput) {
        let ids = tok.encode(text, false).unwrap();
        let mut out = TokenOutput::new(&[], stop);
        let mut pieces = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let a = out
                .accept(tok, &sampled(id), i + 1, stop, eos, false)
                .unwrap();
            pieces.push(a.token.text_piece);
            if a.finish.is_some() {
                return (pieces, a.finish, out);
            }
        }
        (pieces, None, out)
    }

    #[test]
    fn pieces_concatenate_to_the_final_text() {
        let tok = tokenizer();
        let stop = stopping(100, &[], true);
        let (pieces, finish, out) = run(&tok, "héllo wörld", &stop, &[]);
        assert_eq!(finish, None);
        assert_eq!(pieces.concat(), "héllo wörld");
        assert_eq!(out.text, "héllo wörld");
        // A multi-byte character is held back until it is whole.
        assert!(pieces.iter().any(|p| p.is_empty()));
    }

    #[test]
    fn a_stop_sequence_ends_the_candidate_and_is_kept_or_cut() {
        let tok = tokenizer();
        for (include, want) in [(true, "say STOP"), (false, "say ")] {
            let stop = stopping(100, &["STOP"], include);
            let (pieces, finish, out) = run(&tok, "say STOP and more", &stop, &[]);
            assert_eq!(finish, Some(FinishReason::StopSequence));
            assert_eq!(pieces.concat(), want);
            assert_eq!(out.text, want);
        }
    }

    #[test]
    fn max_new_tokens_ends_the_candidate_and_releases_held_text() {
        let tok = tokenizer();
        // The held-back "ST" (a possible stop) comes out at the length limit.
        let stop = stopping(4, &["STOP"], true);
        let (pieces, finish, out) = run(&tok, "a ST", &stop, &[]);
        assert_eq!(finish, Some(FinishReason::Length));
        assert_eq!(pieces.concat(), "a ST");
        let Event::CandidateFinished {
            text,
            generated_tokens,
            cumulative_logprob,
            ..
        } = out.finished(0, FinishReason::Length, 4)
        else {
            panic!("not a CandidateFinished event")
        };
        assert_eq!((text.as_str(), generated_tokens), ("a ST", 4));
        assert!((cumulative_logprob + 2.0).abs() < 1e-9);
    }

    #[test]
    fn eos_ends_the_candidate_unless_ignored() {
        let tok = tokenizer();
        let eos = tok.encode("!", false).unwrap();
        let (_, finish, _) = run(&tok, "hi! more", &stopping(100, &[], true), &eos);
        assert_eq!(finish, Some(FinishReason::EosToken));
        let mut ignoring = stopping(100, &[], true);
        ignoring.ignore_eos = true;
        let (pieces, finish, _) = run(&tok, "hi! more", &ignoring, &eos);
        assert_eq!((finish, pieces.concat().as_str()), (None, "hi! more"));
    }

    #[test]
    fn a_stop_sequence_outranks_eos_and_length() {
        let tok = tokenizer();
        let eos = tok.encode("P", false).unwrap();
        let (_, finish, _) = run(&tok, "STOP", &stopping(4, &["STOP"], true), &eos);
        assert_eq!(finish, Some(FinishReason::StopSequence));
    }
}

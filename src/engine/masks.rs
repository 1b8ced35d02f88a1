//! The grammar masks of a step, computed beside the forward pass.
//!
//! Before the model runs, each constrained item that will choose a token lends its
//! candidate's [`Constraint`] to the step; a second thread computes their masks while
//! the engine thread runs the forward pass, and the engine thread waits for them only
//! when it needs them, at the choice. The constraints go back to their candidates
//! whatever happened, and each chosen token then advances its candidate's constraint.
//! A mask that cannot be computed fails its request alone.

use std::time::{Duration, Instant};

use super::requests::Requests;
use super::scheduler::{SeqId, StepPlan};
use crate::grammar::{Constraint, TokenMask};

/// The constrained items of one step and their masks (kept between steps for their
/// capacity).
#[derive(Default)]
pub(crate) struct StepMasks {
    /// Plan item index and sequence of each constrained item, in item order.
    items: Vec<(usize, SeqId)>,
    constraints: Vec<Constraint>,
    masks: Vec<TokenMask>,
    errors: Vec<Option<String>>,
    /// Time spent computing each mask.
    pub times: Vec<Duration>,
}

impl StepMasks {
    /// Takes the constraints of the plan's items that choose a token.
    pub fn lend(&mut self, plan: &StepPlan, requests: &mut Requests) {
        self.items.clear();
        self.constraints.clear();
        self.errors.clear();
        self.times.clear();
        for (k, it) in plan.items.iter().enumerate() {
            if !it.completes {
                continue;
            }
            if let Some(c) = requests
                .get_mut(it.id)
                .and_then(|(_, c)| c.constraint.take())
            {
                self.items.push((k, it.id));
                self.constraints.push(c);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Computes every lent constraint's mask (on the side thread).
    pub fn compute(&mut self) {
        let n = self.constraints.len();
        if self.masks.len() < n {
            self.masks.resize_with(n, TokenMask::default);
        }
        for (c, mask) in self.constraints.iter_mut().zip(&mut self.masks) {
            let start = Instant::now();
            let r = c.mask_into(mask);
            self.times.push(start.elapsed());
            self.errors.push(r.err().map(|e| format!("{e:#}")));
        }
    }

    /// Gives the constraints back to their candidates (those still in the engine).
    pub fn give_back(&mut self, requests: &mut Requests) {
        for (&(_, sid), c) in self.items.iter().zip(self.constraints.drain(..)) {
            if let Some((_, cand)) = requests.get_mut(sid) {
                cand.constraint = Some(c);
            }
        }
    }

    /// Item `k`'s mask: None when it is not constrained, else the mask or why there is
    /// none.
    pub fn of(&self, k: usize) -> Option<Result<&TokenMask, String>> {
        let i = self.items.binary_search_by_key(&k, |&(k, _)| k).ok()?;
        Some(match self.errors.get(i) {
            Some(None) => self.masks.get(i).ok_or_else(|| "mask missing".to_string()),
            Some(Some(e)) => Err(e.clone()),
            None => Err("mask not computed".to_string()),
        })
    }

    /// Plan item index and mask of every item with a mask.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn computed(&self) -> impl Iterator<Item = (usize, &TokenMask)> + Clone {
        self.items
            .iter()
            .zip(&self.masks)
            .zip(&self.errors)
            .filter(|(_, e)| e.is_none())
            .map(|((&(k, _), m), _)| (k, m))
    }
}

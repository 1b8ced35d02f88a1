//! Choosing the next token from logits.

/// Index of the largest value (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn argmax_picks_first_maximum() {
        assert_eq!(super::argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(super::argmax(&[]), None);
    }
}

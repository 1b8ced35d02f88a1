//! Stop sequences matched on the decoded text of one candidate, across token boundaries.
//!
//! The text arrives in pieces. An Aho-Corasick automaton over the stop strings' bytes
//! reads each byte once; its state is the longest suffix of the text that is still the
//! beginning of some stop string, and exactly that suffix is held back. A stop string
//! completes at the earliest position where any does (of those ending there, the
//! longest); the output is cut before it (`include_stop = false`, OpenAI) or after it
//! (`include_stop = true`, TGI). Stop strings are valid UTF-8, so every cut and every
//! held-back suffix starts on a character boundary.

/// What one piece of text gives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopStep {
    /// Text that is final: it can no longer be part of a stop string.
    pub emit: String,
    /// A stop string completed: `emit` ends where the output ends, and generation stops.
    pub stopped: bool,
}

#[derive(Debug)]
pub struct StopSequences {
    stops: Vec<String>,
    automaton: Option<Automaton>,
    include_stop: bool,
    state: u32,
    /// The text not emitted yet.
    held: String,
    /// Index in `stops` of the stop string that matched.
    matched: Option<usize>,
}

impl StopSequences {
    /// Empty stop strings are ignored (and duplicates merged).
    pub fn new(stops: Vec<String>, include_stop: bool) -> Self {
        let mut stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        stops.sort_unstable();
        stops.dedup();
        let automaton = (!stops.is_empty()).then(|| Automaton::new(&stops));
        Self {
            stops,
            automaton,
            include_stop,
            state: 0,
            held: String::new(),
            matched: None,
        }
    }

    /// Feeds the next piece of decoded text. After a stop, further pieces give nothing.
    pub fn push(&mut self, piece: &str) -> StopStep {
        if self.matched.is_some() {
            return StopStep {
                emit: String::new(),
                stopped: true,
            };
        }
        let Some(ac) = &self.automaton else {
            return StopStep {
                emit: piece.to_string(),
                stopped: false,
            };
        };
        let base = self.held.len();
        self.held.push_str(piece);
        for (i, b) in piece.bytes().enumerate() {
            self.state = ac.next(self.state, b);
            if let Some(k) = ac.output(self.state) {
                let end = base + i + 1;
                let cut = if self.include_stop {
                    end
                } else {
                    end - self.stops[k].len()
                };
                self.held.truncate(cut);
                self.matched = Some(k);
                return StopStep {
                    emit: std::mem::take(&mut self.held),
                    stopped: true,
                };
            }
        }
        let keep = ac.depth[self.state as usize] as usize;
        let cut = self.held.len() - keep;
        debug_assert!(self.held.is_char_boundary(cut));
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Everything held back, when generation ends for another reason than a stop string.
    pub fn finish(&mut self) -> String {
        self.state = 0;
        std::mem::take(&mut self.held)
    }

    /// The stop string that matched, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|k| self.stops[k].as_str())
    }

    /// Whether a stop string matched.
    pub fn stopped(&self) -> bool {
        self.matched.is_some()
    }
}

/// An Aho-Corasick automaton over bytes: a trie of the patterns with failure links,
/// sparse edges (sorted per state) and a dense table at the root.
#[derive(Debug)]
struct Automaton {
    /// Edges of state s: `edges[edge_start[s]..edge_start[s + 1]]`, sorted by byte.
    edge_start: Vec<u32>,
    edges: Vec<(u8, u32)>,
    root: [u32; 256],
    fail: Vec<u32>,
    /// Length of the state's string.
    depth: Vec<u32>,
    /// 1 + index of the longest pattern that is a suffix of the state's string; 0: none.
    out: Vec<u32>,
}

impl Automaton {
    fn new(patterns: &[String]) -> Self {
        // Trie.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut depth = vec![0u32];
        let mut terminal = vec![0u32];
        for (k, p) in patterns.iter().enumerate() {
            let mut s = 0usize;
            for &b in p.as_bytes() {
                s = match children[s].iter().find(|e| e.0 == b) {
                    Some(&(_, t)) => t as usize,
                    None => {
                        let t = children.len();
                        children[s].push((b, t as u32));
                        children.push(Vec::new());
                        depth.push(depth[s] + 1);
                        terminal.push(0);
                        t
                    }
                };
            }
            terminal[s] = k as u32 + 1;
        }
        let n = children.len();
        let mut edge_start = Vec::with_capacity(n + 1);
        let mut edges = Vec::new();
        for c in children.iter_mut() {
            c.sort_unstable();
            edge_start.push(edges.len() as u32);
            edges.extend_from_slice(c);
        }
        edge_start.push(edges.len() as u32);
        let mut ac = Self {
            edge_start,
            edges,
            root: [0; 256],
            fail: vec![0; n],
            depth,
            out: terminal.clone(),
        };
        for &(b, t) in &children[0] {
            ac.root[b as usize] = t;
        }
        // Failure links and outputs, breadth first.
        let mut queue = std::collections::VecDeque::new();
        for &(_, t) in &children[0] {
            queue.push_back(t);
        }
        while let Some(s) = queue.pop_front() {
            for &(b, t) in &children[s as usize] {
                let f = ac.next(ac.fail[s as usize], b);
                ac.fail[t as usize] = f;
                if terminal[t as usize] == 0 {
                    ac.out[t as usize] = ac.out[f as usize];
                }
                queue.push_back(t);
            }
        }
        ac
    }

    #[inline]
    fn edge(&self, s: u32, b: u8) -> Option<u32> {
        if s == 0 {
            return Some(self.root[b as usize]);
        }
        let e = &self.edges
            [self.edge_start[s as usize] as usize..self.edge_start[s as usize + 1] as usize];
        e.binary_search_by_key(&b, |x| x.0).ok().map(|i| e[i].1)
    }

    #[inline]
    fn next(&self, mut s: u32, b: u8) -> u32 {
        loop {
            if let Some(t) = self.edge(s, b) {
                return t;
            }
            s = self.fail[s as usize];
        }
    }

    #[inline]
    fn output(&self, s: u32) -> Option<usize> {
        match self.out[s as usize] {
            0 => None,
            k => Some(k as usize - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text cut at the first stop match (earliest end, then longest), and whether
    /// one matched: the plain definition the streaming matcher must agree with.
    fn reference(text: &str, stops: &[&str], include: bool) -> (String, bool) {
        let b = text.as_bytes();
        for end in 1..=b.len() {
            let best = stops
                .iter()
                .filter(|s| !s.is_empty() && b[..end].ends_with(s.as_bytes()))
                .map(|s| s.len())
                .max();
            if let Some(len) = best {
                let cut = if include { end } else { end - len };
                return (text[..cut].to_string(), true);
            }
        }
        (text.to_string(), false)
    }

    /// Streams `pieces` and returns (emits + finish, stopped, emits one by one).
    fn stream(pieces: &[&str], stops: &[&str], include: bool) -> (String, bool, Vec<String>) {
        let mut s = StopSequences::new(stops.iter().map(|x| x.to_string()).collect(), include);
        let mut out = String::new();
        let mut emits = Vec::new();
        for p in pieces {
            let step = s.push(p);
            out.push_str(&step.emit);
            emits.push(step.emit.clone());
            if step.stopped {
                return (out, true, emits);
            }
        }
        out.push_str(&s.finish());
        (out, false, emits)
    }

    #[test]
    fn stop_split_across_pieces() {
        let pieces = ["Hello", " wor", "ld", "! And", " more"];
        let (text, stopped, emits) = stream(&pieces, &["world!"], false);
        assert_eq!((text.as_str(), stopped), ("Hello ", true));
        // " wor" could start "world!": held back until it cannot.
        assert_eq!(emits, vec!["Hello", " ", "", ""]);
        let (text, stopped, _) = stream(&pieces, &["world!"], true);
        assert_eq!((text.as_str(), stopped), ("Hello world!", true));
        // A false start is released once it cannot match any more.
        let (text, stopped, emits) = stream(&["ab", "c", "abd", "x", "abde"], &["abde"], false);
        assert_eq!((text.as_str(), stopped), ("abcabdx", true));
        assert_eq!(emits, vec!["", "abc", "", "abdx", ""]);
        // No match: everything comes out, the tail at finish.
        let (text, stopped, emits) = stream(&["x", "ab"], &["abc"], false);
        assert_eq!((text.as_str(), stopped), ("xab", false));
        assert_eq!(emits, vec!["x", ""]);
    }

    #[test]
    fn overlapping_and_nested_stops() {
        // "bc" completes before "abcd" could.
        assert_eq!(stream(&["abcd"], &["abcd", "bc"], false).0, "a");
        assert_eq!(stream(&["abcd"], &["abcd", "bc"], true).0, "abc");
        // Same end: the longest one.
        assert_eq!(stream(&["xabc"], &["bc", "abc"], false).0, "x");
        assert_eq!(stream(&["a", "a", "a", "b"], &["aab"], false).0, "a");
        // Match inside one piece, text after it dropped.
        assert_eq!(stream(&["one STOP two"], &["STOP"], true).0, "one STOP");
        // Empty stop strings are ignored.
        let (text, stopped, _) = stream(&["abc"], &["", ""], false);
        assert_eq!((text.as_str(), stopped), ("abc", false));
    }

    #[test]
    fn utf8_is_never_split() {
        let stops = ["é!", "日本語", "🙂🙂"];
        let pieces = ["caf", "é", " 日本", "は", " 🙂", "🙂 end"];
        let (text, stopped, emits) = stream(&pieces, &stops, false);
        assert_eq!((text.as_str(), stopped), ("café 日本は ", true));
        // "é" could begin "é!", "日本" could begin "日本語", "🙂" could begin "🙂🙂".
        assert_eq!(emits, vec!["caf", "", "é ", "日本は", " ", ""]);
        let (text, _, _) = stream(&pieces, &stops, true);
        assert_eq!(text, "café 日本は 🙂🙂");
    }

    #[test]
    fn after_a_stop_nothing_more() {
        let mut s = StopSequences::new(vec!["x".into()], false);
        assert!(s.push("axb").stopped);
        assert_eq!(s.matched(), Some("x"));
        assert_eq!(
            s.push("more"),
            StopStep {
                emit: String::new(),
                stopped: true
            }
        );
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn many_stop_strings() {
        let stops: Vec<String> = (0..1000).map(|i| format!("<stop{i}>")).collect();
        let mut s = StopSequences::new(stops, false);
        let mut out = String::new();
        for i in 0..2000 {
            let step = s.push(&format!("<stop{}x", i % 1500));
            out.push_str(&step.emit);
            assert!(!step.stopped);
        }
        let step = s.push("<stop999>tail");
        assert!(step.stopped);
        out.push_str(&step.emit);
        assert!(out.ends_with("<stop499x"));
        assert_eq!(s.matched(), Some("<stop999>"));
    }

    /// The invariant: emits + finish == the full text cut at the first stop match,
    /// whatever the split, on random texts over a small alphabet (so that stop strings
    /// occur and overlap often) with multi-byte characters.
    #[test]
    fn streaming_equals_cutting_the_whole_text() {
        let alphabet = ['a', 'b', 'é', '日', '🙂'];
        let mut state = 0x9E3779B97F4A7C15u64;
        let mut rand = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..3000 {
            let text: String = (0..rand(30)).map(|_| alphabet[rand(5)]).collect();
            let stops: Vec<String> = (0..rand(4))
                .map(|_| (0..rand(4)).map(|_| alphabet[rand(5)]).collect())
                .collect();
            let stop_refs: Vec<&str> = stops.iter().map(String::as_str).collect();
            // Random split at character boundaries.
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            let mut pieces = Vec::new();
            let mut start = 0;
            for (i, _) in chars.iter().skip(1) {
                if rand(3) == 0 {
                    pieces.push(&text[start..*i]);
                    start = *i;
                }
            }
            pieces.push(&text[start..]);
            for include in [false, true] {
                let (got, stopped, _) = stream(&pieces, &stop_refs, include);
                let (want, want_stopped) = reference(&text, &stop_refs, include);
                assert_eq!(
                    (&got, stopped),
                    (&want, want_stopped),
                    "text {text:?} stops {stops:?} pieces {pieces:?} include {include}"
                );
            }
        }
    }
}

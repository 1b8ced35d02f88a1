//! Splitting text at special-token text the way llama.cpp does before tokenizing
//! (`tokenizer_st_partition` with parse_special): control, user-defined and unknown
//! tokens are matched as whole tokens, the longest token first, every occurrence of a
//! token in the text that is still unclaimed. Tokens may strip ASCII whitespace on
//! their left or right.

/// A token matched verbatim in text.
#[derive(Debug, Clone)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
    pub lstrip: bool,
    pub rstrip: bool,
}

/// A piece of partitioned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Debug, Clone)]
pub struct Specials {
    /// Longest first (ties: lower id first).
    tokens: Vec<SpecialToken>,
    /// For each first byte, the indices in `tokens` of the tokens starting with it.
    by_first_byte: Vec<Vec<usize>>,
}

/// C's `isspace` in the "C" locale, which is what llama.cpp strips with.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[derive(Clone, Copy)]
enum Piece {
    Text(usize, usize),
    Token(u32),
}

impl Specials {
    pub fn new(mut tokens: Vec<SpecialToken>) -> Self {
        tokens.retain(|t| !t.text.is_empty());
        tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        let mut by_first_byte = vec![Vec::new(); 256];
        for (i, t) in tokens.iter().enumerate() {
            by_first_byte[t.text.as_bytes()[0] as usize].push(i);
        }
        Self {
            tokens,
            by_first_byte,
        }
    }

    /// Indices (in matching order) of the tokens whose text occurs in `text`.
    fn present(&self, text: &str) -> Vec<usize> {
        let bytes = text.as_bytes();
        let mut found = vec![false; self.tokens.len()];
        for (pos, &b) in bytes.iter().enumerate() {
            for &i in &self.by_first_byte[b as usize] {
                if !found[i] && bytes[pos..].starts_with(self.tokens[i].text.as_bytes()) {
                    found[i] = true;
                }
            }
        }
        (0..self.tokens.len()).filter(|&i| found[i]).collect()
    }

    pub fn partition<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let mut pieces = Vec::new();
        if !text.is_empty() {
            pieces.push(Piece::Text(0, text.len()));
        }
        for i in self.present(text) {
            let tok = &self.tokens[i];
            let pat = tok.text.as_str();
            let mut out = Vec::with_capacity(pieces.len() + 2);
            for piece in pieces {
                let Piece::Text(start, end) = piece else {
                    out.push(piece);
                    continue;
                };
                let mut cur = start;
                while let Some(off) = text[cur..end].find(pat) {
                    let at = cur + off;
                    let mut left_end = at;
                    if tok.lstrip {
                        while left_end > cur && is_c_space(text.as_bytes()[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > cur {
                        out.push(Piece::Text(cur, left_end));
                    }
                    out.push(Piece::Token(tok.id));
                    cur = at + pat.len();
                    if tok.rstrip {
                        while cur < end && is_c_space(text.as_bytes()[cur]) {
                            cur += 1;
                        }
                    }
                }
                if cur < end {
                    out.push(Piece::Text(cur, end));
                }
            }
            pieces = out;
        }
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Text(s, e) => Fragment::Text(&text[s..e]),
                Piece::Token(id) => Fragment::Token(id),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str, id: u32) -> SpecialToken {
        SpecialToken {
            text: text.into(),
            id,
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn partitions_like_llama_cpp() {
        let s = Specials::new(vec![tok("<a>", 1), tok("<ab>", 2), tok("b", 3)]);
        use Fragment::*;
        assert_eq!(
            s.partition("x<a>y<ab>z"),
            vec![Text("x"), Token(1), Text("y"), Token(2), Text("z")]
        );
        // The longest token is matched first, wherever it is.
        assert_eq!(s.partition("<a><ab>"), vec![Token(1), Token(2)]);
        assert_eq!(s.partition("bb"), vec![Token(3), Token(3)]);
        assert_eq!(s.partition(""), vec![]);
        assert_eq!(s.partition("é"), vec![Text("é")]);
        // Longer first even when a shorter one starts earlier: "<ab" + ">" vs "a".
        let s = Specials::new(vec![tok("xa", 1), tok("abc", 2)]);
        assert_eq!(s.partition("xabc"), vec![Text("x"), Token(2)]);
    }

    #[test]
    fn strips_ascii_whitespace() {
        let s = Specials::new(vec![SpecialToken {
            text: "<m>".into(),
            id: 7,
            lstrip: true,
            rstrip: true,
        }]);
        use Fragment::*;
        assert_eq!(
            s.partition("a \t<m>\n b"),
            vec![Text("a"), Token(7), Text("b")]
        );
        assert_eq!(s.partition("  <m>  "), vec![Token(7)]);
        // Only C-locale spaces are stripped.
        assert_eq!(s.partition("a\u{a0}<m>"), vec![Text("a\u{a0}"), Token(7)]);
    }
}

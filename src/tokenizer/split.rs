//! Cutting text into words with a pre-tokenizer's regexes (Oniguruma, the engine Hugging
//! Face `tokenizers` runs them with).

use tokenizers::utils::SysRegex;

/// A compiled list of regexes, applied one after the other.
pub(super) struct Splitter {
    regexes: Vec<SysRegex>,
}

impl Splitter {
    /// Compiles `patterns`; the error names the pattern that does not compile.
    pub fn new(patterns: &[&str]) -> Result<Self, String> {
        let regexes = patterns
            .iter()
            .map(|pattern| {
                SysRegex::new(pattern)
                    .map_err(|e| format!("regex {pattern:?} does not compile: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { regexes })
    }

    /// The words of `text`, in order and covering it: each regex cuts every piece into its
    /// matches and the runs between them. An empty match only marks a cut.
    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = Vec::new();
        if !text.is_empty() {
            pieces.push(text);
        }
        for regex in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                cut(regex, piece, &mut next);
            }
            pieces = next;
        }
        pieces
    }
}

fn cut<'t>(regex: &SysRegex, piece: &'t str, out: &mut Vec<&'t str>) {
    let mut rest = 0;
    for (start, end) in regex.find_iter(piece) {
        if start > rest {
            out.push(&piece[rest..start]);
        }
        if end > start {
            out.push(&piece[start..end]);
        }
        rest = rest.max(end);
    }
    if rest < piece.len() {
        out.push(&piece[rest..]);
    }
}

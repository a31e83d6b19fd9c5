//! Cuts special tokens out of the text before the BPE sees it, as llama.cpp does: each
//! special token in turn, longest first, splits every text run that contains it.

use super::vocab::{TokenType, Vocab};

struct Special {
    id: u32,
    text: String,
    /// User-defined tokens are cut out even when special tokens are not parsed.
    always: bool,
}

pub(super) struct SpecialTokens {
    /// Longest text first, so that `<|im_start|>` wins over a shorter token inside it.
    tokens: Vec<Special>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fragment<'a> {
    Text(&'a str),
    Special(u32),
}

impl SpecialTokens {
    pub fn new(vocab: &Vocab) -> Self {
        let mut tokens: Vec<Special> = (0u32..)
            .zip(vocab.texts.iter().zip(&vocab.types))
            .filter_map(|(id, (text, ty))| {
                let always = match ty {
                    TokenType::UserDefined => true,
                    TokenType::Control | TokenType::Unknown => false,
                    _ => return None,
                };
                Some(Special {
                    id,
                    text: text.clone(),
                    always,
                })
            })
            .collect();
        tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        Self { tokens }
    }

    /// `text` as runs of plain text and special tokens, in order; no run is empty.
    pub fn split<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut fragments = Vec::new();
        if !text.is_empty() {
            fragments.push(Fragment::Text(text));
        }
        for special in &self.tokens {
            if !(parse_special || special.always) {
                continue;
            }
            let needle = special.text.as_str();
            let found = fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)));
            if found {
                fragments = cut(fragments, needle, special.id);
            }
        }
        fragments
    }
}

/// Splits every text fragment at each (non-overlapping, leftmost-first) occurrence of
/// `needle`, which becomes `Special(id)`.
fn cut<'a>(fragments: Vec<Fragment<'a>>, needle: &str, id: u32) -> Vec<Fragment<'a>> {
    let mut out = Vec::with_capacity(fragments.len() + 2);
    for fragment in fragments {
        let Fragment::Text(text) = fragment else {
            out.push(fragment);
            continue;
        };
        let mut rest = 0;
        for (at, _) in text.match_indices(needle) {
            if at > rest {
                out.push(Fragment::Text(&text[rest..at]));
            }
            out.push(Fragment::Special(id));
            rest = at + needle.len();
        }
        if rest < text.len() {
            out.push(Fragment::Text(&text[rest..]));
        }
    }
    out
}

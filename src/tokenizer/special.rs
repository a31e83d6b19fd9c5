//! Cuts special tokens out of the text before the BPE sees it, as llama.cpp does: each
//! special token in turn, longest first, splits every text run that contains it.

use super::vocab::{TokenType, Vocab};
use crate::gguf::GgufFile;

struct Special {
    id: u32,
    text: String,
    /// User-defined tokens are cut out even when special tokens are not parsed.
    always: bool,
    /// Whitespace before the token is dropped.
    lstrip: bool,
    /// Whitespace after the token is dropped.
    rstrip: bool,
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
    pub fn new(vocab: &Vocab, file: &GgufFile) -> Self {
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
                    lstrip: false,
                    rstrip: false,
                })
            })
            .collect();
        strip_whitespace_by_model(&mut tokens, file);
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
            let found = fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(special.text.as_str())));
            if found {
                fragments = cut(fragments, special);
            }
        }
        fragments
    }
}

/// llama.cpp's per-model whitespace stripping (GGUF files do not record it): `<mask>` of
/// Jina v2 and Nomic BERT MoE strips to its left, every special token of Phi-3 but
/// `<unk>`, `<s>` and `<|endoftext|>` strips to its right (`</s>` too), and ModernBERT's
/// `[MASK]` to its left.
fn strip_whitespace_by_model(tokens: &mut [Special], file: &GgufFile) {
    let read = |key: &str| file.str_opt(key).unwrap_or_default().to_lowercase();
    let (name, pre, arch) = (
        read("general.name"),
        file.str_opt("tokenizer.ggml.pre").unwrap_or_default(),
        read("general.architecture"),
    );
    let contains_any = |text: &str, parts: &[&str]| parts.iter().any(|p| text.contains(p));
    if contains_any(pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"])
        || contains_any(&arch, &["nomic-bert-moe", "jina-bert-v3"])
    {
        set(tokens, "<mask>", |t| t.lstrip = true);
    } else if contains_any(&name, &["phi-3", "phi3"]) {
        for token in tokens.iter_mut() {
            token.rstrip = !["<unk>", "<s>", "<|endoftext|>"].contains(&token.text.as_str());
        }
    } else if name.contains("modern-bert") {
        set(tokens, "[MASK]", |t| t.lstrip = true);
    }
}

fn set(tokens: &mut [Special], text: &str, change: impl Fn(&mut Special)) {
    tokens
        .iter_mut()
        .filter(|t| t.text == text)
        .for_each(change);
}

/// C's `isspace`, which llama.cpp strips with.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Splits every text fragment at each (non-overlapping, leftmost-first) occurrence of the
/// special token, stripping whitespace around it where the token says so.
fn cut<'a>(fragments: Vec<Fragment<'a>>, special: &Special) -> Vec<Fragment<'a>> {
    let needle = special.text.as_str();
    let mut out = Vec::with_capacity(fragments.len() + 2);
    for fragment in fragments {
        let Fragment::Text(text) = fragment else {
            out.push(fragment);
            continue;
        };
        let mut rest = text;
        while let Some(at) = rest.find(needle) {
            let mut left = &rest[..at];
            if special.lstrip {
                left = left.trim_end_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
            }
            if !left.is_empty() {
                out.push(Fragment::Text(left));
            }
            out.push(Fragment::Special(special.id));
            rest = &rest[at + needle.len()..];
            if special.rstrip {
                rest = rest.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
            }
        }
        if !rest.is_empty() {
            out.push(Fragment::Text(rest));
        }
    }
    out
}

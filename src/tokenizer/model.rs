//! The two ways llama.cpp turns a run of plain text into ids: BPE (`gpt2`, `gemma4`) and
//! SentencePiece (`llama`).

use super::bpe::Merges;
use super::decode::char_of_byte;
use super::pre::{Pre, Spelling};
use super::split::Splitter;
use super::vocab::{Kind, Vocab, KEY_MERGES, KEY_PRE, KEY_SCORES};
use super::{Result, TokenizerError};
use crate::gguf::GgufFile;

pub(super) enum Model {
    Bpe {
        pre: Pre,
        splitter: Splitter,
        merges: Merges,
    },
    SentencePiece {
        add_space_prefix: bool,
    },
}

impl Model {
    pub fn build(file: &GgufFile, vocab: &Vocab) -> Result<Self> {
        let error = |key: &str, what: String| TokenizerError::Metadata {
            path: file.path().to_path_buf(),
            key: key.to_string(),
            what,
        };
        match vocab.kind {
            Kind::Bpe(pre) => {
                let entries = if pre.needs_merges || file.get(KEY_MERGES).is_some() {
                    read_merges(file)?
                } else {
                    Vec::new()
                };
                let merges = Merges::new(&entries, &vocab.ids).map_err(|e| error(KEY_MERGES, e))?;
                let splitter = Splitter::new(pre.steps).map_err(|e| error(KEY_PRE, e))?;
                Ok(Self::Bpe {
                    pre,
                    splitter,
                    merges,
                })
            }
            Kind::SentencePiece => {
                if vocab.scores.is_empty() {
                    return Err(error(
                        KEY_SCORES,
                        "is missing: a SentencePiece vocabulary merges by score".into(),
                    ));
                }
                Ok(Self::SentencePiece {
                    add_space_prefix: vocab.add_space_prefix,
                })
            }
        }
    }

    /// Whether normal tokens are spelled in GPT-2's byte-level characters (else `▁` stands
    /// for a space).
    pub fn is_byte_level(&self) -> bool {
        match self {
            Self::Bpe { pre, .. } => pre.spelling != Spelling::Escaped,
            Self::SentencePiece { .. } => false,
        }
    }

    /// Whether encoding prefixed a space that decoding should take off again.
    pub fn adds_space_prefix(&self) -> bool {
        matches!(
            self,
            Self::SentencePiece {
                add_space_prefix: true
            }
        )
    }

    /// Appends the ids of a run of plain text; `after_special` says whether the run starts
    /// the input or follows a special token.
    pub fn encode(
        &self,
        vocab: &Vocab,
        text: &str,
        after_special: bool,
        ids: &mut Vec<u32>,
    ) -> std::result::Result<(), String> {
        match self {
            Self::Bpe {
                pre,
                splitter,
                merges,
            } => {
                encode_bpe(vocab, pre, splitter, merges, text, ids);
                Ok(())
            }
            Self::SentencePiece { add_space_prefix } => {
                let prefix = if *add_space_prefix && after_special {
                    " "
                } else {
                    ""
                };
                let escaped = format!("{prefix}{text}").replace(' ', "▁");
                let mut runs = Vec::new();
                super::spm::tokenize(&escaped, &vocab.ids, &vocab.scores, &mut runs);
                for (run, id) in runs {
                    match id {
                        Some(id) => ids.push(id),
                        None => push_sentencepiece_bytes(vocab, run, ids)?,
                    }
                }
                Ok(())
            }
        }
    }
}

fn encode_bpe(
    vocab: &Vocab,
    pre: &Pre,
    splitter: &Splitter,
    merges: &Merges,
    text: &str,
    ids: &mut Vec<u32>,
) {
    let escaped;
    let text = if pre.spelling == Spelling::Escaped {
        escaped = text.replace(' ', "▁");
        &escaped
    } else {
        text
    };
    for word in splitter.split(text) {
        match pre.spelling {
            Spelling::ByteLevel => {
                let spelled: String = word.bytes().map(char_of_byte).collect();
                encode_word(vocab, pre, merges, &spelled, ids);
            }
            Spelling::Escaped | Spelling::Raw => encode_word(vocab, pre, merges, word, ids),
        }
    }
}

fn encode_word(vocab: &Vocab, pre: &Pre, merges: &Merges, word: &str, ids: &mut Vec<u32>) {
    let whole = pre.ignore_merges || (pre.whole_newline_runs && word.bytes().all(|b| b == b'\n'));
    if let Some(&id) = vocab.ids.get(word).filter(|_| whole) {
        ids.push(id);
        return;
    }
    let mut runs = Vec::new();
    merges.apply(word, &vocab.ids, &mut runs);
    for (run, id) in runs {
        match id {
            Some(id) => ids.push(id),
            None => push_bpe_bytes(vocab, pre.spelling, run, ids),
        }
    }
}

/// A character outside a BPE vocabulary: `<0xNN>` byte tokens where the words are raw
/// UTF-8; dropped where none exists, and always in byte-level vocabularies (whose 256 byte
/// characters are all tokens in practice), as llama.cpp does.
fn push_bpe_bytes(vocab: &Vocab, spelling: Spelling, run: &str, ids: &mut Vec<u32>) {
    if spelling == Spelling::ByteLevel {
        return;
    }
    ids.extend(
        run.bytes()
            .filter_map(|b| vocab.ids.get(&byte_token(b)).copied()),
    );
}

/// A character outside a SentencePiece vocabulary: its UTF-8 bytes as `<0xNN>` tokens, or
/// as one-byte tokens; an error when neither exists (llama.cpp fails there too).
fn push_sentencepiece_bytes(
    vocab: &Vocab,
    run: &str,
    ids: &mut Vec<u32>,
) -> std::result::Result<(), String> {
    for b in run.bytes() {
        let single = char::from(b).to_string();
        let id = vocab
            .ids
            .get(&byte_token(b))
            .or_else(|| vocab.ids.get(&single).filter(|_| b.is_ascii()))
            .ok_or_else(|| {
                format!("{run:?} is not in the vocabulary, nor is byte token <0x{b:02X}>")
            })?;
        ids.push(*id);
    }
    Ok(())
}

fn byte_token(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// `tokenizer.ggml.merges`: "left right" pairs, highest priority first.
fn read_merges(file: &GgufFile) -> Result<Vec<(&str, &str)>> {
    let items = file.array(KEY_MERGES)?;
    let error = |what: String| TokenizerError::Metadata {
        path: file.path().to_path_buf(),
        key: KEY_MERGES.to_string(),
        what,
    };
    (0..)
        .zip(items)
        .map(|(i, v)| {
            let merge = v
                .as_str()
                .ok_or_else(|| error(format!("entry {i} is not a string: {v}")))?;
            split_merge(merge).ok_or_else(|| {
                error(format!(
                    "entry {i} {merge:?} is not two tokens separated by a space"
                ))
            })
        })
        .collect()
}

/// Splits "left right" at the first space after the first byte, as llama.cpp does (the
/// left token may itself be a space in vocabularies that do not escape spaces).
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let at = merge.bytes().skip(1).position(|b| b == b' ')? + 1;
    Some((&merge[..at], &merge[at + 1..]))
}

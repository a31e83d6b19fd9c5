//! The BPE models, built with the `tokenizers` crate from the GGUF vocabulary.

use super::vocab::{Kind, Vocab, KEY_MERGES, KEY_PRE, KEY_SCORES, KEY_TOKENS};
use super::{Result, TokenizerError};
use crate::gguf::GgufFile;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    Model as _, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    PreTokenizerWrapper, SplitDelimiterBehavior,
};

/// GPT-2's split: contractions, letter runs, digit runs, other symbols, whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3: like GPT-2, but case-insensitive contractions, digits in groups of up to three,
/// and newlines kept with the symbols before them.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: Llama 3's split with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// StarCoder / SmolLM: every digit on its own, then GPT-2's split.
const SINGLE_DIGIT: &str = r"\p{N}";

/// `tokenizer.ggml.pre` values of the Llama 3 family: its split, whole-word vocabulary
/// hits before merging, and BOS by default.
const LLAMA3_FAMILY: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
];

pub(super) fn is_llama3_family(pre: &str) -> bool {
    LLAMA3_FAMILY.contains(&pre)
}

/// The regexes llama.cpp splits text with for a `tokenizer.ggml.pre` value, applied one
/// after the other, each splitting the pieces of the previous one. Unknown values get
/// GPT-2's split.
fn split_regexes(pre: &str) -> &'static [&'static str] {
    match pre {
        _ if is_llama3_family(pre) => &[LLAMA3],
        "dbrx" | "smaug-bpe" => &[LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => &[QWEN2],
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            &[SINGLE_DIGIT, GPT2]
        }
        _ => &[GPT2],
    }
}

pub(super) enum Model {
    ByteLevel {
        pre_tokenizer: PreTokenizerWrapper,
        bpe: BPE,
    },
    SentencePiece {
        bpe: BPE,
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
        let ids = token_ids(vocab).map_err(|what| error(KEY_TOKENS, what))?;
        match vocab.kind {
            Kind::ByteLevel => {
                let merges = read_merges(file)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(ids, merges)
                    .ignore_merges(is_llama3_family(&vocab.pre))
                    .build()
                    .map_err(|e| error(KEY_MERGES, format!("does not fit {KEY_TOKENS}: {e}")))?;
                let pre_tokenizer = byte_level_pre_tokenizer(&vocab.pre)
                    .map_err(|e| error(KEY_PRE, e.to_string()))?;
                Ok(Self::ByteLevel { pre_tokenizer, bpe })
            }
            Kind::SentencePiece => {
                if vocab.scores.is_empty() {
                    return Err(error(
                        KEY_SCORES,
                        "is missing: a SentencePiece vocabulary merges by score".into(),
                    ));
                }
                let merges = merges_by_score(vocab, &ids);
                let mut builder = BPE::builder()
                    .vocab_and_merges(ids, merges)
                    .byte_fallback(true);
                if let Some(unk) = vocab.unk {
                    builder = builder.unk_token(vocab.texts[unk as usize].clone());
                }
                let bpe = builder
                    .build()
                    .map_err(|e| error(KEY_SCORES, format!("cannot build the BPE: {e}")))?;
                Ok(Self::SentencePiece {
                    bpe,
                    add_space_prefix: vocab.add_space_prefix,
                })
            }
        }
    }

    pub fn is_byte_level(&self) -> bool {
        matches!(self, Self::ByteLevel { .. })
    }

    /// Whether encoding prefixed a space that decoding should take off again.
    pub fn adds_space_prefix(&self) -> bool {
        matches!(
            self,
            Self::SentencePiece {
                add_space_prefix: true,
                ..
            }
        )
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self {
            Self::ByteLevel { bpe, .. } | Self::SentencePiece { bpe, .. } => bpe.token_to_id(text),
        }
    }

    /// Appends the ids of a run of plain text; `after_special` says whether the run starts
    /// the input or follows a special token.
    pub fn encode(
        &self,
        text: &str,
        after_special: bool,
        ids: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        match self {
            Self::ByteLevel { pre_tokenizer, bpe } => {
                let mut words = PreTokenizedString::from(text);
                pre_tokenizer.pre_tokenize(&mut words)?;
                words.tokenize(|word| bpe.tokenize(word.get()))?;
                let splits = words.get_splits(OffsetReferential::Original, OffsetType::None);
                for (_, _, tokens) in splits {
                    ids.extend(tokens.iter().flatten().map(|t| t.id));
                }
            }
            Self::SentencePiece {
                bpe,
                add_space_prefix,
            } => {
                let prefix = if *add_space_prefix && after_special {
                    " "
                } else {
                    ""
                };
                let escaped = format!("{prefix}{text}").replace(' ', "▁");
                ids.extend(bpe.tokenize(&escaped)?.iter().map(|t| t.id));
            }
        }
        Ok(())
    }
}

/// The text → id map, refusing duplicate texts (llama.cpp does too).
fn token_ids(vocab: &Vocab) -> std::result::Result<BpeVocab, String> {
    let ids: BpeVocab = (0u32..)
        .zip(&vocab.texts)
        .map(|(id, t)| (t.clone(), id))
        .collect();
    if ids.len() == vocab.texts.len() {
        return Ok(ids);
    }
    let duplicate = (0u32..)
        .zip(&vocab.texts)
        .find(|(id, t)| ids.get(t.as_str()) != Some(id))
        .map(|(id, t)| format!("token {id} {t:?} appears twice"));
    Err(duplicate.unwrap_or_else(|| "has duplicate tokens".into()))
}

/// `tokenizer.ggml.merges`: "left right" pairs, highest priority first.
fn read_merges(file: &GgufFile) -> Result<Vec<(String, String)>> {
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
fn split_merge(merge: &str) -> Option<(String, String)> {
    let at = merge.bytes().skip(1).position(|b| b == b' ')? + 1;
    Some((merge[..at].to_string(), merge[at + 1..].to_string()))
}

/// The pre-tokenizer of a byte-level vocabulary: the regex splits, then bytes mapped to
/// GPT-2's printable characters.
fn byte_level_pre_tokenizer(pre: &str) -> tokenizers::Result<PreTokenizerWrapper> {
    let mut steps = Vec::new();
    for regex in split_regexes(pre) {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

/// SentencePiece merges two adjacent pieces when their concatenation is a token, the
/// highest-scoring token first. As ranked BPE merges: every split of a token into two
/// tokens, ordered by the token's score. llama.cpp breaks a tie between two different
/// tokens by position, which ranks cannot express; here the lower id wins (real
/// SentencePiece scores are distinct, so this does not arise in practice).
fn merges_by_score(vocab: &Vocab, ids: &BpeVocab) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, text) in (0u32..).zip(&vocab.texts) {
        for (at, _) in text.char_indices().skip(1) {
            let (left, right) = text.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                merges.push((vocab.scores[id as usize], id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
    });
    merges
        .into_iter()
        .map(|(_, _, l, r)| {
            (
                vocab.texts[l as usize].clone(),
                vocab.texts[r as usize].clone(),
            )
        })
        .collect()
}

//! The token list and what llama.cpp derives from the metadata around it: token types,
//! scores, special ids, BOS policy and the end-of-generation set.

use super::hash::FastMap;
use super::pre::Pre;
use super::{Result, TokenizerError};
use crate::gguf::{GgufFile, Value};

pub(super) const KEY_MODEL: &str = "tokenizer.ggml.model";
pub(super) const KEY_PRE: &str = "tokenizer.ggml.pre";
pub(super) const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub(super) const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub(super) const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_EOM: &str = "tokenizer.ggml.eom_token_id";
const KEY_FIM_PRE: &str = "tokenizer.ggml.fim_pre_token_id";
const KEY_FIM_SUF: &str = "tokenizer.ggml.fim_suf_token_id";
const KEY_FIM_MID: &str = "tokenizer.ggml.fim_mid_token_id";
const KEY_FIM_PAD: &str = "tokenizer.ggml.fim_pad_token_id";
const KEY_FIM_REP: &str = "tokenizer.ggml.fim_rep_token_id";
const KEY_FIM_SEP: &str = "tokenizer.ggml.fim_sep_token_id";

/// Token texts that end generation (llama.cpp's list): they become control tokens.
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle prefix, suffix and middle markers, found by text when their id is not
/// in the metadata: llama.cpp makes them control tokens.
const FIM_TEXTS: [(&str, &[&str]); 3] = [
    (
        KEY_FIM_PRE,
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        KEY_FIM_SUF,
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        KEY_FIM_MID,
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
];

/// Fill-in-the-middle padding, repository and file separators, found by text when their
/// id is not in the metadata: llama.cpp ends generation on them too.
const FIM_END_TEXTS: [(&str, &[&str]); 3] = [
    (
        KEY_FIM_PAD,
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        KEY_FIM_REP,
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    (KEY_FIM_SEP, &["<|file_sep|>"]),
];

/// What a token is, from `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary text.
    Normal,
    /// The unknown-token placeholder.
    Unknown,
    /// Markers such as BOS, EOS or `<|im_start|>`: not text.
    Control,
    /// Added tokens that are text but never split (`<tool_call>`).
    UserDefined,
    Unused,
    /// One raw byte, written `<0xNN>`.
    Byte,
    /// A type id outside 1..=6.
    Undefined,
}

impl TokenType {
    fn from_id(id: i64) -> Self {
        match id {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }
}

/// gpt-oss's message markers: llama.cpp always renders them, as user-defined tokens.
const ALWAYS_RENDERED: [&str; 4] = ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// The vocabulary kind named by `tokenizer.ggml.model`.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// `llama`: SentencePiece BPE.
    SentencePiece,
    /// `gpt2` (byte-level) and `gemma4` (`▁`-escaped UTF-8): BPE with ranked merges, split
    /// into words by the pre-tokenizer `tokenizer.ggml.pre` names.
    Bpe(Pre),
}

/// The kind alone: the pre-tokenizer's regexes would swamp a tokenizer's debug output.
impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SentencePiece => "SentencePiece",
            Self::Bpe(_) => "BPE",
        })
    }
}

pub(super) struct Vocab {
    pub kind: Kind,
    /// `tokenizer.ggml.pre` of BPE vocabularies (`gemma4` for a `gemma4` model, as in
    /// llama.cpp); empty when absent or SentencePiece.
    pub pre: String,
    pub texts: Vec<String>,
    /// Text → id, for every token.
    pub ids: FastMap<String, u32>,
    pub types: Vec<TokenType>,
    /// Empty when the file has none.
    pub scores: Vec<f32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// SentencePiece only: prefix a space to text runs (`tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
    /// End-of-generation ids, sorted.
    pub stop: Vec<u32>,
}

impl Vocab {
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let meta = Meta { file };
        let model = file.str(KEY_MODEL)?;
        let pre = match model {
            "llama" => String::new(),
            "gpt2" => file.str_opt(KEY_PRE).unwrap_or_default().to_string(),
            // llama.cpp ignores `tokenizer.ggml.pre` here.
            "gemma4" => "gemma4".to_string(),
            other => {
                return Err(meta.error(
                    KEY_MODEL,
                    format!("is '{other}'; vibrant supports 'gpt2', 'gemma4' and 'llama'"),
                ))
            }
        };
        let kind = if model == "llama" {
            Kind::SentencePiece
        } else {
            Kind::Bpe(Pre::named(&pre).ok_or_else(|| {
                meta.error(
                    KEY_PRE,
                    format!("is '{pre}', a pre-tokenizer unknown to llama.cpp (which refuses the file too)"),
                )
            })?)
        };
        let texts = meta.token_texts()?;
        let ids = token_ids(&texts).map_err(|what| meta.error(KEY_TOKENS, what))?;
        let n = texts.len();
        let mut types = match meta.array_of_len(KEY_TOKEN_TYPE, n)? {
            None => vec![TokenType::Normal; n],
            Some(items) => meta.map_items(KEY_TOKEN_TYPE, items, |v| {
                v.as_i64().map(TokenType::from_id)
            })?,
        };
        let scores = match meta.array_of_len(KEY_SCORES, n)? {
            None => Vec::new(),
            Some(items) => meta.map_items(KEY_SCORES, items, Value::as_f32)?,
        };

        // llama.cpp's defaults when the ids are absent; a BPE vocabulary has none
        // (llama.cpp's `gpt2` placeholder 11 would make a comma end generation).
        let (default_bos, default_eos) = match kind {
            Kind::SentencePiece => (Some(1), Some(2)),
            Kind::Bpe(_) => (None, None),
        };
        let in_vocab = |id: Option<u32>| id.filter(|&id| (id as usize) < n);
        let bos = meta.token_id(KEY_BOS, n)?.or(in_vocab(default_bos));
        let eos = meta.token_id(KEY_EOS, n)?.or(in_vocab(default_eos));

        let add_bos = match kind {
            Kind::SentencePiece => meta.bool(KEY_ADD_BOS)?.unwrap_or(true),
            Kind::Bpe(pre) => pre.force_bos || meta.bool(KEY_ADD_BOS)?.unwrap_or(pre.add_bos),
        };
        if add_bos && bos.is_none() {
            return Err(meta.error(KEY_ADD_BOS, format!("is true, but {KEY_BOS} is not set")));
        }
        let add_space_prefix =
            matches!(kind, Kind::SentencePiece) && meta.bool(KEY_ADD_SPACE_PREFIX)?.unwrap_or(true);
        mark_fim_markers(&meta, &texts, &mut types)?;
        let stop = end_of_generation(&meta, &texts, &mut types, eos)?;
        for id in find_texts(&texts, &ALWAYS_RENDERED) {
            types[id as usize] = TokenType::UserDefined;
        }

        Ok(Self {
            kind,
            pre,
            texts,
            ids,
            types,
            scores,
            bos,
            eos,
            add_bos,
            add_space_prefix,
            stop,
        })
    }
}

/// The text → id map, refusing duplicate texts (llama.cpp does too).
fn token_ids(texts: &[String]) -> std::result::Result<FastMap<String, u32>, String> {
    let mut ids = FastMap::with_capacity_and_hasher(texts.len(), Default::default());
    ids.extend((0u32..).zip(texts).map(|(id, t)| (t.clone(), id)));
    if ids.len() == texts.len() {
        return Ok(ids);
    }
    let duplicate = (0u32..)
        .zip(texts)
        .find(|(id, t)| ids.get(t.as_str()) != Some(id))
        .map(|(id, t)| format!("token {id} {t:?} appears twice"));
    Err(duplicate.unwrap_or_else(|| "has duplicate tokens".into()))
}

/// Fill-in-the-middle markers without an id in the metadata, found by their text, become
/// control tokens.
fn mark_fim_markers(meta: &Meta, texts: &[String], types: &mut [TokenType]) -> Result<()> {
    for (key, fim_texts) in FIM_TEXTS {
        if meta.token_id(key, texts.len())?.is_none() {
            if let Some(&id) = find_texts(texts, fim_texts).first() {
                types[id as usize] = TokenType::Control;
            }
        }
    }
    Ok(())
}

/// The end-of-generation set: EOS, EOT, EOM, the FIM separators, and every token whose
/// text is a known end-of-turn marker. Tokens found by their text become control tokens,
/// as in llama.cpp, so that they are never decoded as text.
fn end_of_generation(
    meta: &Meta,
    texts: &[String],
    types: &mut [TokenType],
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    let n = texts.len();
    let mut stop: Vec<u32> = [eos, meta.token_id(KEY_EOT, n)?, meta.token_id(KEY_EOM, n)?]
        .into_iter()
        .flatten()
        .collect();
    for (key, fim_texts) in FIM_END_TEXTS {
        match meta.token_id(key, n)? {
            Some(id) => stop.push(id),
            None => {
                if let Some(&id) = find_texts(texts, fim_texts).first() {
                    types[id as usize] = TokenType::Control;
                    stop.push(id);
                }
            }
        }
    }
    for id in find_texts(texts, END_OF_GENERATION) {
        types[id as usize] = TokenType::Control;
        stop.push(id);
    }
    stop.sort_unstable();
    stop.dedup();
    drop_false_ends(&mut stop, texts, types);
    Ok(stop)
}

/// Ids of the tokens whose text is in `wanted`, in id order.
fn find_texts(texts: &[String], wanted: &[&str]) -> Vec<u32> {
    (0u32..)
        .zip(texts)
        .filter(|(_, text)| wanted.contains(&text.as_str()))
        .map(|(id, _)| id)
        .collect()
}

/// llama.cpp's two exceptions: in gpt-oss / Solar vocabularies (which have `<|return|>`
/// and `<|call|>`, or `<|calls|>` and `<|flush|>`) `<|end|>` only ends a message, and in
/// Gemma 4 (which has `<|tool_response>`) `</s>` is text.
fn drop_false_ends(stop: &mut Vec<u32>, texts: &[String], types: &mut [TokenType]) {
    let find = |stop: &[u32], wanted: &str| {
        stop.iter()
            .copied()
            .find(|&id| texts[id as usize] == wanted)
    };
    let has = |stop: &[u32], wanted: &str| find(stop, wanted).is_some();
    if let Some(end) = find(stop, "<|end|>") {
        let harmony = has(stop, "<|return|>") && has(stop, "<|call|>");
        let solar = has(stop, "<|calls|>") && has(stop, "<|flush|>");
        if harmony || solar {
            stop.retain(|&id| id != end);
            types[end as usize] = TokenType::UserDefined;
        }
    }
    if let Some(s) = find(stop, "</s>") {
        if has(stop, "<|tool_response>") {
            stop.retain(|&id| id != s);
            types[s as usize] = TokenType::Normal;
        }
    }
}

/// Typed access to the tokenizer keys, with errors that name the file and the key.
struct Meta<'f> {
    file: &'f GgufFile,
}

impl Meta<'_> {
    fn error(&self, key: &str, what: impl Into<String>) -> TokenizerError {
        TokenizerError::Metadata {
            path: self.file.path().to_path_buf(),
            key: key.to_string(),
            what: what.into(),
        }
    }

    /// The token list; empty texts get llama.cpp's `[EMPTY_i]` name so that no special
    /// token can match the empty string.
    fn token_texts(&self) -> Result<Vec<String>> {
        let items = self.file.array(KEY_TOKENS)?;
        if items.is_empty() {
            return Err(self.error(KEY_TOKENS, "is empty"));
        }
        if u32::try_from(items.len()).is_err() {
            return Err(self.error(
                KEY_TOKENS,
                format!("has {} tokens, too many for u32 ids", items.len()),
            ));
        }
        self.map_items(KEY_TOKENS, items, |v| v.as_str().map(|s| s.to_string()))
            .map(|mut texts| {
                for (i, text) in texts.iter_mut().enumerate() {
                    if text.is_empty() {
                        *text = format!("[EMPTY_{i}]");
                    }
                }
                texts
            })
    }

    /// An optional array that must have one element per token.
    fn array_of_len(&self, key: &str, n_tokens: usize) -> Result<Option<&[Value]>> {
        if self.file.get(key).is_none() {
            return Ok(None);
        }
        let items = self.file.array(key)?;
        if items.len() != n_tokens {
            return Err(self.error(
                key,
                format!(
                    "has {} entries but {KEY_TOKENS} has {n_tokens}",
                    items.len()
                ),
            ));
        }
        Ok(Some(items))
    }

    fn map_items<T>(
        &self,
        key: &str,
        items: &[Value],
        convert: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>> {
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                convert(v).ok_or_else(|| self.error(key, format!("has an invalid entry {i}: {v}")))
            })
            .collect()
    }

    /// An optional token id that must lie inside the vocabulary.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.file.get(key) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(id) if id < n_tokens as u64 => Ok(Some(id as u32)),
            _ => Err(self.error(
                key,
                format!("is {v}, not a token id below the vocabulary size {n_tokens}"),
            )),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("should be a boolean, found {v}"))),
        }
    }
}

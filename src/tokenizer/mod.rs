//! Text ⇄ token ids, built from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! Three vocabulary kinds are supported, tokenized the way llama.cpp does:
//! - `gpt2`: byte-level BPE. Text is split into words by the pre-tokenizer regexes of
//!   `tokenizer.ggml.pre`, bytes are mapped to printable characters, and the ranked
//!   `tokenizer.ggml.merges` are applied.
//! - `gemma4`: BPE on raw UTF-8 with spaces written `▁`, split only at newline runs, with
//!   `<0xNN>` byte tokens for characters outside the vocabulary.
//! - `llama`: SentencePiece BPE. Spaces become `▁`, a space is prefixed to each text run
//!   that starts the input or follows a special token, pieces merge by their
//!   `tokenizer.ggml.scores`, and characters outside the vocabulary fall back to `<0xNN>`
//!   byte tokens.
//!
//! Special tokens are cut out of the text first: user-defined tokens always, control and
//! unknown tokens only when `parse_special` is set. The pre-tokenizer regexes run on
//! Oniguruma, through the `tokenizers` crate.

mod bpe;
mod decode;
mod hash;
mod model;
mod pre;
mod special;
mod split;
mod spm;
mod vocab;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bpe;

pub use decode::{char_of_byte, DecodeOptions, StreamDecoder};
pub use vocab::TokenType;

use crate::gguf::{GgufError, GgufFile};
use decode::Pieces;
use model::Model;
use special::{Fragment, SpecialTokens};
use std::path::{Path, PathBuf};
use vocab::Vocab;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: tokenizer metadata '{key}' {what}")]
    Metadata {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error("{path}: cannot tokenize {text:?}: {what}")]
    Encode {
        path: PathBuf,
        text: String,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, TokenizerError>;

/// A model's tokenizer: encodes text to token ids and decodes ids back to text.
pub struct Tokenizer {
    path: PathBuf,
    vocab: Vocab,
    model: Model,
    specials: SpecialTokens,
    pieces: Pieces,
}

impl Tokenizer {
    /// Builds the tokenizer that `file`'s metadata describes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let vocab = Vocab::from_gguf(file)?;
        let model = Model::build(file, &vocab)?;
        let specials = SpecialTokens::new(&vocab, file);
        let pieces = Pieces::new(&vocab, model.is_byte_level());
        Ok(Self {
            path: file.path().to_path_buf(),
            vocab,
            model,
            specials,
            pieces,
        })
    }

    /// The file this tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token ids for `text`, without BOS (see [`Tokenizer::add_bos`]).
    ///
    /// With `parse_special`, the text of control tokens (such as `<|im_start|>`) encodes to
    /// their ids; without it, it is tokenized as plain text. User-defined tokens are always
    /// recognised, as in llama.cpp and Hugging Face tokenizers.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut after_special = true;
        for fragment in self.specials.split(text, parse_special) {
            match fragment {
                Fragment::Text(run) => {
                    self.model
                        .encode(&self.vocab, run, after_special, &mut ids)
                        .map_err(|what| TokenizerError::Encode {
                            path: self.path.clone(),
                            text: abbreviate(run),
                            what,
                        })?;
                    after_special = false;
                }
                Fragment::Special(id) => {
                    ids.push(id);
                    after_special = true;
                }
            }
        }
        Ok(ids)
    }

    /// Whether a prompt should start with the BOS token (`tokenizer.ggml.add_bos_token`,
    /// else llama.cpp's default for the vocabulary kind).
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.bos
    }

    /// The BOS id where the model's prompts start with one (`add_bos`), else `None`.
    pub fn prompt_bos(&self) -> Option<u32> {
        self.bos_id().filter(|_| self.add_bos())
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.eos
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.texts.len()
    }

    /// The token's text as stored in the vocabulary (byte-level or `▁`-escaped form).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.ids.get(text).copied()
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.vocab.types.get(id as usize).copied()
    }

    /// Whether `id` is a control token (BOS, EOS, `<|im_start|>`, …): such tokens are
    /// dropped from decoded text unless asked for.
    pub fn is_control(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    /// The bytes `id` stands for, control tokens included (a byte token is one byte,
    /// possibly part of a UTF-8 sequence). Empty for unused or unknown ids.
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id)
    }

    /// Tokens that end a turn, sorted: EOS, EOT, EOM and the end-of-turn tokens llama.cpp
    /// recognises by their text (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, `</s>`, …).
    pub fn stop_tokens(&self) -> &[u32] {
        &self.vocab.stop
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.vocab.stop.binary_search(&id).is_ok()
    }

    /// The text of `ids`, control tokens dropped and the space that encoding prefixed
    /// (SentencePiece) removed; see [`Tokenizer::decode_with`].
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, DecodeOptions::default())
    }

    /// The text of `ids`; bytes that do not form valid UTF-8 become U+FFFD.
    pub fn decode_with(&self, ids: &[u32], options: DecodeOptions) -> String {
        let mut bytes = Vec::new();
        let mut started = false;
        for &id in ids {
            self.render(id, options, &mut started, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A decoder for ids that arrive one at a time, with [`DecodeOptions::default`].
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self, DecodeOptions::default())
    }

    /// Appends the bytes of `id` to `out`. `started` tracks whether any text came out yet,
    /// so that the prefixed space is only removed from the first piece.
    fn render(&self, id: u32, options: DecodeOptions, started: &mut bool, out: &mut Vec<u8>) {
        let Some(ty) = self.token_type(id) else {
            return;
        };
        if matches!(ty, TokenType::Control | TokenType::Unknown) && !options.show_special {
            return;
        }
        let mut piece = self.pieces.get(id);
        if !*started && !piece.is_empty() {
            *started = true;
            if self.model.adds_space_prefix() && !options.keep_leading_space {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
        }
        out.extend_from_slice(piece);
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("kind", &self.vocab.kind)
            .field("pre", &self.vocab.pre)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.vocab.bos)
            .field("eos", &self.vocab.eos)
            .field("add_bos", &self.vocab.add_bos)
            .finish_non_exhaustive()
    }
}

/// The start of a long text, for error messages.
fn abbreviate(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

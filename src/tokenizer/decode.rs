//! Token ids back to text: the bytes each token stands for, and a streaming decoder that
//! only ever hands out complete UTF-8 characters.
//!
//! Decoding is lossless: unlike llama.cpp's `llama_detokenize`, it does not apply the
//! Hugging Face "clean up tokenization spaces" heuristic (which deletes the space in
//! " ?" or " 's"), so that `decode(encode(text)) == text` and a stream of pieces adds up
//! to the whole.

use super::vocab::{TokenType, Vocab};
use super::Tokenizer;

/// How ids are turned into text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Render control and unknown tokens (`<|im_end|>`, `<s>`) as their text instead of
    /// dropping them.
    pub show_special: bool,
    /// Keep the leading space of the first piece. SentencePiece vocabularies prefix a space
    /// when encoding, and decoding removes it by default, like llama.cpp and Hugging Face.
    pub keep_leading_space: bool,
}

/// The bytes of every token, precomputed: one buffer and the end offset of each token.
pub(super) struct Pieces {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Pieces {
    pub fn new(vocab: &Vocab, byte_level: bool) -> Self {
        let mut bytes = Vec::with_capacity(vocab.texts.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(vocab.texts.len());
        for (text, &ty) in vocab.texts.iter().zip(&vocab.types) {
            append_piece(text, ty, byte_level, &mut bytes);
            ends.push(bytes.len());
        }
        Self { bytes, ends }
    }

    /// Empty for ids outside the vocabulary.
    pub fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match self.ends.get(id) {
            Some(&end) => {
                let start = if id == 0 { 0 } else { self.ends[id - 1] };
                &self.bytes[start..end]
            }
            None => &[],
        }
    }
}

fn append_piece(text: &str, ty: TokenType, byte_level: bool, out: &mut Vec<u8>) {
    match ty {
        TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
            out.extend_from_slice(text.as_bytes())
        }
        TokenType::Normal if byte_level => append_byte_level(text, out),
        TokenType::Normal => out.extend_from_slice(text.replace('▁', " ").as_bytes()),
        TokenType::Byte => match parse_byte_token(text) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(text.as_bytes()),
        },
        TokenType::Unused | TokenType::Undefined => {}
    }
}

/// `<0xNN>` → the byte NN.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Maps GPT-2's printable stand-ins back to bytes. A token with a character outside the
/// mapping is taken as plain UTF-8 text, as Hugging Face's byte-level decoder does.
fn append_byte_level(text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    for c in text.chars() {
        match byte_of_char(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
    }
}

/// GPT-2 byte-level encoding: printable Latin-1 bytes stand for themselves, the other 68
/// bytes are written as U+0100.. in byte order.
const fn is_printable_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

const SHIFTED_BYTES: [u8; 68] = {
    let mut table = [0u8; 68];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        if !is_printable_byte(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
};

/// Byte → GPT-2's printable stand-in, as byte-level vocabularies spell their tokens.
const BYTE_CHARS: [char; 256] = {
    let mut table = ['\0'; 256];
    let mut shifted = 0;
    let mut b = 0;
    while b < 256 {
        table[b] = if is_printable_byte(b as u8) {
            b as u8 as char
        } else {
            shifted += 1;
            match char::from_u32(255 + shifted) {
                Some(c) => c,
                None => panic!("U+0100.. are valid code points"),
            }
        };
        b += 1;
    }
    table
};

/// GPT-2's printable stand-in for a byte, as byte-level vocabularies spell their tokens.
pub fn char_of_byte(b: u8) -> char {
    BYTE_CHARS[b as usize]
}

fn byte_of_char(c: char) -> Option<u8> {
    let code = c as u32;
    match u8::try_from(code) {
        Ok(b) if is_printable_byte(b) => Some(b),
        _ => code
            .checked_sub(256)
            .and_then(|i| SHIFTED_BYTES.get(i as usize).copied()),
    }
}

/// Decodes ids as they are generated. Bytes of a character split over several tokens are
/// held back until the character is complete, so the concatenated output of
/// [`StreamDecoder::push`] and [`StreamDecoder::finish`] equals the full decode of all
/// the ids.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    options: DecodeOptions,
    pending: Vec<u8>,
    started: bool,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer, options: DecodeOptions) -> Self {
        Self {
            tokenizer,
            options,
            pending: Vec::new(),
            started: false,
        }
    }

    /// The text that `id` completes; empty while a character is still unfinished.
    pub fn push(&mut self, id: u32) -> String {
        self.tokenizer
            .render(id, self.options, &mut self.started, &mut self.pending);
        take_complete(&mut self.pending)
    }

    /// What is left: an unfinished character becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

/// Removes and returns the longest prefix of `pending` that cannot change with more bytes:
/// valid UTF-8, with each invalid sequence as one U+FFFD (the same replacement
/// `String::from_utf8_lossy` makes). An incomplete character at the end stays.
fn take_complete(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut done = 0;
    while done < pending.len() {
        match std::str::from_utf8(&pending[done..]) {
            Ok(text) => {
                out.push_str(text);
                done = pending.len();
            }
            Err(e) => {
                let valid_end = done + e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&pending[done..valid_end]));
                match e.error_len() {
                    Some(len) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        done = valid_end + len;
                    }
                    None => {
                        done = valid_end;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..done);
    out
}

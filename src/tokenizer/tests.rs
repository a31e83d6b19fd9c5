//! Tokenizers built from small synthetic vocabularies: metadata errors, special tokens,
//! byte fallback and streaming. The reference vectors live in tests/tokenizer_vectors.rs.

use super::*;
use crate::gguf::{GgufWriter, Value, ValueType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(super) const NAME: &str = "synthetic.gguf";

pub(super) fn file_bytes(entries: &[(&str, Value)]) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (key, value) in entries {
        w.set(*key, value.clone());
    }
    let mut bytes = Vec::new();
    w.write(&mut bytes).unwrap();
    bytes
}

pub(super) fn build(entries: &[(&str, Value)]) -> Result<Tokenizer> {
    let file = GgufFile::from_bytes(NAME, file_bytes(entries))?;
    Tokenizer::from_gguf(&file)
}

pub(super) fn i32s(values: &[i32]) -> Value {
    Value::Array(
        ValueType::I32,
        values.iter().map(|&v| Value::I32(v)).collect(),
    )
}

fn f32s(values: &[f32]) -> Value {
    Value::Array(
        ValueType::F32,
        values.iter().map(|&v| Value::F32(v)).collect(),
    )
}

use super::decode::char_of_byte as byte_char;

const BPE_EXTRA: [(&str, i32); 8] = [
    ("he", 1),
    ("ll", 1),
    ("hell", 1),
    ("hello", 1),
    ("Ġhello", 1),
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("<tool>", 4),
];

/// A byte-level vocabulary: the 256 byte characters, "hello" built by four merges, two
/// control tokens and a user-defined one.
pub(super) fn bpe_entries() -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![1; 256];
    for (text, ty) in BPE_EXTRA {
        tokens.push(text.to_string());
        types.push(ty);
    }
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens", Value::string_array(tokens)),
        ("tokenizer.ggml.token_type", i32s(&types)),
        (
            "tokenizer.ggml.merges",
            Value::string_array(["h e", "l l", "he ll", "hell o", "Ġ hello"]),
        ),
    ]
}

pub(super) fn bpe() -> Tokenizer {
    build(&bpe_entries()).unwrap()
}

pub(super) fn with(
    mut entries: Vec<(&'static str, Value)>,
    key: &'static str,
    value: Value,
) -> Vec<(&'static str, Value)> {
    entries.retain(|(k, _)| *k != key);
    entries.push((key, value));
    entries
}

pub(super) fn without(
    mut entries: Vec<(&'static str, Value)>,
    key: &str,
) -> Vec<(&'static str, Value)> {
    entries.retain(|(k, _)| *k != key);
    entries
}

const SPM_PIECES: [(&str, f32); 10] = [
    ("▁", -1.0),
    ("h", -2.0),
    ("i", -3.0),
    ("hi", -4.0),
    ("▁hi", -6.0),
    ("a", -2.0),
    ("b", -2.0),
    ("c", -2.0),
    ("ab", -10.0),
    ("bc", -9.0),
];

/// A SentencePiece vocabulary: unk, BOS, EOS, the 256 byte tokens, then `SPM_PIECES`.
fn spm_entries() -> Vec<(&'static str, Value)> {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (text, score) in SPM_PIECES {
        tokens.push(text.to_string());
        types.push(1);
        scores.push(score);
    }
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::string_array(tokens)),
        ("tokenizer.ggml.token_type", i32s(&types)),
        ("tokenizer.ggml.scores", f32s(&scores)),
    ]
}

fn spm() -> Tokenizer {
    build(&spm_entries()).unwrap()
}

pub(super) fn id(tok: &Tokenizer, text: &str) -> u32 {
    tok.token_id(text)
        .unwrap_or_else(|| panic!("{text:?} is not in the vocabulary"))
}

pub(super) fn error_of(entries: &[(&str, Value)]) -> String {
    match build(entries) {
        Ok(_) => panic!("the tokenizer built"),
        Err(e) => e.to_string(),
    }
}

pub(super) fn assert_error(entries: &[(&str, Value)], needles: &[&str]) {
    let message = error_of(entries);
    for needle in [NAME].iter().chain(needles) {
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

#[test]
fn bad_metadata_is_an_error_naming_file_and_key() {
    let key = "tokenizer.ggml.tokens";
    assert_error(&without(bpe_entries(), key), &[key, "missing"]);
    assert_error(
        &with(
            bpe_entries(),
            key,
            Value::string_array(Vec::<String>::new()),
        ),
        &[key, "empty"],
    );
    let key = "tokenizer.ggml.model";
    assert_error(
        &with(bpe_entries(), key, Value::String("bert".into())),
        &[key, "bert"],
    );
    let key = "tokenizer.ggml.token_type";
    assert_error(
        &with(bpe_entries(), key, i32s(&[1, 1])),
        &[key, "2 entries", "264"],
    );
    let key = "tokenizer.ggml.merges";
    assert_error(&without(bpe_entries(), key), &[key, "missing"]);
    assert_error(
        &with(bpe_entries(), key, Value::string_array(["h e", "hello"])),
        &[key, "entry 1"],
    );
    assert_error(
        &with(bpe_entries(), key, Value::string_array(["h ∑"])),
        &[key, "∑"],
    );
    let key = "tokenizer.ggml.eos_token_id";
    assert_error(&with(bpe_entries(), key, Value::U32(264)), &[key, "264"]);
    let key = "tokenizer.ggml.add_bos_token";
    assert_error(
        &with(bpe_entries(), key, Value::Bool(true)),
        &[key, "bos_token_id"],
    );
    let key = "tokenizer.ggml.scores";
    assert_error(&without(spm_entries(), key), &[key, "missing"]);
    assert_error(&with(spm_entries(), key, f32s(&[0.0])), &[key, "1 entries"]);
}

#[test]
fn duplicate_tokens_are_refused() {
    let mut entries = bpe_entries();
    let Value::Array(_, tokens) = &mut entries[2].1 else {
        unreachable!()
    };
    tokens[260] = Value::String("he".into());
    assert_error(&entries, &["tokenizer.ggml.tokens", "\"he\" appears twice"]);
}

/// A vocabulary-only file may end right after its metadata, without data-section padding.
#[test]
fn unpadded_vocabulary_only_file_loads() {
    let mut bytes = file_bytes(&bpe_entries());
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    assert_ne!(
        bytes.len() % 32,
        0,
        "the file must end unaligned for this test"
    );
    let file = GgufFile::from_bytes(NAME, bytes).unwrap();
    assert_eq!(Tokenizer::from_gguf(&file).unwrap().vocab_size(), 264);
}

#[test]
fn byte_level_merges_and_special_tokens() {
    let tok = bpe();
    assert_eq!(
        tok.encode("hello hello", false).unwrap(),
        [id(&tok, "hello"), id(&tok, "Ġhello")]
    );
    assert!(tok.encode("", true).unwrap().is_empty());

    let text = "<|im_start|>hello<|im_end|>";
    let parsed = tok.encode(text, true).unwrap();
    assert_eq!(
        parsed,
        [
            id(&tok, "<|im_start|>"),
            id(&tok, "hello"),
            id(&tok, "<|im_end|>")
        ]
    );
    let plain = tok.encode(text, false).unwrap();
    assert!(plain.iter().all(|&i| !tok.is_control(i)));
    assert_eq!(tok.decode(&plain), text);
    assert_eq!(tok.decode(&parsed), "hello");

    // User-defined tokens are cut out even without parse_special, and decode as text.
    let ids = tok.encode("hello<tool>hello", false).unwrap();
    assert_eq!(
        ids,
        [id(&tok, "hello"), id(&tok, "<tool>"), id(&tok, "hello")]
    );
    assert_eq!(tok.decode(&ids), "hello<tool>hello");
    assert_eq!(
        tok.token_type(id(&tok, "<tool>")),
        Some(TokenType::UserDefined)
    );
}

#[test]
fn longer_special_tokens_win() {
    let mut entries = bpe_entries();
    let Value::Array(_, tokens) = &mut entries[2].1 else {
        unreachable!()
    };
    tokens.push(Value::String("<|im_start|>x".into()));
    let Value::Array(_, types) = &mut entries[3].1 else {
        unreachable!()
    };
    types.push(Value::I32(3));
    let tok = build(&entries).unwrap();
    let ids = tok.encode("<|im_start|>x<|im_start|>", true).unwrap();
    assert_eq!(ids, [264, id(&tok, "<|im_start|>")]);
}

#[test]
fn end_of_turn_tokens_stop_and_become_control() {
    let tok = bpe();
    let im_end = id(&tok, "<|im_end|>");
    assert_eq!(tok.stop_tokens(), [im_end]);
    assert!(!tok.add_bos() && tok.bos_id().is_none() && tok.eos_id().is_none());

    // "<|endoftext|>" typed as normal text still ends generation, as a control token.
    let mut entries = bpe_entries();
    let Value::Array(_, tokens) = &mut entries[2].1 else {
        unreachable!()
    };
    tokens[0] = Value::String("<|endoftext|>".into());
    let entries = with(entries, "tokenizer.ggml.eom_token_id", Value::U32(5));
    let tok = build(&entries).unwrap();
    assert_eq!(tok.stop_tokens(), [0, 5, im_end]);
    assert!(tok.is_control(0) && tok.is_stop(5) && !tok.is_stop(6));
}

#[test]
fn harmony_end_is_not_a_stop_token() {
    let mut entries = bpe_entries();
    let Value::Array(_, tokens) = &mut entries[2].1 else {
        unreachable!()
    };
    for (i, text) in ["<|end|>", "<|return|>", "<|call|>"]
        .into_iter()
        .enumerate()
    {
        tokens[200 + i] = Value::String(text.into());
    }
    let tok = build(&entries).unwrap();
    assert!(!tok.is_stop(200) && tok.is_stop(201) && tok.is_stop(202));
    assert_eq!(tok.token_type(200), Some(TokenType::UserDefined));
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let tok = spm();
    assert!(tok.add_bos());
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.stop_tokens(), [2]);
    let hi = id(&tok, "▁hi");
    // "é" is not a piece: it falls back to its two UTF-8 bytes.
    let ids = tok.encode("hi hié", false).unwrap();
    assert_eq!(ids, [hi, hi, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&ids), "hi hié");
    // The higher-scoring merge goes first: "bc" (-9) before "ab" (-10).
    let (a, bc) = (id(&tok, "a"), id(&tok, "bc"));
    assert_eq!(tok.encode("abc", false).unwrap(), [id(&tok, "▁"), a, bc]);
    let mut entries = spm_entries();
    let Value::Array(_, scores) = &mut entries[3].1 else {
        unreachable!()
    };
    scores[bc as usize] = Value::F32(-11.0);
    let swapped = build(&entries).unwrap();
    let (ab, c) = (id(&tok, "ab"), id(&tok, "c"));
    assert_eq!(
        swapped.encode("abc", false).unwrap(),
        [id(&tok, "▁"), ab, c]
    );
    // A space is prefixed again after a special token.
    assert_eq!(tok.encode("<s>hi", true).unwrap(), [1, hi]);
    assert_eq!(
        tok.encode("<s>hi", false).unwrap()[..2],
        [id(&tok, "▁"), 3 + b'<' as u32]
    );
}

#[test]
fn sentencepiece_space_prefix_can_be_turned_off() {
    let entries = with(
        spm_entries(),
        "tokenizer.ggml.add_space_prefix",
        Value::Bool(false),
    );
    let tok = build(&entries).unwrap();
    assert_eq!(tok.encode("hi", false).unwrap(), [id(&tok, "hi")]);
    assert_eq!(tok.decode(&[id(&tok, "▁hi")]), " hi");
}

#[test]
fn unknown_ids_decode_to_nothing() {
    let tok = spm();
    let hi = id(&tok, "hi");
    assert_eq!(tok.decode(&[hi, 100_000, hi]), "hihi");
    assert!(tok.piece(100_000).is_empty() && tok.token_type(100_000).is_none());
}

/// Random id sequences, including byte tokens that form invalid UTF-8: the stream adds up
/// to the full decode and never hands out half a character.
#[test]
fn streaming_equals_full_decode_for_random_ids() {
    let mut rng = StdRng::seed_from_u64(7);
    for tok in [spm(), bpe()] {
        let n = tok.vocab_size() as u32;
        for _ in 0..500 {
            let len = rng.random_range(0..12);
            let ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..n)).collect();
            let mut decoder = tok.stream_decoder();
            let mut streamed = String::new();
            for &i in &ids {
                streamed.push_str(&decoder.push(i));
            }
            streamed.push_str(&decoder.finish());
            assert_eq!(streamed, tok.decode(&ids), "ids {ids:?}");
        }
    }
}

#[test]
fn random_text_round_trips() {
    let pool: Vec<char> = "hello h e l o <|im_end|>\n\t  é€𝄞🦙北京 ".chars().collect();
    let mut rng = StdRng::seed_from_u64(11);
    for tok in [spm(), bpe()] {
        for _ in 0..300 {
            let len = rng.random_range(0..16);
            let text: String = (0..len)
                .map(|_| pool[rng.random_range(0..pool.len())])
                .collect();
            let ids = tok.encode(&text, false).unwrap();
            assert_eq!(tok.decode(&ids), text, "ids {ids:?}");
        }
    }
}

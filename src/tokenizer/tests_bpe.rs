//! BPE pre-tokenizers, Gemma 4's vocabulary kind and llama.cpp's per-model token rules, on
//! small synthetic vocabularies.

use super::pre::PRE_TOKENIZERS;
use super::split::Splitter;
use super::tests::{assert_error, bpe_entries, build, i32s, id, with, without};
use super::*;
use crate::gguf::Value;

const PRE: &str = "tokenizer.ggml.pre";

/// Appends tokens of the given types to a vocabulary's token and type lists.
fn add_tokens(entries: &mut [(&'static str, Value)], added: &[(&str, i32)]) {
    for (key, value) in entries.iter_mut() {
        let Value::Array(_, items) = value else {
            continue;
        };
        match *key {
            "tokenizer.ggml.tokens" => {
                items.extend(added.iter().map(|(t, _)| Value::String(t.to_string())))
            }
            "tokenizer.ggml.token_type" => {
                items.extend(added.iter().map(|&(_, ty)| Value::I32(ty)))
            }
            _ => {}
        }
    }
}

#[test]
fn every_pre_tokenizer_llama_cpp_knows_builds_and_encodes() {
    for (names, _) in PRE_TOKENIZERS {
        for name in names.iter() {
            let entries = with(
                with(bpe_entries(), PRE, Value::String(name.to_string())),
                "tokenizer.ggml.bos_token_id",
                Value::U32(0),
            );
            let tok = build(&entries).unwrap_or_else(|e| panic!("{name:?}: {e}"));
            let text = "hello 12345 <tool> \n\n  y'all";
            tok.encode(text, false)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
    }
}

#[test]
fn an_unknown_pre_tokenizer_is_an_error_naming_it() {
    let entries = with(bpe_entries(), PRE, Value::String("no-such-pre".into()));
    assert_error(&entries, &[PRE, "no-such-pre"]);
}

/// Without `tokenizer.ggml.pre`, llama.cpp's `default` split applies: punctuation runs
/// apart, digit runs cut in threes (so "3 4" cannot merge in "1234").
#[test]
fn a_missing_pre_tokenizer_is_the_default_one() {
    let mut entries = without(bpe_entries(), PRE);
    add_tokens(&mut entries, &[("34", 1), ("!?", 1)]);
    let entries = with(
        entries,
        "tokenizer.ggml.merges",
        Value::string_array(["3 4", "! ?"]),
    );
    let tok = build(&entries).unwrap();
    let ids = tok.encode("1234!?", false).unwrap();
    let single = |c: &str| id(&tok, c);
    assert_eq!(
        ids,
        [
            single("1"),
            single("2"),
            single("3"),
            single("4"),
            single("!?")
        ]
    );
    assert_eq!(tok.encode("34", false).unwrap(), [single("34")]);
    assert_eq!(tok.decode(&ids), "1234!?");
}

#[test]
fn regex_splits_cut_each_piece_in_turn() {
    let split = |name: &str, text: &str| {
        let pre = pre::Pre::named(name).unwrap();
        let splitter = Splitter::new(pre.steps).unwrap();
        splitter
            .split(text)
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // An empty match (a look-ahead) only marks a cut.
    assert_eq!(split("superbpe", "ab1234567"), ["ab", "1", "234", "567"]);
    assert_eq!(split("afmoe", "12345 x"), ["12", "345", " x"]);
    // llama.cpp's digit splitter leaves the text before a run on its first group, so the
    // spaces before "12" are not one trailing run.
    assert_eq!(split("afmoe", "x  12345"), ["x", " ", " ", "12", "345"]);
    // Non-ASCII spaces are `\v` to the regexes: U+2028 is not in the CJK range `ࠀ-一`.
    assert_eq!(split("deepseek-coder", " \u{2028}"), [" \u{2028}"]);
    // Letters are letters whatever their case category.
    assert_eq!(split("tiny_aya", "HelloWorld"), ["HelloWorld"]);
    assert_eq!(split("gpt-4o", "HelloWorld"), ["Hello", "World"]);
    assert_eq!(
        split("falcon", "a 1314151!"),
        ["a", " ", "131", "415", "1", "!"]
    );
    assert_eq!(split("qwen35", "y'all"), ["y", "'all"]);
    assert!(split("gpt-2", "").is_empty());
}

/// With `ignore_merges` (Llama 3), a word that is a token is taken whole even when no
/// merge builds it.
#[test]
fn ignore_merges_takes_whole_words() {
    let mut entries = bpe_entries();
    add_tokens(&mut entries, &[("Ġworld", 1)]);
    let qwen = build(&entries).unwrap();
    assert_eq!(qwen.encode(" world", false).unwrap().len(), 6);
    let entries = with(entries, PRE, Value::String("llama-bpe".into()));
    let llama = build(&with(entries, "tokenizer.ggml.bos_token_id", Value::U32(0))).unwrap();
    assert_eq!(
        llama.encode(" world", false).unwrap(),
        [id(&llama, "Ġworld")]
    );
}

/// A Gemma 4 vocabulary: control tokens, the 256 byte tokens, then pieces spelled with `▁`.
fn gemma4_entries() -> Vec<(&'static str, Value)> {
    let mut tokens = vec!["<pad>".to_string(), "<eos>".into(), "<bos>".into()];
    let mut types = vec![3, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for piece in ["h", "i", "hi", "▁", "▁hi", "\n", "\n\n", "\n\n\n"] {
        tokens.push(piece.to_string());
        types.push(1);
    }
    vec![
        ("tokenizer.ggml.model", Value::String("gemma4".into())),
        ("tokenizer.ggml.tokens", Value::string_array(tokens)),
        ("tokenizer.ggml.token_type", i32s(&types)),
        (
            "tokenizer.ggml.merges",
            Value::string_array(["h i", "▁ hi", "\n \n"]),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(2)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ]
}

#[test]
fn gemma4_escapes_spaces_and_falls_back_to_byte_tokens() {
    let tok = build(&gemma4_entries()).unwrap();
    // llama.cpp adds BOS for Gemma 4 whatever the metadata says.
    assert!(tok.add_bos() && tok.bos_id() == Some(2));
    let ids = tok.encode("hi hié", false).unwrap();
    assert_eq!(ids, [id(&tok, "hi"), id(&tok, "▁hi"), 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&ids), "hi hié");
    // A run of newlines that is a token is taken whole, though no merge builds "\n\n\n".
    let ids = tok.encode("hi\n\n\nhi\n\n\n\n", false).unwrap();
    let (hi, three) = (id(&tok, "hi"), id(&tok, "\n\n\n"));
    let two = id(&tok, "\n\n");
    assert_eq!(ids, [hi, three, hi, two, two]);
    assert_eq!(tok.decode(&ids), "hi\n\n\nhi\n\n\n\n");
    assert_eq!(tok.decode(&[id(&tok, "▁hi")]), " hi");
}

#[test]
fn gemma4_without_bos_id_is_an_error() {
    let entries = without(gemma4_entries(), "tokenizer.ggml.bos_token_id");
    assert_error(&entries, &["add_bos_token", "bos_token_id"]);
}

/// Phi-3 strips whitespace after its special tokens (llama.cpp decides by the model's name).
#[test]
fn phi3_special_tokens_strip_the_whitespace_after_them() {
    let text = "<|im_start|>  hello";
    let tok = build(&bpe_entries()).unwrap();
    let start = id(&tok, "<|im_start|>");
    let plain = tok.encode(text, true).unwrap();
    assert_eq!(plain, [start, id(&tok, "Ġ"), id(&tok, "Ġhello")]);
    let entries = with(
        bpe_entries(),
        "general.name",
        Value::String("Phi-3 Mini".into()),
    );
    let phi3 = build(&entries).unwrap();
    assert_eq!(
        phi3.encode(text, true).unwrap(),
        [start, id(&phi3, "hello")]
    );
}

/// Markers llama.cpp recognises by their text get its token types: FIM markers become
/// control tokens, gpt-oss's message markers user-defined ones.
#[test]
fn marker_tokens_get_llama_cpp_types() {
    let mut entries = bpe_entries();
    add_tokens(&mut entries, &[("<|fim_prefix|>", 1), ("<|channel|>", 3)]);
    let tok = build(&entries).unwrap();
    let (fim, channel) = (id(&tok, "<|fim_prefix|>"), id(&tok, "<|channel|>"));
    assert!(tok.is_control(fim) && !tok.is_stop(fim));
    assert_eq!(tok.token_type(channel), Some(TokenType::UserDefined));
    assert_eq!(tok.encode("<|channel|>", false).unwrap(), [channel]);
    assert_eq!(tok.decode(&[fim, channel]), "<|channel|>");
}
